"""The facade's live state: the queue's cached wire form, the database namespaces,
the open websocket connections, the one-shot tokens, the farm console's recent lines
(``server.gcode_store``), the process statistics sampler, which printers have cameras,
the metadata cache and the history book.

The queue's wire form is rebuilt only when the farm queue changed (``JobQueue.version``);
per request only ``time_in_queue`` is computed, so a status call with 1000 jobs is one
string join, not 1000 dicts through ``json.dumps``.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import trio

from printfarmd.api.auth import OneshotTokens
from printfarmd.api.context import Services
from printfarmd.api.history import HistoryBook
from printfarmd.api.moonraker.file_methods import MetaCache
from printfarmd.api.moonraker.procstats import ProcStats
from printfarmd.api.moonraker.webcam_methods import CameraProbe
from printfarmd.models import Job

MOONRAKER_VERSION = "v0.10.0-0-gprintfarmd"
DB_PREFIX = "moonraker.db."
#: Console lines kept for ``server.gcode_store`` (Moonraker keeps 1000 by default).
GCODE_STORE_SIZE = 200


class QueueState:
    READY = "ready"
    LOADING = "loading"
    PAUSED = "paused"


class Facade:
    def __init__(self, svc: Services, tokens: OneshotTokens) -> None:
        self.svc = svc
        self.tokens = tokens
        self.started = time.time()
        self._wall: Callable[[], float] = time.time
        self._version: tuple[int, int] | None = None
        self._dicts: list[dict[str, Any]] = []
        self._since: list[float] = []
        self._db: dict[str, Any] | None = None
        self._db_lock = trio.Lock()
        self._ids = itertools.count(1)
        self.connections: set[Any] = set()
        self.gcode_store: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=GCODE_STORE_SIZE
        )
        self.procstats = ProcStats()
        self.cameras = CameraProbe()
        self.meta_cache = MetaCache()
        self.history = HistoryBook(svc, self.meta_cache)

    # ---------------------------------------------------------------- paths

    @property
    def gcodes_root(self) -> Path:
        return self.svc.config.gcodes_path

    @property
    def config_root(self) -> Path:
        """An (initially empty) folder for the UIs' ``config`` root (themes)."""
        return self.svc.config.data_path / "moonraker-config"

    def roots(self) -> dict[str, Path]:
        return {"gcodes": self.gcodes_root, "config": self.config_root}

    def next_connection_id(self) -> int:
        return next(self._ids)

    # ---------------------------------------------------------------- job queue

    def queue_state(self) -> str:
        sched = self.svc.owner
        if sched.paused:
            return QueueState.PAUSED
        if sched.dispatching:
            return QueueState.LOADING
        return QueueState.READY

    def _refresh(self) -> list[dict[str, Any]]:
        queue = self.svc.owner.queue
        if queue.version != self._version:
            jobs = queue.ordered()
            self._dicts = [
                {
                    "filename": job.filename,
                    "job_id": job.id,
                    "time_added": job.created_at,
                    "time_in_queue": 0.0,
                }
                for job in jobs
            ]
            self._since = [_queued_since(job) for job in jobs]
            self._version = queue.version
        # Only time_in_queue is fresh per call. The cached dicts are updated in place and
        # encoded at once (no checkpoint in between, so no other task sees them half-done).
        now = self._wall()
        for d, since in zip(self._dicts, self._since, strict=True):
            d["time_in_queue"] = max(now - since, 0.0)
        return self._dicts

    def queued_jobs_json(self) -> bytes:
        """The ``queued_jobs`` array as JSON, ``time_in_queue`` computed now."""
        return orjson.dumps(self._refresh())

    def status_json(self) -> bytes:
        """``{"queued_jobs": [...], "queue_state": ...}`` as JSON bytes."""
        state = self.queue_state().encode()
        return b'{"queued_jobs":' + self.queued_jobs_json() + b',"queue_state":"' + state + b'"}'

    def queued_ids(self) -> list[str]:
        return [j.id for j in self.svc.owner.queue.ordered()]

    # ---------------------------------------------------------------- database

    async def database(self) -> dict[str, Any]:
        """All namespaces (loaded from the store once)."""
        if self._db is None:
            saved = await self.svc.store.settings()
            self._db = {
                k.removeprefix(DB_PREFIX): v for k, v in saved.items() if k.startswith(DB_PREFIX)
            }
        return self._db

    async def save_namespace(self, namespace: str, value: dict[str, Any]) -> None:
        """Persist one namespace (returns after COMMIT), then update the cache."""
        await self.svc.store.put_setting(DB_PREFIX + namespace, value)
        db = await self.database()
        db[namespace] = value

    def spoolman_status(self, connected: bool) -> None:
        """(issue 16) ``notify_spoolman_status_changed`` to every authenticated websocket."""
        frame = notify_frame("notify_spoolman_status_changed", [{"spoolman_connected": connected}])
        for conn in list(self.connections):
            conn.push(frame)

    def notify_filelist(self, payload: dict[str, Any]) -> None:
        """Send ``notify_filelist_changed`` to every authenticated websocket (after the
        file operation finished; never blocks: a client that cannot keep up is closed)."""
        frame = notify_frame("notify_filelist_changed", [payload])
        for conn in list(self.connections):
            conn.push(frame)

    @property
    def db_lock(self) -> trio.Lock:
        return self._db_lock

    # ---------------------------------------------------------------- console

    def console(self, message: str, kind: str = "response", only: Any = None) -> None:
        """A farm console line. A response goes to every authenticated websocket as
        ``notify_gcode_response`` and a command is only kept; both are kept for
        ``server.gcode_store``. With ``only`` (a connection): to it alone, not kept."""
        frame = notify_frame("notify_gcode_response", [message])
        if only is not None:
            only.push(frame)
            return
        self.gcode_store.append({"message": message, "time": self._wall(), "type": kind})
        if kind == "response":
            for conn in list(self.connections):
                conn.push(frame)


def _queued_since(job: Job) -> float:
    return job.queued_at if job.queued_at is not None else job.created_at


def notify_frame(name: str, params: list[Any] | None) -> bytes:
    """A JSON-RPC notification: never an ``id``; no ``params`` when there are none."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": name}
    if params is not None:
        msg["params"] = params
    return orjson.dumps(msg)
