"""The systemd journal's entries -> syslog-style lines with the entry's exact time.

On the hot path of a catch-up from the journal (compiled with mypyc, setup.py). The
entries are read in process through libsystemd (Debian's python3-systemd), field by
field: each entry's MESSAGE first, and its time and program only when the message may
matter (``wanted``, the parser's own test): most lines cannot, and a field costs about
as much as stepping to the next entry. The host (``-``) and the PID are left out:
nothing reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from logwatch.lines import MAX_LINE

__all__ = ["Entries"]


def _second(sec: int) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS`` in UTC: the start of an RFC 3339 stamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()


class Entries:
    """Reads the entries after the position of ``journal`` (a ``systemd.journal.Reader``)
    as lines ``2026-12-07T17:59:03.209880+00:00 - postfix/smtp: MESSAGE``, which
    the pipeline parses like a line of the mail log file, so both sources classify alike.

    ``wanted``: the test a message must pass to become a line (None: every entry does).
    After ``read``: ``count`` entries were read, ``usec`` is the time of the last one that
    became a line; ``cut`` counts lines over MAX_LINE, cut.
    """

    __slots__ = ("_journal", "_last_sec", "_last_stamp", "count", "cut", "usec", "wanted")

    def __init__(self, journal: Any, wanted: Callable[[str], bool] | None = None) -> None:
        self._journal = journal
        self.wanted = wanted
        self._last_sec = -1
        self._last_stamp = b""
        self.count = 0
        self.usec = 0
        self.cut = 0

    def read(self, limit: int, until: int | None = None) -> list[bytes]:
        """The lines of up to ``limit`` entries, oldest first; none after ``until``
        (Unix time in microseconds): reading stops before the first such entry."""
        journal = self._journal
        step = journal._next
        get = journal._get
        wanted = self.wanted
        lines: list[bytes] = []
        count = 0
        while count < limit and step():
            if until is not None and journal._get_realtime() > until:
                break
            count += 1
            message = _field(get, "MESSAGE")
            if wanted is not None and not wanted(message.decode("utf-8", "replace")):
                continue
            lines.append(
                self._line(
                    int(journal._get_realtime()),
                    _field(get, "SYSLOG_IDENTIFIER"),
                    message,
                )
            )
        self.count = count
        return lines

    def cursor(self) -> str:
        """The cursor of the entry read last."""
        return str(self._journal._get_cursor())

    def _line(self, usec: int, ident: bytes, message: bytes) -> bytes:
        """One syslog-style line with the entry's exact time (RFC 3339, UTC)."""
        self.usec = usec
        sec = usec // 1_000_000
        if sec != self._last_sec:  # the entries of one second share the text
            self._last_sec = sec
            self._last_stamp = _second(sec)
        if b"\n" in message:  # a multi-line message: one line
            message = message.replace(b"\n", b" ")
        frac = b".%06d+00:00 - " % (usec % 1_000_000)
        line = b"".join((self._last_stamp, frac, ident or b"-", b": ", message))
        if len(line) > MAX_LINE:
            self.cut += 1
            line = line[:MAX_LINE]
        return line


def _field(get: Callable[[str], Any], name: str) -> bytes:
    """An entry's field as bytes; b"" when the entry has none (libsystemd: KeyError)."""
    try:
        value = get(name)
    except KeyError:
        return b""
    return value if isinstance(value, bytes) else b""
