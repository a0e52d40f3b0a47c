"""`sendpost-agent status`: a short human summary of the running logwatch."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import TextIO

from sendpost_agent.config import Config


def status(config: Config, out: TextIO) -> int:
    """Exit 0 healthy, 1 unhealthy or not running (the message says which)."""
    url = f"http://{config.listen}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 503 carries the same body
        body = json.load(exc)
    except (OSError, ValueError) as exc:
        out.write(
            f"logwatch is not answering on {url}: {exc}\n"
            "  is it running? (systemctl status sendpost-agent-logwatch)\n"
        )
        return 1
    last = body.get("last_success")
    ago = f"{time.time() - last:.0f} s ago" if last else "never"
    lines = [
        f"logwatch {body.get('version')}: {body['status']}",
        f"  log lag:        {body.get('lag_bytes')} bytes",
        f"  pending events: {body.get('pending_events')} ({body.get('wal_bytes')} bytes in WAL)",
        f"  events sent:    {body.get('events_sent')}, last accepted {ago}",
        f"  last error:     {body.get('last_error') or 'none'}",
        *(f"  problem:        {reason}" for reason in body.get("reasons", [])),
    ]
    out.write("\n".join(lines) + "\n")
    return 0 if body["status"] == "ok" else 1
