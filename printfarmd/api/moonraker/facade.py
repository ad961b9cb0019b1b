"""The facade's live state: the queue's wire form, the database namespaces, the open
websocket connections, the one-shot tokens, the farm console's recent lines
(``server.gcode_store``), the process statistics sampler, which printers have cameras,
the metadata cache and the history book.

The queue is kept in its wire form (``QueueWire``): per queued job the JSON bytes of its
entry up to ``time_in_queue``, encoded when the job enters the queue and kept while it
stays; when the queue changes (``JobQueue.version``) only the order is read again. A
status answer is one join of those bytes with the per-request numbers (``time_in_queue``,
one orjson call for all of them). A notification of a queue change is encoded once and
the same bytes go to every websocket client (``queue_notification``).
"""

from __future__ import annotations

import collections
import itertools
import time
import zlib
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
        self.wire = QueueWire()
        #: Notification frames by (action, queue version, queue state), newest last.
        self._notified: dict[tuple[str, Any, str], bytes] = {}
        #: ``notify_history_changed`` frames by event seq (shared by every client).
        self.history_frames: dict[int, list[bytes]] = {}
        self.history_pending: dict[int, trio.Event] = {}
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

    def queued_jobs_json(self) -> bytes:
        """The ``queued_jobs`` array as JSON, ``time_in_queue`` computed now."""
        return self.wire.queued_jobs(self.svc.owner.queue, self._wall())

    def status_pieces(self, before: bytes = b"", after: bytes = b"") -> list[bytes]:
        """``before`` + the status object + ``after``, in pieces to join at once (one copy
        of a large queue instead of one per wrapping). A list of its own: it stays valid."""
        state = self.queue_state().encode()
        return [
            before + b'{"queued_jobs":',
            *self.wire.pieces(self.svc.owner.queue, self._wall()),
            b',"queue_state":"' + state + b'"}' + after,
        ]

    def status_json(self) -> bytes:
        """``{"queued_jobs": [...], "queue_state": ...}`` as JSON bytes."""
        return b"".join(self.status_pieces())

    def fast_status(self, scope: Any, headers: Any) -> tuple[bytes, bytes, Any]:
        """``GET /server/job_queue/status`` answered by the front (no Quart request): the
        same bytes and headers as the route's view (``http._wrap``)."""
        body = b"".join(self.status_pieces(b'{"result":', b"}"))
        return http_answer(body, headers.accept_encoding)

    def queue_notification(self, action: str) -> bytes:
        """The ``notify_job_queue_changed`` frame for ``action`` as the queue is now.

        Encoded once per (action, queue version, queue state): every websocket client
        notified of the same change gets the same bytes."""
        state = self.queue_state()
        queue = self.svc.owner.queue
        key = (action, (id(queue), queue.version), state)
        cached = self._notified.get(key)
        if cached is not None:
            return cached
        updated = b"null" if action == "state_changed" else self.queued_jobs_json()
        frame = encode_queue_notification(action, updated, state)
        self._notified[key] = frame
        while len(self._notified) > NOTIFIED_KEEP:
            del self._notified[next(iter(self._notified))]
        return frame

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


class QueueWire:
    """The job queue's ``queued_jobs`` array in its wire form (see the module docstring).

    ``queued_jobs`` is not a checkpoint: the bytes it returns are consistent with the
    committed queue at the moment of the call. ``encoded`` counts job entries encoded.
    """

    def __init__(self) -> None:
        #: The queue (and its version) the pieces were made for.
        self._queue: Any = None
        self._version: Any = None
        #: Per queued job id: ``{"filename":..,"job_id":..,"time_added":..,"time_in_queue":``.
        self._entry: dict[str, bytes] = {}
        #: The answer in pieces: ``[`` + entry, number, ``},`` + entry, number, ...,
        #: ``}]``; the numbers' slots (odd indexes) are filled per request.
        self._parts: list[bytes] = []
        self._since: list[float] = []
        self._latest = 0.0
        #: With few distinct queue times: those times, and each job's index into them.
        self._distinct: list[float] = []
        self._groups: list[int] | None = None
        self.encoded = 0

    def _update(self, queue: Any) -> None:
        jobs: list[Job] = queue.ordered()
        old = self._entry
        entry: dict[str, bytes] = {}
        parts: list[bytes] = []
        for i, job in enumerate(jobs):
            head = old.get(job.id)
            if head is None:
                head = _entry_head(job)
                self.encoded += 1
            entry[job.id] = head
            parts += (b"}," if i else b"[") + head, b""
        if parts:
            parts.append(b"}]")
        self._entry = entry
        self._parts = parts
        self._since = since = [_queued_since(j) for j in jobs]
        self._latest = max(since, default=0.0)
        distinct = sorted(set(since))
        if len(distinct) * 2 <= len(since):
            where = {t: i for i, t in enumerate(distinct)}
            self._distinct = distinct
            self._groups = [where[t] for t in since]
        else:
            self._distinct, self._groups = [], None
        self._version = queue.version
        self._queue = queue

    def queued_jobs(self, queue: Any, now: float) -> bytes:
        """The array as JSON bytes, ``time_in_queue`` as of ``now`` (wall seconds)."""
        return b"".join(self.pieces(queue, now))

    def pieces(self, queue: Any, now: float) -> list[bytes]:
        """The array's bytes in pieces (join them for the JSON): this object's own list,
        valid until the next call, so join or copy it before any checkpoint."""
        if queue is not self._queue or queue.version != self._version:
            self._update(queue)
        parts = self._parts
        if not parts:
            return [b"[]"]
        if self._groups is not None:
            # Few distinct queue times (jobs queued in batches): one number per batch.
            ages = [max(now - since, 0.0) for since in self._distinct]
            texts = orjson.dumps(ages)[1:-1].split(b",")
            if len(texts) == 1:
                parts[1:-1:2] = texts * len(self._since)
            else:
                parts[1:-1:2] = map(texts.__getitem__, self._groups)
            return parts
        if now >= self._latest:
            ages = [now - since for since in self._since]
        else:  # the wall clock stepped back: no negative ages
            ages = [max(now - since, 0.0) for since in self._since]
        # One orjson call formats every number as encoding the whole dicts would.
        parts[1:-1:2] = orjson.dumps(ages)[1:-1].split(b",")
        return parts


def _entry_head(job: Job) -> bytes:
    whole = orjson.dumps({"filename": job.filename, "job_id": job.id, "time_added": job.created_at})
    return whole[:-1] + b',"time_in_queue":'


#: Bodies at least this large are gzipped for clients that accept it (browsers do): a
#: 1000-job queue is ~120 KB of JSON, ~12 KB gzipped at level 1 (0.4 ms on a Pi-class CPU),
#: and pushing the 120 KB through the HTTP stack costs more than compressing it.
GZIP_MIN_BYTES = 16 * 1024
#: Queue notification frames kept (several actions of the latest few queue versions).
NOTIFIED_KEEP = 16
#: ``notify_history_changed`` frames kept, by event seq.
HISTORY_FRAMES_KEEP = 256


def http_answer(
    body: bytes, accept_encoding: str
) -> tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]]:
    """(content type, body, further headers) of a facade JSON answer over HTTP: gzipped
    when large and the client accepts gzip."""
    if len(body) >= GZIP_MIN_BYTES and "gzip" in accept_encoding:
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
        packed = packer.compress(body) + packer.flush()
        return (
            b"application/json",
            packed,
            ((b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")),
        )
    return b"application/json", body, ()


def encode_queue_notification(action: str, queue: bytes, state: str) -> bytes:
    """A ``notify_job_queue_changed`` frame; ``queue`` is the encoded ``updated_queue``."""
    return (
        b'{"jsonrpc":"2.0","method":"notify_job_queue_changed","params":[{"action":"'
        + action.encode()
        + b'","updated_queue":'
        + queue
        + b',"queue_state":"'
        + state.encode()
        + b'"}]}'
    )


def notify_frame(name: str, params: list[Any] | None) -> bytes:
    """A JSON-RPC notification: never an ``id``; no ``params`` when there are none."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": name}
    if params is not None:
        msg["params"] = params
    return orjson.dumps(msg)
