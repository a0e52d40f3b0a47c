"""``/health`` and ``/metrics`` on ``listen``: what an operator's monitoring asks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from logwatch.agent import Agent
    from logwatch.metrics import AgentMetrics


def make_app(agent: Agent, metrics: AgentMetrics) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        body = agent.snapshot().to_health()
        return web.Response(
            status=200 if body["status"] == "ok" else 503,
            text=json.dumps(body),
            content_type="application/json",
        )

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_page)
    return app
