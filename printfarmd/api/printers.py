"""REST: printers (``/api/printers``)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from printfarmd.api import upkeep
from printfarmd.api.context import local_printer, remote_printer, services
from printfarmd.api.respond import body_of, json_response
from printfarmd.api.serialize import printer_json
from printfarmd.api.shapes import Maintenance
from printfarmd.errors import BadRequest
from printfarmd.services.owner import Owner

bp = Blueprint("printers", __name__)


def _printer(printer_id: str) -> Response:
    return json_response(upkeep.printer_view(services().owner, printer_id))


def printer_dicts(owner: Owner) -> list[dict[str, Any]]:
    """This daemon's printers as ``GET /api/printers`` shows them."""
    explainer = owner.explainer()  # issue 16: why idle printers wait, worked out once
    return [
        {
            **printer_json(p, owner.printers[p.id].eta),
            **upkeep.printer_upkeep(owner, owner.printers[p.id], explainer),
        }
        for p in owner.printer_views()
    ]


@bp.get("/api/printers")
async def list_printers() -> Response:
    """The farm's printers: this daemon's, then (issue 18) the other daemons' of the
    cluster as they showed them last, each with its ``node``."""
    svc = services()
    shown = printer_dicts(svc.owner)
    if svc.cluster is not None:
        node = svc.cluster.member.node
        shown = [{**p, "node": node} for p in shown] + svc.cluster.remote_printers()
    return json_response({"printers": shown})


@bp.get("/api/printers/<printer_id>")
async def get_printer(printer_id: str) -> Response:
    remote = remote_printer(printer_id)
    return _printer(printer_id) if remote is None else json_response(remote)


@bp.post("/api/printers/<printer_id>/clear")
async def clear_plate(printer_id: str) -> Response:
    local_printer(printer_id)
    await services().owner.clear_plate(printer_id)
    return _printer(printer_id)


@bp.post("/api/printers/<printer_id>/maintenance")
async def maintenance(printer_id: str) -> Response:
    body = await body_of(Maintenance)
    local_printer(printer_id)
    if body.by is not None or body.work is not None or body.at is not None:
        if body.enabled is not None:
            raise BadRequest("enabled: either turn maintenance mode on or off, or record work done")
        return await upkeep.record_maintenance(printer_id, body)
    if body.enabled is None:
        raise BadRequest("enabled: required (true or false), or record work done with by and work")
    await services().owner.set_maintenance(printer_id, body.enabled)
    return _printer(printer_id)
