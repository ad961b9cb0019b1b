"""``GET /metrics``: Prometheus text format (issue 8).

Behind the API key like every route, unless ``server.metrics_public`` (the decision is
``auth.public_by_config``).
"""

from __future__ import annotations

from quart import Blueprint, Response

from printfarmd.api.context import services
from printfarmd.services.metrics import HeapCounts, render

bp = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/metrics")
async def metrics() -> Response:
    svc = services()
    health = svc.owner.health()
    text = render(
        await svc.store.count_jobs_by_state(),
        health.printers_by_state,
        health.queue_depth,
        svc.owner.counters,
        HeapCounts.now(),
    )
    return Response(text, content_type=CONTENT_TYPE)
