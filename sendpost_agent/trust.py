"""Which SMTP clients may set X-Sendpost-Message-UUID (pure; the milter decides with it).

Every message SendPost delivers carries its UUID to the recipient, so a UUID is no
secret: anyone who can reach this Postfix could put a known one in a header and make
the agent report a delivery or a bounce for SendPost's message. The header counts only
from the clients SendPost uses: by default an SMTP-authenticated session or a client in
Postfix's ``mynetworks``; ``trusted-clients`` says otherwise.

``trusted-clients`` items: ``mynetworks`` (Postfix's value, read at milter start), an
IP address or CIDR network, ``sasl`` (any authenticated login) and ``sasl:LOGIN``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sendpost_agent.postconf import PostconfError, PostfixConfig, split_list

log = logging.getLogger(__name__)

MYNETWORKS = "mynetworks"
SASL = "sasl"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network | None:
    """``10.0.0.0/8``, ``192.0.2.7``, ``2001:db8::/32`` or Postfix's ``[2001:db8::]/32``;
    None when ``text`` is no address at all. Host bits set raise ValueError."""
    address, slash, length = text.partition("/")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None
    return ipaddress.ip_network(address + slash + length)


def parse_item(item: str) -> str:
    """One ``trusted-clients`` item, normalised; ValueError says what is expected."""
    text = item.strip()
    lower = text.lower()
    if lower in (MYNETWORKS, SASL):
        return lower
    if lower.startswith(SASL + ":"):
        login = text[len(SASL) + 1 :].strip()
        if not login or any(c.isspace() for c in login):
            raise ValueError(f"{text!r}: write sasl:LOGIN with the SASL login name, no spaces")
        return f"{SASL}:{login}"
    try:
        network = parse_network(text)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not a network: {exc}; write the network address, e.g. 10.1.0.0/16"
        ) from None
    if network is None:
        raise ValueError(
            f"{text!r} is not mynetworks, sasl, sasl:LOGIN, an IP address or a CIDR"
            " network (e.g. 192.0.2.0/24); host names are not accepted"
        )
    return str(network)


@dataclass(frozen=True)
class Policy:
    """The rule in force: a client is trusted when its session authenticated (as one of
    ``logins``, or as anyone with ``any_login``) or its address is in ``networks``.

    ``networks`` keeps mynetworks' order and its ``!`` exclusions: the first match
    decides, as in Postfix. ``unevaluable``: mynetworks entries the agent cannot
    evaluate (host names, /file/name, type:table), left out.
    """

    networks: tuple[tuple[Network, bool], ...] = ()
    any_login: bool = False
    logins: frozenset[str] = frozenset()
    unevaluable: tuple[str, ...] = ()
    _cache: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def trusts(self, client_addr: str | None, login: str | None) -> bool:
        if login and (self.any_login or login in self.logins):
            return True
        if not client_addr:
            return False
        trusted = self._cache.get(client_addr)
        if trusted is None:
            trusted = self._in_networks(client_addr)
            if len(self._cache) >= 10_000:  # a flood of addresses cannot grow it further
                self._cache.clear()
            self._cache[client_addr] = trusted
        return trusted

    def _in_networks(self, client_addr: str) -> bool:
        try:
            address = ipaddress.ip_address(client_addr.removeprefix("IPv6:"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network, allow in self.networks:
            if address.version == network.version and address in network:
                return allow
        return False

    @property
    def empty(self) -> bool:
        return not (self.networks or self.any_login or self.logins)

    def describe(self) -> str:
        """The rule in words, for the milter's start line and doctor."""
        parts = []
        if self.any_login:
            parts.append("any SMTP-authenticated (SASL) session")
        elif self.logins:
            parts.append("SASL logins " + ", ".join(sorted(self.logins)))
        if self.networks:
            shown = [("" if allow else "!") + str(net) for net, allow in self.networks]
            parts.append("clients in " + " ".join(shown))
        return " or ".join(parts) if parts else "no client (the header is never trusted)"


def build_policy(items: tuple[str, ...], mynetworks: list[str] | None) -> Policy:
    """The policy of parsed ``trusted-clients`` items; ``mynetworks``: Postfix's value
    split into items (None when it could not be read: the item adds nothing)."""
    networks: list[tuple[Network, bool]] = []
    logins: set[str] = set()
    unevaluable: list[str] = []
    any_login = False
    for item in items:
        if item == SASL:
            any_login = True
        elif item.startswith(SASL + ":"):
            logins.add(item[len(SASL) + 1 :])
        elif item == MYNETWORKS:
            for entry in mynetworks or []:
                allow = not entry.startswith("!")
                try:
                    network = parse_network(entry.removeprefix("!"))
                except ValueError:
                    network = None
                if network is None:
                    unevaluable.append(entry)
                else:
                    networks.append((network, allow))
        else:
            network = parse_network(item)
            assert network is not None, item  # parse_item checked it
            networks.append((network, True))
    return Policy(tuple(networks), any_login, frozenset(logins), tuple(unevaluable))


def unevaluable_warning(policy: Policy) -> str:
    """What to tell the operator about mynetworks entries left out ("" if none)."""
    if not policy.unevaluable:
        return ""
    return (
        f"mynetworks entries {', '.join(policy.unevaluable)} cannot be evaluated by the agent"
        " (only addresses and networks can): their clients are not trusted to set the"
        " UUID header; list the networks SendPost sends from in trusted-clients"
    )


def load_policy(items: tuple[str, ...], postfix: PostfixConfig) -> tuple[Policy, str]:
    """The policy with Postfix's mynetworks read now (the edge: runs postconf), and the
    problem reading it ("" if none). Postfix's own value, as ``postconf -x`` expands it
    (mynetworks_style included), so the agent trusts what Postfix trusts."""
    if MYNETWORKS not in items:
        return build_policy(items, None), ""
    try:
        mynetworks = split_list(postfix.value(MYNETWORKS))
    except PostconfError as exc:
        return build_policy(items, None), (
            f"trusted-clients names mynetworks, but Postfix's mynetworks cannot be read ({exc}):"
            " no network is trusted through it; set postfix-config-dir to Postfix's"
            " configuration directory, or list the networks SendPost sends from in"
            " trusted-clients"
        )
    return build_policy(items, mynetworks), ""


def info_line_check(items: tuple[str, ...], config_dir: Path) -> Callable[[str], bool]:
    """For logwatch: whether a header_checks INFO line's client may set the UUID. The
    line names the client's address but no SASL login, so only the networks count: the
    fallback serves mail the milter did not see, and is not SendPost's way in."""
    policy, problem = load_policy(items, PostfixConfig(config_dir))
    if problem:
        log.warning("%s (for header_checks INFO lines)", problem)
    return lambda client: policy.trusts(client, None)
