"""A pipe content filter live: real Postfix, a filter script that re-injects with
Postfix's sendmail (as spamc does), the milter, logwatch and an ingestion server.

The hop to the filter is no delivery: the copies it re-injects through pickup (one per
recipient) carry the message's UUID to their own outcomes, each reported once.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from logwatch.relays import ContentFilters
from tests.support.agent import live_product
from tests.support.fixtures import PostfixFactory
from tests.support.postfix import PostfixInstance, ensure_traversable

pytestmark = pytest.mark.integration

KEY = "sp-pipe-key-42"
SENDER = "sender@example.com"
MILTER = "{ unix:sendpost-agent/milter.sock, default_action=accept, command_timeout=5s }"
SERVICE = "spamfilter"
SCRIPT = Path(__file__).resolve().parent / "support" / "pipefilter.sh"
REASON = 'sendpost_agent_lines_without_event_total{{reason="{}"}}'


def pipe_filter_postfix(tmp_path: Path, postfix_factory: PostfixFactory) -> PostfixInstance:
    """SpamAssassin's spamc setup: every message received over SMTP goes to the pipe
    service, one recipient per call; pickup (the re-injected copies) is not filtered."""
    tools = tmp_path / "filter"
    tools.mkdir()
    script = tools / SCRIPT.name
    shutil.copy(SCRIPT, script)
    script.chmod(0o755)
    ensure_traversable(tools)  # the filter runs as nobody
    postfix = postfix_factory(
        smtpd_milters=MILTER,
        main_cf={"content_filter": SERVICE, f"{SERVICE}_destination_recipient_limit": "1"},
        master_cf_extra=(
            f"{SERVICE} unix - n n - - pipe\n"
            f"  flags=Rq user=nobody null_sender= argv={script} ${{sender}} ${{recipient}}\n"
        ),
        service_settings={"pickup/unix/content_filter": ""},
        local_submission=True,
        start=False,
        smtp_probe=False,
    )
    postfix.queue_directory.mkdir(parents=True, exist_ok=True)
    return postfix


def test_pipe_filter_copies_report_their_outcomes_under_the_original_uuid(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    postfix = pipe_filter_postfix(tmp_path, postfix_factory)
    state = tmp_path / "state"
    filtered, dropped = str(uuid.uuid4()), str(uuid.uuid4())
    with live_product(postfix, state, KEY, "--join-wait", "5s") as (server, agent):
        two = postfix.send(
            SENDER,
            ["ok@example.com", "bounce@example.com"],
            {"X-Sendpost-Message-UUID": filtered},
            "body\n",
        )
        one = postfix.send(
            SENDER, ["drop@example.com"], {"X-Sendpost-Message-UUID": dropped}, "body\n"
        )
        for queue_id, recipient in ((two, "ok"), (two, "bounce"), (one, "drop")):
            postfix.wait_for_log(
                rf"postfix/pipe\[\d+\]: {queue_id}: to=<{recipient}@example.com>,"
                rf" relay={SERVICE}, .*status=sent \(delivered via {SERVICE} service\)"
            )
        # One copy per recipient came back through pickup, and reached its outcome.
        copies = postfix.wait_for_log(r"postfix/pickup\[\d+\]: \w+: uid=65534 ", count=2)
        assert len(copies) == 2
        postfix.wait_for_log(r"\w+: to=<ok@example.com>, relay=127.*status=sent \(250 ")
        postfix.wait_for_log(r"\w+: to=<bounce@example.com>, relay=127.*status=bounced")
        server.wait_for_events(2, timeout=30)
        deadline = time.monotonic() + 30  # the dropped copy is given up after join-wait
        given_up = REASON.format("content_filter_not_reinjected")
        while agent.metrics().get(given_up) != 1:
            assert time.monotonic() < deadline, f"no {given_up}: {agent.metrics()}"
            time.sleep(0.2)
        metrics = agent.metrics()
    assert agent.proc is not None and agent.proc.returncode == 0  # stopped, events all sent
    assert metrics[REASON.format("content_filter_pipe_hop")] == 2
    got = sorted((e["message_id"], e["event_type"], e["recipient"]) for e in server.accepted)
    assert got == [
        (filtered, "bounced", "bounce@example.com"),
        (filtered, "delivered", "ok@example.com"),
    ]
    bounce = next(e for e in server.accepted if e["event_type"] == "bounced")
    assert bounce["smtp_code"] == 550 and "User unknown" in str(bounce["smtp_description"])
    assert "no copy with its Message-ID" in agent.log() and dropped in agent.log()


def test_pipe_filters_are_read_from_postfixs_configuration(tmp_path: Path) -> None:
    """SpamAssassin's wiki sets the filter on the smtp service (`-o content_filter=`);
    a pipe service that is no content filter (maildrop) is a delivery agent."""
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n")
    (tmp_path / "master.cf").write_text(
        "smtp inet n - n - - smtpd\n  -o content_filter=spamfilter:dummy\n"
        "spamfilter unix - n n - - pipe\n  flags=Rq user=nobody argv=/usr/bin/spamc\n"
        "maildrop unix - n n - - pipe\n  flags=DRXhu user=vmail argv=/usr/bin/maildrop\n"
    )
    assert ContentFilters.from_postfix(tmp_path) == ContentFilters(pipes=frozenset({"spamfilter"}))
