"""The milter's own Prometheus counters, in a registry of its own (no global state)."""

from __future__ import annotations

import prometheus_client.metrics
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from sendpost_agent import __version__
from sendpost_agent.queuemap import HeaderState

PREFIX = "sendpost_milter"
# *_created series only double the output. prometheus-client 0.17 calls this switch
# disable_created_metrics(); Debian 12's 0.16 has only the flag that it sets.
prometheus_client.metrics._use_created = False


class MilterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        reg = self.registry
        self.messages = Counter(
            f"{PREFIX}_messages", "Messages seen at end-of-message", registry=reg
        )
        header = Counter(
            f"{PREFIX}_header",
            "Messages by state of the X-Sendpost-Message-UUID header",
            ["state"],
            registry=reg,
        )
        self.header = {state: header.labels(state.name.lower()) for state in HeaderState}
        self.no_queue_id = Counter(
            f"{PREFIX}_no_queue_id",
            "Messages for which the MTA sent no queue ID macro (i); not recorded",
            registry=reg,
        )
        self.map_write_errors = Counter(
            f"{PREFIX}_map_write_errors", "Failed writes to the queue map", registry=reg
        )
        self.errors = Counter(
            f"{PREFIX}_internal_errors",
            "Unexpected errors; the message was accepted anyway",
            registry=reg,
        )
        self.probes = Counter(
            f"{PREFIX}_doctor_probes",
            "Probes of `sendpost-agent doctor`, discarded",
            registry=reg,
        )
        self.map_write_seconds = Histogram(
            f"{PREFIX}_map_write_seconds",
            "Time to commit one group of queue map rows",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
            registry=reg,
        )
        self.map_rows_pending = Gauge(
            f"{PREFIX}_map_rows_pending",
            "Messages answered whose map row is not committed yet (a crash would lose them)",
            registry=reg,
        )
        Gauge(f"{PREFIX}_build_info", "Agent version", ["version"], registry=reg).labels(
            __version__
        ).set(1)
