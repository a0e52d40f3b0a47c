"""Milter cost: Postfix's receive throughput with and without our milter, alternating.

A private Postfix (the test harness's, tests/support/postfix.py) relays to a sink in a
process of its own; 4 SMTP clients each send their share of the messages over one
connection. Rounds alternate without milter / with milter (unix socket as shipped, and
inet); the ratio is the median of each round's rate over that round's rate without a
milter (medians of the rates are shown too). Also reported: the client-side latency of one
message (DATA to the 250 reply), the milter's CPU and context switches per message
(all its threads, /proc, while the clients send), the whole machine's CPU per message
(/proc/stat, without time stolen by other guests) and the mean time of one of our map
commits (a group of rows under load).

``--reference`` adds three milters that do nothing but answer (bench/reference/):
the least a pymilter milter for our job can do (``ref-pymilter``: DATA answered,
headers without reply, ACCEPT at end-of-message, all else negotiated away), the floor
our target is set against (ours / ref-pymilter, the median of each round's ratio); one
on libmilter in C, the floor any libmilter milter pays; and one in a single Python
thread without libmilter. They show how much of the cost is ours and how much the
protocol layer's.

``--baseline PYTHON`` adds our milter as installed for another interpreter (another
checkout's venv), run alternately with this one: before/after of a change in one run.

    python bench/milter_cost.py --messages 2000 --rounds 5 --reference      (as root)
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procstat import busy_seconds, context_switches, cpu_seconds  # type: ignore[import-not-found]

from tests.support.milter import MilterProcess
from tests.support.postfix import PostfixInstance, build_message, free_port
from tests.support.sink import Sink

MILTER = "{ %s, default_action=accept, command_timeout=5s }"
REFERENCE = Path(__file__).resolve().parent / "reference"
OURS = ("unix", "inet")
REFERENCES = ("ref-pymilter", "ref-libmilter", "ref-single")
FLOOR = "ref-pymilter"  # the target: ours / FLOOR, per round
Metrics = Callable[[], dict[str, float]]
Running = tuple[int, Metrics]  # a milter's pid and how to read its /metrics


def send_all(port: int, messages: int, clients: int) -> tuple[float, list[float]]:
    """Wall time for all messages and each message's DATA latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        mine = []
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            for _ in range(count):
                raw = build_message(
                    "sender@example.com",
                    ["ok@example.com"],
                    {"X-Sendpost-Message-UUID": str(uuid.uuid4())},
                    "hi\n",
                )
                smtp.mail("sender@example.com")
                smtp.rcpt("ok@example.com")
                started = time.perf_counter()
                smtp.data(raw)
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(messages // clients,)) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies


def serve_sink() -> None:
    """Child process: the relay target, until stdin closes; messages are dropped."""
    with Sink() as sink:
        print(sink.port, flush=True)
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        while not stop.wait(1.0):
            sink.clear()


def start_sink() -> tuple[subprocess.Popen[str], int]:
    """The sink runs apart from the clients, as the relay host would on a network: in
    this process its Python work took the clients' GIL and inflated their DATA latency."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-sink"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def build_reference(work: Path) -> Path:
    """Compile the C reference milter (needs gcc and libmilter-dev, as .ci/run installs)."""
    source = REFERENCE / "noop_libmilter.c"
    binary = work / "noop_libmilter"
    built = (
        shutil.which("gcc") is not None
        and subprocess.run(
            ["gcc", "-O2", "-o", str(binary), str(source), "-lmilter", "-pthread"]
        ).returncode
        == 0
    )
    if not built:
        sys.exit(
            f"--reference: cannot compile {source}; it needs gcc and libmilter-dev"
            " (apt-get install gcc libmilter-dev)"
        )
    return binary


@contextmanager
def reference_milter(argv: list[str], sock: Path) -> Iterator[Running]:
    """Run a reference milter on a unix socket Postfix (group postfix) can use."""
    sock.parent.mkdir(parents=True, exist_ok=True)
    os.chown(sock.parent, -1, grp.getgrnam("postfix").gr_gid)
    sock.parent.chmod(0o2770)  # the socket inherits group postfix
    proc = subprocess.Popen([*argv, f"unix:{sock}"], cwd="/")
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(argv)} did not listen on {sock}")
            time.sleep(0.02)
        sock.chmod(0o660)
        yield proc.pid, dict
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def our_milter(root: Path, socket: str, python: str | None = None) -> Iterator[Running]:
    milter = MilterProcess(root / "state", socket)
    if python is not None:
        milter.args[:1] = [python, "-P"]  # -P: its own installed code, not this checkout's
    milter.start()
    try:
        assert milter.proc is not None
        yield milter.proc.pid, milter.metrics
    finally:
        milter.stop()


@contextmanager
def no_milter() -> Iterator[Running]:
    yield 0, dict


def one_round(
    root: Path,
    mode: str,
    messages: int,
    clients: int,
    sink_port: int,
    c_reference: Path | None,
    baseline: str | None,
) -> dict[str, float]:
    postfix = PostfixInstance(root / "pf", sink_port, smtp_probe=False)
    start: Callable[[], AbstractContextManager[Running]] = no_milter
    if mode != "none":
        postfix.queue_directory.mkdir(parents=True, exist_ok=True)
        sock = postfix.queue_directory / "sendpost-agent" / "milter.sock"
        address = f"inet:127.0.0.1:{free_port()}" if mode == "inet" else f"unix:{sock}"
        entry = address if mode == "inet" else "unix:sendpost-agent/milter.sock"
        postfix.postconf(smtpd_milters=MILTER % entry)
        if mode in OURS:
            start = partial(our_milter, root, address)
        elif mode == "baseline":
            start = partial(our_milter, root, address, baseline)
        elif mode == "ref-libmilter":
            start = partial(reference_milter, [str(c_reference)], sock)
        elif mode == FLOOR:
            script = str(REFERENCE / "minimal_pymilter.py")
            start = partial(reference_milter, [sys.executable, script], sock)
        else:
            script = str(REFERENCE / "noop_singlethread.py")
            start = partial(reference_milter, [sys.executable, script], sock)
    with start() as (pid, read_metrics):
        postfix.start()
        try:
            cpu, switches = (cpu_seconds(pid), context_switches(pid)) if pid else (0.0, 0)
            busy = busy_seconds()
            wall, latencies = send_all(postfix.smtp_port, messages, clients)
            busy = busy_seconds() - busy
            if pid:
                cpu, switches = cpu_seconds(pid) - cpu, context_switches(pid) - switches
            metrics = read_metrics()
        finally:
            postfix.stop()
    # A milter Postfix cannot use is skipped (default_action=accept) with a warning: such
    # a round measured Postfix alone, and is refused.
    trouble = [
        line for line in postfix.maillog_lines() if "warning:" in line and "milter" in line.lower()
    ]
    if trouble:
        raise RuntimeError(
            f"milter={mode}: Postfix could not use the milter:\n" + "\n".join(trouble[:5])
        )
    latencies.sort()
    return {
        "rate": messages / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "cpu_us": 1e6 * cpu / messages,
        "host_cpu_us": 1e6 * busy / messages,
        "host_busy": busy / wall / (os.cpu_count() or 1),
        "switches": switches / messages,
        "map_write_mean_ms": 1000
        * metrics.get("sendpost_milter_map_write_seconds_sum", 0)
        / max(1.0, metrics.get("sendpost_milter_map_write_seconds_count", 0)),
        # Map rows per commit (grouped under load; 0 without our milter's metrics).
        "rows_per_commit": metrics.get("sendpost_milter_messages_total", 0)
        / max(1.0, metrics.get("sendpost_milter_map_write_seconds_count", 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run the no-op reference milters of bench/reference/",
    )
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run our milter as installed for this interpreter (unix socket)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink()
        return
    modes = [
        "none",
        *OURS,
        *(["baseline"] if args.baseline else []),
        *(REFERENCES if args.reference else ()),
    ]
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    sink, sink_port = start_sink()
    with tempfile.TemporaryDirectory(prefix="milter-cost-") as work:
        c_reference = build_reference(Path(work)) if args.reference else None
        try:
            for r in range(args.rounds):
                for mode in modes:  # A B C A B C ...: the machine's noise hits all alike
                    with tempfile.TemporaryDirectory(prefix=f"milter-cost-{mode}-{r}-") as tmp:
                        Path(tmp).chmod(0o755)
                        x = one_round(
                            Path(tmp),
                            mode,
                            args.messages,
                            args.clients,
                            sink_port,
                            c_reference,
                            args.baseline,
                        )
                    results[mode].append(x)
                    # Per round too: medians alone hide a round the machine's noise spoiled.
                    print(
                        f"  round {r} milter={mode:13} {x['rate']:7.1f} msg/s  DATA latency"
                        f" p50 {x['p50_ms']:.1f} ms p99 {x['p99_ms']:.1f} ms  host CPU"
                        f" {x['host_cpu_us']:.0f} us/msg ({x['host_busy']:.0%} busy)"
                        + (
                            f"  milter CPU {x['cpu_us']:.0f} us/msg,"
                            f" {x['switches']:.1f} switches/msg"
                            if mode != "none"
                            else ""
                        ),
                        flush=True,
                    )
        finally:
            sink.communicate()  # closes its stdin: it stops
    base = statistics.median(x["rate"] for x in results["none"])
    summary = {}
    print(
        f"{args.messages} messages, {args.clients} clients, {args.rounds} rounds (medians;"
        " ratio: median of each round's ratio to that round's no-milter rate)"
    )
    for mode, runs in results.items():
        row = {key: statistics.median(x[key] for x in runs) for key in runs[0]}
        row["ratio"] = statistics.median(
            x["rate"] / none["rate"] for x, none in zip(runs, results["none"], strict=True)
        )
        summary[mode] = row
        print(
            f"  milter={mode:13} {row['rate']:7.1f} msg/s  ratio {row['ratio']:.2f}"
            f" (of medians {row['rate'] / base:.2f})  DATA latency p50 {row['p50_ms']:.1f}"
            f" ms p99 {row['p99_ms']:.1f} ms  host CPU {row['host_cpu_us']:.0f} us/msg"
            f" ({row['host_busy']:.0%} busy)"
            + (
                f"  milter CPU {row['cpu_us']:.0f} us/msg, {row['switches']:.1f} switches/msg"
                if mode != "none"
                else ""
            )
            + (
                f"  map commit {row['map_write_mean_ms']:.3f} ms, {row['rows_per_commit']:.1f} rows"
                if mode in OURS
                else ""
            )
        )
    if FLOOR in results:
        floor = results[FLOOR]
        for mode in [m for m in modes if m in (*OURS, "baseline")]:
            ratios = sorted(
                x["rate"] / f["rate"] for x, f in zip(results[mode], floor, strict=True)
            )
            summary[mode][f"ratio_to_{FLOOR}"] = statistics.median(ratios)
            print(
                f"  {mode} / {FLOOR}: {statistics.median(ratios):.3f} (median of rounds;"
                f" rounds {', '.join(f'{r:.2f}' for r in ratios)}), milter CPU"
                f" {summary[mode]['cpu_us']:.0f} against {summary[FLOOR]['cpu_us']:.0f} us/msg"
            )
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rounds": results}, indent=1))


if __name__ == "__main__":
    main()
