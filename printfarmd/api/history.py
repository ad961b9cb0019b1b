"""Print history: ``HistoryBook`` (shared by the REST API and the Moonraker facade) and
the REST listing ``GET /api/history`` (JSON, or CSV with ``Accept: text/csv``).

The attempts are derived in the store (``store/history.py``). The book adds what SQL
cannot know: each attempt's file metadata, read once from the file (the first time the
attempt is read: a listing, a notification) and kept with the attempt; and, once per
process, closes attempts left open by a database written before the history existed.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, current_app, request

from printfarmd.api.contract import MAX_UNIX_TIME, iso_seconds
from printfarmd.api.errors import RpcError
from printfarmd.api.respond import json_response
from printfarmd.api.serialize import iso
from printfarmd.api.upkeep_json import attempt_cost
from printfarmd.errors import BadRequest, FarmError
from printfarmd.models import Event
from printfarmd.services import files
from printfarmd.store import history as h
from printfarmd.store.upkeep import UpkeepStore

if TYPE_CHECKING:
    from printfarmd.api.context import Services
    from printfarmd.api.moonraker.file_methods import MetaCache

log = logging.getLogger("printfarmd.api.history")

bp = Blueprint("history", __name__)
BOOK_KEY = "PRINTFARMD_HISTORY"
#: Notifications of the same event for many websockets share one read.
SEQ_CACHE = 256
#: Default and largest page of ``GET /api/history``.
DEFAULT_LIMIT = 100
MAX_LIMIT = h.MAX_PAGE
#: Cells a spreadsheet would run as a formula get a leading quote (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class HistoryBook:
    """History reads with metadata recorded on the way; writes that publish their event.

    Every ``async`` method is a checkpoint and raises ``FarmError`` when the store cannot
    answer.
    """

    def __init__(self, svc: Services, meta_cache: MetaCache | None = None) -> None:
        self.svc = svc
        self.store = h.HistoryStore(svc.store)
        self.meta_cache = meta_cache
        self._prepared = False
        self._lock = trio.Lock()
        self._by_seq: dict[int, list[h.Attempt]] = {}
        #: UTC wall clock (stored times and "now" for open attempts).
        self.wall: Callable[[], float] = time.time

    @property
    def gcodes_root(self) -> Path:
        return self.svc.config.gcodes_path

    async def prepare(self) -> None:
        """Before a read: close stray open attempts (once), then record the metadata of
        attempts that have none (one read of each file). Storage trouble is logged and
        the read goes on with what is stored."""
        async with self._lock:
            try:
                if not self._prepared:
                    swept = await self.store.sweep_open(self.wall())
                    if swept:
                        log.warning("open history attempts closed", extra={"count": len(swept)})
                    self._prepared = True
                for name in await self.store.without_metadata():
                    meta = await trio.to_thread.run_sync(self._read_metadata, name)
                    total = _number(meta.get("filament_total"))
                    weight = _number(meta.get("filament_weight_total"))
                    await self.store.record_metadata(name, meta, total, weight)
            except FarmError as exc:
                log.warning("history metadata not recorded", extra={"reason": exc.message})

    def _read_metadata(self, name: str) -> dict[str, Any]:
        from printfarmd.api.moonraker.file_methods import file_metadata

        try:
            meta = file_metadata(self.gcodes_root, name, self.meta_cache)
        except (RpcError, OSError):
            return {}  # gone or unreadable: recorded as "nothing known"
        for redundant in ("filename", "print_start_time", "job_id"):
            meta.pop(redundant, None)
        return meta

    async def page(
        self, where: h.Filter, *, limit: int, offset: int, descending: bool = True
    ) -> tuple[list[h.Attempt], int]:
        await self.prepare()
        return await self.store.page(where, limit=limit, offset=offset, descending=descending)

    async def get(self, attempt_id: int) -> h.Attempt | None:
        await self.prepare()
        return await self.store.get(attempt_id)

    async def by_seq(self, seq: int) -> list[h.Attempt]:
        """The attempts event ``seq`` opened or closed (cached: one read for many sockets)."""
        if seq not in self._by_seq:
            await self.prepare()
            found = await self.store.by_seq(seq)
            self._by_seq[seq] = found
            while len(self._by_seq) > SEQ_CACHE:
                del self._by_seq[min(self._by_seq)]
        return self._by_seq[seq]

    async def totals(self) -> dict[str, float | int]:
        await self.prepare()
        return await self.store.totals()

    async def attempts_between(self, since: float | None, before: float | None) -> list[h.Attempt]:
        await self.prepare()
        return await self.store.attempts_between(since, before)

    async def last_prints(self, filenames: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per file with an attempt: Moonraker's ``print_start_time`` and ``job_id`` (the
        history uid) of its newest attempt."""
        if not filenames:
            return {}
        last = await self.store.last_attempts(filenames)
        return {
            name: {"print_start_time": a.start_time, "job_id": a.uid} for name, a in last.items()
        }

    async def delete(self, ids: Sequence[int] | None) -> list[int]:
        """Hide ``ids`` (all when ``None``) from the Moonraker history; publishes
        ``history.deleted`` after the commit. Returns the ids hidden."""
        deleted, event = await self.store.delete(ids, self.wall())
        self._publish(event)
        return deleted

    async def reset_totals(self) -> dict[str, float | int]:
        """Start the totals again; returns the last ones. Publishes ``history.totals_reset``."""
        last, event = await self.store.reset_totals(self.wall())
        self._publish(event)
        return last

    def _publish(self, event: Event | None) -> None:
        if event is not None:
            self.svc.bus.publish(event)

    async def exists(self, attempts: Sequence[h.Attempt]) -> dict[str, bool]:
        """Per file of ``attempts``: is it still there, unchanged since it was printed?"""
        wanted = {a.filename: (a.metadata or {}).get("modified") for a in attempts}
        return await trio.to_thread.run_sync(self._exists, wanted)

    def _exists(self, wanted: dict[str, Any]) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for name, modified in wanted.items():
            try:
                st = files.resolve_gcode(self.gcodes_root, name).stat()
            except (FarmError, OSError):
                out[name] = False
                continue
            out[name] = modified is None or abs(st.st_mtime - float(modified)) < 1e-3
        return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def book() -> HistoryBook:
    """The app's history book (the Moonraker facade creates it at install)."""
    found: HistoryBook = current_app.config[BOOK_KEY]
    return found


# ---------------------------------------------------------------- REST


def parse_time(name: str, raw: str | None) -> float | None:
    """A time filter: Unix seconds or ISO-8601 (``Z`` or an offset; naive means UTC)."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or not 0 <= value <= MAX_UNIX_TIME:
            raise BadRequest(f"{name}: Unix seconds must be between 0 and {MAX_UNIX_TIME:.0f}")
        return value
    stamp = iso_seconds(raw)
    if stamp is None:
        raise BadRequest(f"{name}: expected Unix seconds or an ISO-8601 time")
    if not 0 <= stamp <= MAX_UNIX_TIME:
        raise BadRequest(f"{name}: must be between 1970 and the year 5138")
    return stamp


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}: must be between {lo} and {hi}")
    return value


def _statuses(raw: str | None) -> tuple[str, ...]:
    out: list[str] = []
    for part in (raw or "").split(","):
        value = part.strip().lower()
        if not value:
            continue
        if value not in h.STATUSES:
            raise BadRequest(
                f"status: unknown status {part.strip()!r} (allowed: {', '.join(h.STATUSES)})"
            )
        out.append(value)
    return tuple(dict.fromkeys(out))


def attempt_json(a: h.Attempt, now: float) -> dict[str, Any]:
    """One attempt for the REST API."""
    return {
        "id": a.uid,
        "job_id": a.job_id,
        "printer_id": a.printer_id,
        "filename": a.filename,
        "sku": a.sku,
        "status": a.status,
        "started_at": iso(a.start_time),
        "ended_at": iso(a.end_time),
        "duration": round(a.duration(now), 3),
        "progress": None if a.progress is None else round(a.progress, 2),
        "reason": a.reason,
        "filament_used_mm": round(a.filament_used, 2),
        "filament_used_g": round(a.filament_grams, 3),
        "deleted": a.deleted_at is not None,
    }


CSV_COLUMNS = (
    "id",
    "job_id",
    "printer_id",
    "filename",
    "sku",
    "status",
    "started_at",
    "ended_at",
    "duration",
    "progress",
    "reason",
    "filament_used_mm",
    "filament_used_g",
    "deleted",
    # issue 16
    "cost_total",
    "currency",
)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` (``attempt_json`` dicts) as CSV with a header row (stdlib ``csv``). Pure."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    return out.getvalue()


def wants_csv() -> bool:
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip().lower() == "text/csv" for part in accept.split(","))


@bp.get("/api/history")
async def list_history() -> Response:
    args = request.args
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order: must be asc or desc")
    where = h.Filter(
        printer_id=args.get("printer") or None,
        filename=args.get("file") or None,
        sku=args.get("sku") or None,
        statuses=_statuses(args.get("status")),
        since=parse_time("since", args.get("since")),
        before=parse_time("before", args.get("before")),
        include_deleted=True,
    )
    limit = int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = int_arg("offset", 0, 0, 10**9)
    attempts, total = await book().page(
        where, limit=limit, offset=offset, descending=order == "desc"
    )
    now = book().wall()
    # issue 16: each attempt's cost (recorded when it ended)
    costs = await UpkeepStore(book().svc.store).usage_of_attempts([a.id for a in attempts])
    rows = [{**attempt_json(a, now), "cost": attempt_cost(costs.get(a.id))} for a in attempts]
    if wants_csv():
        for row in rows:
            row["cost_total"] = row["cost"]["total"] if row["cost"] else None
            row["currency"] = row["cost"]["currency"] if row["cost"] else None
        resp = Response(to_csv(rows), status=200, content_type="text/csv; charset=utf-8")
        resp.headers["X-Total-Count"] = str(total)
        resp.headers["Content-Disposition"] = 'attachment; filename="printfarmd-history.csv"'
        return resp
    return json_response({"entries": rows, "total": total, "offset": offset, "limit": limit})
