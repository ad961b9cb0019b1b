"""REST: printers (``/api/printers``)."""

from __future__ import annotations

from quart import Blueprint, Response

from printfarmd.api.context import services
from printfarmd.api.respond import body_of, json_response
from printfarmd.api.serialize import printer_json
from printfarmd.api.shapes import Maintenance

bp = Blueprint("printers", __name__)


def _printer(printer_id: str) -> Response:
    sched = services().owner
    view = sched.printer_view(printer_id)
    return json_response(printer_json(view, sched.printers[printer_id].eta))


@bp.get("/api/printers")
async def list_printers() -> Response:
    sched = services().owner
    return json_response(
        {"printers": [printer_json(p, sched.printers[p.id].eta) for p in sched.printer_views()]}
    )


@bp.get("/api/printers/<printer_id>")
async def get_printer(printer_id: str) -> Response:
    return _printer(printer_id)


@bp.post("/api/printers/<printer_id>/clear")
async def clear_plate(printer_id: str) -> Response:
    await services().owner.clear_plate(printer_id)
    return _printer(printer_id)


@bp.post("/api/printers/<printer_id>/maintenance")
async def maintenance(printer_id: str) -> Response:
    body = await body_of(Maintenance)
    await services().owner.set_maintenance(printer_id, body.enabled)
    return _printer(printer_id)
