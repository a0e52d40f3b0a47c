"""The milter inside a real, private Postfix: rows match Postfix's queue IDs, mail always flows.

Postfix is configured with the exact `smtpd_milters` value that postfix-conf ships, so
the relative socket path and the non-delaying settings are tested as an operator gets them.
"""

from __future__ import annotations

import re
import signal
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sendpost_agent.queuemap import HeaderState
from tests.support.fixtures import PostfixFactory
from tests.support.milter import MilterProcess
from tests.support.postfix import PostfixInstance, build_message, free_port
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SENDER = "sender@example.com"
UUID_A = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
UUID_B = "9b2d6c1e-0a57-4c3e-8f1a-6f6b0d7c2e11"


def shipped_smtpd_milters() -> str:
    text = (ROOT / "postfix-conf" / "main.cf.snippet").read_text()
    match = re.search(r"^smtpd_milters = (.+)$", text, re.MULTILINE)
    assert match, "postfix-conf/main.cf.snippet has no smtpd_milters line"
    return match.group(1)


@dataclass
class Setup:
    postfix: PostfixInstance
    milter: MilterProcess
    sink: Sink


@pytest.fixture(params=["unix", "inet"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, sink: Sink, postfix_factory: PostfixFactory
) -> Iterator[Setup]:
    milters = shipped_smtpd_milters()
    postfix = postfix_factory(start=False, smtp_probe=False)
    if request.param == "unix":
        # As shipped: main.cf names the socket relative to the queue directory.
        socket = f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock"
        postfix.queue_directory.mkdir(parents=True, exist_ok=True)
    else:
        port = free_port()
        socket = f"inet:127.0.0.1:{port}"
        milters = milters.replace("unix:sendpost-agent/milter.sock", socket)
    postfix.postconf(smtpd_milters=milters)
    with MilterProcess(tmp_path / "state", socket) as milter:
        postfix.start()
        yield Setup(postfix, milter, sink)


def delivered(postfix: PostfixInstance, queue_id: str) -> None:
    postfix.wait_for_log(rf" {queue_id}: to=<[^>]+>, .*status=sent ", timeout=30)


def send_three_on_one_connection(postfix: PostfixInstance) -> list[str]:
    """UUID_A, no header, UUID_B over one SMTP connection; their queue IDs in order."""
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port) as smtp:
        for i, header in enumerate([UUID_A, None, UUID_B]):
            headers = {"X-Sendpost-Message-UUID": header} if header else {"Subject": f"m{i}"}
            raw = build_message(SENDER, ["ok@example.com"], headers, "x\n")
            smtp.sendmail(SENDER, ["ok@example.com"], raw)
    lines = postfix.wait_for_log(r"postfix/cleanup\[\d+\]: (\w+): message-id=", count=3)
    return [
        re.search(r": (\w+): message-id=", line).group(1)  # type: ignore[union-attr]
        for line in lines
    ]


def test_map_rows_match_the_queue_ids_postfix_reports(setup: Setup) -> None:
    cases = [
        ({"X-Sendpost-Message-UUID": UUID_A}, UUID_A, HeaderState.PRESENT),
        ({"X-Sendpost-Message-UUID": f"<{UUID_B.upper()}>"}, UUID_B, HeaderState.PRESENT),
        ({"Subject": "no header"}, None, HeaderState.MISSING),
        ({"X-Sendpost-Message-UUID": "garbage"}, None, HeaderState.INVALID),
        ({"X-Sendpost-Message-UUID": "Z" * 60_000}, None, HeaderState.INVALID),
        (
            [("X-Sendpost-Message-UUID", UUID_A), ("X-Sendpost-Message-UUID", UUID_B)],
            None,
            HeaderState.REPEATED,
        ),
    ]
    sent = []
    for headers, expected_uuid, state in cases:
        queue_id = setup.postfix.send(SENDER, ["ok@example.com"], headers, "body\n")
        sent.append((queue_id, expected_uuid, state))
    for queue_id, expected_uuid, state in sent:
        # Postfix's own log names the same queue ID the milter recorded.
        setup.postfix.wait_for_log(rf"postfix/cleanup\[\d+\]: {queue_id}: message-id=")
        delivered(setup.postfix, queue_id)
        entry = setup.milter.entry(queue_id)
        assert entry is not None, f"no map row for {queue_id}"
        assert (entry.uuid, entry.header) == (expected_uuid, state)
    # The milter changes nothing: the header arrives at the next hop as sent.
    # (Postfix delivers in parallel: the sink's order is not the sending order.)
    arrived = {
        m.parsed()["X-Sendpost-Message-UUID"] for m in setup.sink.wait_for_messages(len(cases))
    }
    assert {UUID_A, f"<{UUID_B.upper()}>", "garbage"} <= arrived
    metrics = setup.milter.metrics()
    assert metrics["sendpost_milter_messages_total"] == len(cases)
    assert metrics['sendpost_milter_header_total{state="present"}'] == 2
    assert metrics['sendpost_milter_header_total{state="invalid"}'] == 2


def test_one_connection_many_messages_each_gets_its_own_row(setup: Setup) -> None:
    ids = send_three_on_one_connection(setup.postfix)
    assert [setup.milter.entry(q).uuid for q in ids] == [UUID_A, None, UUID_B]  # type: ignore[union-attr]


@pytest.mark.parametrize("protocol", ["2", "4"])
def test_older_milter_protocols_record_every_message(
    tmp_path: Path, postfix_factory: PostfixFactory, protocol: str
) -> None:
    """An operator may pin an old milter protocol for another milter. Version 2 has no
    DATA step and neither can take headers without a reply: libmilter then answers each
    header itself, and every message still gets its own row."""
    postfix = postfix_factory(start=False, smtp_probe=False)
    postfix.queue_directory.mkdir(parents=True, exist_ok=True)
    milters = shipped_smtpd_milters().replace("milter.sock,", f"milter.sock, protocol={protocol},")
    assert f"protocol={protocol}" in milters
    postfix.postconf(smtpd_milters=milters)
    socket = f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock"
    with MilterProcess(tmp_path / "state", socket) as milter:
        postfix.start()
        ids = send_three_on_one_connection(postfix)
        assert [milter.entry(q).uuid for q in ids] == [UUID_A, None, UUID_B]  # type: ignore[union-attr]
        for queue_id in ids:
            delivered(postfix, queue_id)
        assert not [line for line in postfix.maillog_lines() if "warning:" in line], (
            postfix.maillog_tail()
        )
        assert "internal error" not in milter.log()


@pytest.mark.parametrize("failure", ["killed", "hung"])
def test_mail_flows_when_the_milter_is_down_or_hung(setup: Setup, failure: str) -> None:
    assert setup.milter.proc is not None
    if failure == "killed":
        setup.milter.kill()
    else:
        setup.milter.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        queue_id = setup.postfix.send(
            SENDER, ["ok@example.com"], {"X-Sendpost-Message-UUID": UUID_A}, "body\n"
        )
        accepted_after = time.monotonic() - started
        delivered(setup.postfix, queue_id)
        setup.postfix.wait_for_log(
            r"warning: connect to Milter service"
            if failure == "killed"
            else r"warning: milter .*: read error in initial handshake"
        )
        # Killed: refused at once. Hung: Postfix gives up after the shipped timeouts.
        assert accepted_after < (2 if failure == "killed" else 25)
    finally:
        if failure == "hung":
            setup.milter.proc.send_signal(signal.SIGCONT)
            setup.milter.kill()
    assert setup.milter.entry(queue_id) is None


def test_restarted_milter_records_again(setup: Setup) -> None:
    setup.milter.stop()
    before = setup.postfix.send(
        SENDER, ["ok@example.com"], {"X-Sendpost-Message-UUID": UUID_A}, "1\n"
    )
    delivered(setup.postfix, before)
    setup.milter.start()
    after = setup.postfix.send(
        SENDER, ["ok@example.com"], {"X-Sendpost-Message-UUID": UUID_B}, "2\n"
    )
    delivered(setup.postfix, after)
    assert setup.milter.entry(before) is None
    assert setup.milter.entry(after).uuid == UUID_B  # type: ignore[union-attr]
