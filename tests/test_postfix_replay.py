"""Real Postfix + the real milter + `sendpost-agent replay`: the events an operator gets.

Each test sends mail through a private Postfix whose milter records UUIDs, lets Postfix
deliver, bounce, defer and expire it against the sink, then replays the maillog with
the CLI and compares the events per message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.contentfilter import ContentFilter
from tests.support.fixtures import PostfixFactory
from tests.support.milter import MilterProcess
from tests.support.postfix import PostfixInstance, free_port
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

SENDER = "sender@example.com"
MILTER = "{ unix:sendpost-agent/milter.sock, default_action=accept, command_timeout=5s }"


@dataclass
class Site:
    postfix: PostfixInstance
    milter: MilterProcess
    state_dir: Path

    def send(self, recipients: list[str], with_uuid: bool = True) -> tuple[str, str]:
        """Returns (queue ID, UUID)."""
        message_uuid = str(uuid.uuid4())
        headers = {"X-Sendpost-Message-UUID": message_uuid} if with_uuid else {}
        return self.postfix.send(SENDER, recipients, headers, "body\n"), message_uuid

    def replay(self) -> tuple[list[dict[str, object]], str]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sendpost_agent",
                "replay",
                str(self.postfix.maillog),
                "--state-dir",
                str(self.state_dir),
                "--postfix-config-dir",
                str(self.postfix.config_dir),
                "--log-timezone",
                "UTC",
                "--join-wait",
                "5s",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/sbin:/usr/bin:/bin", "SENDPOST_CONFIG": "/dev/null"},
        )
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def outcomes(events: list[dict[str, object]], message_uuid: str) -> list[tuple[object, object]]:
    return [(e["event_type"], e["recipient"]) for e in events if e["message_id"] == message_uuid]


SiteFactory = Callable[..., Site]


@pytest.fixture
def site(tmp_path: Path, postfix_factory: PostfixFactory) -> Iterator[SiteFactory]:
    milters: list[MilterProcess] = []

    def make(
        main_cf: dict[str, str] | None = None,
        master_cf_extra: str = "",
        name: str = "pf",
        virtual: dict[str, str] | None = None,
    ) -> Site:
        postfix = postfix_factory(
            smtpd_milters=MILTER,
            main_cf=main_cf,
            master_cf_extra=master_cf_extra,
            name=name,
            start=False,
            smtp_probe=False,
        )
        if virtual:
            postfix.postconf(virtual_alias_maps=postfix.lookup_table("virtual", virtual))
        postfix.queue_directory.mkdir(parents=True, exist_ok=True)
        state = tmp_path / f"{name}-state"
        milter = MilterProcess(
            state, f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock"
        ).start()
        milters.append(milter)
        postfix.start()
        return Site(postfix, milter, state)

    yield make
    for milter in milters:
        if milter.proc is not None and milter.proc.poll() is None:
            milter.stop()


def test_delivered_bounced_soft_bounced_deferred_expired_mixed(site: SiteFactory) -> None:
    s = site()
    _, delivered = s.send(["ok1@example.com"])
    _, hard = s.send(["bounce1@example.com"])
    _, soft = s.send(["full1@example.com"])
    mixed_id, mixed = s.send(
        ["ok2@example.com", "bounce2@example.com", "full2@example.com", "defer2@example.com"]
    )
    expiring_id, expiring = s.send(["defer3@example.com"])
    _, no_header = s.send(["ok3@example.com"], with_uuid=False)
    for queue_id in (mixed_id, expiring_id):
        s.postfix.wait_for_log(rf"{queue_id}: from=<{SENDER}>, status=expired", timeout=90)

    events, summary = s.replay()
    assert outcomes(events, delivered) == [("delivered", "ok1@example.com")]
    assert outcomes(events, hard) == [("bounced", "bounce1@example.com")]
    assert outcomes(events, soft) == [("soft_bounced", "full1@example.com")]
    mixed_events = outcomes(events, mixed)
    assert sorted(mixed_events[:4]) == sorted(
        [
            ("delivered", "ok2@example.com"),
            ("bounced", "bounce2@example.com"),
            ("soft_bounced", "full2@example.com"),
            ("deferred", "defer2@example.com"),
        ]
    )
    assert set(mixed_events[4:-1]) == {("deferred", "defer2@example.com")}
    assert mixed_events[-1] == ("soft_bounced", "defer2@example.com")
    expiring_events = outcomes(events, expiring)
    assert len(expiring_events) >= 3  # first attempt, retries, expiry
    assert set(expiring_events[:-1]) == {("deferred", "defer3@example.com")}
    assert expiring_events[-1] == ("soft_bounced", "defer3@example.com")
    assert outcomes(events, no_header) == []
    assert "unmatched:header_missing=1" in summary
    assert "unmatched:postfix_notification=" in summary  # NDRs for the bounces, no events

    hard_event = next(e for e in events if e["message_id"] == hard)
    assert hard_event["smtp_code"] == 550
    assert "User unknown" in str(hard_event["smtp_description"])
    assert str(hard_event["timestamp"]).endswith("+00:00")
    expired_event = next(
        e for e in events if e["message_id"] == expiring and e["event_type"] == "soft_bounced"
    )
    assert "expired" in str(expired_event["smtp_description"])


def test_deferred_then_delivered(site: SiteFactory, sink: Sink) -> None:
    s = site()
    sink.stop()  # the relay is down
    queue_id, message_uuid = s.send(["ok@example.com"])
    s.postfix.wait_for_log(rf"{queue_id}: to=<ok@example.com>, .*status=deferred")
    sink.start()
    s.postfix.flush()
    s.postfix.wait_for_log(rf"{queue_id}: to=<ok@example.com>, .*status=sent")
    events, _ = s.replay()
    assert outcomes(events, message_uuid)[0] == ("deferred", "ok@example.com")
    assert outcomes(events, message_uuid)[-1] == ("delivered", "ok@example.com")
    deferral = next(e for e in events if e["message_id"] == message_uuid)
    assert "Connection refused" in str(deferral["smtp_description"])


@pytest.mark.parametrize("reinject_milters", [False, True], ids=["no_milters", "with_milter"])
def test_content_filter_hop_reports_only_the_final_outcome(
    site: SiteFactory, reinject_milters: bool
) -> None:
    reinject_port = free_port()
    overrides = "    -o content_filter=\n    -o syslog_name=postfix/reinject\n"
    if not reinject_milters:
        overrides += (
            "    -o smtpd_milters=\n    -o receive_override_options="
            "no_unknown_recipient_checks,no_header_body_checks,no_milters\n"
        )
    with ContentFilter(reinject_port) as content_filter:
        s = site(
            main_cf={"content_filter": f"smtp-amavis:[127.0.0.1]:{content_filter.port}"},
            master_cf_extra=(
                "smtp-amavis unix - - n - 2 smtp\n"
                f"127.0.0.1:{reinject_port} inet n - n - - smtpd\n{overrides}"
            ),
        )
        queue_id, message_uuid = s.send(["ok@example.com", "bounce@example.com"])
        hop = s.postfix.wait_for_log(
            rf"{queue_id}: to=<ok@example.com>, relay=127.0.0.1\[127.0.0.1\]:"
            rf"{content_filter.port}, .*status=sent \(250 2.0.0 Ok: queued as (\w+)\)"
        )
        new_id = hop[0].rsplit("queued as ", 1)[1].rstrip(")")
        s.postfix.wait_for_log(
            rf"{new_id}: to=<ok@example.com>, relay=127.0.0.1\[127.0.0.1\]"
            rf":\d+, .*status=sent \(250 2.0.0 Ok: sink accepted\)"
        )
        s.postfix.wait_for_log(rf"{new_id}: to=<bounce@example.com>, .*status=bounced")
    events, summary = s.replay()
    assert sorted(outcomes(events, message_uuid)) == [
        ("bounced", "bounce@example.com"),
        ("delivered", "ok@example.com"),
    ]
    assert "content_filter_hop=" in summary
    if reinject_milters:  # the milter saw the re-injected message too
        assert s.milter.entry(new_id).uuid == message_uuid  # type: ignore[union-attr]
    else:
        assert s.milter.entry(new_id) is None


def test_milter_down_falls_back_to_header_checks_info(site: SiteFactory) -> None:
    s = site()
    s.milter.kill()
    _, unseen = s.send(["ok1@example.com"])
    rules = s.postfix.config_dir / "sendpost_header_checks"
    shipped = Path(__file__).resolve().parents[1] / "postfix-conf" / "header_checks.snippet"
    rules.write_text(shipped.read_text())
    s.postfix.postconf(header_checks=f"regexp:{rules}")
    s.postfix.reload()
    _, logged = s.send(["ok2@example.com"])
    s.postfix.wait_for_log(r"to=<ok2@example.com>, .*status=sent")
    events, summary = s.replay()
    assert outcomes(events, unseen) == []
    assert "unmatched:unknown_queue_id=" in summary
    assert outcomes(events, logged) == [("delivered", "ok2@example.com")]


def test_soft_bounce_yes_reports_a_deferral_not_a_bounce(site: SiteFactory) -> None:
    """With soft_bounce = yes Postfix keeps would-be bounces queued (status=SOFTBOUNCE)."""
    s = site(main_cf={"soft_bounce": "yes"})
    queue_id, message_uuid = s.send(["bounce@example.com"])
    s.postfix.wait_for_log(rf"{queue_id}: to=<bounce@example.com>, .*status=SOFTBOUNCE")
    events, _ = s.replay()
    assert outcomes(events, message_uuid)[0] == ("deferred", "bounce@example.com")
    assert "bounced" not in {e["event_type"] for e in events if e["message_id"] == message_uuid}


def test_content_filter_hop_keeps_the_address_sendpost_gave_and_drops_always_bcc(
    site: SiteFactory,
) -> None:
    """virtual_alias_maps rewrites before the filter; the re-injected message (seen by
    the milter again, under the rewritten address) is delivered without orig_to, and
    always_bcc adds a recipient on both sides of the hop."""
    reinject_port = free_port()
    with ContentFilter(reinject_port) as content_filter:
        s = site(
            main_cf={
                "content_filter": f"smtp-amavis:[127.0.0.1]:{content_filter.port}",
                "virtual_alias_domains": "virt.test",
                "always_bcc": "archive@example.com",
            },
            master_cf_extra=(
                "smtp-amavis unix - - n - 2 smtp\n"
                f"127.0.0.1:{reinject_port} inet n - n - - smtpd\n"
                "    -o content_filter=\n    -o syslog_name=postfix/reinject\n"
            ),
            virtual={"sales@virt.test": "ok-sales@example.com"},
        )
        queue_id, message_uuid = s.send(["sales@virt.test", "bounce@example.com"])
        hop = s.postfix.wait_for_log(rf"{queue_id}: to=<ok-sales@example.com>, .*queued as (\w+)")
        new_id = hop[0].rsplit("queued as ", 1)[1].rstrip(")")
        s.postfix.wait_for_log(rf"{new_id}: to=<.*status=(sent|bounced)", count=4)
    events, summary = s.replay()
    assert sorted(outcomes(events, message_uuid)) == [
        ("bounced", "bounce@example.com"),
        ("delivered", "sales@virt.test"),
    ]
    # the bcc's hop line, then two deliveries to it: the re-injection's cleanup adds
    # always_bcc again next to the one the filter passed on
    assert "unmatched:added_recipient=3" in summary
