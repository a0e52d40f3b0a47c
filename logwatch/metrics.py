"""logwatch's Prometheus metrics: the agent's snapshot, taken at scrape time.

The components keep plain counters (they are on the hot path); this collector turns
the snapshot of them (logwatch/snapshot.py, which /health and `status` show too) into
metric families when Prometheus asks, so nothing is counted twice. Prefix
``sendpost_agent_``, base units, ``_total`` counters, no per-message labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from logwatch.agent import Agent

PREFIX = "sendpost_agent"


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.send_seconds = Histogram(
            f"{PREFIX}_send_duration_seconds",
            "Time of one POST to the ingestion API",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def watch(self, agent: Agent) -> None:
        self.registry.register(_AgentCollector(agent))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _labelled(name: str, doc: str, label: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


class _AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        now = self._agent.snapshot()
        yield _counter("log_lines_read", "Mail log lines read", now.lines_read)
        yield _counter(
            "log_lines_parsed", "Lines that were delivery-relevant records", now.lines_parsed
        )
        yield _counter("log_lines_cut", "Lines over 1 MiB, cut to their first MiB", now.lines_cut)
        yield _counter("log_rotations", "Moves to a newer mail log file", now.rotations)
        yield _counter(
            "log_truncations",
            "Truncations of the mail log (copytruncate, truncation, overwrite in place)",
            now.truncations,
        )
        yield _labelled("events", "Events produced, by type", "type", now.events_by_type)
        yield _labelled(
            "lines_without_event",
            "Relevant lines that produced no event, by reason",
            "reason",
            now.lines_without_event,
        )
        yield _labelled(
            "batches",
            "POSTs to the ingestion API, by outcome (HTTP status class or error)",
            "outcome",
            now.batches,
        )
        yield _counter("events_sent", "Events accepted by the API", now.events_sent)
        yield _counter(
            "events_dead_lettered", "Events the API refused, set aside", now.events_dead_lettered
        )
        yield _counter(
            "state_write_errors",
            "Failed writes of the WAL ack file or the dead-letter file (retried)",
            now.state_write_errors,
        )
        yield _counter(
            "wal_torn_records", "Torn WAL records found and skipped at start", now.wal_torn_records
        )
        yield _gauge("wal_bytes", "Size of the WAL on disk", now.wal_bytes)
        yield _gauge("wal_events", "Events in the WAL not yet accepted", now.pending_events)
        yield _gauge(
            "recognising_events",
            "Events written before an unclean stop not yet given again by the re-read"
            " (no cursor is saved meanwhile)",
            now.recognising_events,
        )
        yield _gauge(
            "log_reading_paused",
            "1 while the WAL is full and reading waits",
            1.0 if now.reading_paused else 0.0,
        )
        yield _gauge("cursor_lag_bytes", "Bytes of the mail log not read yet", now.lag_bytes)
        yield _gauge(
            "journal_lag_seconds",
            "log-source journal: age of the last entry read while more wait (0: caught up)",
            now.journal_lag_seconds,
        )
        yield _counter(
            "journal_gaps",
            "Saved journal cursors found vacuumed (entries in between may be lost)",
            now.journal_gaps,
        )
        source = GaugeMetricFamily(
            f"{PREFIX}_log_source", "Where the log is read (log-source)", labels=["source"]
        )
        source.add_metric([now.log_source], 1.0)
        yield source
        yield _gauge(
            "last_success_timestamp_seconds",
            "When the API last accepted a batch (0: never)",
            now.last_success or 0.0,
        )
        yield _gauge(
            "api_key_rejected",
            "1 while the API rejects the key",
            1.0 if now.api_key_rejected else 0.0,
        )
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "Agent version", labels=["version"])
        info.add_metric([now.version], 1.0)
        yield info
