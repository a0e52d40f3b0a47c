"""`sendpost-agent status`: a short human summary of the running logwatch."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TextIO

from logwatch.snapshot import Snapshot
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
    try:
        now = Snapshot.from_health(body)
    except (TypeError, ValueError) as exc:
        out.write(
            f"{url} answered, but not as this version of sendpost-agent expects: {exc}\n"
            "  restart logwatch after an upgrade (systemctl restart sendpost-agent-logwatch)\n"
        )
        return 1
    problems = now.problems()
    ago = f"{now.taken_at - now.last_success:.0f} s ago" if now.last_success else "never"
    lines = [
        f"logwatch {now.version}: {'unhealthy' if problems else 'ok'}",
        (
            f"  log lag:        {now.journal_lag_seconds:.1f} s (journal), {now.journal_gaps} gaps"
            if now.log_source == "journal"
            else f"  log lag:        {now.lag_bytes} bytes"
        ),
        f"  log lines:      {now.lines_read} read, {now.lines_cut} cut to 1 MiB;"
        f" {now.rotations} rotations, {now.truncations} truncations",
        f"  pending events: {now.pending_events} ({now.wal_bytes} bytes in WAL)"
        + (
            f"; {now.recognising_events} from before an unclean stop not re-read yet"
            if now.recognising_events
            else ""
        ),
        f"  events sent:    {now.events_sent}, last accepted {ago}",
        f"  last error:     {now.last_error or 'none'}",
        *(f"  problem:        {reason}" for reason in problems),
    ]
    out.write("\n".join(lines) + "\n")
    return 1 if problems else 0
