"""Real journal files for tests, written without a running journald.

``systemd-journal-remote`` (Debian package systemd-journal-remote) turns an export
stream into journal files, the same files journald writes; journalctl reads them with
``--directory``. Mail log lines become entries the way journald stores Postfix's syslog
messages: SYSLOG_IDENTIFIER, _PID, SYSLOG_FACILITY=2 (mail) and the message.
"""

from __future__ import annotations

import re
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
BOOT_ID = "0123456789abcdef0123456789abcdef"
# A syslog line the way Postfix's maillog_file has it: STAMP HOST PROGRAM[PID]: MESSAGE
JOURNAL_LINE = re.compile(r"(\w{3} +\d+ [\d:]+) (\S+) ([^\[:]+)\[(\d+)\]: (.*)")
needs_remote = pytest.mark.skipif(
    not JOURNAL_REMOTE.exists(), reason="needs systemd-journal-remote (Debian package)"
)


def entry(
    line: str,
    year: int = 2026,
    facility: int = 2,
    seq: int = 0,
    boot: str = BOOT_ID,
    machine: str | None = None,
) -> dict[str, str]:
    """The journal fields of one syslog line (``Nov 23 18:00:00 mx postfix/smtp[1]: ...``),
    logged during ``boot`` (journald stamps each entry with its boot and machine ID)."""
    m = JOURNAL_LINE.fullmatch(line)
    if m is None:
        raise ValueError(f"not a syslog line: {line!r}")
    stamp, host, ident, pid, message = m.groups()
    when = datetime.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S").replace(tzinfo=UTC)
    fields = {
        "__REALTIME_TIMESTAMP": str(int(when.timestamp()) * 1_000_000 + seq % 1_000_000),
        "__MONOTONIC_TIMESTAMP": str(seq + 1),
        "_BOOT_ID": boot,
        "_HOSTNAME": host,
        "SYSLOG_FACILITY": str(facility),
        "SYSLOG_IDENTIFIER": ident,
        "_PID": pid,
        "PRIORITY": "6",
        "MESSAGE": message,
    }
    if machine is not None:
        fields["_MACHINE_ID"] = machine
    return fields


def export(entries: list[dict[str, str]]) -> bytes:
    """journalctl's export format; a value holding a newline or NUL in its binary form."""
    return b"".join(b"".join(map(_field, e.items())) + b"\n" for e in entries)


def _field(item: tuple[str, str]) -> bytes:
    key, value = item[0].encode(), item[1].encode()
    if b"\n" in value or b"\0" in value:
        return key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return key + b"=" + value + b"\n"


def write_journal(path: Path, entries: list[dict[str, str]]) -> None:
    """Append ``entries`` to the journal file ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(JOURNAL_REMOTE), "-o", str(path), "-"],
        input=export(entries),
        check=True,
        capture_output=True,
        timeout=60,
    )


def write_lines(
    path: Path,
    lines: list[str],
    first_seq: int = 0,
    facility: int = 2,
    boot: str = BOOT_ID,
    machine: str | None = None,
) -> None:
    """Append mail log lines as journal entries (times to the microsecond by ``seq``)."""
    write_journal(
        path,
        [
            entry(line, facility=facility, seq=first_seq + i, boot=boot, machine=machine)
            for i, line in enumerate(lines)
        ],
    )
