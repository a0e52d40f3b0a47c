"""Generate a realistic Postfix mail log (and the milter's map for it), deterministically.

Line shapes are those of real Postfix 3.7 (tests/data/postfix-samples): per message the
smtpd connect/client/disconnect lines, cleanup's message-id, qmgr's queue active and
removed, TLS chatter, and one status line per recipient; some recipients are deferred
and retried, some bounce, some expire. About 20% of all lines are status lines.
``--info`` instead: no map, and cleanup's header_checks INFO line with each message's
X-Sendpost-Message-UUID (postfix-conf/header_checks.snippet), the fallback that correlates
without the milter; its clients are INFO_CLIENTS (replay ``--trusted-clients``).

    python bench/genlog.py --lines 1000000 --seed 1 --out /tmp/bench/mail.log \
        --state-dir /tmp/bench/state
"""

from __future__ import annotations

import argparse
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sendpost_agent.header import HEADER_NAME
from sendpost_agent.queuemap import HeaderState, MapWriter

START = datetime(2026, 11, 23, 0, 0, 0, tzinfo=UTC)
INFO_CLIENTS = "198.51.100.0/24"  # every message's SMTP client (the INFO line names it)
RELAYS = [
    "gmail-smtp-in.l.google.com[142.250.102.27]:25",
    "mx1.hotmail.com[52.101.40.2]:25",
    "mta7.am0.yahoodns.net[98.136.96.76]:25",
    "mx.example.net[203.0.113.25]:25",
]
SENT = [
    "250 2.0.0 OK  1763856000 a1si1234567wra.123 - gsmtp",
    "250 2.6.0 <id@example.com> [InternalId=1] Queued mail for delivery",
    "250 ok dirdel",
    "250 2.0.0 Ok: queued as 4Nb6xL0x2Gz9",
]
BOUNCE = (
    "host {relay_host} said: 550-5.1.1 The email account that you tried to reach does"
    " not exist. Please try double-checking the recipient's email address for typos"
    " or unnecessary spaces. 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser"
    " a1si123 - gsmtp (in reply to RCPT TO command)"
)
FULL = (
    "host {relay_host} said: 552-5.2.2 The recipient's inbox is out of storage space."
    " 552 5.2.2 https://support.google.com/mail/?p=OverQuotaPerm - gsmtp (in reply to"
    " RCPT TO command)"
)
DEFER = (
    "host {relay_host} said: 421-4.7.28 Gmail has detected an unusual rate of mail"
    " originating from your IP address. 421 4.7.28 - gsmtp (in reply to end of DATA"
    " command)"
)


class Log:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lines: list[tuple[float, str]] = []

    def add(self, when: float, program: str, text: str) -> None:
        stamp = (START + timedelta(seconds=when)).strftime("%b %e %H:%M:%S")
        pid = self.rng.randrange(1000, 65000)
        self.lines.append((when, f"{stamp} mx1 postfix/{program}[{pid}]: {text}"))


def status(relay: str, rcpt: str, dsn: str, state: str, reply: str, delay: float) -> str:
    said = reply.format(relay_host=relay.removesuffix(":25"))
    return (
        f"to=<{rcpt}>, relay={relay}, delay={delay:.2f}, delays=0.01/0/0.1/{delay:.2f},"
        f" dsn={dsn}, status={state} ({said})"
    )


def message_uuid(n: int) -> uuid.UUID:
    """The UUID of the ``n``th message (in its map row, or in its INFO line)."""
    return uuid.UUID(int=(1 << 120) + n)


def message(log: Log, n: int, when: float, qid: str, info: bool = False) -> list[str]:
    """Logs one message (with its header_checks INFO line if ``info``); returns its
    envelope recipients (the milter's row holds them)."""
    rng = log.rng
    helo = f"mail{n % 50}.sendpost.io"
    client = f"{helo}[198.51.100.{n % 250}]"
    log.add(when, "smtpd", f"connect from {client}")
    log.add(
        when,
        "smtpd",
        f"Anonymous TLS connection established from {client}: TLSv1.3"
        " with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
    )
    log.add(when, "smtpd", f"{qid}: client={client}")
    log.add(when, "cleanup", f"{qid}: message-id=<{uuid.UUID(int=n)}@sendpost.io>")
    rcpts = rng.choice((1, 1, 1, 2, 3))
    if info:
        log.add(
            when,
            "cleanup",
            f"{qid}: info: header {HEADER_NAME}: {message_uuid(n)} from {client};"
            f" from=<bounces+{n}@sendpost.io> to=<user{n}.0@example.com> proto=ESMTP"
            f" helo=<{helo}>",
        )
    size = rng.randrange(2000, 90000)
    log.add(
        when,
        "qmgr",
        f"{qid}: from=<bounces+{n}@sendpost.io>, size={size}, nrcpt={rcpts} (queue active)",
    )
    log.add(
        when,
        "smtpd",
        f"disconnect from {client} ehlo=2 starttls=1 mail=1 rcpt={rcpts}"
        f" data=1 quit=1 commands={6 + rcpts}",
    )
    end = when + 1
    for r in range(rcpts):
        relay = rng.choice(RELAYS)
        rcpt = f"user{n}.{r}@example.com"
        fate = rng.random()
        t = when + rng.uniform(0.2, 2.0)
        if fate < 0.05:
            log.add(t, "smtp", f"{qid}: " + status(relay, rcpt, "5.1.1", "bounced", BOUNCE, 0.5))
        elif fate < 0.07:
            log.add(t, "smtp", f"{qid}: " + status(relay, rcpt, "5.2.2", "bounced", FULL, 0.5))
        elif fate < 0.17:  # deferred, retried, then sent or expired
            retries = rng.randrange(1, 4)
            for k in range(retries):
                tk = t + k * 300
                if k:
                    log.add(
                        tk,
                        "qmgr",
                        f"{qid}: from=<bounces+{n}@sendpost.io>, size=4000,"
                        f" nrcpt={rcpts} (queue active)",
                    )
                log.add(
                    tk,
                    "smtp",
                    f"{qid}: " + status(relay, rcpt, "4.7.28", "deferred", DEFER, 1.0 + tk - when),
                )
            t += retries * 300
            if rng.random() < 0.2:
                log.add(
                    t,
                    "qmgr",
                    f"{qid}: from=<bounces+{n}@sendpost.io>, status=expired, returned to sender",
                )
            else:
                log.add(
                    t,
                    "smtp",
                    f"{qid}: " + status(relay, rcpt, "2.0.0", "sent", rng.choice(SENT), t - when),
                )
        else:
            log.add(
                t,
                "smtp",
                f"{qid}: " + status(relay, rcpt, "2.0.0", "sent", rng.choice(SENT), t - when),
            )
        log.add(t, "smtp", f"Trusted TLS connection established to {relay}: TLSv1.3")
        end = max(end, t)
    log.add(end + 0.01, "qmgr", f"{qid}: removed")
    return [f"user{n}.{r}@example.com" for r in range(rcpts)]


def generate(lines: int, seed: int, out: Path, state_dir: Path | None, info: bool = False) -> int:
    """``info``: header_checks INFO lines in the log, and no map (``state_dir`` unused)."""
    rng = random.Random(seed)
    log = Log(rng)
    writer = None
    if state_dir is not None and not info:
        writer = MapWriter(state_dir / "queuemap.sqlite3", 7 * 86400.0)
    n = 0
    while len(log.lines) < lines:
        qid = f"{rng.getrandbits(40):010X}"
        recipients = message(log, n, n * 0.05, qid, info)
        if writer is not None:
            writer.put(
                qid,
                message_uuid(n),
                HeaderState.PRESENT,
                now=START.timestamp() + n * 0.05,
                recipients=recipients,
            )  # received when logged
        n += 1
    if writer is not None:
        writer.close()
    log.lines.sort(key=lambda pair: pair[0])  # as Postfix writes them: in time order
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        f.writelines(text + "\n" for _, text in log.lines[:lines])
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, help="also write the milter's map here")
    parser.add_argument(
        "--info", action="store_true", help="header_checks INFO lines instead of a map"
    )
    args = parser.parse_args()
    messages = generate(args.lines, args.seed, args.out, args.state_dir, args.info)
    print(f"{args.out}: {args.lines} lines, {messages} messages")


if __name__ == "__main__":
    main()
