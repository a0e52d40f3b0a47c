import sys

from sendpost_agent.cli import main

sys.exit(main())
