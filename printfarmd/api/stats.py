"""``GET /api/stats``: per printer and per file, from every print attempt.

For each group: ``attempts`` (and how many ended each way), ``success_rate``
(completed / (completed + error + interrupted): a cancel is the operator's choice, not a
failure; ``null`` with nothing finished), ``print_hours`` (time spent printing, ended
attempts), ``filament_m`` / ``filament_g`` (the file's filament times how much of it was
printed: all of it when completed, the progress reached otherwise), ``mtbf_hours`` (mean
time between failures: print hours per failed attempt; ``null`` without failures) and
``last_failure``. Printers also get ``outcomes_by_day``: how the attempts that ended on
each of the last ``days`` UTC days ended (the dashboard draws it). Every attempt counts,
also one a Moonraker client deleted from its history view.

``compute`` is pure (tested directly); the route reads the attempts and calls it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from quart import Blueprint, Response, request

from printfarmd.api.history import book, int_arg, parse_time
from printfarmd.api.respond import json_response
from printfarmd.api.serialize import iso
from printfarmd.store.history import FAILURES, STATUSES, Attempt, Status
from printfarmd.store.upkeep import UpkeepStore, Usage

bp = Blueprint("stats", __name__)
DEFAULT_DAYS = 30
MAX_DAYS = 366
_ENDED = (Status.COMPLETED, Status.CANCELLED, Status.ERROR, Status.INTERRUPTED)


def _cost(attempts: Sequence[Attempt], costs: Mapping[int, Usage]) -> dict[str, Any]:
    """(issue 16) What the attempts cost (those recorded when they ended)."""
    found = [costs[a.id] for a in attempts if a.id in costs]
    filament = sum(u.filament_cost for u in found)
    energy = sum(u.energy_cost for u in found)
    return {
        "filament": round(filament, 4),
        "energy": round(energy, 4),
        "total": round(filament + energy, 4),
        "energy_kwh": round(sum(u.energy_kwh for u in found), 6),
        "attempts": len(found),
    }


def _group(attempts: Sequence[Attempt]) -> dict[str, Any]:
    counts = {s: 0 for s in STATUSES}
    for a in attempts:
        counts[a.status] = counts.get(a.status, 0) + 1
    ended = [a for a in attempts if a.end_time is not None]
    failures = [a for a in ended if a.status in FAILURES]
    judged = counts[Status.COMPLETED] + sum(counts[s] for s in FAILURES)
    hours = sum(a.duration(a.end_time or a.start_time) for a in ended) / 3600.0
    last = max(failures, key=lambda a: (a.end_time or 0.0, a.id), default=None)
    return {
        "attempts": len(attempts),
        **counts,
        "success_rate": round(counts[Status.COMPLETED] / judged, 4) if judged else None,
        "print_hours": round(hours, 3),
        "filament_m": round(sum(a.filament_used for a in attempts) / 1000.0, 3),
        "filament_g": round(sum(a.filament_grams for a in attempts), 2),
        "mtbf_hours": round(hours / len(failures), 3) if failures else None,
        "last_failure": None
        if last is None
        else {
            "at": iso(last.end_time),
            "status": last.status,
            "reason": last.reason,
            "job_id": last.job_id,
            "printer_id": last.printer_id,
        },
    }


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def outcomes_by_day(attempts: Iterable[Attempt], until: float, days: int) -> list[dict[str, Any]]:
    """One entry per UTC day, oldest first, ending with the day of ``until``: how many
    attempts that ended that day completed, were cancelled, failed or were interrupted."""
    last = dt.datetime.fromtimestamp(until, dt.UTC).date()
    order = [(last - dt.timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]
    table = {d: {s: 0 for s in _ENDED} for d in order}
    for a in attempts:
        if a.end_time is None or a.status not in _ENDED:
            continue
        day = _day(a.end_time)
        if day in table:
            table[day][a.status] += 1
    return [{"date": d, **table[d]} for d in order]


def compute(
    attempts: Sequence[Attempt],
    now: float,
    days: int = DEFAULT_DAYS,
    costs: Mapping[int, Usage] | None = None,
    currency: str = "",
) -> dict[str, Any]:
    """The statistics document for ``attempts`` (``now``: the end of the day window);
    with ``costs`` (issue 16: usage by attempt id) each group has its ``cost``. Pure."""
    if costs is not None:
        body = compute(attempts, now, days)
        printer_of: dict[str, list[Attempt]] = {}
        file_of: dict[str, list[Attempt]] = {}
        for a in attempts:
            printer_of.setdefault(a.printer_id or "", []).append(a)
            file_of.setdefault(a.filename, []).append(a)
        body["farm"]["cost"] = _cost(attempts, costs)
        for entry in body["printers"]:
            entry["cost"] = _cost(printer_of[entry["printer_id"] or ""], costs)
        for entry in body["files"]:
            entry["cost"] = _cost(file_of[entry["filename"]], costs)
        body["currency"] = currency
        return body
    by_printer: dict[str, list[Attempt]] = {}
    by_file: dict[str, list[Attempt]] = {}
    for a in attempts:
        by_printer.setdefault(a.printer_id or "", []).append(a)
        by_file.setdefault(a.filename, []).append(a)
    printers = [
        {
            "printer_id": pid or None,
            **_group(group),
            "outcomes_by_day": outcomes_by_day(group, now, days),
        }
        for pid, group in sorted(by_printer.items())
    ]
    return {
        "farm": _group(attempts),
        "printers": printers,
        "files": [{"filename": name, **_group(group)} for name, group in sorted(by_file.items())],
        "days": days,
    }


@bp.get("/api/stats")
async def stats() -> Response:
    since = parse_time("since", request.args.get("since"))
    before = parse_time("before", request.args.get("before"))
    days = int_arg("days", DEFAULT_DAYS, 1, MAX_DAYS)
    history = book()
    attempts = await history.attempts_between(since, before)
    now = before if before is not None else history.wall()
    costs = await UpkeepStore(history.svc.store).usage_of_attempts([a.id for a in attempts])
    body = compute(attempts, now, days, costs, history.svc.config.cost.currency)
    return json_response({"since": iso(since), "before": iso(before), **body})
