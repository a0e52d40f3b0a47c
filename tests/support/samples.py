"""Real Postfix output kept with the tests (a copy of the team's shared/postfix-samples):
maillog.* from real Postfix 3.7 runs, wild/ from public sources (see wild/README.md)."""

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "postfix-samples"
