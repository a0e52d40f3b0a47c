"""The milter socket address (Postfix notation, as in `milter-socket`), for every party
that needs it: the milter binds it, doctor and the tests connect to it."""

from __future__ import annotations

import socket


def libmilter_address(address: str) -> str:
    """Postfix notation (``inet:HOST:PORT``, ``unix:/path``) -> libmilter's."""
    kind, _, rest = address.partition(":")
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        return f"inet6:{port}@{host}" if ":" in host else f"inet:{port}@{host}"
    return f"unix:{rest}"


def connect(address: str, timeout: float) -> None:
    """Open and close one connection to the milter socket; raises OSError if refused."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(rest)
        return
    host, _, port = rest.rpartition(":")
    socket.create_connection((host.strip("[]"), int(port)), timeout).close()
