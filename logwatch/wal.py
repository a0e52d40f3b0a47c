"""The write-ahead log of events the ingestion API has not accepted yet (``pending.wal``).

Events enter it before the log cursor moves past their lines and leave it only after a
2xx, so a crash or an API outage loses none. Each event gets a sequence number (seq) 1,
2, 3... that keeps counting across restarts, compactions and truncations.

Delivered events also stay while they are newer than ``keep_after``: the logwatch agent
passes the ``wal_seq`` of each cursor it saved (about once a second), so the file keeps
the events written after the last cursor, delivered or not (about a second of them).
After a crash the agent reads them (``kept``) to recognise them by their bytes when the
log is read again from that cursor. ``Wal(path)`` without it keeps no delivered event.

``pending.wal`` is records back to back, each a 26-byte little-endian header + payload::

    magic    4s   b"SPWL"
    version  u16  1
    length   u32  payload bytes
    count    u32  events in the record (>= 1)
    first    u64  seq of the first event; the others are first+1 ... first+count-1
    crc      u32  CRC32 of the 22 header bytes before it, continued over the payload
    payload       the events joined by b"\\n"

Each record's ``first`` is the previous record's last seq + 1. One ``append`` is one
record written by one ``pwrite``. Opening scans the file: the first record that is cut
short, has a bad magic, version or CRC, or breaks the seq chain ends it; the file is
truncated there, counted in ``torn_records`` and logged. Only an index (offset, first,
count: 20 bytes per record) stays in memory; payloads are read when asked for.

``pending.wal.ack`` is JSON ``{"version": 1, "acked_seq": N}``: every event up to N was
delivered. It is replaced on every ack (temp file, fsync, rename, fsync dir). It also
keeps the seq counter going when ``pending.wal`` is empty, because the WAL is emptied
only when everything in it is acked: ``last_seq`` on open is the larger of N and the
WAL's last seq. Without the ack file, everything in the WAL is pending.

Space is reclaimed always AFTER the ack file is durable, so a crash in between only
leaves acked records, which the next open skips and reclaims. A record may go once all
its events are acked and not newer than ``keep_after`` (droppable):

* every record droppable: ``pending.wal`` is truncated to empty;
* the droppable prefix is at least as big as the rest (and not tiny): the rest is
  copied to ``pending.wal.tmp``, fsynced and renamed over ``pending.wal``, then the dir
  is fsynced. Copying at most as much as is freed keeps the cost per event constant
  while a backlog drains. A crash leaves the old file (and a stale temp file, deleted
  on open) or the new one; both hold every unacked and every kept event.

``full`` counts the whole file, kept events too: the agent saves its cursor (moving
``keep_after`` to the last seq) when it finds the WAL full, so that the acks can then
empty it as before. While it still recognises events re-read after a crash it saves
none; once only delivered events fill the WAL it stops recognising them and saves it.

Power loss (not kill -9) can lose appends made after the last ``sync``. ``last_seq`` then
falls back to the newest seq still on disk or acked, and the lost seqs are issued again,
so that the records stay one unbroken chain of seqs. Nothing durable refers to a lost
seq: the agent's cursor names only synced ones. Should acked events be lost (the ack
file was synced, the appends were not), every record left is acked and is dropped,
kept or not: a new append could not continue the chain after them. The agent then
recognises none of them: their events are sent again. Events appended from then on
are kept after ``keep_after`` as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from array import array
from bisect import bisect_right
from pathlib import Path

__all__ = ["Wal", "WalError", "append_whole"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sHIIQI")
_CRC_AT = _HEADER.size - 4
_MAGIC = b"SPWL"
_VERSION = 1
_ACK_VERSION = 1
_CHUNK = 1 << 20
_COMPACT_MIN_BYTES = 4 << 20  # below this (or a quarter of the cap) keep the acked prefix


class WalError(Exception):
    """The WAL or its ack file cannot be used; the message names the file and the fix."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class Wal:
    """Events not yet accepted by the API, on disk, with a small in-memory index."""

    def __init__(
        self, path: Path, cap_bytes: int = 100 * 1024 * 1024, keep_after: int | None = None
    ) -> None:
        """``keep_after``: see ``keep_after()``; None keeps no acked event."""
        self.path = path
        self.cap_bytes = cap_bytes
        self.torn_records = 0
        self._ack_path = path.with_name(path.name + ".ack")
        self._ack_tmp = path.with_name(path.name + ".ack.tmp")
        self._tmp_path = path.with_name(path.name + ".tmp")
        self._offsets = array("Q")
        self._firsts = array("Q")
        self._counts = array("I")
        self._end = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (self._tmp_path, self._ack_tmp):  # left by a crash mid-write
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        acked = self._load_ack()
        self._dir_dirty = not path.exists()  # a new file's name is durable after sync()
        self._fd = self._dir_fd = -1
        try:
            self._dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._scan()
        except BaseException:
            self._release()
            raise
        wal_first, wal_last = (self._firsts[0], self._last()) if self._firsts else (1, 0)
        if acked is None:
            acked = wal_first - 1
        elif acked < wal_first - 1:
            log.warning(
                "%s: events %d to %d are in neither %s nor acked (lost); the WAL goes on from %d",
                self._ack_path,
                acked + 1,
                wal_first - 1,
                path.name,
                wal_first,
            )
            acked = wal_first - 1
        self.acked_seq: int = acked
        self.last_seq: int = max(acked, wal_last)
        # Acked events lost by a power loss: the records left cannot be continued, keep
        # none of them. An empty file (also the usual one, everything acked) keeps what
        # is appended after keep_after.
        self._keep_after = keep_after if acked <= wal_last else None
        self._reclaim()
        if not self._firsts:
            self._keep_after = keep_after

    @property
    def size_bytes(self) -> int:
        return self._end

    @property
    def ack_path(self) -> Path:
        return self._ack_path

    @property
    def pending(self) -> int:
        return self.last_seq - self.acked_seq

    def full(self) -> bool:
        return self._end >= self.cap_bytes

    def append(self, events: list[bytes]) -> int:
        """Add the events as one record (one write, no fsync: see ``sync``)."""
        if not events:
            return self.last_seq
        payload = b"\n".join(events)
        if payload.count(b"\n") != len(events) - 1:
            raise ValueError("an event contains a newline")
        first = self.last_seq + 1
        head = _HEADER.pack(_MAGIC, _VERSION, len(payload), len(events), first, 0)[:_CRC_AT]
        crc = zlib.crc32(payload, zlib.crc32(head))
        append_whole(self._fd, b"".join((head, crc.to_bytes(4, "little"), payload)), self._end)
        self._offsets.append(self._end)
        self._firsts.append(first)
        self._counts.append(len(events))
        self._end += _HEADER.size + len(payload)
        self.last_seq = first + len(events) - 1
        return self.last_seq

    def sync(self) -> None:
        """Make every append so far survive a power loss."""
        os.fdatasync(self._fd)
        if self._dir_dirty:
            os.fsync(self._dir_fd)
            self._dir_dirty = False

    def read(self, after_seq: int, max_events: int) -> list[tuple[int, bytes]]:
        """Unacked events after ``after_seq``, oldest first; one pread for the whole span."""
        return self._read(max(after_seq, self.acked_seq) + 1, max_events)

    def kept(self, after_seq: int) -> list[bytes]:
        """Every event after ``after_seq`` still in the file, acked or not, oldest first."""
        return [data for _, data in self._read(after_seq + 1, self.last_seq - after_seq)]

    def keep_after(self, seq: int) -> None:
        """Acked events up to ``seq`` may go; acked events after it stay until the next
        call (the agent's cursor counts events up to ``seq`` as written for good)."""
        self._keep_after = seq
        self._reclaim()

    def _read(self, start: int, max_events: int) -> list[tuple[int, bytes]]:
        """Events from seq ``start`` on still in the file, oldest first."""
        i = self._locate(start)
        n = len(self._firsts)
        if i == n or max_events <= 0:
            return []
        j, wanted = i, max_events
        while j < n and wanted > 0:
            wanted -= self._counts[j] - max(0, start - self._firsts[j])
            j += 1
        base = self._offsets[i]
        stop = self._offsets[j] if j < n else self._end
        buf = os.pread(self._fd, stop - base, base)
        out: list[tuple[int, bytes]] = []
        for k in range(i, j):
            at = self._offsets[k] - base
            first, count = self._firsts[k], self._counts[k]
            events = _payload(buf, at, first, count)
            if events is None:
                raise WalError(
                    self.path,
                    f"{self.path}: the record at offset "
                    f"{self._offsets[k]} changed after it was checked (disk "
                    "corruption? check the disk); a restart of the agent drops"
                    " it and the records after it (their events are lost)",
                )
            skip = max(0, start - first)
            out.extend(
                zip(
                    range(first + skip, first + count),
                    events[skip : skip + max_events - len(out)],
                    strict=False,
                )
            )
        return out

    def ack(self, seq: int) -> None:
        """Events up to ``seq`` were delivered: persist that, then reclaim their space.

        An OSError leaves ``acked_seq`` unchanged: the events stay pending and the same
        ack may be retried. (The new ack file may be on disk already; that is correct too,
        as the events were delivered.)
        """
        if seq > self.last_seq:
            raise ValueError(f"ack({seq}) is beyond the last seq {self.last_seq}")
        if seq <= self.acked_seq:
            return
        self._write_ack(seq)
        self.acked_seq = seq
        self._reclaim()

    def close(self) -> None:
        """Sync and release the files; a clean stop leaves nothing to a power loss."""
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            self._release()

    def _release(self) -> None:
        for fd in (self._fd, self._dir_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._dir_fd = -1

    def _last(self) -> int:
        return self._firsts[-1] + self._counts[-1] - 1

    def _locate(self, seq: int) -> int:
        """Index of the first record holding an event >= seq (the record count if none)."""
        i = bisect_right(self._firsts, seq) - 1
        if i < 0:
            return 0
        return i if seq < self._firsts[i] + self._counts[i] else i + 1

    def _scan(self) -> None:
        """Index the records; cut the file at the first bad one (torn by a crash, or corrupt)."""
        size = os.fstat(self._fd).st_size
        offset, expect = 0, None
        problem = ""
        with open(self._fd, "rb", buffering=_CHUNK, closefd=False) as f:
            while offset < size:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    problem = "cut short in its header"
                    break
                magic, version, length, count, first, crc = _HEADER.unpack(head)
                if magic != _MAGIC:
                    problem = "not a record (bad magic)"
                    break
                if version != _VERSION:
                    if offset == 0:
                        raise WalError(
                            self.path,
                            f"{self.path} has format version {version}"
                            f" (this agent writes {_VERSION}): let the agent"
                            " version that wrote it send it, or move it away"
                            " (its events are then not reported)",
                        )
                    problem = f"of unknown version {version}"
                    break
                if offset + _HEADER.size + length > size:
                    problem = "cut short in its payload"
                    break
                payload = f.read(length)
                if zlib.crc32(payload, zlib.crc32(head[:_CRC_AT])) != crc or count < 1:
                    problem = "corrupt (bad CRC)"
                    break
                if expect is not None and first != expect:
                    problem = f"out of sequence (seq {first}, expected {expect})"
                    break
                self._offsets.append(offset)
                self._firsts.append(first)
                self._counts.append(count)
                expect = first + count
                offset += _HEADER.size + length
        self._end = offset
        if offset < size:
            self.torn_records = 1
            log.error(
                "%s: the record at offset %d is %s: truncated the file there, dropping"
                " %d bytes (a write cut short by a crash, or a corrupt file); the"
                " %d events before it are kept",
                self.path,
                offset,
                problem,
                size - offset,
                sum(self._counts),
            )
            os.ftruncate(self._fd, offset)

    def _reclaim(self) -> None:
        """Drop what is acked and not kept: truncate when nothing is left, compact when
        worth it.

        A failure is only logged: the ack stands (``ack`` raises only for the ack file),
        the index still matches the file, and the next ack tries again.
        """
        n = len(self._firsts)
        droppable = self.acked_seq
        if self._keep_after is not None:
            droppable = min(droppable, self._keep_after)
        k = self._locate(droppable + 1)
        try:
            if n and k == n:
                os.ftruncate(self._fd, 0)
                del self._offsets[:], self._firsts[:], self._counts[:]
                self._end = 0
            elif k > 0:
                prefix = self._offsets[k]
                if prefix >= max(self._end - prefix, min(_COMPACT_MIN_BYTES, self.cap_bytes // 4)):
                    self._compact(k)
        except OSError as exc:
            log.error(
                "%s: cannot reclaim the space of acked events (%s); they keep using"
                " disk space until the next ack",
                self.path,
                exc,
            )

    def _compact(self, k: int) -> None:
        """Replace the file with its records from ``k`` on (temp, fsync, rename, fsync dir)."""
        base = self._offsets[k]
        fd = os.open(self._tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pos = base
            while pos < self._end:
                chunk = os.pread(self._fd, min(_CHUNK, self._end - pos), pos)
                if not chunk:
                    raise WalError(
                        self.path,
                        f"{self.path} shrank while being compacted; only this agent may write it",
                    )
                _pwrite_all(fd, chunk, pos - base)
                pos += len(chunk)
            os.fsync(fd)
            os.replace(self._tmp_path, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_path)
            raise
        os.close(self._fd)
        self._fd = fd
        del self._firsts[:k], self._counts[:k]
        self._offsets = array("Q", [o - base for o in self._offsets[k:]])
        self._end -= base
        os.fsync(self._dir_fd)

    def _load_ack(self) -> int | None:
        try:
            raw = self._ack_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise WalError(
                self._ack_path,
                f"cannot read {self._ack_path}: {exc.strerror}; make"
                " it (and its directory) readable and writable by the user the"
                " agent runs as",
            ) from exc
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != _ACK_VERSION:
                raise ValueError(f"not a version {_ACK_VERSION} ack file")
            acked = doc.get("acked_seq")
            if type(acked) is not int or acked < 0:
                raise ValueError("'acked_seq' is not a non-negative integer")
        except ValueError as exc:
            raise WalError(
                self._ack_path,
                f"the WAL ack file {self._ack_path} is corrupt"
                f" ({exc}); delete it to send again every event still in"
                f" {self.path} (the API may then get some events twice)",
            ) from exc
        return acked

    def _write_ack(self, seq: int) -> None:
        data = json.dumps({"version": _ACK_VERSION, "acked_seq": seq}).encode()
        fd = os.open(self._ack_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._ack_tmp, self._ack_path)
        os.fsync(self._dir_fd)


def _payload(buf: bytes, at: int, first: int, count: int) -> list[bytes] | None:
    """The events of the record at ``buf[at:]``, or None unless it is the indexed one, intact."""
    magic, version, length, got_count, got_first, crc = _HEADER.unpack_from(buf, at)
    start = at + _HEADER.size
    payload = buf[start : start + length]
    if (magic, version, got_first, got_count) != (_MAGIC, _VERSION, first, count) or zlib.crc32(
        payload, zlib.crc32(buf[at : at + _CRC_AT])
    ) != crc:
        return None
    return payload.split(b"\n")


def append_whole(fd: int, data: bytes, end: int) -> None:
    """Write ``data`` at ``end`` (the file's end) whole, or cut the file back to ``end``:
    a partial record or line must not stay in front of the next one."""
    try:
        _pwrite_all(fd, data, end)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
