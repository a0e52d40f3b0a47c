"""Runs the real `sendpost-agent milter` as a separate process for tests."""

from __future__ import annotations

import time
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

    def __init__(
        self,
        state_dir: Path,
        milter_socket: str,
        *extra_args: str,
        postfix_config_dir: Path | None = None,
    ) -> None:
        """``postfix_config_dir``: the Postfix configuration whose mynetworks the milter
        trusts; by default one of its own with the test instances' ``127.0.0.0/8``, so
        that the test clients on loopback are trusted as by a real Postfix."""
        if postfix_config_dir is None:
            postfix_config_dir = state_dir.parent / f"{state_dir.name}-postfix-etc"
            postfix_config_dir.mkdir(parents=True, exist_ok=True)
            (postfix_config_dir / "main.cf").write_text("mynetworks = 127.0.0.0/8\n")
            (postfix_config_dir / "master.cf").touch()
        super().__init__(
            state_dir,
            "--milter-socket",
            milter_socket,
            "--postfix-config-dir",
            str(postfix_config_dir),
            *extra_args,
        )
        self.socket = milter_socket

    def ready(self) -> bool:
        return _connectable(self.socket) and super().ready()

    def start(self, timeout: float = 20.0) -> MilterProcess:
        super().start(timeout)
        return self

    def settled(self, timeout: float = 10.0) -> None:
        """Wait until every answered message's row is committed (rows are committed in
        groups after the answer, sendpost_milter.groupwriter). A deadline for a loaded
        machine, not a speed bound: the bound is in docs/GUARANTEES.md."""
        deadline = time.monotonic() + timeout
        while self._serving() and self.metrics().get("sendpost_milter_map_rows_pending", 0.0) > 0:
            assert time.monotonic() < deadline, f"map rows still pending after {timeout}s"
            time.sleep(0.005)

    def _serving(self) -> bool:
        """Neither exited nor stopped (SIGSTOP, a hung milter): else nothing will commit."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat[stat.rindex(")") + 2] != "T"

    def entry(self, queue_id: str) -> Entry | None:
        """The row of ``queue_id`` once every answered message's row is committed."""
        self.settled()
        reader = MapReader(self.state_dir / "queuemap.sqlite3")
        try:
            return reader.get(queue_id)
        finally:
            reader.close()

    def __enter__(self) -> MilterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
