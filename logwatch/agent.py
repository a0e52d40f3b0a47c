"""`sendpost-agent logwatch`: follow the log, turn lines into events, ship them durably.

Order of durability, which makes a kill -9 at any instant lose nothing:

1. a batch of log lines becomes events, which are appended to the WAL;
2. about once a second the WAL is fsynced, then the cursor is saved: the log position
   after that batch, the tracker's state and the WAL's last seq at that point
   (``wal_seq``); the WAL may then drop the delivered events up to it (``keep_after``);
3. the shipper removes events from the WAL only after the API answered 2xx, and
   never one after the cursor's ``wal_seq``.

After a crash the log is read again from the cursor. The events the WAL holds after
the cursor's ``wal_seq``, delivered or not, came from those lines: they are remembered
(``recognise.Remembered``) and each event the re-read produces that is byte for byte one
of them takes its place instead of being appended again. By bytes, not by position: a
line read before the milter committed its map row gave its event after join-wait,
re-read it gives it at once, so the order can differ. The remembered events are dropped
once all are recognised, or once the log's time (while the log is quiet: the clock's
estimate of it, as for settling held lines) is join-wait past the newest of them: every
line they could come from is decided then, and what is left changed its text (a map row
or the config changed) and is not awaited, lest it swallow a new event. Until then no
cursor is saved: the last one and the WAL after its ``wal_seq`` describe the re-read
exactly, also after a second crash. At most the batch in flight at the crash is sent
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from logwatch.cursor import CursorError, JournalPosition, Position, load_cursor, save_cursor
from logwatch.events import Event
from logwatch.follow import Batch, Follower
from logwatch.health import make_app
from logwatch.journal import JournalBatch, JournalReader, open_source, source_name
from logwatch.logfile import LogUnreadable
from logwatch.metrics import AgentMetrics
from logwatch.parse import Clock
from logwatch.pipeline import Pipeline, tune_gc
from logwatch.recognise import Remembered
from logwatch.relays import ContentFilters
from logwatch.shipper import BATCH_SIZE, BATCH_WAIT, Shipper
from logwatch.snapshot import Snapshot
from logwatch.wal import Wal, WalError
from sendpost_agent import __version__
from sendpost_agent.config import Config
from sendpost_agent.queuemap import MapError, MapReader
from sendpost_agent.trust import info_line_check

log = logging.getLogger(__name__)

CURSOR_EVERY = 1.0  # seconds between cursor saves while lines flow
GATHER = 0.1  # seconds a busy log's lines are gathered into one batch (one read per 0.1 s)
QUIET_GATHER = 0.5  # the same while events are too few to fill a batch within its window
IDLE_AFTER = 1.0  # seconds without new lines before held lines are settled by the clock
LOG_RETRY = 5.0  # seconds between attempts to read an unreadable log
MAP_CHECK_EVERY = 5.0  # seconds between checks that the map file is still the same


class AgentStartError(Exception):
    """logwatch cannot start; the message names the key or file and the fix."""


class StateWriteError(Exception):
    """The WAL or the cursor cannot be written (a full disk): logwatch stops and is
    restarted; the lines since the last cursor saved are read again, nothing is lost."""


@contextlib.contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StateWriteError(f"{path}: cannot {what}: {exc.strerror}") from exc


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        api_key = config.require_api_key("for logwatch")
        if config.endpoint.startswith("http://"):
            log.warning(
                "endpoint %s is plain http: events and the API key travel"
                " unencrypted; use https unless this is a local proxy",
                config.endpoint,
            )
        config.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            loaded = load_cursor(config.cursor_path)
        except CursorError as exc:
            raise AgentStartError(str(exc)) from exc
        # The WAL keeps the events written after the cursor, delivered or not: the re-read
        # recognises them. None: no cursor, the log is read from its start anyway.
        wal_seq = None if loaded is None else int(loaded[1].get("wal_seq", 0))
        try:
            self.wal = Wal(config.wal_path, config.wal_max_size, keep_after=wal_seq)
        except WalError as exc:
            raise AgentStartError(str(exc)) from exc
        self.metrics = AgentMetrics()
        self.shipper = Shipper(
            self.wal,
            config.endpoint,
            api_key,
            config.dead_letter_path,
            self.metrics.send_seconds.observe,
            max_requests_per_minute=config.max_requests_per_minute,
        )
        try:  # created empty if the milter has not run yet: it fills the same file later
            self._map = MapReader(config.map_path)
        except MapError as exc:
            raise AgentStartError(str(exc)) from exc
        self.pipeline = Pipeline(
            config,
            self._map,
            ContentFilters.from_postfix(config.postfix_config_dir),
            Clock(config.tzinfo),
            info_line_check(config.trusted_clients, config.postfix_config_dir),
        )
        self.events_by_type: Counter[str] = Counter()
        self.paused = False
        self.log_error: str | None = None
        self._position: Position | JournalPosition | None = None
        self._saved_at = 0.0
        self._remembered: Remembered | None = None  # events in the WAL from before a crash
        self._map_checked = 0.0
        self._paced_from: float | None = None  # pacing: since when events are counted
        self._paced_events = 0
        if loaded is not None:
            self._position, state = loaded
            self.pipeline.tracker.restore(state.get("tracker", {}))
            assert wal_seq is not None
            if written := self.wal.kept(wal_seq):
                self._remembered = Remembered(written, config.join_wait)
                log.info(
                    "resuming at the cursor saved before an unclean stop (or before one whose"
                    " re-read was still being recognised): %d events in the WAL came from"
                    " lines after it; read again, they are recognised and not queued twice",
                    len(written),
                )
        elif self.wal.pending:
            log.warning(
                "%s is missing but the WAL holds %d events: reading the log from"
                " its start may report some events twice",
                config.cursor_path,
                self.wal.pending,
            )
        self.follower = open_source(
            config,
            self._position,
            gather=GATHER,
            last_line=self.pipeline.tracker.now,
            wanted=self.pipeline.wants,
        )
        self.metrics.watch(self)

    def _lag_bytes(self) -> int:
        with contextlib.suppress(OSError, LogUnreadable):
            return self.follower.lag_bytes()
        return 0

    def _journal_figures(self) -> dict[str, Any]:
        reader = self.follower
        if not isinstance(reader, JournalReader):
            return {"journal_lag_seconds": 0.0, "journal_gaps": 0, "journal_gap": None}
        return {
            "journal_lag_seconds": reader.lag_seconds(),
            "journal_gaps": reader.gaps,
            "journal_gap": reader.last_gap,
        }

    def snapshot(self) -> Snapshot:
        """Everything /health, /metrics and `status` show, read at one instant."""
        follower, pipeline, shipper, wal = self.follower, self.pipeline, self.shipper, self.wal
        return Snapshot(
            version=__version__,
            taken_at=time.time(),
            lines_read=pipeline.lines_read,
            lines_parsed=pipeline.lines_parsed,
            lines_cut=follower.lines_cut,
            rotations=follower.rotations,
            truncations=follower.truncations,
            lag_bytes=self._lag_bytes(),
            log_source=self.config.log_source,
            **self._journal_figures(),
            log_error=self.log_error,
            reading_paused=self.paused,
            events_by_type=dict(self.events_by_type),
            lines_without_event=pipeline.counts(),
            pending_events=wal.pending,
            wal_bytes=wal.size_bytes,
            wal_max_bytes=wal.cap_bytes,
            wal_torn_records=wal.torn_records,
            recognising_events=0 if self._remembered is None else self._remembered.left,
            events_sent=shipper.events_sent,
            events_dead_lettered=shipper.dead_lettered,
            batches=dict(shipper.batches),
            api_key_rejected=shipper.key_rejected,
            failing_since=shipper.failing_since,
            last_success=shipper.last_success,
            last_error=shipper.last_error,
            state_write_errors=shipper.write_errors,
            state_write_error=shipper.write_error,
        )

    async def run(self, stop: asyncio.Event) -> int:
        runner = web.AppRunner(make_app(self, self.metrics), access_log=None)
        await runner.setup()
        listen = self.config.listen
        try:
            await web.TCPSite(runner, listen.host, listen.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise AgentStartError(
                f"listen {listen}: cannot serve /health: {exc.strerror};"
                " choose a free address with --listen"
            ) from exc
        log.info(
            "following %s, shipping to %s, health on http://%s/health",
            source_name(self.follower),
            self.config.endpoint,
            listen,
        )
        shipping = asyncio.create_task(self.shipper.run(stop))
        # Shipping that ends by itself (a bug, a corrupt WAL) ends reading too: else the
        # WAL would fill while nothing is sent. The events read are in the WAL, so the
        # cursor is saved as after a clean stop.
        shipping.add_done_callback(lambda _: stop.set())
        failed: StateWriteError | None = None
        try:
            await self._read(stop)
            self._save_cursor()
        except StateWriteError as exc:
            failed = exc
        finally:
            # After a failure (the map unreadable, a full disk) the state in memory may be
            # part of a batch ahead of its lines: the last cursor saved stands, as after
            # a crash.
            stop.set()  # the shipper flushes what it can and ends with the reading
            await asyncio.wait({shipping})  # its error is reported after the cleanup
            with contextlib.suppress(OSError):  # a failing disk is reported below
                self.wal.close()
            self.follower.close()
            self._map.close()
            await runner.cleanup()
        if failed is not None:
            log.error(
                "%s; stopped, exit 1: free disk space (systemd restarts logwatch,"
                " which reads the lines since its last cursor again)",
                failed,
            )
            return 1
        if (error := shipping.exception()) is not None:
            log.error(
                "shipping failed: %s; stopped with %d events pending in the WAL, exit"
                " 1 (systemd restarts logwatch)",
                error,
                self.wal.pending,
                exc_info=None if isinstance(error, WalError) else error,
            )
            return 1
        log.info("stopped; %d events pending in the WAL", self.wal.pending)
        return 0

    async def _read(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        last_line = time.monotonic()
        # Held lines restored: settle them. Events remembered: the clock's estimate of the
        # log's time lets them go while the log is quiet, as it settles held lines.
        idle_settled = not self.pipeline.tracker.holding and self._remembered is None
        while not stop.is_set():
            if self.wal.full():
                await self._wait_for_room(stopping)
                continue
            reading: asyncio.Task[Batch | JournalBatch] = asyncio.create_task(
                self.follower.next_batch()
            )
            done, _ = await asyncio.wait(
                {reading, stopping}, timeout=IDLE_AFTER, return_when=asyncio.FIRST_COMPLETED
            )
            if reading not in done:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, LogUnreadable, OSError):
                    await reading
                if not idle_settled:
                    # The log is quiet: let held lines' waits end by the wall clock.
                    tracker = self.pipeline.tracker
                    now = tracker.now + (time.monotonic() - last_line)
                    self._append(tracker.tick(now), log_time=now)
                    idle_settled = not tracker.holding and self._remembered is None
                continue
            try:
                batch = reading.result()
            except (LogUnreadable, OSError) as exc:
                self._log_unreadable(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), LOG_RETRY)
                continue
            if self.log_error is not None:
                log.info("the mail log is readable again")
                self.log_error = None
            last_line, idle_settled = time.monotonic(), False
            self._take(batch)
        stopping.cancel()

    def _take(self, batch: Batch | JournalBatch) -> None:
        # The position moves only once the batch is processed: should processing raise,
        # no cursor may count these lines as handled.
        if time.monotonic() - self._map_checked >= MAP_CHECK_EVERY:
            self._map_checked = time.monotonic()
            if self._map.replaced():
                self._reopen_map()
        events = self.pipeline.process(
            batch.lines, batch.read if isinstance(batch, JournalBatch) else None
        )
        self._position = batch.end
        self._append(events, batch.noticed)
        self._pace(len(events), batch.noticed)

    def _pace(self, events: int, noticed: float) -> None:
        """Read a log every GATHER seconds while its events can fill a batch (100)
        within the batch window (5 s): a full batch then leaves at once. Below that
        rate (20 events a second) every batch leaves by its window, which counts from
        when its first line was noticed, so reading only every QUIET_GATHER seconds
        delays no event, and a quiet mail server wakes logwatch twice a second instead
        of once per message. The cost: the first second of a burst after a quiet spell
        is read up to QUIET_GATHER late."""
        if not isinstance(self.follower, Follower):
            return  # the journal wakes the reader as entries come
        # The rate over QUIET_GATHER at least: one read can end in several batches
        # (a block each), and a short last one says nothing about the rate.
        if self._paced_from is None:
            self._paced_from = noticed
        self._paced_events += events
        elapsed = noticed - self._paced_from
        if elapsed >= QUIET_GATHER:
            busy = self._paced_events >= BATCH_SIZE * elapsed / BATCH_WAIT
            self.follower.gather = GATHER if busy else QUIET_GATHER
            self._paced_from, self._paced_events = noticed, 0

    def _reopen_map(self) -> None:
        log.warning(
            "%s was replaced (the milter sets a corrupt map aside and starts a new"
            " one): joining against the new file",
            self.config.map_path,
        )
        replaced, self._map = self._map, MapReader(self.config.map_path)
        self.pipeline.use_map(self._map)
        replaced.close()

    def _append(
        self,
        events: list[Event],
        noticed: float | None = None,
        log_time: float | None = None,
    ) -> None:
        """``log_time``: how far the log's lines are decided, given by the quiet log's clock
        (default: the tracker's time); events it settles have their cursor saved at once."""
        data = [e.to_json().encode() for e in events]
        if self._remembered is not None:
            done = self.pipeline.tracker.now if log_time is None else log_time
            events, data = self._recognise(events, data, done)
        if events:
            with _writing(self.config.wal_path, "append events"):
                self.wal.append(data)
            for event in events:
                self.events_by_type[event.event_type.value] += 1
            self.shipper.appended(time.monotonic() if noticed is None else noticed)
        if (log_time is not None and events) or time.monotonic() - self._saved_at >= CURSOR_EVERY:
            self._save_cursor()

    def _recognise(
        self, events: list[Event], data: list[bytes], log_time: float
    ) -> tuple[list[Event], list[bytes]]:
        """The events not already in the WAL; forgets the remembered ones once done."""
        remembered = self._remembered
        assert remembered is not None
        fresh = [i for i, one in enumerate(data) if not remembered.take(one)]
        if len(fresh) < len(data):
            events, data = [events[i] for i in fresh], [data[i] for i in fresh]
        if remembered.done(log_time):
            self._forget_remembered(remembered, "the log was read past the lines they came from")
        return events, data

    def _forget_remembered(self, remembered: Remembered, why: str) -> None:
        self._remembered = None
        if remembered.left:
            log.warning(
                "%d events written before the unclean stop were not produced again by"
                " the re-read (%s; a map row or the configuration changed meanwhile?):"
                " no longer awaited, an event re-read later is sent, even if it is one",
                remembered.left,
                why,
            )
        else:
            log.info("every event written before the unclean stop was recognised")

    def _save_cursor(self) -> None:
        # While events are remembered the last cursor stands: with the WAL after its
        # wal_seq it describes the re-read exactly, however the remembered ones mix with
        # the new ones (a cursor here could not tell which are still to come).
        if self._position is None or self._remembered is not None:
            return
        wal_seq = self.wal.last_seq
        state = {"tracker": self.pipeline.tracker.snapshot(), "wal_seq": wal_seq}
        with _writing(self.config.wal_path, "sync"):
            self.wal.sync()  # the cursor may only count events that are on disk
        with _writing(self.config.cursor_path, "save the position"):
            save_cursor(self.config.cursor_path, self._position, state)
        self._saved_at = time.monotonic()
        self.wal.keep_after(wal_seq)  # only now: a crash before it re-reads from the last

    async def _wait_for_room(self, stopping: asyncio.Task[bool]) -> None:
        if not self.paused:
            log.warning(
                "the WAL is full (%d bytes): pausing reading the log until the API"
                " takes events again; nothing is dropped",
                self.wal.size_bytes,
            )
            self.paused = True
            self._save_cursor()  # every event counted: delivered, all may leave the WAL
        if self._remembered is not None and not self.wal.pending:
            # Only delivered events kept for recognising fill it: reading must go on.
            self._forget_remembered(self._remembered, "the WAL is full")
            self._save_cursor()
        if self.wal.full():
            self.shipper.progress.clear()
            progress = asyncio.create_task(self.shipper.progress.wait())
            await asyncio.wait({progress, stopping}, return_when=asyncio.FIRST_COMPLETED)
            progress.cancel()
        if not self.wal.full():
            log.info("the WAL has room again: reading the log")
            self.paused = False

    def _log_unreadable(self, exc: Exception) -> None:
        message = str(exc)
        if message != self.log_error:
            log.error(
                "cannot read the mail log %s: %s; fix its permissions (the agent"
                " reads it via group adm) or log-path; retrying every %.0f s",
                source_name(self.follower),
                message,
                LOG_RETRY,
            )
        self.log_error = message


def run_logwatch(config: Config) -> int:
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await Agent(config).run(stop)

    tune_gc()
    try:
        return asyncio.run(main())
    except AgentStartError as exc:
        log.error("%s", exc)
        return 1
    except MapError as exc:
        log.error(
            "%s; stopped without counting the lines not joined yet: they are read"
            " again at the next start",
            exc,
        )
        return 1
