"""Ships events from the WAL to the ingestion API in batches; acks only what got a 2xx.

Delivery guarantee: at least once. An event leaves the WAL only after the API accepted
the batch holding it; a crash may resend at most the batch that was in flight. Events
the API refuses for their content (400/413/422) are isolated by splitting the batch
and set aside in ``dead-letter.jsonl`` with the server's answer, so one bad event
never blocks the rest. A failed write of the ack file or of ``dead-letter.jsonl`` (a full
disk) does not end shipping: it is retried with backoff while the events wait in the WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp

from logwatch.wal import Wal, append_whole
from sendpost_agent import __version__
from sendpost_agent.config import Secret

log = logging.getLogger(__name__)

BATCH_SIZE = 100  # the API's batch limit (product description)
BATCH_WAIT = 5.0  # seconds an event may wait for its batch to fill
_MAX_NOTICED = 1024  # appends whose noticed time is kept apart (an outage merges the newest)
BACKOFF_CAP = 60.0
KEY_REJECTED_RETRY = 300.0  # a wrong key is not fixed by hammering the API
REQUEST_TIMEOUT = 30.0
CONTENT_REJECTED = frozenset({400, 413, 422})
TRANSIENT = frozenset({408, 425, 429})


def backoff_delay(
    failures: int, retry_after: float | None, rng: random.Random | None = None
) -> float:
    """1, 2, 4, 8 ... 60 s with +-20% jitter; the server's Retry-After wins if longer."""
    base = min(BACKOFF_CAP, 2.0 ** max(0, failures - 1))
    delay = base * (rng or random).uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 3600.0))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as delta-seconds or HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def append_line(path: Path, line: bytes) -> None:
    """Append a whole line or nothing, so that retrying a failed write leaves no torn line."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        append_whole(fd, line, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def batch_body(events: list[bytes]) -> bytes:
    """The events are stored already encoded: join them, never re-encode."""
    return b'{"events":[' + b",".join(events) + b"]}"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    text: str
    retry_after: float | None = None


class Shipper:
    def __init__(
        self,
        wal: Wal,
        endpoint: str,
        api_key: Secret,
        dead_letter: Path,
        observe_send: Callable[[float], None],
        *,
        max_requests_per_minute: int = 10_000,
    ) -> None:
        self._wal = wal
        self._endpoint = endpoint
        self._api_key = api_key
        self._dead_letter = dead_letter
        self._min_interval = 60.0 / max_requests_per_minute
        self._next_slot = 0.0
        self._observe_send = observe_send
        self._session: aiohttp.ClientSession | None = None
        self._flushing = False  # stopping: send what is pending without waiting for a batch
        self.wake = asyncio.Event()  # set by ``appended`` when the sender has work
        self._filling = False  # waiting for a batch to fill: only a full one needs waking
        # (last WAL seq of an append, when its lines were noticed), oldest first: the
        # batch window of the oldest unsent event counts from its append's entry.
        self._noticed: deque[tuple[int, float]] = deque()
        self.progress = asyncio.Event()  # set when the WAL shrank (a paused reader waits)
        # health and metrics
        self.key_rejected = False
        self.failing_since: float | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.write_error: str | None = None  # while the ack or dead-letter file cannot be written
        self.write_errors = 0
        self.batches: Counter[str] = Counter()  # by outcome: 2xx, 4xx, 5xx, error
        self.events_sent = 0
        self.dead_lettered = 0
        self._failures = 0

    async def run(self, stop: asyncio.Event, flush_within: float = 5.0) -> None:
        """Send until ``stop``; then keep sending for at most ``flush_within`` seconds."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        headers = {
            "X-SP-Event-ApiKey": self._api_key.reveal(),
            "Content-Type": "application/json",
            "User-Agent": f"sendpost-agent/{__version__}",
        }
        async with aiohttp.ClientSession(
            timeout=timeout, headers=headers, connector=aiohttp.TCPConnector(limit=1)
        ) as session:
            self._session = session
            sender = asyncio.create_task(self._loop())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({sender, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not sender.done():
                self._flushing = True
                self.wake.set()
                deadline = time.monotonic() + flush_within
                while (
                    self._wal.pending
                    and not sender.done()
                    and not self.key_rejected
                    and time.monotonic() < deadline
                ):
                    await asyncio.sleep(0.05)
                if self._wal.pending:
                    log.warning(
                        "stopping with %d events pending; they stay in the WAL and"
                        " are sent after the restart",
                        self._wal.pending,
                    )
                sender.cancel()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender  # re-raises a crash of the send loop

    def appended(self, noticed: float) -> None:
        """Events were appended to the WAL: wake the sender if that gives it work.

        ``noticed`` (monotonic): when their log lines were noticed. The batch window
        counts from the first of them, so a reader that gathers lines for a while
        does not make them wait longer. While the sender waits for a batch to fill, a
        wake-up per append would only count again.
        """
        entries = self._noticed
        if len(entries) < _MAX_NOTICED:
            entries.append((self._wal.last_seq, noticed))
        else:  # a long outage: the newest range grows, keeping its earlier time
            entries[-1] = (self._wal.last_seq, entries[-1][1])
        if not self._filling or self._wal.pending >= BATCH_SIZE:
            self.wake.set()

    async def _loop(self) -> None:
        while True:
            # The count decides whether to wait: reading (and checking) the pending
            # events at each append would cost more than sending them.
            pending = self._wal.pending
            if 0 < pending < BATCH_SIZE and not self._flushing:
                now = time.monotonic()
                remaining = self._window_start(now) + BATCH_WAIT - now
                if remaining > 0:
                    self.wake.clear()
                    self._filling = True
                    try:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), remaining)
                    finally:
                        self._filling = False
                    continue
            events = self._wal.read(self._wal.acked_seq, BATCH_SIZE) if pending else []
            if not events:
                self.wake.clear()
                await self.wake.wait()
                continue
            await self._deliver([seq for seq, _ in events], [raw for _, raw in events])

    def _window_start(self, now: float) -> float:
        """When the oldest unsent event's line was noticed (events pending since a
        start: when this was first asked, as their lines' time is not known)."""
        entries, acked = self._noticed, self._wal.acked_seq
        while entries and entries[0][0] <= acked:
            entries.popleft()
        if not entries:
            entries.append((self._wal.last_seq, now))
        return entries[0][1]

    async def _deliver(self, seqs: list[int], events: list[bytes]) -> None:
        """Send one batch until it is accepted or its bad events are set aside; ack it."""
        answer = await self._send_until_decided(events)
        if answer.status in CONTENT_REJECTED:
            await self._isolate(events, answer)
        await self._write_until_done(self._wal.ack_path, lambda: self._wal.ack(seqs[-1]))
        self.progress.set()

    async def _send_until_decided(self, events: list[bytes]) -> Answer:
        """Retry transient failures; return the 2xx or content-refusal answer."""
        while True:
            answer = await self._post(events)
            if answer.status is not None and 200 <= answer.status < 300:
                self._accepted(len(events))
                return answer
            if answer.status in CONTENT_REJECTED:
                return answer
            await asyncio.sleep(self._failed(answer))

    async def _isolate(self, events: list[bytes], answer: Answer) -> None:
        """Split a refused batch until the refused events are alone; the rest is sent."""
        if len(events) == 1:
            await self._set_aside(events[0], answer)
            return
        middle = len(events) // 2
        for half in (events[:middle], events[middle:]):
            reply = await self._send_until_decided(half)
            if reply.status in CONTENT_REJECTED:
                await self._isolate(half, reply)

    async def _set_aside(self, event: bytes, answer: Answer) -> None:
        record = {
            "time": time.time(),
            "status": answer.status,
            "answer": answer.text[:2000],
            "event": json.loads(event),
        }
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        await self._write_until_done(
            self._dead_letter, lambda: append_line(self._dead_letter, line)
        )
        self.dead_lettered += 1
        log.error(
            "the API refused an event (HTTP %s: %s); set aside in %s",
            answer.status,
            answer.text[:200],
            self._dead_letter,
        )

    async def _write_until_done(self, path: Path, write: Callable[[], None]) -> None:
        """Retry a failed local write with backoff until it succeeds.

        Events leave the WAL only once their ack (or dead-letter record) is written, and a
        full or failing disk is no reason to stop shipping for good: meanwhile the events
        wait in the WAL and ``/health`` says why.
        """
        failures = 0
        while True:
            try:
                write()
            except OSError as exc:
                failures += 1
                self.write_errors += 1
                self.write_error = self.last_error = f"cannot write {path}: {exc}"
                delay = backoff_delay(failures, None)
                if failures & (failures - 1) == 0:  # the 1st, 2nd, 4th...: never a flood
                    log.error(
                        "%s; the events stay in the WAL; retry %d in %.1f s",
                        self.write_error,
                        failures,
                        delay,
                    )
                await asyncio.sleep(delay)
            else:
                if failures:
                    log.info("%s is written again (after %d failures)", path, failures)
                self.write_error = None
                return

    def _accepted(self, count: int) -> None:
        self.events_sent += count
        self.last_success = time.time()
        self.failing_since = None
        if self.key_rejected:
            log.info("the API accepts the key again")
        self.key_rejected = False
        self._failures = 0

    def _failed(self, answer: Answer) -> float:
        """Record a failure; return how long to wait before trying the same batch again."""
        self._failures += 1
        if self.failing_since is None:
            self.failing_since = time.time()
        status = answer.status
        if status in (401, 403):
            if not self.key_rejected:
                log.error(
                    "the API rejected the key (HTTP %s): set the right api-key (the"
                    " Event Ingestion API Key of your Custom SMTP TPSP); events are"
                    " kept and retried every %d s",
                    status,
                    KEY_REJECTED_RETRY,
                )
            self.key_rejected = True
            self.last_error = f"HTTP {status}: API key rejected"
            return KEY_REJECTED_RETRY
        delay = backoff_delay(self._failures, answer.retry_after)
        transient = status is None or status >= 500 or status in TRANSIENT
        if not transient:  # 404, 405...: the endpoint is wrong; retry slowly, keep events
            delay = max(delay, BACKOFF_CAP)
        what = f"HTTP {status}" if status is not None else "no answer"
        self.last_error = f"{what}: {answer.text[:200]}"
        level = logging.WARNING if self._failures <= 3 or transient else logging.ERROR
        log.log(
            level,
            "sending failed (%s: %s); retry %d in %.1f s",
            what,
            answer.text[:200],
            self._failures,
            delay,
        )
        return delay

    async def _post(self, events: list[bytes]) -> Answer:
        # A fixed schedule: a late wake-up is made up by the next request, so the
        # average pace is the limit itself, never above it.
        now = time.monotonic()
        slot = max(self._next_slot, now)
        if slot > now:
            await asyncio.sleep(slot - now)
        self._next_slot = slot + self._min_interval
        started = time.perf_counter()
        assert self._session is not None
        try:
            async with self._session.post(self._endpoint, data=batch_body(events)) as response:
                text = await response.text(errors="replace")
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.batches["error"] += 1
            return Answer(None, f"{type(exc).__name__}: {exc}")
        finally:
            self._observe_send(time.perf_counter() - started)
        self.batches[f"{status // 100}xx"] += 1
        return Answer(status, text, retry_after)
