"""Doctor probes: test messages the milter recognises and discards (never delivered).

The contract between `sendpost-agent doctor` (sends a probe through the local smtpd) and
the milter (records it like any message, then answers DISCARD). A probe carries
``X-Sendpost-Doctor-Probe: NONCE.MAC``, the MAC keyed with ``state-dir/probe.key``, so
only someone who can read the agent's state can make the milter discard a message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

PROBE_HEADER = "X-Sendpost-Doctor-Probe"
KEY_FILE = "probe.key"
_KEY_LEN = 32
_MAC_LEN = 32


class DamagedKey(ValueError):
    """probe.key holds no key (truncated, edited): say so, not "cannot read" or nothing."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is damaged (it must hold {_KEY_LEN * 2} hex digits)")
        self.fix = f"delete {path} and restart the milter, which writes a new key at start"


def load_key(state_dir: Path, create: bool = False) -> bytes | None:
    """The shared key; the milter creates it at start, doctor only reads it.

    None when the file is missing (and not created) or unreadable; DamagedKey when it
    holds no valid key: an empty one (a truncated file) would let anyone forge a probe.
    """
    path = state_dir / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _create_key(path) if create else None
    except OSError:
        return None
    try:
        key = bytes.fromhex(data.decode("ascii"))
    except ValueError:  # UnicodeDecodeError too
        key = b""
    if len(key) != _KEY_LEN:
        raise DamagedKey(path)
    return key


def _create_key(path: Path) -> bytes:
    """O_EXCL: never replace a key a running doctor or milter may already use."""
    key = secrets.token_bytes(_KEY_LEN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
    return key


def _mac(key: bytes, nonce: str) -> str:
    return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()[:_MAC_LEN]


def make_token(key: bytes) -> str:
    nonce = secrets.token_hex(8)
    return f"{nonce}.{_mac(key, nonce)}"


def is_probe(key: bytes | None, value: str) -> bool:
    """Any header value is safe here: a non-ASCII one (even undecodable bytes kept as
    surrogates) is simply not a probe; compare_digest refuses non-ASCII text."""
    if key is None:
        return False
    nonce, _, mac = value.strip().partition(".")
    if not (nonce and nonce.isascii() and mac.isascii()):
        return False
    return hmac.compare_digest(mac, _mac(key, nonce))
