"""REST: the notification delivery log (``GET /api/notifications``).

What the notifier sent for each escalation and whether it arrived. A delivery's
``target`` is shown without secrets (no URL credentials or query string, no SMTP
password, no webhook secret); the stored address and payload never leave the daemon.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from printfarmd.api.context import services
from printfarmd.api.respond import json_response
from printfarmd.api.shapes import NOTIFICATION
from printfarmd.core.notify import Channel, Delivery, DeliveryStatus
from printfarmd.errors import BadRequest

bp = Blueprint("notifications", __name__)

MAX_LIMIT = 500
MAX_OFFSET = 10**9


def delivery_json(d: Delivery) -> dict[str, Any]:
    """One delivery as the API shows it (``shapes.NOTIFICATION``)."""
    return NOTIFICATION.dump(d)


def _choice(name: str, allowed: list[str]) -> str | None:
    value = request.args.get(name)
    if value is not None and value not in allowed:
        raise BadRequest(f"{name}: expected one of {', '.join(allowed)}")
    return value


@bp.get("/api/notifications")
async def list_notifications() -> Response:
    """Deliveries, newest first: ``{"notifications": [...], "total": n}``."""
    args = request.args
    try:
        limit = int(args.get("limit", "100"))
        offset = int(args.get("offset", "0"))
    except ValueError:
        raise BadRequest("limit and offset: expected integers") from None
    # The bound keeps the offset inside SQLite's 64-bit integers (OverflowError otherwise).
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise BadRequest(
            f"limit must be between 1 and {MAX_LIMIT} and offset between 0 and {MAX_OFFSET}"
        )
    status = _choice("status", [s.value for s in DeliveryStatus])
    channel = _choice("channel", [c.value for c in Channel])
    rows, total = await services().store.list_deliveries(
        job_id=args.get("job"), status=status, channel=channel, limit=limit, offset=offset
    )
    return json_response({"notifications": [delivery_json(d) for d in rows], "total": total})
