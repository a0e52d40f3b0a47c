"""Peers on the same file: our `replay` beside the tools operators know, in lines/s.

The log is the catch-up benchmark's (bench/genlog.py, seeded; the same file name in the
same --dir, so both benchmarks read the very same bytes). Each round runs, in turn:

  sendpost-agent replay  `replay FILE` with the map holding every message, JSON to
                         /dev/null (as bench/catchup.py runs it), no Postfix configuration
                         (a missing --postfix-config-dir). Its events are counted once,
                         in an untimed run through a pipe, before the rounds.
  prometheus-postfix-exporter
                         Debian's postfix_exporter, following a file (this build has no
                         journal source). It tails from the end, so it is started on an
                         empty file; once it is seen following (a probe line is counted),
                         the whole log is appended in one go and /metrics is polled every
                         POLL seconds until its counters reach the totals counted here.
                         Time: from the start of the append to the first poll that sees
                         the totals (nothing subtracted; granularity one poll).
  mtail                  the postfix program Debian ships (mtail's examples/postfix.mtail),
                         in --one_shot mode: read the file from start to EOF, print the
                         metrics, exit. Time: the process's wall time.
  pflogsumm              `pflogsumm FILE`, its report read through a pipe. Wall time.

Rounds alternate the tools (A B C D A B C D ...) because the machine is noisy; the table
gives medians of the wall time (lines/s, and the ratio to ours) and of the CPU time the
tool used (user + system, all threads; for the exporter from the append to the totals).
Every run's counters are checked against totals counted from the file by a plain Python
pass (status= lines by daemon and status, and the other lines the peers count), and a
mismatch stops the benchmark. The tools count different things: the exporter and mtail
count deliveries (smtp lines with relay= and delays=, one histogram observation per
delay stage, so 4 per line) but not their outcome (the exporter counts deferrals apart);
pflogsumm counts sent, deferrals, bounced; none of the three counts status=expired. Ours
emits one event per status line, but one bounce per recipient still deferred when its
message expires.

    python bench/peers.py --lines 1000000 --rounds 3 --dir /tmp/sendpost-bench

Needs the Debian packages prometheus-postfix-exporter, mtail and pflogsumm.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catchup import build  # type: ignore[import-not-found]
from genlog import generate  # type: ignore[import-not-found]
from procstat import cpu_seconds  # type: ignore[import-not-found]

POLL = 0.05  # seconds between two scrapes of the exporter's /metrics
MTAIL_PROGRAM = Path("/usr/share/doc/mtail/examples/postfix.mtail")
PACKAGES = ("prometheus-postfix-exporter", "mtail", "pflogsumm")
# A line the exporter counts (postfix_smtpd_connects_total) without touching any status:
# appended before the log, it proves the exporter follows the file from a known point.
PROBE = b"Nov 23 00:00:00 mx1 postfix/smtpd[1]: connect from probe.invalid[192.0.2.1]\n"
LINE = re.compile(r"postfix/([\w./-]+)\[\d+\]: (.*)")
STATUS = re.compile(r"status=(\w+)")

Checks = dict[str, int]  # name of a count -> the value expected


@dataclass
class Totals:
    """What the file holds, counted plainly."""

    lines: int = 0
    status: Counter[tuple[str, str]] = field(default_factory=Counter)  # (daemon, status)
    smtp_deliveries: int = 0  # smtp status lines with relay= and delays=
    expired_recipients: int = 0  # deferred recipients still pending when the message expired
    cleanup_message_ids: int = 0
    qmgr_removed: int = 0
    smtpd_connects: int = 0

    def by_status(self, status: str) -> int:
        return sum(n for (_, s), n in self.status.items() if s == status)


def count(log: Path) -> Totals:
    totals = Totals()
    pending: dict[str, set[str]] = {}  # queue ID -> recipients deferred and not yet final
    with log.open(encoding="utf-8", errors="replace") as f:
        for raw in f:
            totals.lines += 1
            m = LINE.search(raw)
            if m is None:
                continue
            daemon, text = m.group(1).rsplit("/", 1)[-1], m.group(2)
            s = STATUS.search(text)
            if s is not None:
                status = s.group(1)
                totals.status[daemon, status] += 1
                qid, _, rest = text.partition(": ")
                if status == "expired":
                    totals.expired_recipients += len(pending.pop(qid, ()))
                elif rest.startswith("to=<"):
                    rcpt = rest[4 : rest.find(">")]
                    if status == "deferred":
                        pending.setdefault(qid, set()).add(rcpt)
                    else:
                        pending.get(qid, set()).discard(rcpt)
                if daemon == "smtp" and ", relay=" in text and " delays=" in text:
                    totals.smtp_deliveries += 1
            elif daemon == "cleanup" and ": message-id=<" in text:
                totals.cleanup_message_ids += 1
            elif daemon == "qmgr" and text.endswith(": removed"):
                totals.qmgr_removed += 1
            elif daemon == "smtpd" and text.startswith("connect from "):
                totals.smtpd_connects += 1
    return totals


def prometheus_sums(text: str) -> Counter[str]:
    """Metric name -> sum of its samples over all label sets."""
    sums: Counter[str] = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            sums[key.split("{", 1)[0]] += float(value)  # type: ignore[assignment]
    return sums


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Run:
    seconds: float  # wall time
    cpu: float  # user + system CPU seconds of the tool's processes
    counters: dict[str, float]
    note: str = ""


def timed(cmd: list[str], **kwargs: object) -> tuple[float, float, bytes]:
    """Wall and CPU time of a command run to its end, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, done.stdout or b""


def compare(tool: str, got: dict[str, float], want: Checks) -> None:
    wrong = {k: (got.get(k, 0), v) for k, v in want.items() if got.get(k, 0) != v}
    if wrong:
        detail = ", ".join(f"{k}: {g:g} (expected {w})" for k, (g, w) in wrong.items())
        raise SystemExit(f"{tool}: counters differ from the file's totals: {detail}")


@dataclass
class Tool:
    name: str
    mode: str
    want: Checks
    run: Callable[[], Run]
    runs: list[Run] = field(default_factory=list)


def ours(log: Path, state: Path, work: Path, totals: Totals) -> Tool:
    cmd = [
        sys.executable,
        "-m",
        "sendpost_agent",
        "replay",
        str(log),
        "--state-dir",
        str(state),
        "--log-timezone",
        "UTC",
        "--postfix-config-dir",
        str(work / "no-postfix-config"),
    ]
    env = {**os.environ, "SENDPOST_CONFIG": "/dev/null"}
    # One event per status line, except that status=expired (one line per message) yields
    # one bounce per recipient still deferred then.
    want = {
        "delivered": totals.by_status("sent"),
        "deferred": totals.by_status("deferred"),
        "bounced+soft_bounced": totals.by_status("bounced") + totals.expired_recipients,
    }

    def events() -> dict[str, float]:
        """An untimed run through a pipe, to count the events (timed runs write nowhere)."""
        out = subprocess.run(cmd, capture_output=True, check=True, env=env).stdout
        got = {
            "delivered": out.count(b'"event_type":"delivered"'),
            "deferred": out.count(b'"event_type":"deferred"'),
            "bounced+soft_bounced": out.count(b'"event_type":"bounced"')
            + out.count(b'"event_type":"soft_bounced"'),
        }
        if sum(got.values()) != out.count(b"\n"):
            raise SystemExit("sendpost-agent replay: events of another type than expected")
        return got

    counted: dict[str, float] = {}

    def run() -> Run:
        if not counted:
            counted.update(events())
        seconds, cpu, _ = timed(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return Run(seconds, cpu, counted)

    return Tool("sendpost-agent replay", "replay FILE > /dev/null", want, run)


def exporter(log: Path, work: Path, totals: Totals, timeout: float) -> Tool:
    want = {
        "postfix_smtp_delivery_delay_seconds_count": 4 * totals.smtp_deliveries,
        "postfix_smtp_status_deferred": totals.status["smtp", "deferred"],
        "postfix_cleanup_messages_processed_total": totals.cleanup_message_ids,
        "postfix_qmgr_messages_removed_total": totals.qmgr_removed,
        "postfix_smtpd_connects_total": totals.smtpd_connects,
    }
    binary = shutil.which("prometheus-postfix-exporter") or "prometheus-postfix-exporter"

    def run() -> Run:
        target, port = work / "exporter-follows.log", free_port()
        target.write_bytes(b"")
        url = f"http://127.0.0.1:{port}/metrics"
        with (work / "exporter.stderr").open("w") as stderr:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--postfix.logfile_path={target}",
                    f"--postfix.showq_path={work / 'no-showq'}",
                ],  # no queue gauge: no Postfix
                stdout=stderr,
                stderr=stderr,
            )
        try:

            def scrape() -> Counter[str]:
                if proc.poll() is not None:
                    raise SystemExit(
                        f"prometheus-postfix-exporter exited ({proc.returncode});"
                        f" see {work / 'exporter.stderr'}"
                    )
                with urllib.request.urlopen(url, timeout=10) as response:
                    return prometheus_sums(response.read().decode())

            base = follow(target, scrape)
            with log.open("rb") as src, target.open("r+b") as dst:
                dst.seek(0, os.SEEK_END)  # sendfile refuses an O_APPEND file
                cpu = cpu_seconds(proc.pid)
                started = time.perf_counter()
                size, offset = os.fstat(src.fileno()).st_size, 0
                while offset < size:
                    offset += os.sendfile(dst.fileno(), src.fileno(), offset, size - offset)
            appended = time.perf_counter() - started
            while True:
                sums = scrape()
                seconds = time.perf_counter() - started
                got = {k: sums[k] - base[k] for k in want}
                if all(got[k] >= v for k, v in want.items()):
                    return Run(
                        seconds,
                        cpu_seconds(proc.pid) - cpu,
                        got,
                        f" (the append itself took {appended:.2f} s)",
                    )
                if seconds > timeout:
                    raise SystemExit(
                        f"prometheus-postfix-exporter: {timeout:.0f} s after the"
                        f" append, counters {got} short of {want}"
                    )
                time.sleep(POLL)
        finally:
            proc.terminate()
            proc.wait()
            target.unlink()

    return Tool(
        "prometheus-postfix-exporter",
        f"follows FILE; append, poll /metrics every {POLL * 1000:.0f} ms",
        want,
        run,
    )


def follow(target: Path, scrape: Callable[[], Counter[str]]) -> Counter[str]:
    """Wait until the exporter serves /metrics and follows `target`; its counters then."""
    deadline = time.monotonic() + 30
    while True:
        try:
            sums = scrape()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL)
    # It opens the file and seeks to its end in the background: append probe lines until
    # one is counted, so that the log appended next is certainly read from its start.
    while sums["postfix_smtpd_connects_total"] == 0:
        if time.monotonic() > deadline:
            raise SystemExit("prometheus-postfix-exporter does not count appended lines")
        with target.open("ab") as f:
            f.write(PROBE)
        for _ in range(10):
            time.sleep(POLL)
            sums = scrape()
            if sums["postfix_smtpd_connects_total"]:
                break
    return sums


def mtail(log: Path, work: Path, totals: Totals) -> Tool:
    if not MTAIL_PROGRAM.exists():
        raise SystemExit(
            f"{MTAIL_PROGRAM} is missing: Debian's mtail package ships it"
            " (unless dpkg is told to leave out /usr/share/doc)"
        )
    progs = work / "mtail-progs"
    progs.mkdir(parents=True, exist_ok=True)
    shutil.copy(MTAIL_PROGRAM, progs / MTAIL_PROGRAM.name)  # --progs loads a whole directory
    want = {
        "postfix_smtp_delivery_delay_seconds_count": 4 * totals.smtp_deliveries,
        "postfix_cleanup_messages_processed_total": totals.cleanup_message_ids,
        "postfix_qmgr_messages_removed_total": totals.qmgr_removed,
        "postfix_smtpd_connects_total": totals.smtpd_connects,
    }

    def run() -> Run:
        # One-shot mode still opens its HTTP port: a free one, on loopback.
        cmd = [
            "mtail",
            "--progs",
            str(progs),
            "--logs",
            str(log),
            "--one_shot",
            "--one_shot_format",
            "prometheus",
            "--address",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--logtostderr",
        ]
        seconds, cpu, out = timed(cmd, capture_output=True)
        sums = prometheus_sums(out.decode())
        return Run(seconds, cpu, {k: sums[k] for k in want})

    return Tool("mtail (postfix.mtail)", "--one_shot: FILE start to EOF, exit", want, run)


def pflogsumm(log: Path, totals: Totals) -> Tool:
    want = {
        "delivered": totals.by_status("sent"),
        "deferrals": totals.by_status("deferred"),
        "bounced": totals.by_status("bounced"),
    }
    grand = {
        "delivered": re.compile(r"^\s*(\d+)\s+delivered$", re.M),
        "deferrals": re.compile(r"^\s*\d+\s+deferred\s+\((\d+)\s+deferrals\)", re.M),
        "bounced": re.compile(r"^\s*(\d+)\s+bounced$", re.M),
    }

    def run() -> Run:
        seconds, cpu, out = timed(["pflogsumm", str(log)], capture_output=True)
        report = out.decode(errors="replace")
        got: dict[str, float] = {}
        for k, pattern in grand.items():
            m = pattern.search(report)
            got[k] = int(m.group(1)) if m else -1
        return Run(seconds, cpu, got)

    return Tool("pflogsumm", "pflogsumm FILE | pipe", want, run)


def versions() -> dict[str, str]:
    found = {
        "sendpost-agent replay": f"{version('sendpost-agent')} (Python"
        f" {sys.version.split()[0]}, {build()})"
    }
    names = {
        "prometheus-postfix-exporter": "prometheus-postfix-exporter",
        "mtail": "mtail (postfix.mtail)",
        "pflogsumm": "pflogsumm",
    }
    for package in PACKAGES:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        )
        found[names[package]] = done.stdout.strip() if done.returncode == 0 else "not installed"
    return found


def measure(
    lines: int,
    rounds: int,
    seed: int,
    where: Path,
    timeout: float = 600,
    report: Callable[[str], None] = print,
) -> list[Tool]:
    """Run every tool `rounds` times, alternating, each run checked; the tools with times."""
    missing = [
        b for b in ("prometheus-postfix-exporter", "mtail", "pflogsumm") if shutil.which(b) is None
    ]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (apt-get install {' '.join(PACKAGES)})")
    # The catch-up benchmark's names: both read the same file.
    log, state = where / f"mail-{lines}-{seed}.log", where / f"state-{seed}"
    if not log.exists() or not (state / "queuemap.sqlite3").exists():
        generate(lines, seed, log, state)
    work = where / "peers"
    work.mkdir(parents=True, exist_ok=True)
    totals = count(log)
    report(
        f"log: {log}: {totals.lines:,} lines, {sum(totals.status.values()):,} status lines"
        f" ({', '.join(f'{d} {s} {n:,}' for (d, s), n in sorted(totals.status.items()))})"
    )
    tools = [
        ours(log, state, work, totals),
        exporter(log, work, totals, timeout),
        mtail(log, work, totals),
        pflogsumm(log, totals),
    ]
    for r in range(rounds):
        for tool in tools:
            run = tool.run()
            compare(tool.name, run.counters, tool.want)
            tool.runs.append(run)
            report(
                f"  round {r + 1}: {tool.name}: {run.seconds:.2f} s, CPU {run.cpu:.2f} s" + run.note
            )
    return tools


def table(tools: list[Tool], lines: int, rounds: int) -> str:
    ver = versions()
    base = statistics.median(r.seconds for r in tools[0].runs)
    rows = [
        f"{rounds} rounds alternating, medians ({lines:,} lines):",
        f"  {'tool':<28} {'version':<22} {'wall s':>7} {'lines/s':>9} {'x ours':>6}"
        f" {'CPU s':>7} {'lines/CPU s':>11}",
    ]
    for tool in tools:
        wall = statistics.median(r.seconds for r in tool.runs)
        cpu = statistics.median(r.cpu for r in tool.runs)
        # /proc counts CPU in 10 ms ticks: a tiny input may take none of them.
        per_cpu = f"{lines / cpu:>11,.0f}" if cpu > 0 else f"{'< 1 tick':>11}"
        rows.append(
            f"  {tool.name:<28} {ver[tool.name]:<22} {wall:>7.2f} {lines / wall:>9,.0f}"
            f" {wall / base:>6.1f} {cpu:>7.2f} {per_cpu}"
        )
    rows.append("x ours: the tool's median wall time / ours (above 1: slower than ours)")
    rows.append(
        "modes, each round's wall s, and the counters checked against the file (all equal):"
    )
    for tool in tools:
        rows.append(
            f"  {tool.name}: {tool.mode}; rounds: {' '.join(f'{r.seconds:.2f}' for r in tool.runs)}"
        )
        rows.append("    " + ", ".join(f"{k}={v:,.0f}" for k, v in tool.runs[-1].counters.items()))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[Tool]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sendpost-bench"))
    parser.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="give up on a tool's counters after this many seconds",
    )
    args = parser.parse_args(argv)
    tools = measure(args.lines, args.rounds, args.seed, args.dir, args.timeout)
    print(table(tools, args.lines, args.rounds))
    return tools


if __name__ == "__main__":
    main()
