"""Which relays are content-filter hops rather than deliveries (pure, plus one postconf call).

An after-queue content filter (amavis on 127.0.0.1:10024, ...) takes the message, scans
it and re-injects it under a new queue ID; the hop logs ``status=sent (... queued as
NEWID)`` for every recipient, which is not a delivery. Postfix's configuration names the
filters (``content_filter`` in main.cf and as ``-o content_filter=`` in master.cf), so we
read it once at start. A filter whose master.cf service is a ``pipe`` (spamc re-injecting
with ``sendmail``) logs ``relay=SERVICE, ... status=sent (delivered via SERVICE service)``
and no new queue ID: the tracker follows its copy by Message-ID.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sendpost_agent.postconf import PostconfError, PostfixConfig

log = logging.getLogger(__name__)

_RELAY: Final = re.compile(  # a port of 1-5 digits: int() refuses over 4,300
    r"^(?P<host>[^\[\]]*)(?:\[(?P<addr>[^\]]*)\])?(?::(?P<port>\d{1,5}))?$"
)
_QUEUE_ID: Final = re.compile(r"[0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    addr: str
    port: int | None


@functools.lru_cache(maxsize=4096)  # a server talks to the same relays all day
def parse_relay(relay: str | None) -> Endpoint | None:
    """``host[addr]:port`` as Postfix logs ``relay=``; None for ``none``, ``local``..."""
    if not relay or "[" not in relay:
        return None
    match = _RELAY.match(relay)
    if match is None:
        return None
    port = match.group("port")
    return Endpoint(
        match.group("host").lower(), match.group("addr") or "", int(port) if port else None
    )


def queued_as(reply: str | None) -> str | None:
    """The next MTA's queue ID in a 250 reply (the last one: amavis quotes its own MTA)."""
    if not reply:
        return None
    at = reply.rfind("queued as ")
    if at < 0:
        return None
    match = _QUEUE_ID.match(reply, at + 10)
    return match.group(0) if match else None


@functools.lru_cache(maxsize=4096)
def is_local(endpoint: Endpoint) -> bool:
    """A relay on this host: loopback address, or a unix socket (``private/...``)."""
    if "/" in endpoint.addr or endpoint.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(endpoint.addr.removeprefix("IPv6:")).is_loopback
    except ValueError:
        return False


def parse_nexthop(filter_value: str) -> tuple[str, int] | None:
    """``transport:[host]:port`` (or ``transport:host:port``) -> (host, port)."""
    _, _, nexthop = filter_value.strip().partition(":")
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", nexthop.strip())
    if not match:
        return None
    return match.group(1).lower(), int(match.group(2))


@dataclass(frozen=True)
class ContentFilters:
    """The (host, port) next hops of the configured content filters, and the names of
    those that are master.cf ``pipe`` services (what their hop logs as ``relay=``)."""

    hops: frozenset[tuple[str, int]] = frozenset()
    pipes: frozenset[str] = frozenset()

    def is_hop(self, endpoint: Endpoint | None) -> bool:
        if endpoint is None or endpoint.port is None:
            return False
        return (endpoint.addr, endpoint.port) in self.hops or (
            endpoint.host,
            endpoint.port,
        ) in self.hops

    @classmethod
    def from_values(cls, values: list[str], pipe_services: Collection[str] = ()) -> ContentFilters:
        """``values``: content_filter settings; ``pipe_services``: names of master.cf
        services whose command is ``pipe``."""
        transports = {v.partition(":")[0].strip() for v in values if v}
        return cls(
            frozenset(hop for v in values if v and (hop := parse_nexthop(v))),
            frozenset(transports.intersection(pipe_services)),
        )

    @classmethod
    def read(cls, postfix: PostfixConfig) -> ContentFilters:
        """``content_filter`` in main.cf and every ``-o`` override in master.cf, and the
        master.cf services of type pipe; raises PostconfError."""
        values = [postfix.value("content_filter")]
        values += [s.overrides.get("content_filter", "") for s in postfix.services()]
        return cls.from_values(values, [s.name for s in postfix.services() if s.command == "pipe"])

    @classmethod
    def from_postfix(cls, config_dir: Path) -> ContentFilters:
        """``read``, for logwatch: Postfix not being readable is not fatal. We then rely
        on a hop's new queue ID showing up in the log (see tracker), and say so.
        """
        try:
            return cls.read(PostfixConfig(config_dir))
        except PostconfError as exc:
            log.warning(
                "cannot read content filters: %s; content filter hops are then"
                " recognised only by their new queue ID",
                exc,
            )
            return cls()
