"""Tests for tests.support.ingest: the stand-in must enforce the API contract exactly and
inject each fault faithfully, or agent tests built on it would prove nothing."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.support.ingest import (
    API_KEY_HEADER,
    EVENTS_PATH,
    IngestServer,
    is_rfc3339,
)

pytestmark = pytest.mark.integration

KEY = "test-ingest-key"
MAX_BODY = 4096


@pytest.fixture
def server() -> Iterator[IngestServer]:
    """A running server with a small body limit, so 413 is cheap to trigger."""
    with IngestServer(KEY, max_body_bytes=MAX_BODY) as s:
        yield s


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    server: IngestServer,
    body: bytes | Iterable[bytes] | None,
    *,
    key: str | None = KEY,
    method: str = "POST",
    path: str = EVENTS_PATH,
    chunked: bool = False,
    timeout: float = 5.0,
) -> Reply:
    """One request on a fresh connection (stdlib, so the client adds no behaviour)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers[API_KEY_HEADER] = key
        conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def event(**fields: Any) -> dict[str, Any]:
    """A fully populated valid event; keyword arguments override or add fields."""
    base: dict[str, Any] = {
        "message_id": str(uuid.uuid4()),
        "event_type": "delivered",
        "timestamp": "2026-02-19T12:00:00Z",
        "smtp_code": 250,
        "smtp_description": "250 2.0.0 OK",
        "recipient": "user@example.com",
    }
    base.update(fields)
    return base


def batch(*events: Any) -> bytes:
    return json.dumps({"events": list(events)}).encode()


# -- contract ------------------------------------------------------------------------


def test_valid_batch_is_accepted_and_recorded(server: IngestServer) -> None:
    events = [event(event_type=t) for t in ("delivered", "bounced", "deferred", "soft_bounced")]
    reply = send(server, batch(*events))

    assert reply.status == 200
    assert reply.json() == {"status": "ok", "accepted": 4}
    assert server.wait_for_events(4, timeout=1) == events
    [record] = server.requests
    assert (record.method, record.path, record.status, record.events) == (
        "POST",
        EVENTS_PATH,
        200,
        4,
    )
    assert record.error is None
    assert record.headers[API_KEY_HEADER.lower()] == KEY  # case-insensitive lookup
    assert record.peer[0] == "127.0.0.1"
    assert record.body == batch(*events)
    assert server.url == f"http://127.0.0.1:{server.port}{EVENTS_PATH}"


def test_expect_100_continue_is_honoured(server: IngestServer) -> None:
    async def post() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                server.url, data=batch(event()), headers={API_KEY_HEADER: KEY}, expect100=True
            ) as r,
        ):
            return r.status

    assert asyncio.run(post()) == 200
    assert server.requests[0].headers["Expect"] == "100-continue"


def test_only_message_id_and_event_type_are_required(server: IngestServer) -> None:
    minimal = {"message_id": "m-1", "event_type": "deferred"}
    assert send(server, batch(minimal)).status == 200
    assert server.accepted == [minimal]


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-02-19T12:00:00Z",
        "2026-02-19T12:00:00.123Z",
        "2026-02-19T12:00:00.123456789+05:30",
        "2026-02-19T12:00:00-00:00",
        "2024-02-29T23:59:59+23:59",
    ],
)
def test_rfc3339_timestamps_are_accepted(server: IngestServer, timestamp: str) -> None:
    assert send(server, batch(event(timestamp=timestamp))).status == 200


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-02-19",  # no time
        "2026-02-19T12:00:00",  # no offset
        "2026-02-19 12:00:00Z",  # space separator
        "2026-02-19T12:00Z",  # no seconds
        "20260219T120000Z",  # basic ISO 8601, not RFC 3339
        "2026-13-01T12:00:00Z",
        "2026-02-30T12:00:00Z",
        "2026-02-19T24:00:00Z",
        "2026-02-19T12:00:00+24:00",
        "2026-02-19T12:00:00+0530",
        "2026-02-19T12:00:00.Z",
        "2026-02-19T12:00:00Z\n",
        "Thu, 19 Feb 2026 12:00:00 GMT",
        "٢٠٢٦-02-19T12:00:00Z",  # non-ASCII digits
    ],
)
def test_is_rfc3339_rejects(timestamp: str) -> None:
    assert not is_rfc3339(timestamp)


def test_set_api_key_rotates_the_accepted_key(server: IngestServer) -> None:
    server.set_api_key("new-key")
    assert send(server, batch(event()), key=KEY).status == 401
    assert send(server, batch(event()), key="new-key").status == 200


@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "missing"), ("", "missing"), ("wrong", "invalid"), (KEY + "x", "invalid")],
)
def test_missing_or_wrong_key_is_401(server: IngestServer, key: str | None, message: str) -> None:
    reply = send(server, batch(event()), key=key)
    assert reply.status == 401
    assert message in reply.json()["error"]
    assert server.accepted == []
    assert server.requests[0].status == 401


@pytest.mark.parametrize(
    ("body", "index", "fragment"),
    [
        (b"", None, "empty"),
        (b"  \n", None, "empty"),
        (b"{not json", None, "not valid JSON"),
        (b'{"events": [NaN]}', None, "not valid JSON"),
        (b'\xff{"events": []}', None, "not valid JSON"),
        (b'{"events": ' + b"[" * 3000, None, "not valid JSON"),  # deep nesting
        (b"[]", None, "must be a JSON object"),
        (b"{}", None, 'no "events"'),
        (b'{"events": null}', None, "must be an array"),
        (b'{"events": {"message_id": "m"}}', None, "must be an array"),
        (b'{"events": []}', None, "empty"),
        (batch(event(), "not an object"), 1, "must be a JSON object"),
        (batch({"event_type": "delivered"}), 0, "message_id is required"),
        (batch(event(message_id="")), 0, "message_id must be a non-empty string"),
        (batch(event(message_id="  ")), 0, "message_id must be a non-empty string"),
        (batch(event(message_id=42)), 0, "message_id must be a non-empty string"),
        (batch(event(), event(), {"message_id": "m"}), 2, "event_type is required"),
        (batch(event(event_type="opened")), 0, "event_type must be one of"),
        (batch(event(event_type="Delivered")), 0, "event_type must be one of"),
        (batch(event(event_type=["delivered"])), 0, "event_type must be one of"),
        (batch(event(timestamp="2026-02-19T12:00:00")), 0, "RFC 3339"),
        (batch(event(timestamp=1771502400)), 0, "RFC 3339"),
        (batch(event(timestamp=None)), 0, "RFC 3339"),
        (batch(event(smtp_code="250")), 0, "smtp_code must be an integer, got string"),
        (batch(event(smtp_code=True)), 0, "smtp_code must be an integer, got boolean"),
        (batch(event(smtp_description=None)), 0, "smtp_description must be a string"),
        (batch(event(recipient=["a@b.c"])), 0, "recipient must be a string, got array"),
    ],
)
def test_contract_violations_are_400_naming_the_event(
    server: IngestServer, body: bytes, index: int | None, fragment: str
) -> None:
    reply = send(server, body)

    assert reply.status == 400
    error = reply.json()
    assert fragment in error["error"]
    assert error.get("index") == index
    if index is not None:
        assert error["error"].startswith(f"events[{index}]: ")
    assert server.accepted == []
    assert server.requests[0].error == error["error"]


def test_body_over_limit_is_413(server: IngestServer) -> None:
    big = batch(event(smtp_description="x" * MAX_BODY))
    assert send(server, big).status == 413
    chunks = [big[i : i + 1000] for i in range(0, len(big), 1000)]
    assert send(server, chunks, chunked=True).status == 413  # no Content-Length to trust
    assert [r.body for r in server.requests] == [None, None]
    assert server.accepted == []
    assert send(server, batch(event())).status == 200  # the server is fine afterwards


def test_wrong_path_is_404_and_wrong_method_405(server: IngestServer) -> None:
    assert send(server, batch(event()), path="/api/v1/events").status == 404
    reply = send(server, None, method="GET")
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"
    assert [r.status for r in server.requests] == [404, 405]


# -- faults --------------------------------------------------------------------------


def test_fail_next_answers_n_requests_then_recovers(server: IngestServer) -> None:
    server.fail_next(2, 503, body='{"error": "maintenance"}', retry_after=1.5)
    server.fail_next(1, 429, retry_after=2)

    replies = [send(server, batch(event())) for _ in range(4)]

    assert [r.status for r in replies] == [503, 503, 429, 200]
    assert [r.headers["Retry-After"] for r in replies] == ["1.5", "1.5", "2", None]
    assert replies[0].json() == {"error": "maintenance"}
    assert [(r.status, r.events) for r in server.requests] == [
        (503, 1),
        (503, 1),
        (429, 1),
        (200, 1),
    ]
    assert len(server.accepted) == 1  # failed attempts recorded no events
    times = [r.time for r in server.requests]
    assert times == sorted(times) and times[-1] - times[0] < 5  # monotonic seconds


def test_fail_next_validates_its_arguments(server: IngestServer) -> None:
    with pytest.raises(ValueError):
        server.fail_next(0)
    with pytest.raises(ValueError):
        server.fail_next(1, status=200)


def test_go_down_refuses_connections_and_come_up_reuses_the_port(server: IngestServer) -> None:
    port = server.port
    server.go_down()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        send(server, batch(event()))

    server.come_up()
    assert server.port == port
    assert send(server, batch(event())).status == 200

    server.stop()  # a full restart keeps the port too
    server.start()
    assert server.port == port
    assert send(server, batch(event())).status == 200


def test_go_down_drops_kept_alive_connections(server: IngestServer) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request("POST", EVENTS_PATH, body=batch(event()), headers={API_KEY_HEADER: KEY})
        assert conn.getresponse().read()
        server.go_down()
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            conn.request("POST", EVENTS_PATH, body=batch(event()), headers={API_KEY_HEADER: KEY})
            conn.getresponse()
    finally:
        conn.close()


def test_slow_delays_answers_but_events_are_recorded_first(server: IngestServer) -> None:
    async def post_with_timeout(timeout: float) -> None:
        # sock_read: the timer starts once the batch is sent, so a busy machine cannot time
        # the client out before the server has the request.
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=timeout)) as session,
            session.post(server.url, data=batch(event()), headers={API_KEY_HEADER: KEY}) as r,
        ):
            assert r.status == 200

    server.slow(0.4)
    started = time.monotonic()
    assert send(server, batch(event())).status == 200
    assert time.monotonic() - started >= 0.4

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(post_with_timeout(0.1))
    assert len(server.wait_for_events(2, timeout=5)) == 2  # the timed-out batch landed

    server.slow(0)
    started = time.monotonic()
    asyncio.run(post_with_timeout(1.0))
    assert time.monotonic() - started < 0.4


def test_reject_events_refuses_the_batch_naming_the_index(server: IngestServer) -> None:
    server.reject_events(lambda e: e["message_id"] == "poison")
    reply = send(server, batch(event(), event(message_id="poison"), event()))
    assert reply.status == 400
    assert reply.json() == {"error": "events[1]: event rejected", "index": 1}
    assert server.accepted == []

    server.reject_events(None)
    assert send(server, batch(event(message_id="poison"))).status == 200


def test_a_raising_predicate_gives_500_not_a_dead_server(server: IngestServer) -> None:
    server.reject_events(lambda e: e["no-such-key"])
    reply = send(server, batch(event()))
    assert reply.status == 500
    assert "KeyError" in reply.json()["error"]
    server.reject_events(None)
    assert send(server, batch(event())).status == 200


# -- recording -----------------------------------------------------------------------


def test_keep_alive_reuse_is_visible_in_requests(server: IngestServer) -> None:
    async def post(times: int) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(times):
                async with session.post(
                    server.url, data=batch(event()), headers={API_KEY_HEADER: KEY}
                ) as r:
                    assert r.status == 200

    asyncio.run(post(3))
    asyncio.run(post(1))

    first, second, third, other = server.requests
    assert first.keep_alive
    assert first.connection == second.connection == third.connection
    assert first.peer == second.peer == third.peer
    assert other.connection != first.connection
    assert other.peer != first.peer


def test_wait_for_events_times_out_with_what_it_saw(server: IngestServer) -> None:
    send(server, batch(event(event_type="nope")))
    with pytest.raises(TimeoutError, match=r"0 of 1 accepted events.*400.*event_type must be"):
        server.wait_for_events(1, timeout=0.05)


def test_clear_forgets_records_but_keeps_faults(server: IngestServer) -> None:
    send(server, batch(event()))
    server.fail_next(1)
    server.clear()
    assert server.accepted == [] and server.requests == []
    assert send(server, batch(event())).status == 503


# -- robustness ----------------------------------------------------------------------


def test_garbage_and_abandoned_requests_do_not_break_the_server(server: IngestServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"\x00\x01\x02 GARBAGE \xff\r\n\r\n")
        assert b"400" in sock.recv(1024).split(b"\r\n", 1)[0]
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(
            f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: x\r\n{API_KEY_HEADER}: {KEY}\r\n"
            'Content-Length: 1000\r\n\r\n{"events": ['.encode()
        )  # then hang up mid-body
    with socket.create_connection((server.host, server.port), timeout=5):
        pass  # connect and leave

    [abandoned] = server.wait_for_requests(1, timeout=2)
    assert (abandoned.status, abandoned.body) == (400, None)
    assert "incomplete request body" in (abandoned.error or "")
    assert send(server, batch(event())).status == 200
    assert len(server.requests) == 2  # aiohttp answered the garbage itself, unrecorded


def test_stop_does_not_hang_on_a_slow_request_in_flight(server: IngestServer) -> None:
    server.slow(30)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            send(server, batch(event()), timeout=10)
        except (ConnectionError, http.client.HTTPException) as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    server.wait_for_requests(1, timeout=2)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    thread.join(5)
    assert not thread.is_alive()
    assert errors  # the client saw the connection drop, not a late answer
