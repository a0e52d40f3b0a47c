"""Only SendPost's clients make events: a forged UUID header from any other client is
counted and logged, never reported (real Postfix, the milter, logwatch, the ingest API).

The Postfix instance is the MX of example.com (``relay_domains``): it takes mail for it
from any client, as an MX or a relay for other customers does. Its ``mynetworks`` is
127.0.0.1/32 only, so a client bound to 127.0.0.2 is such an outside client.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sendpost_agent.queuemap import HeaderState
from tests.support.agent import LogwatchProcess
from tests.support.contentfilter import ContentFilter, master_cf
from tests.support.fixtures import PostfixFactory
from tests.support.ingest import IngestServer
from tests.support.milter import MilterProcess
from tests.support.postfix import PostfixInstance, build_message, free_port
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

KEY = "sp-trust-key-7"
SENDER = "sender@example.com"
MILTER = "{ unix:sendpost-agent/milter.sock, default_action=accept, command_timeout=5s }"
TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"
UNTRUSTED_LINES = 'sendpost_agent_lines_without_event_total{reason="unmatched:untrusted_client"}'


def send_from(postfix: PostfixInstance, client: str, message_uuid: str, recipient: str) -> str:
    """One message with the UUID header from local address ``client``; its queue ID."""
    raw = build_message(SENDER, [recipient], {"X-Sendpost-Message-UUID": message_uuid}, "hi\n")
    with smtplib.SMTP(
        "127.0.0.1",
        postfix.smtp_port,
        local_hostname="client.example",
        source_address=(client, 0),
        timeout=30,
    ) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        smtp.rcpt(recipient)
        code, reply = smtp.data(raw)
    assert code == 250, reply
    match = re.search(rb"queued as (\w+)", reply)
    assert match is not None, reply
    return match.group(1).decode()


@dataclass
class Site:
    postfix: PostfixInstance
    milter: MilterProcess
    ingest: IngestServer
    logwatch: LogwatchProcess


SiteFactory = Callable[..., Site]


@pytest.fixture
def make_site(tmp_path: Path, sink: Sink, postfix_factory: PostfixFactory) -> Iterator[SiteFactory]:
    """Postfix first (so its main.cf exists for the milter to read mynetworks from), then
    the milter on a unix or inet socket with extra flags, logwatch and the ingest server."""
    with contextlib.ExitStack() as stack:

        def make(
            kind: str = "unix",
            *flags: str,
            main_cf: dict[str, str] | None = None,
            master_cf_extra: str = "",
        ) -> Site:
            postfix = postfix_factory(
                main_cf={
                    "mynetworks": f"{TRUSTED}/32",
                    "relay_domains": "example.com",
                    **(main_cf or {}),
                },
                master_cf_extra=master_cf_extra,
                smtp_probe=False,
            )
            if kind == "unix":
                address = f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock"
                entry = MILTER
            else:
                address = f"inet:127.0.0.1:{free_port()}"
                entry = MILTER.replace("unix:sendpost-agent/milter.sock", address)
            state = tmp_path / "state"
            ingest = stack.enter_context(IngestServer(KEY))
            milter = stack.enter_context(
                MilterProcess(state, address, *flags, postfix_config_dir=postfix.config_dir)
            )
            postfix.postconf(smtpd_milters=entry)
            postfix.reload()
            logwatch = stack.enter_context(
                LogwatchProcess(
                    state,
                    postfix.maillog,
                    ingest.url,
                    KEY,
                    "--join-wait",
                    "2s",
                    "--postfix-config-dir",
                    str(postfix.config_dir),
                )
            )
            return Site(postfix, milter, ingest, logwatch)

        yield make


def wait_for_metric(process: LogwatchProcess | MilterProcess, name: str, value: float) -> None:
    deadline = time.monotonic() + 30
    while process.metrics().get(name, 0.0) < value:
        assert time.monotonic() < deadline, (
            f"{name} < {value}: {process.metrics()}\n{process.log()}"
        )
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_a_forged_header_from_an_untrusted_client_gives_no_event(
    make_site: SiteFactory, kind: str
) -> None:
    """Postfix sends the client's address at end-of-message to either kind of socket."""
    site = make_site(kind)
    forged, genuine = str(uuid.uuid4()), str(uuid.uuid4())
    # An outsider sends twice with a UUID it learnt from a delivered message.
    forged_ids = [
        send_from(site.postfix, UNTRUSTED, forged, f"bounce{i}@example.com") for i in range(2)
    ]
    genuine_id = send_from(site.postfix, TRUSTED, genuine, "ok@example.com")
    for queue_id in [*forged_ids, genuine_id]:
        site.postfix.wait_for_log(rf" {queue_id}: to=<[^>]+>, .*status=(sent|bounced) ")

    events = site.ingest.wait_for_events(1, timeout=30)
    wait_for_metric(site.logwatch, UNTRUSTED_LINES, 2)
    time.sleep(1)
    assert [(e["message_id"], e["event_type"]) for e in site.ingest.accepted] == [
        (genuine, "delivered")
    ], events
    for queue_id in forged_ids:
        entry = site.milter.entry(queue_id)
        assert entry is not None and (entry.uuid, entry.header) == (None, HeaderState.UNTRUSTED)
    entry = site.milter.entry(genuine_id)
    assert entry is not None and (entry.uuid, entry.header) == (genuine, HeaderState.PRESENT)
    metrics = site.milter.metrics()
    assert metrics['sendpost_milter_header_total{state="untrusted"}'] == 2
    assert metrics['sendpost_milter_header_total{state="present"}'] == 1
    # One warning for the client, naming it and the fix; the second message is only counted.
    warnings = [line for line in site.milter.log().splitlines() if "not trusted" in line]
    assert len(warnings) == 1, warnings
    assert f"client {UNTRUSTED}" in warnings[0] and forged_ids[0] in warnings[0]
    assert "add its network to trusted-clients" in warnings[0]
    assert "once per client address every 5 minutes" in warnings[0]
    assert forged not in site.milter.log() + site.logwatch.log()


def test_trusted_clients_replaces_mynetworks(make_site: SiteFactory) -> None:
    """SendPost connecting from outside mynetworks: the operator names its network."""
    site = make_site("unix", "--trusted-clients", f"{UNTRUSTED}/32")
    from_sendpost, from_local = str(uuid.uuid4()), str(uuid.uuid4())
    send_from(site.postfix, UNTRUSTED, from_sendpost, "ok@example.com")
    local_id = send_from(site.postfix, TRUSTED, from_local, "ok2@example.com")
    site.ingest.wait_for_events(1, timeout=30)
    wait_for_metric(site.logwatch, UNTRUSTED_LINES, 1)
    assert [e["message_id"] for e in site.ingest.accepted] == [from_sendpost]
    entry = site.milter.entry(local_id)
    assert entry is not None and entry.header is HeaderState.UNTRUSTED
    assert f"trusted from clients in {UNTRUSTED}/32 (trusted-clients)" in site.milter.log()


def test_mail_a_content_filter_reinjects_keeps_the_trust_of_its_first_hop(
    make_site: SiteFactory,
) -> None:
    """The filter re-injects both messages from 127.0.0.1 (in mynetworks) into a listener
    without the milter, as shipped (postfix-conf/master.cf.content-filter.example)."""
    reinject = free_port()
    with ContentFilter(reinject) as content_filter:
        site = make_site(
            main_cf={"content_filter": f"smtp-amavis:[127.0.0.1]:{content_filter.port}"},
            master_cf_extra=master_cf(reinject),
        )
        forged, genuine = str(uuid.uuid4()), str(uuid.uuid4())
        for client, message_uuid, recipient in [
            (UNTRUSTED, forged, "ok1@example.com"),
            (TRUSTED, genuine, "ok2@example.com"),
        ]:
            queue_id = send_from(site.postfix, client, message_uuid, recipient)
            hop = site.postfix.wait_for_log(
                rf"{queue_id}: to=<{recipient}>, .*status=sent \(250 2.0.0 Ok: queued as (\w+)\)"
            )
            new_id = hop[0].rsplit("queued as ", 1)[1].rstrip(")")
            site.postfix.wait_for_log(
                rf"{new_id}: to=<{recipient}>, .*status=sent \(250 2.0.0 Ok: sink"
            )
    site.ingest.wait_for_events(1, timeout=30)
    wait_for_metric(site.logwatch, UNTRUSTED_LINES, 2)  # the hop and the re-injected delivery
    time.sleep(1)
    assert [(e["message_id"], e["recipient"]) for e in site.ingest.accepted] == [
        (genuine, "ok2@example.com")
    ]
