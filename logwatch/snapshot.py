"""logwatch's state at one instant, as /health, /metrics and `sendpost-agent status` show it.

The agent takes a ``Snapshot`` of its components; each reader renders that one value:
/health as JSON (with the verdict), /metrics as Prometheus families, `status` as text
after reading /health's JSON back into a ``Snapshot``. So a figure has one name and one
meaning in all three, and when logwatch is unhealthy is decided here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

FAILING_TOO_LONG = 300.0  # seconds without a 2xx while events wait
WAL_NEARLY_FULL = 0.9


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    taken_at: float  # Unix time
    # the mail log (the follower's counters count since logwatch started)
    lines_read: int
    lines_parsed: int  # lines that were delivery-relevant records
    lines_cut: int  # lines over 1 MiB, cut to their first MiB
    rotations: int  # moves to a newer log file
    truncations: int  # copytruncate, truncation or overwrite in place
    lag_bytes: int  # bytes of the log not read yet
    log_source: str  # file or journal (log-source)
    journal_lag_seconds: float  # age of the last journal entry read while more wait
    journal_gaps: int  # saved journal cursors found vacuumed: entries may be lost
    journal_gap: str | None  # the last such gap
    log_error: str | None  # why the log cannot be read, while it cannot
    reading_paused: bool  # the WAL is full: reading waits for the API
    events_by_type: Mapping[str, int]
    lines_without_event: Mapping[str, int]  # by reason
    # the WAL
    pending_events: int
    wal_bytes: int
    wal_max_bytes: int
    wal_torn_records: int  # dropped at start (power loss)
    # Events written before an unclean stop that the re-read has not given again yet: no
    # cursor is saved meanwhile (join-wait of log time at most, unless the log's time
    # stands still), so a further crash re-reads from the same place.
    recognising_events: int
    # shipping
    events_sent: int
    events_dead_lettered: int
    batches: Mapping[str, int]  # POSTs by outcome: 2xx, 4xx, 5xx, error
    api_key_rejected: bool
    failing_since: float | None  # Unix time of the first failure since the last 2xx
    last_success: float | None
    last_error: str | None
    state_write_errors: int  # failed writes of the ack or dead-letter file
    state_write_error: str | None  # the last one, while they fail

    def problems(self) -> list[str]:
        """Every reason the agent is not doing its job, with the fix; empty when healthy."""
        reasons: list[str] = []
        if self.api_key_rejected:
            reasons.append("the API rejects the api-key (401/403): set the right key")
        if self.state_write_error is not None:
            reasons.append(
                f"{self.state_write_error}: events wait in the WAL until it can be"
                " written (free disk space?)"
            )
        failing = None if self.failing_since is None else self.taken_at - self.failing_since
        if failing is not None and failing > FAILING_TOO_LONG:
            reasons.append(f"the endpoint has failed for {failing:.0f} s: {self.last_error}")
        fill = self.wal_bytes / self.wal_max_bytes
        if fill >= WAL_NEARLY_FULL:
            reasons.append(
                f"the WAL is {fill:.0%} full"
                + ("; log reading is paused" if self.reading_paused else "")
            )
        if self.log_error is not None:
            reasons.append(f"cannot read the mail log: {self.log_error}")
        return reasons

    def to_health(self) -> dict[str, object]:
        """/health's JSON body: the verdict, its reasons and every field."""
        reasons = self.problems()
        return {"status": "unhealthy" if reasons else "ok", "reasons": reasons, **asdict(self)}

    @classmethod
    def from_health(cls, body: Mapping[str, object]) -> Snapshot:
        """Read /health's body back; ValueError names a missing field (another version)."""
        missing = [f.name for f in fields(cls) if f.name not in body]
        if missing:
            raise ValueError(f"/health has no {', '.join(missing)}")
        return cls(**{f.name: body[f.name] for f in fields(cls)})  # type: ignore[arg-type]
