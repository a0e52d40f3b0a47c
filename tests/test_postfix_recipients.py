"""The recipient an event names, through real Postfix rewriting: live, at the API.

Postfix logs ``to=<final>, orig_to=<original>`` when aliases or virtual_alias_maps
rewrote a recipient, and delivers to recipients it adds itself (always_bcc). The events
must name the address SendPost gave (RCPT TO, recorded by the milter), once per delivery,
and none for the added ones (counted in /metrics).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.support.agent import MILTER, live_product
from tests.support.fixtures import PostfixFactory

pytestmark = pytest.mark.integration

KEY = "sp-recipients-key"
SENDER = "sender@example.com"
ADDED = 'sendpost_agent_lines_without_event_total{reason="unmatched:added_recipient"}'

# RCPT TO -> the events SendPost must get for that message
EXPECTED: dict[tuple[str, ...], set[tuple[str, str]]] = {
    # alias_maps: one target that is no local user, then one delivered and one bounced
    ("ghost@local.test",): {("bounced", "ghost@local.test")},
    ("team@local.test",): {("delivered", "team@local.test"), ("bounced", "team@local.test")},
    # virtual_alias_maps: one target delivered, one bounced, several targets
    ("sales@virt.test",): {("delivered", "sales@virt.test")},
    ("gone@virt.test",): {("bounced", "gone@virt.test")},
    ("All@Virt.test", "ok-direct@example.com"): {
        ("delivered", "All@Virt.test"),
        ("bounced", "All@Virt.test"),
        ("delivered", "ok-direct@example.com"),
    },
}


def test_events_name_the_envelope_recipient_through_aliases_virtual_and_always_bcc(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    postfix = postfix_factory(
        smtpd_milters=MILTER,
        start=False,
        smtp_probe=False,
        main_cf={
            "myorigin": "local.test",  # alias targets are local users
            "virtual_alias_domains": "virt.test",
            "always_bcc": "archive@example.com",
        },
    )
    postfix.local_delivery("local.test", {"ghost": "nosuchuser", "team": "postfix, nosuchuser2"})
    virtual = postfix.lookup_table(
        "virtual",
        {
            "sales@virt.test": "ok-sales@example.com",
            "gone@virt.test": "bounce-gone@example.com",
            "all@virt.test": "ok-all@example.com, bounce-all@example.com",
        },
    )
    postfix.postconf(virtual_alias_maps=virtual)
    expected: set[tuple[str, str, str]] = set()
    with live_product(postfix, tmp_path / "state", KEY) as (server, agent):
        for recipients, outcomes in EXPECTED.items():
            message_uuid = str(uuid.uuid4())
            queue_id = postfix.send(
                SENDER, list(recipients), {"X-Sendpost-Message-UUID": message_uuid}, "body\n"
            )
            expected |= {(message_uuid, kind, rcpt) for kind, rcpt in outcomes}
            # every delivery, the bcc's included, is logged before the next message
            postfix.wait_for_log(
                rf"{queue_id}: to=<.*status=(sent|bounced)", count=len(outcomes) + 1
            )
        server.wait_for_events(len(expected), timeout=30)
        time.sleep(2)  # an extra event would come within this
        added = agent.metrics().get(ADDED)
        agent.stop()
    got = [(e["message_id"], e["event_type"], e["recipient"]) for e in server.accepted]
    assert sorted(got) == sorted(expected), postfix.maillog_tail(60)
    assert added == len(EXPECTED)  # one always_bcc delivery per message, no event for it
