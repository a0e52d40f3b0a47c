"""logwatch's Prometheus metrics: read from the components at scrape time.

The components keep plain counters (they are on the hot path); this collector turns
them into metric families when Prometheus asks, so nothing is counted twice. Prefix
``sendpost_agent_``, base units, ``_total`` counters, no per-message labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sendpost_agent import __version__

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


class _AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        pipeline, shipper, wal = agent.pipeline, agent.shipper, agent.wal
        yield _counter("log_lines_read", "Mail log lines read", pipeline.lines_read)
        yield _counter(
            "log_lines_parsed", "Lines that were delivery-relevant records", pipeline.lines_parsed
        )
        events = CounterMetricFamily(
            f"{PREFIX}_events", "Events produced, by type", labels=["type"]
        )
        for event_type, count in sorted(agent.events_by_type.items()):
            events.add_metric([event_type], count)
        yield events
        unmatched = CounterMetricFamily(
            f"{PREFIX}_lines_without_event",
            "Relevant lines that produced no event, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(pipeline.counts().items()):
            unmatched.add_metric([reason], count)
        yield unmatched
        batches = CounterMetricFamily(
            f"{PREFIX}_batches",
            "POSTs to the ingestion API, by outcome (HTTP status class or error)",
            labels=["outcome"],
        )
        for outcome, count in sorted(shipper.batches.items()):
            batches.add_metric([outcome], count)
        yield batches
        yield _counter("events_sent", "Events accepted by the API", shipper.events_sent)
        yield _counter(
            "events_dead_lettered", "Events the API refused, set aside", shipper.dead_lettered
        )
        yield _counter(
            "state_write_errors",
            "Failed writes of the WAL ack file or the dead-letter file (retried)",
            shipper.write_errors,
        )
        yield _counter(
            "wal_torn_records", "Torn WAL records found and skipped at start", wal.torn_records
        )
        yield _gauge("wal_bytes", "Size of the WAL on disk", wal.size_bytes)
        yield _gauge("wal_events", "Events in the WAL not yet accepted", wal.pending)
        yield _gauge(
            "log_reading_paused",
            "1 while the WAL is full and reading waits",
            1.0 if agent.paused else 0.0,
        )
        yield _gauge("cursor_lag_bytes", "Bytes of the mail log not read yet", agent.lag_bytes())
        yield _gauge(
            "last_success_timestamp_seconds",
            "When the API last accepted a batch (0: never)",
            shipper.last_success or 0.0,
        )
        yield _gauge(
            "api_key_rejected",
            "1 while the API rejects the key",
            1.0 if shipper.key_rejected else 0.0,
        )
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "Agent version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
