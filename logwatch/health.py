"""``/health`` and ``/metrics`` on ``listen``: what an operator's monitoring asks."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sendpost_agent import __version__

if TYPE_CHECKING:
    from logwatch.agent import Agent
    from logwatch.metrics import AgentMetrics

FAILING_TOO_LONG = 300.0  # seconds without a 2xx while events wait
WAL_NEARLY_FULL = 0.9


def evaluate(agent: Agent, now: float) -> tuple[bool, dict[str, object]]:
    """(healthy, body): every reason the agent is not doing its job, with the fix."""
    shipper, wal = agent.shipper, agent.wal
    reasons: list[str] = []
    if shipper.key_rejected:
        reasons.append("the API rejects the api-key (401/403): set the right key")
    if shipper.write_error is not None:
        reasons.append(
            f"{shipper.write_error}: events wait in the WAL until it can be"
            " written (free disk space?)"
        )
    if shipper.failing_since is not None and now - shipper.failing_since > FAILING_TOO_LONG:
        reasons.append(
            f"the endpoint has failed for {now - shipper.failing_since:.0f} s: {shipper.last_error}"
        )
    fill = wal.size_bytes / agent.wal_cap
    if fill >= WAL_NEARLY_FULL:
        reasons.append(
            f"the WAL is {fill:.0%} full" + ("; log reading is paused" if agent.paused else "")
        )
    if agent.log_error is not None:
        reasons.append(f"cannot read the mail log: {agent.log_error}")
    body: dict[str, object] = {
        "status": "unhealthy" if reasons else "ok",
        "reasons": reasons,
        "version": __version__,
        "pending_events": wal.pending,
        "wal_bytes": wal.size_bytes,
        "lag_bytes": agent.lag_bytes(),
        "last_success": shipper.last_success,
        "last_error": shipper.last_error,
        "events_sent": shipper.events_sent,
    }
    return not reasons, body


def make_app(agent: Agent, metrics: AgentMetrics) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        healthy, body = evaluate(agent, time.time())
        return web.Response(
            status=200 if healthy else 503, text=json.dumps(body), content_type="application/json"
        )

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_page)
    return app
