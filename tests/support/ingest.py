"""A real HTTP server standing in for SendPost's Event Ingestion API in tests.

``IngestServer`` serves ``POST /api/v1/tpsp/custom-smtp/events`` from a background
thread with its own event loop, enforces the contract of the spec's "Request Payload
(Event Ingestion API)" section, records what it saw, and lets a test inject the faults
the agent must survive (outage, 5xx/429 with Retry-After, slowness, a rejected event).

The contract, as enforced here:

- ``X-SP-Event-ApiKey`` missing or not the current key -> 401;
- body larger than ``max_body_bytes`` -> 413;
- empty body, invalid JSON, no non-empty ``events`` list, or an event that is not an
  object, lacks a non-blank string ``message_id``, has an ``event_type`` outside
  ``EVENT_TYPES``, a ``timestamp`` key whose value is not an RFC 3339 date-time, or an
  ``smtp_code`` that is not an integer or ``smtp_description``/``recipient`` not a string
  -> 400 ``{"error": "...", "index": i}`` (``index`` only for a bad event);
- otherwise 200 ``{"status": "ok", "accepted": n}``; other paths 404, other methods 405.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

EVENTS_PATH = "/api/v1/tpsp/custom-smtp/events"
API_KEY_HEADER = "X-SP-Event-ApiKey"
EVENT_TYPES = frozenset({"delivered", "bounced", "deferred", "soft_bounced"})
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_OPTIONAL = (
    ("smtp_code", int, "an integer"),
    ("smtp_description", str, "a string"),
    ("recipient", str, "a string"),
)

#: RFC 3339 ``date-time`` syntax; datetime.fromisoformat then checks the ranges
#: (month 13, Feb 30, hour 24 ...). Upper-case T and Z only, as Go and most servers
#: parse it; no leap second (``:60``), which fromisoformat cannot represent.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)

#: In-flight answers get this long to finish when the server goes down, then are cut.
_SHUTDOWN_GRACE = 0.25
#: Bound on start()/stop()/go_down()/come_up(), so a broken server fails fast.
_LIFECYCLE_TIMEOUT = 10.0

Event = dict[str, Any]
EventPredicate = Callable[[Event], bool]
_T = TypeVar("_T")


class ContractError(ValueError):
    """A body the ingestion API answers with 400; ``index`` names the bad event, if any."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def is_rfc3339(value: str) -> bool:
    """True when ``value`` is a complete RFC 3339 date-time (date, time and offset or Z)."""
    if _RFC3339.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _json_type(value: object) -> str:
    """JSON name of a decoded value's type, for error messages a client author reads."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _reject_constant(name: str) -> Any:
    """Refuse NaN/Infinity, which Python's json accepts but JSON (and real APIs) do not."""
    raise ValueError(f"{name} is not valid JSON")


def validate_event(index: int, event: object) -> Event:
    """Return ``event`` if it satisfies the per-event rules, else raise ContractError."""
    where = f"events[{index}]"
    if not isinstance(event, dict):
        raise ContractError(f"{where}: must be a JSON object, got {_json_type(event)}", index)
    if "message_id" not in event:
        raise ContractError(f"{where}: message_id is required", index)
    message_id = event["message_id"]
    if not isinstance(message_id, str) or not message_id.strip():
        raise ContractError(f"{where}: message_id must be a non-empty string", index)
    if "event_type" not in event:
        raise ContractError(f"{where}: event_type is required", index)
    event_type = event["event_type"]
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        allowed = ", ".join(sorted(EVENT_TYPES))
        raise ContractError(
            f"{where}: event_type must be one of {allowed}, got {event_type!r}", index
        )
    if "timestamp" in event:
        timestamp = event["timestamp"]
        if not isinstance(timestamp, str) or not is_rfc3339(timestamp):
            raise ContractError(
                f"{where}: timestamp must be an RFC 3339 date-time such as "
                f"2026-02-19T12:00:00Z, got {timestamp!r}",
                index,
            )
    # Optional; their types are those of the spec's example payload.
    for key, kind, name in _OPTIONAL:
        if key in event and (not isinstance(event[key], kind) or isinstance(event[key], bool)):
            raise ContractError(
                f"{where}: {key} must be {name}, got {_json_type(event[key])}", index
            )
    return event


def parse_batch(body: bytes) -> list[Event]:
    """Decode and validate a request body; return its events or raise ContractError."""
    if not body.strip():
        raise ContractError("request body is empty")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError; deep nesting
        raise ContractError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError(f"request body must be a JSON object, got {_json_type(data)}")
    if "events" not in data:
        raise ContractError('request body has no "events"')
    events = data["events"]
    if not isinstance(events, list):
        raise ContractError(f'"events" must be an array, got {_json_type(events)}')
    if not events:
        raise ContractError('"events" is empty')
    return [validate_event(index, event) for index, event in enumerate(events)]


def _count_events(body: bytes | None) -> int:
    """Length of the body's ``events`` list when there is one, for the request log."""
    try:
        events = json.loads(body or b"")["events"]
    except (ValueError, RecursionError, TypeError, KeyError, IndexError):
        return 0
    return len(events) if isinstance(events, list) else 0


@dataclass(frozen=True)
class IngestRequest:
    """One HTTP request the server answered, whatever the outcome.

    ``connection`` numbers the TCP connections the server accepted (1, 2, ...) and
    ``peer`` is the client's (host, port): equal values on two records mean the
    client reused one kept-alive connection. ``time`` is time.monotonic() at
    arrival, for asserting retry/backoff intervals. ``events`` is the length of the
    body's ``events`` list (0 when there is none), whatever the answer. ``error`` is the reason sent
    with a non-200 answer. ``body`` is None when it exceeded ``max_body_bytes`` or
    could not be read whole (client hung up: recorded as 400, though nobody heard it).
    """

    time: float
    method: str
    path: str
    status: int
    events: int
    peer: tuple[str, int]
    connection: int
    keep_alive: bool
    headers: CIMultiDictProxy[str]
    body: bytes | None
    error: str | None


@dataclass(frozen=True)
class _Failure:
    """One queued fail_next() answer."""

    status: int
    body: str
    content_type: str
    retry_after: float | None

    def response(self) -> web.Response:
        headers = {}
        if self.retry_after is not None:
            seconds = self.retry_after
            headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
        return web.Response(
            status=self.status, text=self.body, content_type=self.content_type, headers=headers
        )


def _error(
    status: int, message: str, index: int | None = None, headers: dict[str, str] | None = None
) -> tuple[web.Response, str, list[Event]]:
    """A JSON error answer shaped like the API's: ``{"error": ..., "index": ...}``."""
    payload: dict[str, Any] = {"error": message}
    if index is not None:
        payload["index"] = index
    return web.json_response(payload, status=status, headers=headers), message, []


def _peer(transport: asyncio.BaseTransport | None) -> tuple[str, int]:
    """The client's (host, port), or ("", 0) once the connection is gone."""
    peername = transport.get_extra_info("peername") if transport is not None else None
    return (str(peername[0]), int(peername[1])) if peername else ("", 0)


class IngestServer:
    """Thread-backed stand-in for the Event Ingestion API on 127.0.0.1.

    The port is picked at the first start() and kept across stop()/start() and
    go_down()/come_up(), so an agent configured with ``url`` can ride out an outage.
    All methods are thread-safe; fault settings apply to the next request handled.
    """

    def __init__(
        self,
        api_key: str,
        *,
        host: str = "127.0.0.1",  # IPv4 only
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._check_key(api_key)
        self.host = host
        #: Bodies longer than this get 413; may be changed while running.
        self.max_body_bytes = max_body_bytes
        self._port: int | None = None
        self._cond = threading.Condition()
        self._api_key = api_key
        self._accepted: list[Event] = []
        self._requests: list[IngestRequest] = []
        self._failures: deque[_Failure] = deque()
        self._delay = 0.0
        self._predicate: EventPredicate | None = None
        self._connections: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = (
            weakref.WeakKeyDictionary()
        )
        self._connection_count = 0
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> IngestServer:
        """Start the loop thread and listen; returns once connections are accepted."""
        with self._lifecycle:
            if self._thread is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._run_loop, args=(loop,), name="IngestServer", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                self._listen()
            except BaseException:
                self._stop_loop()
                raise
        return self

    def stop(self) -> None:
        """Stop listening, cut open connections and end the thread; records are kept."""
        with self._lifecycle:
            if self._thread is None:
                return
            try:
                self._call(self._close_listener())
            finally:
                self._stop_loop()

    def __enter__(self) -> IngestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def go_down(self) -> None:
        """Stop listening and drop open connections: clients get connection refused."""
        with self._lifecycle:
            self._require_started()
            self._call(self._close_listener())

    def come_up(self) -> None:
        """Listen again on the same port after go_down(); no-op when already up."""
        with self._lifecycle:
            self._require_started()
            if self._runner is None:
                self._listen()

    @property
    def running(self) -> bool:
        """True while the server accepts connections (started and not gone down)."""
        return self._runner is not None

    @property
    def port(self) -> int:
        """TCP port, assigned at the first start()."""
        if self._port is None:
            raise RuntimeError("IngestServer has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Full endpoint URL to configure the agent with."""
        return f"http://{self.host}:{self.port}{EVENTS_PATH}"

    # -- fault injection -------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        body: str = '{"error": "service unavailable"}',
        *,
        retry_after: float | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer the next ``n`` requests, whatever they are, with ``status`` and ``body``.

        Their events are not accepted. Calls queue up: fail_next(1, 503) then
        fail_next(1, 429) answers 503 then 429. ``retry_after`` sends a Retry-After
        header in seconds; fractional values are sent as-is (e.g. "0.5"), which HTTP
        does not allow but keeps tests fast.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code, got {status}")
        if retry_after is not None and not 0 <= retry_after < math.inf:
            raise ValueError(f"retry_after must be a finite number >= 0, got {retry_after}")
        failure = _Failure(status, body, content_type, retry_after)
        with self._cond:
            self._failures.extend([failure] * n)

    def slow(self, seconds: float) -> None:
        """Hold every answer ``seconds`` after deciding it (0 disables).

        Events are recorded before the wait: a client that times out has still
        delivered its batch, as with the real API, so its retry shows as a duplicate.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._cond:
            self._delay = float(seconds)

    def reject_events(self, predicate: EventPredicate | None) -> None:
        """Answer 400 naming the first event of a valid batch that ``predicate`` flags.

        The whole batch is refused, as the API does. None clears it. The predicate runs
        on the server thread; if it raises, the request gets 500.
        """
        with self._cond:
            self._predicate = predicate

    def set_api_key(self, key: str) -> None:
        """Rotate the accepted key; requests with the old one get 401 from now on."""
        self._check_key(key)
        with self._cond:
            self._api_key = key

    # -- recorded data ---------------------------------------------------------------

    @property
    def accepted(self) -> list[Event]:
        """Snapshot of every accepted event, in arrival order."""
        with self._cond:
            return list(self._accepted)

    @property
    def requests(self) -> list[IngestRequest]:
        """Snapshot of every request answered, in order."""
        with self._cond:
            return list(self._requests)

    def clear(self) -> None:
        """Forget recorded requests and events; fault settings are kept."""
        with self._cond:
            self._accepted.clear()
            self._requests.clear()

    def wait_for_events(self, n: int = 1, timeout: float = 10.0) -> list[Event]:
        """Block until at least ``n`` events were accepted; return them all.

        Raises TimeoutError listing the requests seen, so a failing test says why.
        """
        return self._wait(lambda: self._accepted, n, timeout, "accepted events")

    def wait_for_requests(self, n: int = 1, timeout: float = 10.0) -> list[IngestRequest]:
        """Block until at least ``n`` requests were answered (any status); return them."""
        return self._wait(lambda: self._requests, n, timeout, "requests")

    def _wait(self, items: Callable[[], list[_T]], n: int, timeout: float, what: str) -> list[_T]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(items()) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(r.method, r.path, r.status, r.events, r.error) for r in self._requests]
                    raise TimeoutError(
                        f"ingest server got {len(items())} of {n} {what} within {timeout}s; "
                        f"{len(self._accepted)} events accepted; requests "
                        f"(method, path, status, events, error): {seen}"
                    )
                self._cond.wait(remaining)
            return list(items())

    # -- request handling (server thread) --------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.monotonic()
        transport = request.transport
        peer = _peer(transport)
        with self._cond:
            connection = self._connection_number(transport)
        try:
            body = await self._read_body(request)
        except (ConnectionError, HttpProcessingError) as exc:  # hung up or broken framing
            body = None
            response, error, events = _error(400, f"incomplete request body: {exc}")
        else:
            response, error, events = self._decide(request, body)
        record = IngestRequest(
            time=arrived,
            method=request.method,
            path=request.path,
            status=response.status,
            events=_count_events(body),
            peer=peer,
            connection=connection,
            keep_alive=request.keep_alive,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            error=error,
        )
        with self._cond:
            self._requests.append(record)
            self._accepted.extend(events)
            self._cond.notify_all()
            delay = self._delay
        if delay:
            await asyncio.sleep(delay)
        return response

    def _decide(
        self, request: web.BaseRequest, body: bytes | None
    ) -> tuple[web.Response, str | None, list[Event]]:
        """A queued fail_next() answer if any, else the contract's answer."""
        with self._cond:
            failure = self._failures.popleft() if self._failures else None
            api_key, predicate = self._api_key, self._predicate
        if failure is not None:
            return failure.response(), f"injected {failure.status}", []
        return self._answer(request, body, api_key, predicate)

    def _connection_number(self, transport: asyncio.BaseTransport | None) -> int:
        """Serial of the TCP connection ``transport`` belongs to (caller holds _cond)."""
        if transport is None:  # client already gone
            return 0
        if transport not in self._connections:
            self._connection_count += 1
            self._connections[transport] = self._connection_count
        return self._connections[transport]

    async def _read_body(self, request: web.BaseRequest) -> bytes | None:
        """The body, or None once it exceeds max_body_bytes (the rest is not read)."""
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        if request.headers.get("Expect", "").lower() == "100-continue":  # curl, expect100=True
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _answer(
        self,
        request: web.BaseRequest,
        body: bytes | None,
        api_key: str,
        predicate: EventPredicate | None,
    ) -> tuple[web.Response, str | None, list[Event]]:
        """Apply the contract: (response, error sent or None, events to accept)."""
        if request.path != EVENTS_PATH:
            return _error(404, f"no such endpoint: {request.path}")
        if request.method != "POST":
            return _error(405, f"method {request.method} not allowed", headers={"Allow": "POST"})
        if body is None:
            return _error(413, f"request body exceeds {self.max_body_bytes} bytes")
        key = request.headers.get(API_KEY_HEADER)
        if not key:
            return _error(401, f"missing {API_KEY_HEADER} header")
        if key != api_key:
            return _error(401, f"invalid {API_KEY_HEADER}")
        try:
            events = parse_batch(body)
        except ContractError as exc:
            return _error(400, str(exc), exc.index)
        if predicate is not None:
            for index, event in enumerate(events):
                try:
                    rejected = predicate(event)
                except Exception as exc:
                    return _error(500, f"reject_events predicate raised {exc!r}")
                if rejected:
                    return _error(400, f"events[{index}]: event rejected", index)
        return web.json_response({"status": "ok", "accepted": len(events)}), None, events

    # -- plumbing --------------------------------------------------------------------

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("api_key must be a non-empty string")

    def _require_started(self) -> None:
        if self._thread is None:
            raise RuntimeError("IngestServer is not started")

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the server loop and wait for it, at most _LIFECYCLE_TIMEOUT."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(_LIFECYCLE_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"IngestServer did not respond within {_LIFECYCLE_TIMEOUT}s"
            ) from None

    def _listen(self) -> None:
        """Bind (port 0 the first time, the same port afterwards) and serve."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port or 0))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._runner = self._call(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> web.ServerRunner:
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_GRACE)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        return runner

    async def _close_listener(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._runner = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_LIFECYCLE_TIMEOUT)
