"""Runs the real `sendpost-agent milter` as a separate process for tests."""

from __future__ import annotations

from pathlib import Path

from sendpost_agent.miltersocket import connect
from sendpost_agent.queuemap import Entry, MapReader
from tests.support.process import AgentProcess


def _connectable(address: str) -> bool:
    try:
        connect(address, 1.0)
    except OSError:
        return False
    return True


class MilterProcess(AgentProcess):
    """Ready once the milter socket accepts and /metrics answers."""

    command = "milter"
    listen_flag = "--milter-listen"

    def __init__(self, state_dir: Path, milter_socket: str, *extra_args: str) -> None:
        super().__init__(state_dir, "--milter-socket", milter_socket, *extra_args)
        self.socket = milter_socket

    def ready(self) -> bool:
        return _connectable(self.socket) and super().ready()

    def start(self, timeout: float = 20.0) -> MilterProcess:
        super().start(timeout)
        return self

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
