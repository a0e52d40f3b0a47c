"""Milter cost: Postfix's receive throughput with and without our milter, alternating.

A private Postfix (the test harness's, tests/support/postfix.py) relays to a sink in a
process of its own; 4 SMTP clients each send their share of the messages over one
connection. Rounds alternate without milter / with milter (unix socket as shipped, and
inet), and the medians are compared. Also reports the client-side latency of one message
(DATA to the 250 reply) and the milter's own map-write histogram.

    python bench/milter_cost.py --messages 2000 --rounds 3      (as root)
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.milter import MilterProcess
from tests.support.postfix import PostfixInstance, build_message, free_port
from tests.support.sink import Sink

MILTER = "{ %s, default_action=accept, command_timeout=5s }"


def send_all(port: int, messages: int, clients: int) -> tuple[float, list[float]]:
    """Wall time for all messages and each message's DATA latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        mine = []
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            for _ in range(count):
                raw = build_message("sender@example.com", ["ok@example.com"],
                                    {"X-Sendpost-Message-UUID": str(uuid.uuid4())}, "hi\n")
                smtp.mail("sender@example.com")
                smtp.rcpt("ok@example.com")
                started = time.perf_counter()
                smtp.data(raw)
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(messages // clients,))
               for _ in range(clients)]
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
    """The sink runs apart from the clients, as the relay host would on a network: in this
    process its Python work took the clients' GIL and inflated their DATA latency."""
    child = subprocess.Popen([sys.executable, __file__, "--serve-sink"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def one_round(root: Path, mode: str, messages: int, clients: int,
              sink_port: int) -> dict[str, float]:
    postfix = PostfixInstance(root / "pf", sink_port, smtp_probe=False)
    milter = None
    if mode != "none":
        postfix.queue_directory.mkdir(parents=True, exist_ok=True)
        socket = (f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock" if mode == "unix"
                  else f"inet:127.0.0.1:{free_port()}")
        entry = "unix:sendpost-agent/milter.sock" if mode == "unix" else socket
        postfix.postconf(smtpd_milters=MILTER % entry)
        milter = MilterProcess(root / "state", socket).start()
    postfix.start()
    try:
        wall, latencies = send_all(postfix.smtp_port, messages, clients)
        metrics = milter.metrics() if milter else {}
    finally:
        postfix.stop()
        if milter:
            milter.stop()
    latencies.sort()
    return {
        "rate": messages / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "map_write_mean_ms": 1000 * metrics.get("sendpost_milter_map_write_seconds_sum", 0)
        / max(1.0, metrics.get("sendpost_milter_map_write_seconds_count", 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink()
        return
    results: dict[str, list[dict[str, float]]] = {"none": [], "unix": [], "inet": []}
    sink, sink_port = start_sink()
    try:
        for r in range(args.rounds):
            for mode in results:  # A B C A B C ...: the machine's noise hits all alike
                with tempfile.TemporaryDirectory(prefix=f"milter-cost-{mode}-{r}-") as tmp:
                    Path(tmp).chmod(0o755)
                    x = one_round(Path(tmp), mode, args.messages, args.clients, sink_port)
                results[mode].append(x)
                # Per round too: medians alone hide a round the machine's noise spoiled.
                print(f"  round {r} milter={mode:5} {x['rate']:7.1f} msg/s  DATA latency"
                      f" p50 {x['p50_ms']:.1f} ms p99 {x['p99_ms']:.1f} ms", flush=True)
    finally:
        sink.communicate()  # closes its stdin: it stops
    base = statistics.median(x["rate"] for x in results["none"])
    print(f"{args.messages} messages, {args.clients} clients, {args.rounds} rounds (medians)")
    for mode, runs in results.items():
        rate = statistics.median(x["rate"] for x in runs)
        p50 = statistics.median(x["p50_ms"] for x in runs)
        p99 = statistics.median(x["p99_ms"] for x in runs)
        write = statistics.median(x["map_write_mean_ms"] for x in runs)
        print(f"  milter={mode:5} {rate:7.1f} msg/s  ratio {rate / base:.2f}  DATA latency"
              f" p50 {p50:.1f} ms p99 {p99:.1f} ms" + (f"  map write {write:.3f} ms"
                                                        if mode != "none" else ""))


if __name__ == "__main__":
    main()
