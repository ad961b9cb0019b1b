"""A Spoolman stand-in, written from Spoolman's published OpenAPI document.

The document: Spoolman's "REST API v1" OpenAPI description (the one the project
publishes with each release, generated from ``spoolman/api/v1`` of Donkie/Spoolman),
version **0.26.1** (``pyproject.toml`` of commit a9e50559). What it serves, as that
document describes it:

- ``GET /api/v1/info`` (``Info``: ``version``, ``debug_mode``, ``automatic_backups``,
  ``data_dir``, ``logs_dir``, ``backups_dir``, ``db_type``, ``external_db_name``),
  ``GET /api/v1/health`` (``{"status": "healthy"}``);
- ``GET /api/v1/spool`` (a list of ``Spool``; ``allow_archived`` query, default false),
  ``GET /api/v1/spool/{spool_id}`` (a ``Spool``; 404 ``Message``);
- ``PUT /api/v1/spool/{spool_id}/use`` with a ``SpoolUseParameters`` body: exactly one
  of ``use_weight`` (g) or ``use_length`` (mm), else 400 ``Message``; adds to the
  ``used_weight`` (never below 0) and answers the updated ``Spool``; 404 ``Message``;
- ``GET /api/v1/vendor`` (a list of ``Vendor``), ``GET /api/v1/setting/currency``
  (a ``SettingResponse``);
- a ``Spool``: ``id``, ``registered``, ``first_used``, ``last_used``, ``filament`` (a
  ``Filament``: ``id``, ``registered``, ``name``, ``vendor``, ``material``, ``price``,
  ``density``, ``diameter``, ``weight``, ``spool_weight``, ``color_hex``,
  ``multi_color_hexes``, ``extra``), ``price``, ``remaining_weight`` (initial weight, or
  the filament's weight, minus the used weight, never below 0; absent when neither is
  known), ``initial_weight``, ``spool_weight``, ``used_weight``, ``remaining_length``,
  ``used_length``, ``location``, ``lot_nr``, ``comment``, ``archived``, ``extra``;
  fields that are null are left out (the document's ``response_model_exclude_none``);
- errors are ``{"message": ...}``; a body that does not validate is a 422 with
  ``{"detail": [...]}``.

Knobs: ``stop()`` / ``start()`` (the port closes: connections are refused, as a Spoolman
that is down), ``delay`` (slow answers), ``fail`` (the next N requests answer a given
status, e.g. 503), ``fail_after_use`` (the next N uses are applied and then answered
500: an outcome the client cannot know). ``uses`` records every applied use.
``open_spoolman_sim(port=0)`` yields the handle with its ``url``; ``SpoolmanThread``
runs one in a thread of its own (for tests that drive a daemon subprocess).
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import attrs
import orjson
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio

VERSION = "0.26.1"
REGISTERED = "2026-01-10T09:00:00Z"


@attrs.define
class SimSpool:
    id: int
    material: str | None = "PLA"
    color_hex: str | None = "FF0000"
    multi_color_hexes: str | None = None
    initial_weight: float | None = 1000.0
    filament_weight: float | None = 1000.0
    used_weight: float = 0.0
    price: float | None = None
    filament_price: float | None = 20.0
    archived: bool = False
    name: str = "Basic"
    density: float = 1.24
    diameter: float = 1.75


def _length(weight: float, density: float, diameter: float) -> float:
    """mm of filament that weigh ``weight`` g (density g/cm3, diameter mm)."""
    return weight / (density / 1000.0 * math.pi * (diameter / 2.0) ** 2)


def _vendor() -> dict[str, Any]:
    return {"id": 1, "registered": REGISTERED, "name": "Polymaker", "extra": {}}


def spool_json(s: SimSpool) -> dict[str, Any]:
    filament: dict[str, Any] = {
        "id": s.id,
        "registered": REGISTERED,
        "name": s.name,
        "vendor": _vendor(),
        "material": s.material,
        "price": s.filament_price,
        "density": s.density,
        "diameter": s.diameter,
        "weight": s.filament_weight,
        "spool_weight": 140.0,
        "color_hex": s.color_hex,
        "multi_color_hexes": s.multi_color_hexes,
        "extra": {},
    }
    base = s.initial_weight if s.initial_weight is not None else s.filament_weight
    remaining = None if base is None else max(base - s.used_weight, 0.0)
    body: dict[str, Any] = {
        "id": s.id,
        "registered": REGISTERED,
        "first_used": REGISTERED if s.used_weight else None,
        "last_used": REGISTERED if s.used_weight else None,
        "filament": {k: v for k, v in filament.items() if v is not None},
        "price": s.price,
        "remaining_weight": remaining,
        "initial_weight": s.initial_weight,
        "spool_weight": 140.0,
        "used_weight": s.used_weight,
        "remaining_length": None
        if remaining is None
        else _length(remaining, s.density, s.diameter),
        "used_length": _length(s.used_weight, s.density, s.diameter),
        "archived": s.archived,
        "extra": {},
    }
    return {k: v for k, v in body.items() if v is not None}


class SpoolmanSim:
    def __init__(self) -> None:
        self.spools: dict[int, SimSpool] = {}
        self.uses: list[tuple[int, float]] = []
        self.requests: list[tuple[str, str]] = []
        self.delay = 0.0
        self.fail_status = 503
        self.fail = 0
        self.fail_after_use = 0
        self.port = 0
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.app = _make_app(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, spool: SimSpool) -> SimSpool:
        self.spools[spool.id] = spool
        return spool

    def used(self, spool_id: int) -> float:
        return self.spools[spool_id].used_weight

    async def _serve(self, sock: socket.socket, *, task_status: trio.TaskStatus[None]) -> None:
        config = HyperConfig()
        config.bind = [f"fd://{sock.fileno()}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 0.1
        sock.detach()  # hypercorn owns the descriptor from here (and closes it)
        with trio.CancelScope() as scope:
            self._scope = scope
            await hypercorn_serve(self.app, config, task_status=task_status)  # type: ignore[arg-type]

    async def start(self) -> None:
        """Listen (again) on ``port`` (a free one the first time)."""
        assert self._nursery is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        await self._nursery.start(self._serve, sock)

    def stop(self) -> None:
        """Close the port: Spoolman is down (connections are refused)."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def _not_found(spool_id: int) -> Response:
    return _json({"message": f"No spool with ID {spool_id} found."}, 404)


def _make_app(sim: SpoolmanSim) -> QuartTrio:
    app = QuartTrio("spoolman-sim")

    @app.before_request
    async def gate() -> Response | None:
        sim.requests.append((request.method, request.path))
        if sim.delay:
            await trio.sleep(sim.delay)
        if sim.fail > 0:
            sim.fail -= 1
            return _json({"message": "Service unavailable"}, sim.fail_status)
        return None

    @app.get("/api/v1/info")
    async def info() -> Response:
        return _json(
            {
                "version": VERSION,
                "debug_mode": False,
                "automatic_backups": True,
                "data_dir": "/home/app/.local/share/spoolman",
                "logs_dir": "/home/app/.local/share/spoolman",
                "backups_dir": "/home/app/.local/share/spoolman/backups",
                "db_type": "sqlite",
                "external_db_name": "SpoolmanDB",
            }
        )

    @app.get("/api/v1/health")
    async def health() -> Response:
        return _json({"status": "healthy"})

    @app.get("/api/v1/spool")
    async def find() -> Response:
        archived = request.args.get("allow_archived", "false").lower() == "true"
        return _json([spool_json(s) for s in sim.spools.values() if archived or not s.archived])

    @app.get("/api/v1/spool/<int:spool_id>")
    async def get(spool_id: int) -> Response:
        spool = sim.spools.get(spool_id)
        return _not_found(spool_id) if spool is None else _json(spool_json(spool))

    @app.put("/api/v1/spool/<int:spool_id>/use")
    async def use(spool_id: int) -> Response:
        try:
            body = orjson.loads(await request.get_data())
        except orjson.JSONDecodeError:
            return _json({"detail": [{"type": "json_invalid", "msg": "JSON decode error"}]}, 422)
        if not isinstance(body, dict):
            return _json({"detail": [{"type": "model_attributes_type"}]}, 422)
        weight, length = body.get("use_weight"), body.get("use_length")
        for value in (weight, length):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                return _json({"detail": [{"type": "float_type", "msg": "not a number"}]}, 422)
        if weight is not None and length is not None:
            return _json({"message": "Only specify either use_weight or use_length."}, 400)
        if weight is None and length is None:
            return _json({"message": "Either use_weight or use_length must be specified."}, 400)
        spool = sim.spools.get(spool_id)
        if spool is None:
            return _not_found(spool_id)
        if weight is None:
            weight = float(length) * spool.density / 1000.0 * math.pi * (spool.diameter / 2) ** 2
        spool.used_weight = max(spool.used_weight + float(weight), 0.0)
        sim.uses.append((spool_id, float(weight)))
        if sim.fail_after_use > 0:
            sim.fail_after_use -= 1
            return _json({"message": "Internal Server Error"}, 500)
        return _json(spool_json(spool))

    @app.get("/api/v1/vendor")
    async def vendors() -> Response:
        return _json([_vendor()])

    @app.get("/api/v1/setting/currency")
    async def currency() -> Response:
        return _json({"value": '"EUR"', "is_set": False, "type": "string"})

    return app


@contextlib.asynccontextmanager
async def open_spoolman_sim(port: int = 0) -> AsyncIterator[SpoolmanSim]:
    sim = SpoolmanSim()
    sim.port = port
    async with trio.open_nursery() as nursery:
        sim._nursery = nursery
        await sim.start()
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()


class SpoolmanThread:
    """A ``SpoolmanSim`` served by a trio loop in a thread of its own, for synchronous
    tests (``trio.from_thread`` refuses a caller that runs trio itself). Knobs are plain
    attributes of ``sim``; ``stop``/``start`` run on the stand-in's loop."""

    def __init__(self) -> None:
        self.sim: SpoolmanSim | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._done: trio.Event | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    async def _main(self) -> None:
        self._done = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with open_spoolman_sim() as sim:
            self.sim = sim
            self._ready.set()
            await self._done.wait()

    def __enter__(self) -> SpoolmanThread:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the Spoolman stand-in did not start")
        return self

    def stop(self) -> None:
        assert self.sim is not None and self._token is not None
        trio.from_thread.run_sync(self.sim.stop, trio_token=self._token)

    def start(self) -> None:
        assert self.sim is not None and self._token is not None
        trio.from_thread.run(self.sim.start, trio_token=self._token)

    def __exit__(self, *exc: object) -> None:
        if self._done is not None and self._token is not None:
            trio.from_thread.run_sync(self._done.set, trio_token=self._token)
        self._thread.join(timeout=10)
