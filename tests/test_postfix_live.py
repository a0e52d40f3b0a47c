"""The whole product live: real Postfix, the milter, logwatch and an ingestion server.

Mail goes in over SMTP; the events come out at the API. `postfix logrotate` runs in the
middle, once while logwatch runs and once while it is stopped, as on a real server.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.support.agent import MILTER, live_product
from tests.support.fixtures import PostfixFactory

pytestmark = pytest.mark.integration

KEY = "sp-live-key-42"
SENDER = "sender@example.com"


def test_mail_in_events_out_across_postfix_logrotate(
    tmp_path: Path, postfix_factory: PostfixFactory
) -> None:
    postfix = postfix_factory(smtpd_milters=MILTER, start=False, smtp_probe=False)
    state = tmp_path / "state"
    expected: set[tuple[str, str, str]] = set()

    def send(i: int) -> None:
        message_uuid = str(uuid.uuid4())
        queue_id = postfix.send(
            SENDER,
            [f"ok{i}@example.com", f"bounce{i}@example.com"],
            {"X-Sendpost-Message-UUID": message_uuid},
            "body\n",
        )
        postfix.wait_for_log(rf"{queue_id}: to=<bounce{i}@example.com>, .*status=bounced")
        postfix.wait_for_log(rf"{queue_id}: to=<ok{i}@example.com>, .*status=sent")
        expected.update(
            {
                (message_uuid, "delivered", f"ok{i}@example.com"),
                (message_uuid, "bounced", f"bounce{i}@example.com"),
            }
        )

    with live_product(postfix, state, KEY) as (server, agent):
        send(1)
        postfix.logrotate()  # while running: the old file is finished, the new one followed
        send(2)
        server.wait_for_events(4, timeout=20)
        assert agent.stop() == 0
        send(3)  # logwatch is down
        postfix.logrotate()  # ... and the log rotates under it
        send(4)
        agent.start()
        server.wait_for_events(len(expected), timeout=30)
        time.sleep(1)
        agent.stop()
    got = [(e["message_id"], e["event_type"], e["recipient"]) for e in server.accepted]
    assert sorted(got) == sorted(expected)  # all of them, each once
    rotated = list(postfix.maillog.parent.glob(postfix.maillog.name + ".*"))
    assert len(rotated) == 2, rotated
