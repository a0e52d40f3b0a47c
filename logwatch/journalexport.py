"""journalctl's export format -> syslog-style lines with the entry's exact time.

Pure and on the hot path of a catch-up from the journal (compiled with mypyc, setup.py):
one ``bytes.find`` per field instead of a loop over every field of every entry.
"""

from __future__ import annotations

import time

from logwatch.lines import MAX_LINE

__all__ = ["ExportParser"]


def _second(sec: int) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS`` in UTC: the start of an RFC 3339 stamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()


class ExportParser:
    """journalctl's export format (bytes, in any pieces) -> one line per entry.

    Fields are ``KEY=value\\n``, or ``KEY\\n`` + 64-bit little-endian size + bytes +
    ``\\n`` when the value is not printable text; an empty line ends an entry; the first
    field is always ``__CURSOR``. Only complete entries are taken; ``cursor`` and
    ``first_cursor`` are those of the last and the first entry of the last ``feed``
    that completed any, ``usec`` the time of the last one.
    """

    __slots__ = ("_last_sec", "_last_stamp", "_rest", "cursor", "cut", "first_cursor", "usec")

    def __init__(self) -> None:
        self._rest = b""
        self._last_sec = -1
        self._last_stamp = b""
        self.cursor: str | None = None
        self.first_cursor: str | None = None
        self.usec = 0
        self.cut = 0  # lines over MAX_LINE, cut

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data if self._rest else data
        if b"\0" not in buf:
            # Text only (nearly always): a binary field's size has NUL bytes, which text
            # never holds. A text value holds no newline: entries split at the blank
            # lines and a field is found by its name after a newline.
            entries = buf.split(b"\n\n")
            self._rest = entries.pop()
            if not entries:
                return []
            self.first_cursor = _cursor(entries[0])
            self.cursor = _cursor(entries[-1])
            line = self._line
            return [
                line(
                    _text_field(e, b"\n__REALTIME_TIMESTAMP="),
                    _text_field(e, b"\n_HOSTNAME="),
                    _text_field(e, b"\nSYSLOG_IDENTIFIER="),
                    _text_field(e, b"\n_PID="),
                    _text_field(e, b"\nMESSAGE="),
                )
                for e in entries
            ]
        out: list[bytes] = []
        pos = 0
        while (end := _binary_entry_end(buf, pos)) >= 0:
            entry = _split_binary(buf[pos:end])
            if not out:
                self.first_cursor = _cursor(buf[pos:end])
            self.cursor = _cursor(buf[pos:end])
            get = entry.get
            out.append(
                self._line(
                    get(b"__REALTIME_TIMESTAMP", b""),
                    get(b"_HOSTNAME", b""),
                    get(b"SYSLOG_IDENTIFIER", b""),
                    get(b"_PID", b""),
                    get(b"MESSAGE", b""),
                )
            )
            pos = end
        self._rest = buf[pos:]
        return out

    def reset(self) -> None:
        self._rest = b""

    def _line(
        self, realtime: bytes, host: bytes, ident: bytes, pid: bytes, message: bytes
    ) -> bytes:
        """One syslog-style line with the entry's exact time (RFC 3339, UTC)."""
        try:
            usec = int(realtime)
        except ValueError:
            usec = self.usec  # journalctl always sends it: keep the order, do not crash
        self.usec = usec
        sec = usec // 1_000_000
        if sec != self._last_sec:  # the entries of one second share the text
            self._last_sec = sec
            self._last_stamp = _second(sec)
        line = b"%s.%06d+00:00 %s %s%s: %s" % (
            self._last_stamp,
            usec % 1_000_000,
            host or b"-",
            ident or b"-",
            b"[%s]" % pid if pid else b"",
            message.replace(b"\n", b" ") if b"\n" in message else message,
        )
        if len(line) > MAX_LINE:
            self.cut += 1
            line = line[:MAX_LINE]
        return line


def _cursor(entry: bytes) -> str:
    """The entry's ``__CURSOR`` (always its first field)."""
    return entry[9 : entry.find(b"\n")].decode("ascii", "replace")


def _text_field(entry: bytes, key: bytes) -> bytes:
    """The value of a field (``key``: newline, name, '=') in a text-only entry, or b""."""
    start = entry.find(key)
    if start < 0:
        return b""
    start += len(key)
    end = entry.find(b"\n", start)
    return entry[start:] if end < 0 else entry[start:end]


def _binary_entry_end(buf: bytes, pos: int) -> int:
    """Where the entry at ``pos`` ends (after its blank line), or -1 if incomplete."""
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return -1
        if nl == pos:
            return nl + 1
        if buf.find(b"=", pos, nl) < 0:  # a binary field: size, value, newline
            if len(buf) < nl + 9:
                return -1
            pos = nl + 9 + int.from_bytes(buf[nl + 1 : nl + 9], "little") + 1
            if pos > len(buf):
                return -1
        else:
            pos = nl + 1


def _split_binary(entry: bytes) -> dict[bytes, bytes]:
    """The fields of one complete entry that has binary ones (values cut to MAX_LINE)."""
    fields: dict[bytes, bytes] = {}
    pos = 0
    while (nl := entry.find(b"\n", pos)) > pos:
        eq = entry.find(b"=", pos, nl)
        if eq >= 0:
            fields[entry[pos:eq]] = entry[eq + 1 : nl]
            pos = nl + 1
        else:
            size = int.from_bytes(entry[nl + 1 : nl + 9], "little")
            fields[entry[pos:nl]] = entry[nl + 9 : nl + 9 + min(size, MAX_LINE)]
            pos = nl + 9 + size + 1
    return fields
