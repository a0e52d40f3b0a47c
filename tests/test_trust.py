"""trusted-clients: what the operator may write, and which clients it trusts (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendpost_agent.config import ConfigError, describe, load_config
from sendpost_agent.postconf import PostfixConfig
from sendpost_agent.trust import build_policy, load_policy, unevaluable_warning

# As `postconf -x mynetworks` prints Postfix's default (mynetworks_style = host).
POSTFIX_DEFAULT = ["127.0.0.1/32", "192.0.2.2/32", "[::1]/128", "[fe80::fc:ff:fe00:1]/128"]


def trusted(items: tuple[str, ...], mynetworks: list[str] | None = None) -> set[str]:
    """Which of a few clients the policy trusts (address, or address+login)."""
    policy = build_policy(items, mynetworks)
    clients = {
        "127.0.0.1": ("127.0.0.1", None),
        "10.1.2.3": ("10.1.2.3", None),
        "10.9.9.9": ("10.9.9.9", None),
        "::1": ("::1", None),
        "mapped": ("::ffff:10.1.2.3", None),
        "2001:db8::5": ("2001:db8::5", None),
        "outsider+sendpost": ("203.0.113.9", "sendpost"),
        "outsider+other": ("203.0.113.9", "other"),
        "outsider": ("203.0.113.9", None),
        "garbage": ("not-an-address", None),
    }
    return {name for name, (addr, login) in clients.items() if policy.trusts(addr, login)}


@pytest.mark.unit
def test_default_is_mynetworks_and_any_sasl_login() -> None:
    config = load_config(environ={}, config_file=Path("/dev/null"))
    assert describe(config)["trusted-clients"] == "mynetworks, sasl"
    assert trusted(config.trusted_clients, POSTFIX_DEFAULT) == {
        "127.0.0.1",
        "::1",
        "outsider+sendpost",
        "outsider+other",
    }


@pytest.mark.unit
def test_networks_logins_and_postfix_exclusions() -> None:
    assert trusted(("10.1.0.0/16", "2001:db8::/32", "sasl:sendpost")) == {
        "10.1.2.3",
        "mapped",
        "2001:db8::5",
        "outsider+sendpost",
    }
    # Postfix's first match decides: "!10.1.2.3 10.0.0.0/8" leaves 10.1.2.3 out.
    assert trusted(("mynetworks",), ["!10.1.2.3", "10.0.0.0/8"]) == {"10.9.9.9"}
    assert trusted(()) == set()
    assert build_policy((), None).empty


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/8, SASL:sendpost mynetworks", "10.0.0.0/8, sasl:sendpost, mynetworks"),
        (["192.0.2.7", "[2001:db8::]/32", "sasl"], "192.0.2.7/32, 2001:db8::/32, sasl"),
        ([], "[]"),
    ],
)
@pytest.mark.unit
def test_items_are_normalised(value: object, expected: str) -> None:
    config = load_config({"trusted-clients": value}, environ={}, config_file=Path("/dev/null"))
    assert str(config.trusted_clients) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1/8", "'10.0.0.1/8' is not a network: 10.0.0.1/8 has host bits set;"),
        ("mx.example.com", "host names are not accepted"),
        ("sasl:", "write sasl:LOGIN with the SASL login name"),
        ("10.0.0.0/33", "is not a network"),
    ],
)
@pytest.mark.unit
def test_a_bad_item_is_a_config_error_naming_the_key_and_the_fix(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config({"trusted-clients": value}, environ={}, config_file=Path("/dev/null"))
    assert "flag --trusted-clients: key 'trusted-clients':" in str(error.value)
    assert message in str(error.value)


@pytest.mark.integration
def test_mynetworks_is_read_from_postfix_and_its_unevaluable_entries_are_named(
    tmp_path: Path,
) -> None:
    (tmp_path / "main.cf").write_text(
        "mynetworks = 10.0.0.0/8, $extra, mx.example.com /etc/postfix/network_table\n"
        "extra = [2001:db8::]/32 hash:/etc/postfix/more\n"
    )
    (tmp_path / "master.cf").touch()
    policy, problem = load_policy(("mynetworks", "sasl"), PostfixConfig(tmp_path))
    assert problem == ""
    assert policy.describe() == (
        "any SMTP-authenticated (SASL) session or clients in 10.0.0.0/8 2001:db8::/32"
    )
    warning = unevaluable_warning(policy)
    assert "hash:/etc/postfix/more, mx.example.com, /etc/postfix/network_table" in warning
    assert "list the networks SendPost sends from in trusted-clients" in warning


@pytest.mark.integration
def test_unreadable_mynetworks_trusts_no_network_and_says_what_to_set(tmp_path: Path) -> None:
    policy, problem = load_policy(("mynetworks", "sasl"), PostfixConfig(tmp_path / "none"))
    assert policy.networks == () and policy.any_login
    assert "Postfix's mynetworks cannot be read" in problem
    assert "set postfix-config-dir" in problem and "trusted-clients" in problem
