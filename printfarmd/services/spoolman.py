"""The Spoolman client (issue 16): reads the bound spools, sends the usage of ended
prints exactly once, and proxies the Moonraker facade's spool calls.

Spoolman's REST API v1 (the OpenAPI document Spoolman publishes, generated from
``spoolman/api/v1`` of Donkie/Spoolman; this client follows version 0.26.1): ``GET
/api/v1/spool/{id}`` (a ``Spool``: ``used_weight``, ``remaining_weight``,
``initial_weight``, ``price``, ``archived``, ``filament`` with ``material``,
``color_hex``, ``multi_color_hexes``, ``price`` and ``weight``), ``PUT
/api/v1/spool/{id}/use`` with ``{"use_weight": grams}`` (it *adds* to the used weight:
not idempotent), ``GET /api/v1/health``; errors are ``{"message": ...}`` (404: no such
spool).

**Usage exactly once.** Each ended attempt's grams are an outbox row written in the very
commit that ended the attempt (``store/upkeep.py``), so no crash loses one. The service
sends the rows in order, one at a time:

1. read the spool's ``used_weight`` and store it with the row (``base_used``) before the
   first ``PUT``;
2. ``PUT .../use``; a 2xx answer settles the row (``UsageReported``: the farm's next
   commit marks it ``sent``); a 404 drops it (the spool is gone); another 4xx drops it
   with Spoolman's message;
3. no answer, a timeout or a 5xx: the row stays pending with its ``base_used`` (the
   ``PUT`` may have been applied) and is tried again after ``spoolman.retry_backoff``;
4. before sending a row again that has a ``base_used`` — after a retry, or after a
   restart: the daemon may have died between Spoolman's answer and the commit that marks
   the row — the spool is read again: ``used_weight >= base_used + grams`` means
   Spoolman has it, and the row is settled without a second ``PUT``.

What is left: if something else uses the same spool (another Moonraker reporting to
Spoolman, an edit by hand) while an outcome is unknown, step 4 can misjudge it: usage by
others of at least our grams makes an unsent report look sent (reported once too
few), a used weight lowered by hand makes a sent one look unsent (reported twice). The
window is only the time between an unanswered ``PUT`` and the next successful read.

Meanwhile the farm keeps working from the last known spool state (stored), minus the
usage still owed (``core/farm/spools.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import trio

from printfarmd import __version__
from printfarmd.config import SpoolmanConfig
from printfarmd.core.farm import inputs as i
from printfarmd.core.farm.upkeep_state import SpoolInfo
from printfarmd.core.routing import normalize_colour
from printfarmd.errors import FarmError, NotFound
from printfarmd.store.store import Store
from printfarmd.store.upkeep import Outgoing, UpkeepStore

if TYPE_CHECKING:
    import httpx  # imported when Spoolman is first called: a farm's start needs none

log = logging.getLogger("printfarmd.spoolman")

#: Grams within which a read-back used weight counts as including a report.
EPSILON = 1e-3
#: Spoolman API version this client and its stand-in follow.
SPOOLMAN_VERSION = "0.26.1"


class SpoolmanError(Exception):
    """Spoolman answered, with an error status (``status``) and its ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class SpoolmanUnreachable(Exception):
    """No answer. ``sent``: the request may have reached Spoolman (a timeout after it
    was written); False when the connection itself failed."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.sent = sent


# ---------------------------------------------------------------- pure parsing


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def parse_spool(payload: Any, at: float) -> SpoolInfo:
    """A ``Spool`` object of Spoolman's API as the farm keeps it. Raises ``ValueError``
    when ``payload`` is not a spool (no integer ``id``)."""
    if not isinstance(payload, Mapping):
        raise ValueError("a spool is a JSON object")
    sid = payload.get("id")
    if isinstance(sid, bool) or not isinstance(sid, int):
        raise ValueError("a spool has an integer id")
    filament = payload.get("filament")
    filament = filament if isinstance(filament, Mapping) else {}
    material = filament.get("material")
    material = material.strip().upper() or None if isinstance(material, str) else None
    colours: list[str] = []
    multi = filament.get("multi_color_hexes")
    if isinstance(multi, str) and multi.strip():
        colours = [c for c in (normalize_colour(x) for x in multi.split(",")) if c]
    single = (
        normalize_colour(filament.get("color_hex"))
        if isinstance(filament.get("color_hex"), str)
        else None
    )
    if single and single not in colours:
        colours.insert(0, single)
    price = _number(payload.get("price"))
    weight = _number(payload.get("initial_weight")) or _number(filament.get("weight"))
    if price is None:
        price = _number(filament.get("price"))
        weight = _number(filament.get("weight"))
    per_kg = price / weight * 1000.0 if price is not None and weight else None
    name = filament.get("name")
    vendor = filament.get("vendor")
    vendor_name = vendor.get("name") if isinstance(vendor, Mapping) else None
    label = " ".join(x for x in (vendor_name, name) if isinstance(x, str) and x)
    remaining = _number(payload.get("remaining_weight"))
    return SpoolInfo(
        id=sid,
        material=material,
        colours=tuple(colours),
        remaining=None if remaining is None else max(remaining, 0.0),
        used=_number(payload.get("used_weight")) or 0.0,
        price_per_kg=None if per_kg is None else round(per_kg, 6),
        name=label[:200],
        archived=payload.get("archived") is True,
        missing=False,
        updated_at=at,
    )


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.reason_phrase or f"HTTP {resp.status_code}"
    if isinstance(body, Mapping):
        msg = body.get("message") or body.get("detail")
        if isinstance(msg, str):
            return msg[:300]
        if msg is not None:
            return str(msg)[:300]
    return resp.reason_phrase or f"HTTP {resp.status_code}"


# ---------------------------------------------------------------- the HTTP client


class SpoolmanClient:
    """Thin calls to Spoolman's API. Every method is a checkpoint; raises
    ``SpoolmanError`` (an error answer) or ``SpoolmanUnreachable`` (no answer)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http = http
        self.api = base_url.rstrip("/") + "/api"

    async def request(
        self, method: str, path: str, *, query: str | None = None, body: Any = None
    ) -> httpx.Response:
        """``method`` on ``/api`` + ``path`` (``path`` starts with ``/v1/``); any answer."""
        import httpx

        url = self.api + path + (f"?{query}" if query else "")
        try:
            return await self.http.request(method, url, json=body)
        except httpx.ConnectError as exc:
            raise SpoolmanUnreachable(f"cannot connect: {exc}", sent=False) from None
        except httpx.TimeoutException:
            raise SpoolmanUnreachable("no answer in time", sent=True) from None
        except httpx.HTTPError as exc:
            raise SpoolmanUnreachable(f"{type(exc).__name__}: {exc}", sent=True) from None

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        resp = await self.request(method, path, body=body)
        if not 200 <= resp.status_code < 300:
            raise SpoolmanError(resp.status_code, _message(resp))
        try:
            return resp.json()
        except ValueError:
            raise SpoolmanUnreachable("the answer is not JSON", sent=True) from None

    async def spool(self, spool_id: int) -> Any:
        return await self._json("GET", f"/v1/spool/{spool_id}")

    async def use_weight(self, spool_id: int, grams: float) -> Any:
        return await self._json("PUT", f"/v1/spool/{spool_id}/use", {"use_weight": grams})

    async def health(self) -> Any:
        return await self._json("GET", "/v1/health")


# ---------------------------------------------------------------- the service


class SpoolmanService:
    """Keeps the farm's spool state fresh and settles the usage outbox (see the module
    docstring). ``post`` sends an input to the owner; ``bound`` lists the spool ids the
    farm cares about (bound, or owed usage). Start with ``nursery.start(service.run)``."""

    def __init__(
        self,
        *,
        config: SpoolmanConfig,
        store: Store,
        post: Callable[[i.Input], None],
        bound: Callable[[], set[int]],
        transport: httpx.AsyncBaseTransport | None = None,
        wall: Callable[[], float] = time.time,
        mine: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.config = config
        self.store = UpkeepStore(store)
        #: (issue 18) In a cluster, this daemon's printers: it reports their usage only
        #: (each daemon its own, so none is reported twice).
        self._mine = mine
        self._post = post
        self._bound = bound
        self._transport = transport
        self._wall = wall
        self._kick = trio.Event()
        self._refresh_now = True
        self._settled: set[str] = set()
        self._failures = 0
        self.client: SpoolmanClient | None = None
        #: Whether Spoolman answered the last call (``None``: not tried yet).
        self.connected: bool | None = None
        #: Called with the new value when ``connected`` changes (the facade's notification).
        self.on_status: Callable[[bool], None] | None = None

    def kick(self, *, refresh: bool = False) -> None:
        """There is work (usage to send, a new binding to read). Never blocks."""
        if refresh:
            self._refresh_now = True
        self._kick.set()

    def _set_connected(self, value: bool) -> None:
        if self.connected is value:
            return
        was = self.connected
        self.connected = value
        if value:
            log.info("Spoolman reachable", extra={"url": self.config.url})
        elif was is not None or self._failures == 1:
            log.warning("Spoolman unreachable", extra={"url": self.config.url})
        if self.on_status is not None:
            self.on_status(value)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Never raises: failures are logged and retried."""
        import httpx

        http = httpx.AsyncClient(
            transport=self._transport,
            timeout=self.config.timeout,
            headers={"User-Agent": f"printfarmd/{__version__}"},
            follow_redirects=False,
        )
        self.client = SpoolmanClient(http, self.config.url)
        next_refresh = trio.current_time()
        try:
            task_status.started()
            while True:
                # A kick during the work below is seen by the wait after it.
                self._kick = trio.Event()
                delay = 0.0
                try:
                    ok = await self._send_all()
                    if ok and (self._refresh_now or trio.current_time() >= next_refresh):
                        self._refresh_now = False
                        ok = await self._refresh()
                        next_refresh = trio.current_time() + self.config.refresh_interval
                except FarmError as exc:  # the store: try again later
                    log.warning(
                        "spool usage not read from the store", extra={"reason": exc.message}
                    )
                    ok = False
                except Exception:  # a bug must not end the service
                    log.exception("Spoolman cycle failed")
                    ok = False
                if ok:
                    self._failures = 0
                    delay = max(next_refresh - trio.current_time(), 0.0)
                else:
                    self._failures += 1
                    backoff = self.config.retry_backoff
                    delay = backoff[min(self._failures, len(backoff)) - 1] if backoff else 1.0
                with trio.move_on_after(delay):
                    if ok:
                        await self._kick.wait()
                    else:
                        await trio.sleep_forever()  # while failing, only the backoff wakes
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await http.aclose()

    # ------------------------------------------------------------ usage

    async def _send_all(self) -> bool:
        """Send every pending report in order; False when Spoolman stopped answering."""
        rows = await self.store.pending(None if self._mine is None else self._mine())
        current = {r.key for r in rows}
        self._settled &= current  # what the farm has marked since is gone from the list
        for row in rows:
            if row.key in self._settled:
                continue
            try:
                await self._send(row)
            except SpoolmanUnreachable as exc:
                self._set_connected(False)
                # ``base_used`` stays: an earlier attempt's PUT may have been applied.
                await self.store.note_attempt(row.key, exc.message)
                log.info(
                    "spool usage not sent yet",
                    extra={"spool": row.spool_id, "key": row.key, "reason": exc.message},
                )
                return False
            except SpoolmanError as exc:
                if exc.status >= 500 or exc.status == 429:
                    self._set_connected(False)
                    await self.store.note_attempt(row.key, f"HTTP {exc.status}: {exc.message}")
                    return False
                self._settle(row, False, f"Spoolman refused it: HTTP {exc.status}: {exc.message}")
        return True

    async def _send(self, row: Outgoing) -> None:
        assert self.client is not None
        try:
            spool = parse_spool(await self.client.spool(row.spool_id), self._wall())
        except SpoolmanError as exc:
            if exc.status == 404:
                self._settle(row, False, f"spool {row.spool_id} not found in Spoolman")
                return
            raise
        except ValueError as exc:
            raise SpoolmanUnreachable(f"the spool is not readable: {exc}", sent=False) from None
        self._set_connected(True)
        if row.base_used is not None and spool.used >= row.base_used + row.grams - EPSILON:
            # An earlier PUT reached Spoolman but its answer (or our mark) was lost.
            log.info(
                "spool usage found already applied",
                extra={"spool": row.spool_id, "key": row.key, "grams": row.grams},
            )
            self._settle(row, True, None)
            return
        if row.base_used is None:
            await self.store.set_base(row.key, spool.used)
        try:
            await self.client.use_weight(row.spool_id, row.grams)
        except SpoolmanError as exc:
            if exc.status == 404:
                self._settle(row, False, f"spool {row.spool_id} not found in Spoolman")
                return
            raise
        log.info(
            "spool usage reported",
            extra={"spool": row.spool_id, "key": row.key, "grams": row.grams},
        )
        self._settle(row, True, None)

    def _settle(self, row: Outgoing, applied: bool, error: str | None) -> None:
        self._settled.add(row.key)
        self._post(i.UsageReported(row.key, applied, error))
        self._refresh_now = True  # read the spool's new weight

    # ------------------------------------------------------------ reading spools

    async def _refresh(self) -> bool:
        assert self.client is not None
        mine = None if self._mine is None else self._mine()
        wanted = sorted(self._bound() | {r.spool_id for r in await self.store.pending(mine)})
        infos: list[SpoolInfo] = []
        missing: list[int] = []
        for sid in wanted:
            try:
                infos.append(parse_spool(await self.client.spool(sid), self._wall()))
            except SpoolmanError as exc:
                if exc.status == 404:
                    missing.append(sid)
                    continue
                self._set_connected(False)
                log.info("spool not read", extra={"spool": sid, "reason": exc.message})
                return False
            except SpoolmanUnreachable as exc:
                self._set_connected(False)
                log.info("spool not read", extra={"spool": sid, "reason": exc.message})
                return False
            except ValueError as exc:
                log.warning(
                    "Spoolman sent an unreadable spool", extra={"spool": sid, "reason": str(exc)}
                )
        if not wanted:
            try:
                await self.client.health()
            except (SpoolmanError, SpoolmanUnreachable):
                self._set_connected(False)
                return False
        self._set_connected(True)
        if infos or missing:
            self._post(i.SpoolsRefreshed(tuple(infos), tuple(missing)))
        return True

    async def fetch(self, spool_id: int) -> SpoolInfo | None:
        """The spool as Spoolman has it now (for a binding), or ``None`` when Spoolman
        does not answer. Raises ``NotFound`` when it says there is no such spool."""
        if self.client is None:
            return None
        try:
            payload = await self.client.spool(spool_id)
            info = parse_spool(payload, self._wall())
        except SpoolmanError as exc:
            if exc.status == 404:
                raise NotFound(f"spool {spool_id} not found in Spoolman") from None
            log.warning("spool not read", extra={"spool": spool_id, "reason": exc.message})
            return None
        except SpoolmanUnreachable as exc:
            self._set_connected(False)
            log.warning("spool not read", extra={"spool": spool_id, "reason": exc.message})
            return None
        except ValueError:
            return None
        self._set_connected(True)
        return info

    def status(self) -> dict[str, Any]:
        return {"url": self.config.url, "connected": bool(self.connected)}
