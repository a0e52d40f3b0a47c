"""The shared map: Postfix queue ID -> SendPost message UUID.

This module is the whole contract between the two processes:

* the milter (``sendpost_milter``) is the only writer. At end-of-message it records one
  row per message (committed at once when mail is quiet, else with the others of up to
  20 ms: ``sendpost_milter.groupwriter``), also when the header is missing or invalid
  (then with no UUID), so that a reused short queue ID never inherits an older
  message's UUID. The row also
  holds the envelope recipients (RCPT TO): the addresses SendPost gave Postfix, which
  the events name, as opposed to those Postfix rewrote or added (aliases, always_bcc);
* the log watcher (``logwatch``) only reads, and tells "this message has no UUID" (a row
  without UUID) apart from "not known yet" (no row).

Storage is one SQLite file in WAL mode under ``state-dir``: readers never block the
writer, a crash of either process (even kill -9) leaves the file consistent, and lookups
by queue ID stay O(log n) with millions of rows. With ``synchronous=NORMAL`` a power
loss may drop the last few rows written before it (never a crash of the process).

Rows are kept at least ``map-retention`` (>= 24 h) after receipt, then pruned by the
writer's maintenance thread. ``rowid`` grows with insertion time, so pruning reads only
the oldest rows and needs no index on time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS queuemap (
    id          INTEGER PRIMARY KEY,        -- grows with insertion time (pruning order)
    queue_id    TEXT NOT NULL UNIQUE,
    uuid        BLOB,                       -- 16 bytes, NULL when the header was unusable
    header      INTEGER NOT NULL,           -- HeaderState
    received_at INTEGER NOT NULL,           -- unix seconds
    recipients  TEXT                        -- RCPT TO addresses (address_key), one a line
);
"""
# Version 1 had no recipients: its rows keep NULL there, "recipients unknown".
_MIGRATIONS = {1: "ALTER TABLE queuemap ADD COLUMN recipients TEXT"}
PRUNE_CHUNK = 2000
# In WAL mode only another writer can block the milter; there is none, so a lock held
# this long is a stray sqlite3 shell or backup: give up the row rather than hold the
# message. After one such wait, puts do not wait at all for a while: end-of-message
# calls queue up behind the one waiting, and waits in a row would add up to seconds.
WRITER_BUSY_TIMEOUT = 0.1
IMPATIENT_FOR = 5.0
READER_BUSY_TIMEOUT = 5.0
_IN_CHUNK = 500  # below SQLite's host-parameter limit
# A checkpoint fsyncs the database: on a busy server that competes with Postfix's own
# queue-file fsyncs, so it runs rarely; the WAL grows meanwhile (a few MB per second at
# hundreds of messages per second) and is truncated to journal_size_limit afterwards.
CHECKPOINT_EVERY = 10.0


class HeaderState(IntEnum):
    """What the milter found in X-Sendpost-Message-UUID."""

    PRESENT = 0
    MISSING = 1
    INVALID = 2
    REPEATED = 3
    # A valid header from a client not in trusted-clients (sendpost_agent.trust): no UUID.
    UNTRUSTED = 4


class Entry(NamedTuple):
    uuid: str | None  # canonical lower-case RFC 4122 text, None when unusable
    header: HeaderState
    received_at: int
    # The envelope recipients by address_key; None when unknown (a row of an older
    # agent, or no RCPT TO seen): then every delivery of the message is SendPost's.
    # A tuple, not a set: ~3 rather than ~6 MiB more for logwatch's 20,000 rows read
    # ahead, and a message has few recipients to look through.
    recipients: tuple[str, ...] | None = None


def address_key(address: str) -> str:
    """How an envelope address (``<a@b>`` as in RCPT TO, or ``a@b`` as in the log) is
    compared: without angle brackets, case-insensitively. Postfix keeps the case the
    client gave in ``orig_to`` but may change it when it rewrites."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address.lower()


_HEADER_STATES = tuple(HeaderState)
_new = tuple.__new__  # Entry(...) without its Python-level __new__: one per queue ID read


class MapError(Exception):
    """The map file cannot be used; the message names the file and the fix."""


class MapCorrupt(MapError):
    """SQLite finds the file is no sound database: the one case to move it aside."""


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = None
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        # Small pages: every commit writes its changed pages whole into the WAL, and a
        # row is ~45 bytes; 1 KB pages cut the milter's write volume per message 4x.
        # (Only takes effect when the file is created.)
        conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version in _MIGRATIONS:
            _migrate(conn)
        elif version != SCHEMA_VERSION:
            conn.close()
            raise MapError(
                f"{path}: map schema version {version}, this agent expects {SCHEMA_VERSION};"
                " stop both processes and move the file aside"
            )
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        if exc.sqlite_errorname.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            raise MapCorrupt(
                f"{path}: cannot open the queue map: {exc}; restart the milter,"
                " which sets a corrupt map aside and starts a new one"
            ) from exc
        raise MapError(
            f"{path}: cannot open the queue map: {exc}; fix the cause (disk"
            " space, permissions, another process locking it) and restart"
        ) from exc
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an older map up to SCHEMA_VERSION, keeping its rows. Either process may
    open the file first, both at once: the version is read again under the write lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        while version in _MIGRATIONS:
            conn.execute(_MIGRATIONS[version])
            version += 1
            conn.execute(f"PRAGMA user_version={version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("queue map upgraded to schema version %d; older rows keep no recipients", version)


# One map row as put_many takes it: queue ID, UUID bytes, HeaderState, received_at,
# recipients one a line.
Row = tuple[str, bytes | None, int, int, str | None]
_INSERT = (
    "INSERT OR REPLACE INTO queuemap (queue_id, uuid, header, received_at, recipients) VALUES "
)
_ROW_VALUES = "(?,?,?,?,?)"
ROWS_PER_INSERT = 199  # 995 parameters: below SQLite's limit before 3.32 (999)


def row(
    queue_id: str,
    message_uuid: uuid.UUID | None,
    header: HeaderState,
    now: float | None = None,
    recipients: Collection[str] = (),
) -> Row:
    """A message's row, stamped now (or at ``now``), for MapWriter.put_many."""
    return (
        queue_id,
        message_uuid.bytes if message_uuid is not None else None,
        int(header),
        int(time.time() if now is None else now),
        "\n".join(recipients) if recipients else None,
    )


def is_busy(exc: BaseException) -> bool:
    """The map was locked by another writer (ProgrammingError and others have no name)."""
    return (getattr(exc, "sqlite_errorname", None) or "").startswith("SQLITE_BUSY")


class MapWriter:
    """The milter's handle: thread-safe ``put`` plus a background maintenance thread."""

    def __init__(self, path: Path, retention: float) -> None:
        self.path = path
        self.retention = retention
        self._conn = self._open(path)
        # Checkpoints run in the maintenance thread, never on a message's EOM.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn.execute("PRAGMA journal_size_limit=67108864")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checkpointer: sqlite3.Connection | None = None  # maintenance thread only
        self._impatient_until = 0.0  # puts do not wait for a lock until then

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        """Open the map; a corrupt file is moved aside so that mail keeps flowing. Any
        other error (a full disk, a lock) is no reason to lose the rows: it is raised."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return _connect(path, WRITER_BUSY_TIMEOUT)
        except MapCorrupt as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("%s; moving it to %s and starting an empty map", exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    src.rename(f"{aside}{suffix}")
            return _connect(path, WRITER_BUSY_TIMEOUT)

    def put(
        self,
        queue_id: str,
        message_uuid: uuid.UUID | None,
        header: HeaderState,
        now: float | None = None,
        recipients: Collection[str] = (),
    ) -> None:
        """Record a message; replaces any older row with the same (reused) queue ID.
        ``recipients``: the envelope's, as address_key gives them (none: unknown)."""
        self.put_many([row(queue_id, message_uuid, header, now, recipients)])

    def put_many(self, rows: list[Row]) -> None:
        """Record several messages (``row`` makes each), in their order, in one statement
        per ROWS_PER_INSERT: executemany would step once per row, handing the GIL to the
        milter's other threads and back at each."""
        with self._lock:
            if self._impatient_until and time.monotonic() >= self._impatient_until:
                self._impatient_until = 0.0
                self._conn.execute(f"PRAGMA busy_timeout={int(WRITER_BUSY_TIMEOUT * 1000)}")
            chunks = [rows[i : i + ROWS_PER_INSERT] for i in range(0, len(rows), ROWS_PER_INSERT)]
            try:
                if len(chunks) > 1:  # all or none, as one statement is
                    self._conn.execute("BEGIN IMMEDIATE")
                for chunk in chunks:
                    self._conn.execute(
                        _INSERT + ",".join([_ROW_VALUES] * len(chunk)),
                        [value for r in chunk for value in r],
                    )
                if len(chunks) > 1:
                    self._conn.execute("COMMIT")
            except Exception as exc:
                # Any error, also a row's own (OverflowError, UnicodeEncodeError), ends
                # the group's transaction: left open it would hold the write lock and
                # take every later put into it, never committed.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if is_busy(exc) and not self._impatient_until:
                    self._impatient_until = time.monotonic() + IMPATIENT_FOR
                    self._conn.execute("PRAGMA busy_timeout=0")
                raise

    def prune(self, now: float | None = None) -> int:
        """Delete rows older than the retention, oldest first, a chunk at a time, up to
        the first row of a plausible age; returns rows deleted. Rows stamped in the
        future (the clock was set ahead when they were written) are stepped over, not
        waited for: they would hold up the pruning of every row after them."""
        wall = time.time() if now is None else now
        cutoff, future = int(wall - self.retention), int(wall + 3600)
        total, after = 0, 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT id, received_at FROM queuemap WHERE id > ? ORDER BY id LIMIT ?",
                    (after, PRUNE_CHUNK),
                ).fetchall()
                if rows:
                    total += self._conn.execute(
                        "DELETE FROM queuemap WHERE id > ? AND id <= ? AND received_at < ?",
                        (after, rows[-1][0], cutoff),
                    ).rowcount
            if len(rows) < PRUNE_CHUNK or any(cutoff <= at <= future for _, at in rows):
                return total
            after = rows[-1][0]

    def checkpoint(self) -> None:
        """Copy the WAL into the database on a connection of its own, without our lock:
        a PASSIVE checkpoint never blocks SQLite writers, so puts go on meanwhile."""
        if self._checkpointer is None:
            self._checkpointer = _connect(self.path, WRITER_BUSY_TIMEOUT)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def start_maintenance(
        self, checkpoint_every: float = CHECKPOINT_EVERY, prune_every: float = 60.0
    ) -> None:
        def run() -> None:
            last_prune = 0.0
            while not self._stop.wait(checkpoint_every):
                try:
                    self.checkpoint()
                    if time.monotonic() - last_prune >= prune_every:
                        last_prune = time.monotonic()
                        if pruned := self.prune():
                            log.info("pruned %d queue map rows older than retention", pruned)
                except Exception as exc:  # the thread must outlive it, or the WAL grows
                    log.error("%s: queue map maintenance failed: %s", self.path, exc)

        self._thread = threading.Thread(target=run, name="queuemap-maintenance", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self._conn.close()


def _entry(blob: bytes | None, header: int, received_at: int, recipients: str | None) -> Entry:
    text = None
    if blob is not None:  # str(uuid.UUID(bytes=blob)), five times faster
        h = blob.hex()
        text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    envelope = tuple(recipients.split("\n")) if recipients else None
    return _new(Entry, (text, _HEADER_STATES[header], received_at, envelope))


class MapReader:
    """The log watcher's handle; each lookup sees every row committed before it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = _connect(path, READER_BUSY_TIMEOUT)
        self._conn.execute("PRAGMA query_only=ON")
        self._inode = os.stat(path).st_ino

    def replaced(self) -> bool:
        """Another file is at the path now (the milter set a corrupt map aside and began
        a new one): this handle still reads the old file and would see no new row."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return False  # gone, not replaced yet: keep the old until the new one exists

    def get(self, queue_id: str) -> Entry | None:
        try:
            row = self._conn.execute(
                "SELECT uuid, header, received_at, recipients FROM queuemap WHERE queue_id = ?",
                (queue_id,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise MapError(f"{self.path}: queue map lookup failed: {exc}") from exc
        return None if row is None else _entry(*row)

    def get_many(self, queue_ids: list[str]) -> dict[str, Entry]:
        """Rows of many queue IDs in few queries: one lookup per status line is too slow."""
        found: dict[str, Entry] = {}
        for start in range(0, len(queue_ids), _IN_CHUNK):
            chunk = queue_ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            try:
                rows = self._conn.execute(
                    "SELECT queue_id, uuid, header, received_at, recipients FROM queuemap"
                    f" WHERE queue_id IN ({marks})",
                    chunk,
                ).fetchall()
            except sqlite3.Error as exc:
                raise MapError(f"{self.path}: queue map lookup failed: {exc}") from exc
            for queue_id, blob, header, received_at, recipients in rows:
                found[queue_id] = _entry(blob, header, received_at, recipients)
        return found

    def first_id(self, queue_ids: list[str], since: float) -> int | None:
        """The insertion number of the oldest of these rows received at ``since`` or later
        (None if there is none)."""
        chunk = queue_ids[:_IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        try:
            row = self._conn.execute(
                f"SELECT min(id) FROM queuemap WHERE queue_id IN ({marks}) AND received_at >= ?",
                [*chunk, int(since)],
            ).fetchone()
        except sqlite3.Error as exc:
            raise MapError(f"{self.path}: queue map lookup failed: {exc}") from exc
        return None if row is None else row[0]

    def last_id(self) -> int:
        """The highest insertion number (0 for an empty map)."""
        try:
            row: tuple[int | None] = self._conn.execute("SELECT max(id) FROM queuemap").fetchone()
            return row[0] or 0
        except sqlite3.Error as exc:
            raise MapError(f"{self.path}: queue map read failed: {exc}") from exc

    def scan(self, start_id: int, limit: int) -> list[tuple[int, str, Entry]]:
        """Up to ``limit`` rows from insertion number ``start_id`` on, in insertion order:
        (number, queue ID, entry). Reading in order costs a fraction of a lookup per row."""
        try:
            rows = self._conn.execute(
                "SELECT id, queue_id, uuid, header, received_at, recipients FROM queuemap"
                " WHERE id >= ? ORDER BY id LIMIT ?",
                (start_id, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise MapError(f"{self.path}: queue map read failed: {exc}") from exc
        return [
            (row_id, queue_id, _entry(blob, header, received_at, recipients))
            for row_id, queue_id, blob, header, received_at, recipients in rows
        ]

    def __len__(self) -> int:
        row: tuple[int] = self._conn.execute("SELECT count(*) FROM queuemap").fetchone()
        return row[0]

    def close(self) -> None:
        self._conn.close()
