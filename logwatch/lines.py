"""Splitting the mail log's bytes into lines of bounded length.

Lines are ``bytes`` without their ``\\n``, split with ``bytes.split``: nothing is decoded
here, so invalid UTF-8 and NUL bytes pass through untouched. A line longer than
``MAX_LINE`` is cut to its first ``MAX_LINE`` bytes (and counted) so that memory stays
bounded whatever the log holds.
"""

from __future__ import annotations

MAX_LINE = 1 << 20


class LineSplitter:
    """Splits a byte stream into lines; keeps at most MAX_LINE bytes of an unfinished one."""

    __slots__ = ("_kept", "_parts", "cut", "pending")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._kept = 0
        self.pending = 0  # bytes of the unfinished line read so far, cut ones included
        self.cut = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines = data.split(b"\n")
        rest = lines.pop()
        if lines:
            if self.pending:
                self._keep(lines[0])
                lines[0] = self._take()
            if len(data) > MAX_LINE:
                for i, line in enumerate(lines):
                    if len(line) > MAX_LINE:
                        lines[i] = line[:MAX_LINE]
                        self.cut += 1
        self._keep(rest)
        return lines

    def flush(self) -> bytes | None:
        """The unfinished line as a last line (its file is complete), if there is one."""
        return self._take() if self.pending else None

    def reset(self) -> None:
        self._parts, self._kept, self.pending = [], 0, 0

    def _keep(self, chunk: bytes) -> None:
        if not chunk:
            return
        room = MAX_LINE - self._kept
        if room > 0:
            piece = chunk[:room] if len(chunk) > room else chunk
            self._parts.append(piece)
            self._kept += len(piece)
        self.pending += len(chunk)

    def _take(self) -> bytes:
        line = b"".join(self._parts)
        if self.pending > MAX_LINE:
            self.cut += 1
        self.reset()
        return line
