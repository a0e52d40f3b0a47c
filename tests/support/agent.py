"""Runs the real `sendpost-agent logwatch` as a separate process for tests."""

from __future__ import annotations

from pathlib import Path

from tests.support.process import AgentProcess


class LogwatchProcess(AgentProcess):
    command = "logwatch"
    listen_flag = "--listen"

    def __init__(
        self, state_dir: Path, log_path: Path, endpoint: str, api_key: str, *extra_args: str
    ) -> None:
        super().__init__(
            state_dir,
            "--log-path",
            str(log_path),
            "--endpoint",
            endpoint,
            "--api-key",
            api_key,
            "--log-timezone",
            "UTC",
            "--postfix-config-dir",
            str(state_dir / "no-postfix"),
            *extra_args,
        )

    def start(self, timeout: float = 20.0) -> LogwatchProcess:
        super().start(timeout)
        return self

    def __enter__(self) -> LogwatchProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
