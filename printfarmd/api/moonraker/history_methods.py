"""``server.history.*``: Moonraker's history API over the farm's print attempts.

One entry per attempt of a farm job on a printer (``store/history.py`` derives them from
the event log). The entry is Moonraker's (``job_id`` = the attempt's uid in hex,
``status``, ``start_time``/``end_time``, ``print_duration``/``total_duration`` (the same:
the farm does not subtract pauses), ``filament_used`` in mm, the file's ``metadata``,
``exists``), with the farm's facts in ``auxiliary_data`` (printer, farm job, reason),
which Mainsail's details dialog lists. ``notify_history_changed`` is sent when an attempt
begins (``added``) and ends (``finished``), and for a delete (``deleted``) and a totals
reset (``totals_reset``): both UIs refresh their totals on any of them.
"""

from __future__ import annotations

from typing import Any

from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.rpc import Caller, method
from printfarmd.store import history as h

#: Moonraker's default page; it treats ``limit <= 0`` as "all" (the farm: up to MAX_PAGE).
DEFAULT_LIMIT = 50


def _aux(name: str, description: str, value: str) -> dict[str, Any]:
    # A one-element list: Mainsail formats a plain value as a number and a list as text.
    return {
        "provider": "printfarmd",
        "name": name,
        "value": [value],
        "description": description,
        "units": None,
    }


def entry(a: h.Attempt, now: float, exists: bool) -> dict[str, Any]:
    """Moonraker's history job for attempt ``a``."""
    duration = round(a.duration(now), 3)
    aux = [_aux("printer", "Printer", a.printer_id or "?"), _aux("farm_job", "Farm job", a.job_id)]
    if a.reason:
        aux.append(_aux("reason", "Why it ended", a.reason))
    return {
        "job_id": a.uid,
        "user": "No User",
        "filename": a.filename,
        "status": a.status,
        "start_time": a.start_time,
        "end_time": a.end_time,
        "print_duration": duration,
        "total_duration": duration,
        "filament_used": round(a.filament_used, 2),
        "metadata": a.metadata or {},
        "auxiliary_data": aux,
        "exists": exists,
        "printer_id": a.printer_id,
    }


async def entries(caller: Caller, attempts: list[h.Attempt]) -> list[dict[str, Any]]:
    book = caller.facade.history
    exists = await book.exists(attempts)
    now = book.wall()
    return [entry(a, now, exists.get(a.filename, False)) for a in attempts]


def _time(args: Args, name: str) -> float | None:
    value = args.get(name, None)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RpcError(400, f"Invalid Type for argument: {name}, expected float") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RpcError(400, f"Invalid Type for argument: {name}, expected float")
    # Moonraker's "not given" is -1.
    return None if value < 0 else float(value)


@method("server.history.list", ("GET", "/server/history/list"))
async def history_list(caller: Caller, args: Args) -> dict[str, Any]:
    start = args.get_int("start", 0)
    limit = args.get_int("limit", DEFAULT_LIMIT)
    order = args.get_str("order", "desc").lower()
    if order not in ("asc", "desc"):
        raise RpcError(400, f"Invalid `order` value: {order[:20]}")
    where = h.Filter(since=_time(args, "since"), before=_time(args, "before"))
    limit = h.MAX_PAGE if limit <= 0 else min(limit, h.MAX_PAGE)
    attempts, _ = await caller.facade.history.page(
        where, limit=limit, offset=max(start, 0), descending=order == "desc"
    )
    jobs = await entries(caller, attempts)
    return {"count": len(jobs), "jobs": jobs}


def _uid(args: Args) -> int:
    uid = args.get_str("uid")
    attempt_id = h.parse_uid(uid)
    if attempt_id is None:
        raise RpcError(404, f"Invalid job uid: {uid[:20]}")
    return attempt_id


@method("server.history.get_job", ("GET", "/server/history/job"))
async def history_get_job(caller: Caller, args: Args) -> dict[str, Any]:
    attempt_id = _uid(args)
    found = await caller.facade.history.get(attempt_id)
    if found is None:
        raise RpcError(404, f"Invalid job uid: {attempt_id:06X}")
    return {"job": (await entries(caller, [found]))[0]}


@method("server.history.delete_job", ("DELETE", "/server/history/job"))
async def history_delete_job(caller: Caller, args: Args) -> dict[str, Any]:
    book = caller.facade.history
    if args.get_bool("all", False):
        deleted = await book.delete(None)
    else:
        attempt_id = _uid(args)
        deleted = await book.delete([attempt_id])
        if not deleted:
            raise RpcError(404, f"Invalid job uid: {attempt_id:06X}")
    return {"deleted_jobs": [f"{i:06X}" for i in deleted]}


@method("server.history.totals", ("GET", "/server/history/totals"))
async def history_totals(caller: Caller, args: Args) -> dict[str, Any]:
    return {"job_totals": await caller.facade.history.totals(), "auxiliary_totals": []}


@method("server.history.reset_totals", ("POST", "/server/history/reset_totals"))
async def history_reset_totals(caller: Caller, args: Args) -> dict[str, Any]:
    book = caller.facade.history
    last = await book.reset_totals()
    # Moonraker answers the last totals; Fluidd stores ``job_totals`` from this answer,
    # so the new (zero) totals are given too.
    return {
        "last_totals": last,
        "last_auxiliary_totals": [],
        "job_totals": await book.totals(),
        "auxiliary_totals": [],
    }


async def notification(caller: Caller, event: Any) -> list[dict[str, Any]]:
    """``notify_history_changed`` params for a committed event (none if it changes no
    entry)."""
    book = caller.facade.history
    if event.type == "job.transition":
        out = []
        for a in await book.by_seq(event.seq):
            action = "added" if a.open_seq == event.seq else "finished"
            if a.deleted_at is None:
                out.append({"action": action, "job": (await entries(caller, [a]))[0]})
        return out
    if event.type == "history.deleted":
        return [{"action": "deleted", "job": None, "deleted_jobs": event.data.get("ids", [])}]
    if event.type == "history.totals_reset":
        return [{"action": "totals_reset", "job": None}]
    return []
