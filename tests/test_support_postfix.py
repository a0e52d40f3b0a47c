"""Proves the Postfix test harness: real Postfix, real outcomes, real log lines."""

from __future__ import annotations

import re
import socket

import pytest

from tests.support.fixtures import PostfixFactory
from tests.support.postfix import process_group_members
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

SENDER = "sender@example.com"


def test_sent_bounced_deferred_and_swaks(sink: Sink, postfix_factory: PostfixFactory) -> None:
    pf = postfix_factory()

    qid_ok = pf.send(SENDER, "ok@example.com", {"Subject": "ok", "X-Test": "one"}, "hello\n")
    qid_mixed = pf.send(
        SENDER,
        ["bounce@example.com", "full@example.com", "defer@example.com"],
        [("Subject", "mixed")],
        "body\n",
    )
    assert qid_ok != qid_mixed

    relay = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}"
    pf.wait_for_log(
        rf"postfix/smtp\[\d+\]: {qid_ok}: to=<ok@example\.com>, {relay}, .*"
        r"dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: sink accepted\)$"
    )
    pf.wait_for_log(rf"{qid_mixed}: to=<bounce@example\.com>, .*dsn=5\.1\.1, status=bounced ")
    pf.wait_for_log(rf"{qid_mixed}: to=<full@example\.com>, .*dsn=5\.2\.2, status=bounced ")
    pf.wait_for_log(rf"{qid_mixed}: to=<defer@example\.com>, .*dsn=4\.2\.1, status=deferred ")

    (delivered,) = sink.messages_to("ok@example.com")
    assert delivered.mail_from == SENDER
    assert delivered.parsed()["X-Test"] == "one"

    # Postfix's non-delivery report is a new message with its own queue ID.
    (ndr_line,) = pf.wait_for_log(rf"{qid_mixed}: sender non-delivery notification: ")
    ndr_qid = ndr_line.rsplit(" ", 1)[1]
    pf.wait_for_log(rf"{ndr_qid}: to=<{SENDER}>, .*status=sent ")
    assert any(m.mail_from == "" for m in sink.messages_to(SENDER))

    qid_swaks = pf.swaks(
        "--from", SENDER, "--to", "ok-swaks@example.com", "--header", "Subject: via swaks"
    )
    pf.wait_for_log(rf"{qid_swaks}: to=<ok-swaks@example\.com>, .*status=sent ")
    assert sink.messages_to("ok-swaks@example.com")


def test_two_instances_at_once_then_clean_stop(
    sink: Sink,
    postfix_factory: PostfixFactory,
) -> None:
    first = postfix_factory(name="first")
    second = postfix_factory(name="second")
    assert first.smtp_port != second.smtp_port

    qid_first = first.send(SENDER, "ok1@example.com", {"Subject": "1"}, "x")
    qid_second = second.send(SENDER, "ok2@example.com", {"Subject": "2"}, "y")
    first.wait_for_log(rf"{qid_first}: to=<ok1@example\.com>, .*status=sent ")
    second.wait_for_log(rf"{qid_second}: to=<ok2@example\.com>, .*status=sent ")
    assert not any(re.search(rf"\b{qid_second}\b", ln) for ln in first.maillog_lines())
    sink.wait_for_messages(2)

    pgid = first.master_pid
    assert pgid is not None and first.pids()
    first.stop()
    assert process_group_members(pgid) == []
    with socket.socket() as s:  # its listener is gone too (TIME_WAIT sockets may remain)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", first.smtp_port))
        s.listen()
    assert second.running

    # A later instance starts fine after one was stopped.
    third = postfix_factory(name="third")
    qid_third = third.send(SENDER, "ok3@example.com", {"Subject": "3"}, "z")
    third.wait_for_log(rf"{qid_third}: to=<ok3@example\.com>, .*status=sent ")
