"""``server.spoolman.*``: the spool panels of Mainsail and Fluidd (issue 16).

Moonraker's ``[spoolman]`` component (``moonraker/components/spoolman.py``) tracks one
active spool for its one printer. The farm shows the UIs one printer, so the facade's
active spool is the spool bound to the first tool of ``spoolman.facade_printer`` (the
first configured printer when empty): reading it, setting it and unsetting it are the
farm's own bindings (``PUT /api/printers/{id}/spool`` does the same).

- ``server.spoolman.get_spool_id`` / ``post_spool_id`` (``GET``/``POST
  /server/spoolman/spool_id``): ``{"spool_id": id | null}``; a missing or null
  ``spool_id`` (or 0, which Mainsail treats as none) unbinds.
- ``server.spoolman.proxy`` (``POST /server/spoolman/proxy``): ``request_method``,
  ``path`` (must start with ``/v1/``), ``query``, ``body``, ``use_v2_response``; the
  request goes to Spoolman's ``/api`` + ``path``. Version 1 answers Spoolman's JSON (an
  error status is the call's error); version 2 answers ``{"response", "response_headers",
  "error"}`` with ``error`` ``{"status_code", "message"}``.
- ``server.spoolman.status`` (``GET /server/spoolman/status``): ``spoolman_connected``,
  ``pending_reports`` (the usage not yet reported; ``filament_used`` is in grams: the
  farm reports weight, where Moonraker reports length), ``spool_id``.
- Notifications: ``notify_active_spool_set`` when that binding changes (whoever changed
  it), ``notify_spoolman_status_changed`` when Spoolman stops or starts answering.

Without ``spoolman.url`` the component is absent (not in ``server.info``'s components)
and the methods answer "Method not found", as Moonraker's do.
"""

from __future__ import annotations

import re
from typing import Any

from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.rpc import Caller, method
from printfarmd.errors import FarmError
from printfarmd.services.spoolman import SpoolmanService, SpoolmanUnreachable
from printfarmd.store.upkeep import UpkeepStore

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
#: A proxied path: ``/v1/`` and then URL path characters only (no query, no fragment,
#: no dot segments): the request cannot leave Spoolman's API.
_PATH_RE = re.compile(r"/v1/[A-Za-z0-9_\-./~]*")
_QUERY_RE = re.compile(r"[A-Za-z0-9_\-.~%=&+,:]*")
NOT_AVAILABLE = "Spoolman server not available"
#: Response headers a proxied answer carries (Spoolman paginates with X-Total-Count).
_HEADERS = ("content-type", "x-total-count")


def _service(caller: Caller) -> SpoolmanService:
    svc = caller.facade.svc
    if svc.spoolman is None:
        raise RpcError(404, "Method not found")
    return svc.spoolman


def facade_printer(caller: Caller) -> str | None:
    """The printer whose first tool the facade's active spool is."""
    svc = caller.facade.svc
    wanted = svc.config.spoolman.facade_printer
    if wanted:
        return wanted if wanted in svc.owner.printers else None
    return next(iter(svc.owner.printers), None)


def active_spool(caller: Caller) -> int | None:
    pid = facade_printer(caller)
    slot = caller.facade.svc.owner.printers.get(pid or "")
    if slot is None or not slot.spools:
        return None
    return slot.spools[0]


@method("server.spoolman.get_spool_id", ("GET", "/server/spoolman/spool_id"))
async def get_spool_id(caller: Caller, args: Args) -> dict[str, Any]:
    _service(caller)
    return {"spool_id": active_spool(caller)}


@method("server.spoolman.post_spool_id", ("POST", "/server/spoolman/spool_id"))
async def post_spool_id(caller: Caller, args: Args) -> dict[str, Any]:
    _service(caller)
    spool_id = args.get_int("spool_id", None)
    if spool_id is not None and spool_id < 0:
        raise RpcError(400, "spool_id must be a Spoolman spool id (or null)")
    pid = facade_printer(caller)
    if pid is None:
        raise RpcError(400, "no printer to bind a spool to")
    try:
        await caller.facade.svc.owner.bind_spool(pid, 0, spool_id or None)
    except FarmError as exc:
        # A spool Spoolman does not know is the caller's mistake (not a missing method).
        raise RpcError(400 if exc.status == 404 else exc.status, exc.message) from None
    return {"spool_id": active_spool(caller)}


@method("server.spoolman.proxy", ("POST", "/server/spoolman/proxy"))
async def proxy(caller: Caller, args: Args) -> Any:
    service = _service(caller)
    request_method = args.get_str("request_method")
    path = args.get_str("path")
    query = args.get_str("query", None)
    body = args.get("body", None)
    v2 = args.get_bool("use_v2_response", False)
    if request_method not in _METHODS:
        raise RpcError(400, f"Invalid HTTP method: {request_method[:16]}")
    if body is not None and request_method == "GET":
        raise RpcError(400, "GET requests cannot have a body")
    if len(path) < 4 or not path.startswith("/v1/"):
        raise RpcError(400, "Invalid path, must start with the API version, e.g. /v1")
    if len(path) > 512 or not _PATH_RE.fullmatch(path) or "/../" in f"{path}/":
        raise RpcError(400, "Invalid path: only a path of Spoolman's API")
    if query is not None and (len(query) > 2048 or not _QUERY_RE.fullmatch(query)):
        raise RpcError(400, "Invalid query string")
    client = service.client
    if client is None or service.connected is False:
        return _unavailable(v2)
    try:
        resp = await client.request(request_method, path, query=query, body=body)
    except SpoolmanUnreachable:
        return _unavailable(v2)
    try:
        payload = resp.json() if resp.content else None
    except ValueError:
        payload = None
    ok = 200 <= resp.status_code < 300
    if not v2:
        if not ok:
            message = _message(payload) or resp.reason_phrase or f"HTTP {resp.status_code}"
            raise RpcError(resp.status_code if resp.status_code >= 400 else 500, message)
        return payload
    if not ok:
        return {
            "response": None,
            "error": {
                "status_code": resp.status_code,
                "message": _message(payload) or resp.reason_phrase or "",
            },
        }
    headers = {k: v for k, v in resp.headers.items() if k.lower() in _HEADERS}
    return {"response": payload, "response_headers": headers, "error": None}


def _message(payload: Any) -> str | None:
    if isinstance(payload, dict):
        msg = payload.get("message") or payload.get("detail")
        if msg is not None:
            return (msg if isinstance(msg, str) else str(msg))[:300]
    return None


def _unavailable(v2: bool) -> dict[str, Any]:
    if not v2:
        raise RpcError(503, NOT_AVAILABLE)
    return {"response": None, "error": {"status_code": 503, "message": NOT_AVAILABLE}}


@method("server.spoolman.status", ("GET", "/server/spoolman/status"))
async def status(caller: Caller, args: Args) -> dict[str, Any]:
    service = _service(caller)
    pending = await UpkeepStore(caller.facade.svc.store).pending()
    return {
        "spoolman_connected": bool(service.connected),
        "pending_reports": [
            {"spool_id": o.spool_id, "filament_used": round(o.grams, 3)} for o in pending
        ],
        "spool_id": active_spool(caller),
    }
