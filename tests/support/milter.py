"""Runs the real `sendpost-agent milter` as a separate process for tests (Controller-style)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sendpost_agent.queuemap import Entry, MapReader
from tests.support.postfix import free_port


def _connectable(address: str) -> bool:
    kind, _, rest = address.partition(":")
    if kind == "unix":
        family, target = socket.AF_UNIX, rest
    else:
        host, _, port = rest.rpartition(":")
        family, target = socket.AF_INET, (host, int(port))  # type: ignore[assignment]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect(target)
        except OSError:
            return False
        return True


class MilterProcess:
    """`start()` returns once the milter socket accepts and /metrics answers, or raises."""

    def __init__(self, state_dir: Path, milter_socket: str, *extra_args: str) -> None:
        self.state_dir = state_dir
        self.socket = milter_socket
        self.metrics_port = free_port()
        self.log_path = state_dir.parent / f"milter-{self.metrics_port}.log"
        self.args = [
            sys.executable, "-m", "sendpost_agent", "milter",
            "--state-dir", str(state_dir),
            "--milter-socket", milter_socket,
            "--milter-listen", f"127.0.0.1:{self.metrics_port}",
            "--log-level", "debug",
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> MilterProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                     env={**os.environ, "SENDPOST_CONFIG": "/dev/null"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milter exited with {self.proc.returncode}:\n{self.log()}")
            if _connectable(self.socket) and self._metrics_text() is not None:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"milter did not come up within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def _metrics_text(self) -> str | None:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        """Sample name with labels (``x_total{state="present"}``) -> value."""
        text = self._metrics_text()
        assert text is not None, "metrics endpoint did not answer"
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def entry(self, queue_id: str) -> Entry | None:
        reader = MapReader(self.state_dir / "queuemap.sqlite3")
        try:
            return reader.get(queue_id)
        finally:
            reader.close()

    def __enter__(self) -> MilterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
