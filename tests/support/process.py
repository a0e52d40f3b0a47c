"""Runs a real `sendpost-agent COMMAND` as a separate process for tests (Controller-style).

`start()` returns once the process answers on its HTTP port (and whatever else the
subclass waits for), or raises with the process's log: tests fail fast and say why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.postfix import free_port


class AgentProcess:
    command = ""
    listen_flag = ""

    def __init__(self, state_dir: Path, *extra_args: str) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.log_path = state_dir.parent / f"{self.command}-{self.port}.log"
        self.args = [
            sys.executable,
            "-m",
            "sendpost_agent",
            self.command,
            "--state-dir",
            str(state_dir),
            self.listen_flag,
            f"127.0.0.1:{self.port}",
            "--log-level",
            "debug",
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        return self.get("/metrics") is not None

    def start(self, timeout: float = 20.0) -> AgentProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=log,
                env={**os.environ, "SENDPOST_CONFIG": "/dev/null"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.command} exited with {self.proc.returncode}:\n{self.log()}"
                )
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.command} did not come up within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
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

    def get(self, path: str) -> tuple[int, str] | None:
        """(status, body) of GET path, or None when nothing answers."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return None

    def health(self) -> tuple[int, dict[str, object]]:
        answer = self.get("/health")
        assert answer is not None, "health endpoint did not answer"
        return answer[0], json.loads(answer[1])

    def metrics(self) -> dict[str, float]:
        """Sample name with labels (``x_total{state="present"}``) -> value."""
        answer = self.get("/metrics")
        assert answer is not None, "metrics endpoint did not answer"
        out = {}
        for family in text_string_to_metric_families(answer[1]):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out
