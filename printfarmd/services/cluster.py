"""This daemon as one of several sharing a farm on one PostgreSQL database (issue 18).

One task, in this order each round (every third of the lease, or at once when another
daemon commits — LISTEN/NOTIFY wakes it):

1. **Renew** this daemon's lease. A renewal the database refuses means another daemon took
   this one over (it was silent longer than the lease): the daemon re-reads every job
   before it acts again, then writes under a new epoch (``_rejoin``). Until then each of
   its commits is refused (``Fenced``: the farm is degraded, nothing is written).
2. **Catch up** with the event log from the last ``seq`` read: the events other daemons
   appended, and their jobs as stored now, go to the owner (``SharedChanges``), which
   applies them and publishes the events to this daemon's SSE, websocket and dashboard
   clients. Reading by ``seq`` replays whatever a lost connection missed.
3. **Judge** the other daemons: one whose lease expired is taken over (``NodeLost``: its
   printing jobs are requeued or failed, in one commit with the fence that ends its
   epoch). A daemon judges only after its own lease has been renewed without a break for
   a whole lease: after an outage of the database every lease looks expired, and each
   daemon first gives the others a lease's time to renew.

The listening connection is this task's own; a lost one is replaced with backoff (1 s,
doubling, up to 30 s). No failure here ends the daemon: it is logged and tried again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import psycopg
import trio

from printfarmd.core.farm import inputs as i
from printfarmd.errors import FarmError, Fenced, StaleWrite, StorageBusy
from printfarmd.models import Event
from printfarmd.services.owner import Owner
from printfarmd.store import cluster as sql
from printfarmd.store.cluster import Membership, Peer
from printfarmd.store.postgresql import PgConn, PgStore, connect, map_pg_error

log = logging.getLogger("printfarmd.cluster")

T = TypeVar("T")

#: Events read per round trip while catching up.
BATCH = 500
#: Longest wait for a notification in one worker-thread call (a kick or a stop waits
#: at most this long).
LISTEN_STEP = 1.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: Events after which the farm's settings are read again.
_SETTINGS_EVENTS = frozenset(
    {"orchestrator.paused", "orchestrator.resumed", "orchestrator.config", "farm.emergency_stop"}
)


class Cluster:
    """This daemon's lease, feed and takeovers (see the module docstring). Create, then
    ``join`` before the owner restores the farm, then ``run``."""

    def __init__(self, *, store: PgStore, owner: Owner, lease: float) -> None:
        assert store.membership is not None
        self.store = store
        self.owner = owner
        self.member: Membership = store.membership
        self.lease = lease
        self.interval = lease / 3
        self.printers = tuple(p.id for p in owner.config.printers)
        self._conn: PgConn | None = None
        #: The newest event seq read from the log.
        self.last_seq = 0
        #: Since when (trio time) the lease was renewed without a break; None: broken.
        self.healthy_since: float | None = None
        self._wake = trio.Event()
        self._backoff = BACKOFF_FIRST
        #: This daemon's printers as its REST API shows them (set by the daemon), stored
        #: with each renewal so the other daemons can list them.
        self.views: Callable[[], list[dict[str, Any]]] = list
        #: The other daemons' printers by id, as of the last survey (``remote``).
        self._remote: dict[str, dict[str, Any]] = {}
        #: When (trio time) a lost listening connection may be opened again.
        self._retry_at = 0.0

    # ------------------------------------------------------------------ connection

    def _connect(self) -> PgConn:
        conn = connect(self.store.dsn, self.store.synchronous)
        try:
            conn.execute(f"LISTEN {sql.CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _db(self, fn: Callable[[PgConn], T]) -> T:
        """``fn`` on the task's own connection (opened, and LISTENing, when needed).
        ``StorageBusy`` when the database cannot be reached (the connection is dropped)."""

        def run() -> T:
            if self._conn is None:
                self._conn = self._connect()
            return fn(self._conn)

        try:
            return await trio.to_thread.run_sync(run)
        except psycopg.Error as exc:
            self._drop()
            raise map_pg_error(exc) from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def kick(self) -> None:
        """Catch up now (a write found a row another daemon changed)."""
        self._wake.set()

    # ------------------------------------------------------------------ joining

    async def join(self) -> None:
        """Take this node's lease under a new epoch and note where the feed starts; tells
        the owner which printers the node drove before and no longer does. Before the
        owner restores the farm (what it reads then is at least as new as the feed's
        start). Raises ``StorageBusy`` when the database cannot be reached."""
        epoch, before = await self._db(
            lambda c: sql.join(c, self.member.node, self.printers, self.lease)
        )
        self.member.epoch = epoch
        self.owner.dropped = tuple(p for p in before if p not in self.printers)
        self.last_seq = await self.store.last_event_seq()
        self.healthy_since = trio.current_time()
        log.info(
            "joined the farm",
            extra={"node": self.member.node, "epoch": epoch, "printers": len(self.printers)},
        )

    async def _rejoin(self) -> None:
        log.warning(
            "this daemon's lease was taken over; re-reading the farm before acting again",
            extra={"node": self.member.node, "epoch": self.member.epoch},
        )
        epoch, _ = await self._db(
            lambda c: sql.join(c, self.member.node, self.printers, self.lease)
        )
        seq = await self.store.last_event_seq()
        live = await self.store.load_live_jobs()
        ids = {j.id for j in live}
        gone = await self.store.get_jobs([jid for jid in self.owner.jobs if jid not in ids])
        settings, paused = self.owner.saved_settings(await self.store.settings())
        jobs = (*live, *gone)
        await self.owner.call(
            i.SharedChanges(
                jobs=jobs,
                seqs={j.id: seq for j in jobs},
                settings=settings,
                paused=paused,
                resync=True,
                epoch=epoch,
            )
        )
        self.healthy_since = trio.current_time()

    # ------------------------------------------------------------------ the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew, catch up and judge until cancelled (see the module docstring)."""
        self.owner.on_stale = self.kick
        task_status.started()
        next_renew = trio.current_time()
        while True:
            if trio.current_time() >= next_renew:
                next_renew = trio.current_time() + self.interval
                if await self._step("renew the lease", self._renew):
                    await self._step("judge the other daemons", self._judge)
            await self._step("read the other daemons' changes", self._catch_up)
            await self._wait(max(next_renew - trio.current_time(), 0.0))

    async def _step(self, what: str, fn: Callable[[], Awaitable[None]]) -> bool:
        """``fn``; False when it failed (logged; the next round tries again). The database
        being away is expected; anything else is a bug, logged with its traceback, and
        this daemon goes on."""
        try:
            await fn()
        except FarmError as exc:
            log.warning(f"cannot {what}; trying again", extra={"reason": exc.message})
            return False
        except Exception as exc:
            log.error(f"cannot {what}; trying again", exc_info=exc)
            return False
        return True

    async def _listening(self) -> PgConn | None:
        """The listening connection; a lost one is opened again after a backoff (1 s,
        doubling, up to 30 s). Reconnected, the next catch-up replays what it missed."""
        if self._conn is not None or trio.current_time() < self._retry_at:
            return self._conn
        try:
            self._conn = await trio.to_thread.run_sync(self._connect)
        except psycopg.Error as exc:
            self._retry_at = trio.current_time() + self._backoff
            log.warning(
                "cannot listen to the other daemons; trying again",
                extra={"reason": str(exc).strip(), "retry_in": self._backoff},
            )
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            return None
        self._backoff = BACKOFF_FIRST
        self._wake.set()  # catch up at once
        return self._conn

    async def _wait(self, seconds: float) -> None:
        """Until another daemon commits (a notification), ``kick``, or ``seconds``."""
        deadline = trio.current_time() + seconds
        while not self._wake.is_set() and trio.current_time() < deadline:
            conn = await self._listening()
            if conn is None:
                with trio.move_on_at(min(deadline, max(self._retry_at, trio.current_time()))):
                    await self._wake.wait()
                continue
            step = min(deadline - trio.current_time(), LISTEN_STEP)

            def listen(conn: PgConn = conn, step: float = step) -> bool:
                try:
                    return any(True for _ in conn.raw.notifies(timeout=step, stop_after=1))
                except psycopg.Error:
                    conn.raw.close()  # replaced after the backoff
                    return False

            # Not cancellable: the connection is in the thread's hands until it returns
            # (within LISTEN_STEP); a stop waits that long at most.
            if await trio.to_thread.run_sync(listen):
                break
            if conn.broken:
                self._drop()
                self._retry_at = trio.current_time() + self._backoff
        self._wake = trio.Event()

    async def _renew(self) -> None:
        """Renew the lease through the writer: its transaction checks the fence first, so
        a daemon taken over learns it here (``Fenced``) and re-reads the farm."""
        views = orjson.dumps(self.views()).decode()
        try:
            renewed = await self.store.run_write(
                functools.partial(sql.renew, me=self.member, lease=self.lease, views=views)
            )
        except Fenced:
            renewed = False
        except FarmError:
            self.healthy_since = None
            raise
        if renewed:
            if self.healthy_since is None:
                self.healthy_since = trio.current_time()
            return
        self.healthy_since = None
        await self._rejoin()

    async def _catch_up(self) -> None:
        while True:
            rows = await self.store.run_read(
                functools.partial(sql.events_after, after=self.last_seq, limit=BATCH)
            )
            if not rows:
                return
            foreign = [(ev, node) for ev, node in rows if node != self.member.node]
            if foreign:
                await self._apply(foreign)
            self.last_seq = rows[-1][0].seq
            if len(rows) < BATCH:
                return

    async def _apply(self, rows: list[tuple[Event, str | None]]) -> None:
        events = [ev for ev, _ in rows]
        seqs: dict[str, int] = {}
        for ev in events:
            if ev.job_id is not None:
                seqs[ev.job_id] = ev.seq
        estops = tuple(
            f"{ev.data.get('client', 'an operator')} on daemon {node}"
            for ev, node in rows
            if ev.type == "farm.emergency_stop" and not ev.data.get("relayed")
        )
        jobs = await self.store.get_jobs(list(seqs))
        settings: Any = None
        paused: bool | None = None
        if any(ev.type in _SETTINGS_EVENTS for ev in events):
            settings, paused = self.owner.saved_settings(await self.store.settings())
        await self.owner.call(
            i.SharedChanges(
                jobs=tuple(jobs),
                seqs=seqs,
                events=tuple(events),
                settings=settings,
                paused=paused,
                estops=estops,
            )
        )

    def remote(self, printer_id: str) -> dict[str, Any] | None:
        """Printer ``printer_id`` of another daemon as that daemon showed it last (with
        ``node``; ``state`` offline while that daemon is not alive), or None."""
        return self._remote.get(printer_id)

    def remote_printers(self) -> list[dict[str, Any]]:
        """Every other daemon's printers (see ``remote``), by daemon, in its order."""
        return list(self._remote.values())

    async def _judge(self) -> None:
        """Note the other daemons' printers; take over a daemon whose lease expired (only
        once this daemon's own lease has held for a whole lease: see the module doc)."""
        peers = await self.store.run_read(sql.peers)
        self._remote = _remote_printers(peers, self.member.node)
        since = self.healthy_since
        if since is None or trio.current_time() - since < self.lease:
            return
        for peer in peers:
            if peer.node == self.member.node or peer.lost or peer.expires_in >= 0:
                continue
            silent = self.lease - peer.expires_in
            try:
                taken = await self.owner.call(
                    i.NodeLost(peer.node, peer.epoch, peer.printers, silent)
                )
            except StaleWrite:
                continue  # it came back, or another daemon took it over first
            except FarmError as exc:
                log.warning(
                    "could not take over a stopped daemon's jobs; trying again",
                    extra={"node": peer.node, "reason": exc.message},
                )
                continue
            log.warning(
                "took over a stopped daemon's printing jobs",
                extra={"node": peer.node, "jobs": len(taken)},
            )

    async def peers(self) -> list[Peer]:
        """Every node's lease as the database has it now (for the status API)."""
        try:
            return await self.store.run_read(sql.peers)
        except StorageBusy:
            return []


def _remote_printers(peers: list[Peer], me: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for peer in peers:
        if peer.node == me:
            continue
        alive = not peer.lost and peer.expires_in > 0
        for view in peer.views:
            shown = {**view, "node": peer.node}
            if not alive:
                shown.update(state="offline", message=f"daemon {peer.node} is not running")
            found[str(view.get("id"))] = shown
    return found
