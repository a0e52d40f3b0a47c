"""Runs the real `sendpost-agent logwatch` as a separate process for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ingest import IngestServer
from tests.support.milter import MilterProcess
from tests.support.postfix import PostfixInstance
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


#: smtpd_milters for a PostfixInstance: the milter socket inside its queue directory.
MILTER = "{ unix:sendpost-agent/milter.sock, default_action=accept, command_timeout=5s }"


@contextmanager
def live_product(
    postfix: PostfixInstance, state_dir: Path, api_key: str, *logwatch_args: str
) -> Iterator[tuple[IngestServer, LogwatchProcess]]:
    """The whole product around ``postfix`` (made with ``smtpd_milters=MILTER``, not
    started): an ingestion server, the milter, then Postfix, then logwatch following
    its maillog (with ``logwatch_args`` added). Yields the server and logwatch
    (running; a test may stop it)."""
    postfix.queue_directory.mkdir(parents=True, exist_ok=True)
    with (
        IngestServer(api_key) as server,
        MilterProcess(state_dir, f"unix:{postfix.queue_directory}/sendpost-agent/milter.sock"),
    ):
        postfix.start()
        agent = LogwatchProcess(
            state_dir,
            postfix.maillog,
            server.url,
            api_key,
            "--postfix-config-dir",
            str(postfix.config_dir),
            *logwatch_args,
        ).start()
        try:
            yield server, agent
        finally:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()
