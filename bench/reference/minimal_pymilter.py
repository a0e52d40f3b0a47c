"""Reference for bench/milter_cost.py: the least a pymilter milter for our job can do.

The design fixes pymilter, so this is the floor for sendpost-agent's milter: on the
same library, it negotiates away every step but three. DATA is answered (without that
reply an inet socket stalls on Nagle, see docs/PERFORMANCE.md), the headers come to a
Python callback without a reply (SMFIP_NR_HDR: the job needs to see them), and
end-of-message is answered ACCEPT. Connect, HELO, MAIL, RCPT, end-of-headers, body and
unknown commands are skipped (SMFIP_NO*); no macro list, no abort callback, no state.

Its callbacks are bound straight to pymilter's C module, as ours are: ``Milter.Base``'s
Python dispatch would only make the floor higher.

    python bench/reference/minimal_pymilter.py unix:/path/to/socket
"""

from __future__ import annotations

import sys

import Milter

SKIPPED = (
    Milter.P_NOCONNECT
    | Milter.P_NOHELO
    | Milter.P_NOMAIL
    | Milter.P_NORCPT
    | Milter.P_NOEOH
    | Milter.P_NOBODY
    | Milter.P_NOUNKNOWN
)


def negotiate(ctx: object, opts: list[int]) -> int:
    """No action; skip every step the MTA can, headers without a reply."""
    opts[0] = 0
    opts[1] &= SKIPPED | Milter.P_NR_HDR
    opts[2] = opts[3] = 0
    return Milter.CONTINUE


def data(ctx: object) -> int:
    return Milter.CONTINUE


def header(ctx: object, name: str, value: bytes) -> int:
    return Milter.NOREPLY


def eom(ctx: object) -> int:
    return Milter.ACCEPT


def main() -> None:
    Milter.set_header_callback(header)
    Milter.set_eom_callback(eom)
    Milter.setconn(sys.argv[1])
    Milter.register("minimal-pymilter", data=data, negotiate=negotiate)
    Milter.opensocket(True)
    Milter.main()


if __name__ == "__main__":
    main()
