"""Where the log watcher is in the mail log, kept across restarts (the ``cursor`` file).

A file is known by its inode AND a fingerprint of its first bytes, because rotation
renames files (``mail.log`` -> ``mail.log.1``), copies them (``copytruncate``),
compresses them (new inode, same content) and file systems reuse inode numbers: only
the content tells where our lines went.

Fingerprint rule: ``fingerprint`` is the BLAKE2b hash of the first ``fingerprint_len``
bytes of the (uncompressed) content, ``fingerprint_len = min(size, FINGERPRINT_BYTES)``
when it was taken. A candidate file is the same file when it has at least
``fingerprint_len`` bytes and its first ``fingerprint_len`` bytes hash the same: a file
that grew since still matches, a file that is shorter than what we saw, or starts
differently, does not. With ``fingerprint_len == 0`` (we only ever saw it empty) content
cannot tell, so the inode must match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FINGERPRINT_BYTES",
    "CursorError",
    "FileId",
    "JournalPosition",
    "Position",
    "fingerprint",
    "load_cursor",
    "save_cursor",
]

FINGERPRINT_BYTES = 4096
_VERSION = 1


def fingerprint(head: bytes) -> str:
    """Hex BLAKE2b of ``head`` (the first bytes of a file's content)."""
    return hashlib.blake2b(head, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class FileId:
    """One log file, whatever its name is now. ``name`` is only for messages."""

    dev: int
    inode: int
    fingerprint: str
    fingerprint_len: int
    name: str = field(default="", compare=False)

    @classmethod
    def of(cls, dev: int, inode: int, head: bytes, name: str = "") -> FileId:
        """Identity of a file whose content starts with ``head``."""
        head = head[:FINGERPRINT_BYTES]
        return cls(dev, inode, fingerprint(head), len(head), name)

    def matches(self, dev: int, inode: int, head: bytes) -> bool:
        """Whether a file (``head``: its first FINGERPRINT_BYTES bytes, or all) is this one."""
        if self.fingerprint_len == 0:
            return (dev, inode) == (self.dev, self.inode)
        n = self.fingerprint_len
        return len(head) >= n and fingerprint(head[:n]) == self.fingerprint


@dataclass(frozen=True, slots=True)
class Position:
    """Byte offset in ``file``'s uncompressed content just after the last line consumed.

    ``saved_at`` (Unix time) is set by ``load_cursor`` only; the follower uses it when
    the file cannot be found any more, to tell rotated files we never read from old ones.
    """

    file: FileId
    offset: int
    saved_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class JournalPosition:
    """The systemd journal's cursor of the last entry consumed (``log-source: journal``)."""

    cursor: str


class CursorError(Exception):
    """The cursor file cannot be used; the message names the file and the fix."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def save_cursor(path: Path, position: Position | JournalPosition, state: dict[str, Any]) -> None:
    """Replace the cursor file atomically and durably (temp file, fsync, rename, fsync dir).

    A crash at any point leaves either the old or the new cursor, never a torn one.
    """
    doc: dict[str, Any] = {"version": _VERSION}
    if isinstance(position, JournalPosition):
        doc["journal"] = position.cursor
    else:
        f = position.file
        doc["file"] = {
            "dev": f.dev,
            "inode": f.inode,
            "fingerprint": f.fingerprint,
            "fingerprint_len": f.fingerprint_len,
            "name": f.name,
        }
        doc["offset"] = position.offset
    doc["saved_at"] = time.time()
    doc["state"] = state
    data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_cursor(path: Path) -> tuple[Position | JournalPosition, dict[str, Any]] | None:
    """The saved position (in a file or the journal) and state, or None when there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CursorError(
            path,
            f"cannot read the cursor file {path}: {exc.strerror}; make it (and its directory) "
            "readable and writable by the user the agent runs as",
        ) from exc
    try:
        doc = json.loads(raw)
        _expect(isinstance(doc, dict), "not a JSON object")
        _expect(doc.get("version") == _VERSION, f"unknown version {doc.get('version')!r}")
        state = doc["state"]
        _expect(isinstance(state, dict), "'state' is not an object")
        if "journal" in doc:
            cursor = _str(doc, "journal")
            _expect(bool(cursor) and cursor.isprintable(), "'journal' is not a journal cursor")
            return JournalPosition(cursor), state
        f = doc["file"]
        _expect(isinstance(f, dict), "'file' is not an object")
        file = FileId(
            _int(f, "dev"),
            _int(f, "inode"),
            _str(f, "fingerprint"),
            _int(f, "fingerprint_len"),
            _str(f, "name") if "name" in f else "",
        )
        _expect(file.fingerprint_len <= FINGERPRINT_BYTES, "fingerprint_len out of range")
        saved_at = doc.get("saved_at")
        _expect(saved_at is None or type(saved_at) in (int, float), "'saved_at' is not a number")
        position = Position(file, _int(doc, "offset"), saved_at)
    except (ValueError, KeyError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CursorError(
            path,
            f"the cursor file {path} is corrupt ({detail}); delete it to start again at the end "
            "of the mail log (lines logged while the agent was stopped are then not reported)",
        ) from exc
    return position, state


def _expect(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(problem)


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    _expect(type(value) is int and value >= 0, f"{key!r} is not a non-negative integer")
    return int(value)


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    _expect(isinstance(value, str), f"{key!r} is not a string")
    return str(value)
