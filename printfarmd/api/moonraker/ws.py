"""``/websocket``: JSON-RPC 2.0 over text frames, plus notifications.

Auth comes from the upgrade request (``X-Api-Key``, a trusted peer, or a one-shot
``?token=``) or later from ``server.connection.identify``; until then every method but
identify answers -32602 ``"Unauthorized"`` and no notification is pushed.

Notifications: ``notify_job_queue_changed`` and ``notify_history_changed`` from the
committed events on the bus; ``notify_gcode_response`` from the farm console;
``notify_proc_stat_update`` once a second to a client that identified itself (as both
UIs do: Mainsail also closes a socket that is silent for 10 s), and
``notify_status_update`` with ``system_stats`` to one that subscribed to it.

Order: requests are answered one at a time, and a bus notification waits until no
request is being answered, so a client always gets the response before the notification
its change caused. The request loop sends its answers itself; notifications go through
one bounded outgoing channel and its writer task (a client too slow to take them is
closed). Each notification is encoded once for every client (``Facade.queue_notification``).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import orjson
import trio
from quart import Response, websocket

from printfarmd.api.auth import Verdict
from printfarmd.api.front import decision_of
from printfarmd.api.moonraker import asgi_socket, history_methods, procstats, rpc, spoolman_methods
from printfarmd.api.moonraker.facade import HISTORY_FRAMES_KEEP, Facade, notify_frame
from printfarmd.errors import FarmError
from printfarmd.models import Event
from printfarmd.services.bus import Message

log = logging.getLogger("printfarmd.api.moonraker")

#: A refused upgrade is an HTTP response that no after-request hook sees.
REFUSAL_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

OUT_BUFFER = 512
#: Largest frame (bytes) an authenticated client may send. The daemon gives hypercorn
#: the same cap (``websocket_max_message_size``), which closes the connection with 1009
#: (message too big) before buffering more; the check here covers any other server.
MAX_FRAME = 1 << 20
#: Largest frame before the client authenticated: ``server.connection.identify`` is
#: a few hundred bytes, and an anonymous peer should not make us decode a megabyte.
MAX_ANONYMOUS_FRAME = 16 * 1024

QUEUE_EVENT_TYPES = frozenset(
    {
        "job.transition",
        "job.jumped",
        "job.reprioritized",
        "orchestrator.paused",
        "orchestrator.resumed",
    }
)
HISTORY_EVENT_TYPES = frozenset({"history.deleted", "history.totals_reset"})


class Connection(msgspec.Struct, eq=False):
    id: int
    peer: str | None
    authenticated: bool
    send_channel: trio.MemorySendChannel[bytes]
    cancel: trio.CancelScope
    client_name: str = ""
    busy: bool = False
    #: Set when the request being answered is done; made only while the notifications'
    #: task waits for that (most answers are not waited for).
    idle: trio.Event | None = None
    #: Called ``server.connection.identify`` (gets the once-a-second process statistics).
    identified: bool = False
    #: Printer objects of its last ``printer.objects.subscribe``.
    subscribed: set[str] = msgspec.field(default_factory=set)
    #: Frames handed to the writer and not yet sent (an answer waits behind them).
    unsent: int = 0

    def push(self, frame: bytes) -> None:
        """Queue a notification if this client is authenticated; close it if it lags."""
        if not self.authenticated:
            return
        try:
            self.send_channel.send_nowait(frame)
            self.unsent += 1
        except trio.WouldBlock:
            self.cancel.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def is_queue_event(msg: Message) -> bool:
    return isinstance(msg, Event) and msg.type in QUEUE_EVENT_TYPES


def is_history_event(msg: Message) -> bool:
    """An event that may open, close, hide or recount history entries."""
    if not isinstance(msg, Event):
        return False
    if msg.type == "job.transition":
        return "printing" in (msg.from_state, msg.to_state)
    return msg.type in HISTORY_EVENT_TYPES


def is_spool_event(msg: Message) -> bool:
    """(issue 16) A spool bound or unbound (``notify_active_spool_set``)."""
    return isinstance(msg, Event) and msg.type == "printer.spool_bound"


def is_notified(msg: Message) -> bool:
    return is_queue_event(msg) or is_history_event(msg) or is_spool_event(msg)


def queue_actions(events: list[Event]) -> list[str]:
    """Moonraker's ``notify_job_queue_changed`` actions for a run of committed events."""
    actions: list[str] = []
    for ev in events:
        if ev.type == "job.transition":
            if ev.to_state == "queued" and ev.from_state != "queued":
                action = "jobs_added"
            elif ev.from_state == "queued" and ev.to_state == "printing":
                action = "job_loaded"
            elif ev.from_state == "queued":
                action = "jobs_removed"
            else:
                continue
        elif ev.type in ("orchestrator.paused", "orchestrator.resumed"):
            action = "state_changed"
        else:
            action = "jobs_added"  # the order changed: clients refresh from updated_queue
        if action not in actions:
            actions.append(action)
    return actions


async def _forward(
    facade: Facade, conn: Connection, recv: trio.MemoryReceiveChannel[Message]
) -> None:
    async for first in recv:
        batch = [first]
        while True:
            try:
                batch.append(recv.receive_nowait())
            except trio.WouldBlock:
                break
        while conn.busy:
            if conn.idle is None:
                conn.idle = trio.Event()
            await conn.idle.wait()
        events = [m for m in batch if isinstance(m, Event) and is_queue_event(m)]
        for action in queue_actions(events):
            conn.push(facade.queue_notification(action))
        for ev in batch:
            if is_history_event(ev):
                for frame in await _history_frames(facade, ev):
                    conn.push(frame)
            elif is_spool_event(ev):
                _spool(facade, conn, ev)


def _spool(facade: Facade, conn: Connection, ev: Message) -> None:
    """``notify_active_spool_set`` when the facade printer's first tool changed spool."""
    assert isinstance(ev, Event)
    caller = rpc.Caller(facade, conn.peer, conn)
    if ev.printer_id != spoolman_methods.facade_printer(caller) or ev.data.get("tool") != 0:
        return
    conn.push(notify_frame("notify_active_spool_set", [{"spool_id": ev.data.get("spool_id")}]))


async def _history_frames(facade: Facade, ev: Message) -> list[bytes]:
    """The ``notify_history_changed`` frames of ``ev``, made once for every client."""
    assert isinstance(ev, Event)
    pending = facade.history_pending.get(ev.seq)
    if pending is not None:  # another client's task is making them
        await pending.wait()
    cached = facade.history_frames.get(ev.seq)
    if cached is not None or pending is not None:
        return cached or []
    done = facade.history_pending[ev.seq] = trio.Event()
    frames: list[bytes] = []
    try:
        notes = await history_methods.notification(rpc.Caller(facade, None), ev)
        frames = [notify_frame("notify_history_changed", [params]) for params in notes]
    except FarmError as exc:  # storage trouble: this notification is lost, not the socket
        log.warning("history notification not sent", extra={"reason": exc.message})
    except Exception as exc:  # a bug loses the notification, never the client's socket
        log.error("history notification failed", exc_info=exc)
    finally:
        facade.history_frames[ev.seq] = frames
        while len(facade.history_frames) > HISTORY_FRAMES_KEEP:
            del facade.history_frames[min(facade.history_frames)]
        del facade.history_pending[ev.seq]
        done.set()
    return frames


async def _tick(facade: Facade, conn: Connection) -> None:
    """Once a second: process statistics to an identified client; ``system_stats`` to
    one subscribed to it."""
    while True:
        await trio.sleep(procstats.INTERVAL)
        if not (conn.authenticated and conn.identified):
            continue
        stats = facade.procstats
        try:
            await stats.sample()
        except (OSError, ValueError) as exc:  # a /proc oddity: skip this second
            log.warning("process statistics not read", extra={"reason": str(exc)})
            continue
        conn.push(
            notify_frame("notify_proc_stat_update", [stats.notification(len(facade.connections))])
        )
        if "system_stats" in conn.subscribed:
            status = {"system_stats": stats.system_stats()}
            conn.push(notify_frame("notify_status_update", [status, trio.current_time()]))


async def _write(
    conn: Connection, recv: trio.MemoryReceiveChannel[bytes], sock: asgi_socket.Socket
) -> None:
    async for frame in recv:
        try:
            await sock.send(frame.decode("utf-8"))
        finally:
            conn.unsent -= 1


async def serve(facade: Facade, sock: asgi_socket.Socket) -> Response | None:
    """The websocket handler (``asgi_socket.serve`` runs it, in Quart's websocket context): a
    403 or 429 response before the upgrade is accepted, else serve the connection until
    either side ends it."""
    svc = facade.svc
    access = svc.access
    # The front decided once, at the upgrade (api/front.py).
    decision = decision_of(sock.scope)
    if decision is None:
        decision = access.decide(
            peer=websocket.remote_addr,
            host=websocket.headers.get("Host"),
            api_key=websocket.headers.get("X-Api-Key"),
            forwarded_for=websocket.headers.get("X-Forwarded-For"),
            oneshot=websocket.args.get("token"),
        )
    peer = decision.client
    authenticated = decision.allowed
    origin = websocket.headers.get("Origin")
    if origin and not access.origin_allowed(origin, websocket.host):
        # Cross-site websocket hijacking: a page elsewhere may not drive the farm.
        return Response(
            b'{"error":{"code":403,"message":"Forbidden origin"}}',
            status=403,
            headers=REFUSAL_HEADERS,
            content_type="application/json",
        )
    if decision.verdict is Verdict.THROTTLED:
        return Response(
            b'{"error":{"code":429,"message":"Too many wrong API keys from this address"}}',
            status=429,
            headers={**REFUSAL_HEADERS, "Retry-After": str(decision.retry_after)},
            content_type="application/json",
        )
    await sock.accept()
    send, recv = trio.open_memory_channel[bytes](OUT_BUFFER)
    with trio.CancelScope() as scope:
        conn = Connection(facade.next_connection_id(), peer, authenticated, send, scope)
        caller = rpc.Caller(facade, peer, conn)

        def authorized(name: str) -> bool:
            m = rpc.METHODS.get(name)
            return conn.authenticated or (m is not None and m.public)

        facade.connections.add(conn)
        try:
            with svc.bus.subscribed(is_notified, buffer_size=1024) as sub:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_write, conn, recv, sock)
                    nursery.start_soon(_tick, facade, conn)

                    async def forward_then_close() -> None:
                        await _forward(facade, conn, sub.receive_channel)
                        scope.cancel()  # bus closed (shutdown) or we were dropped

                    nursery.start_soon(forward_then_close)
                    while True:
                        try:
                            data: Any = await sock.receive()
                        except asgi_socket.Disconnected:
                            nursery.cancel_scope.cancel()
                            break
                        limit = MAX_FRAME if conn.authenticated else MAX_ANONYMOUS_FRAME
                        if _size(data, limit) > limit:
                            await sock.send(frame_too_large(limit).decode())
                            continue
                        conn.busy = True
                        try:
                            reply = await rpc.dispatch(caller, data, authorized)
                            if reply is None:
                                pass
                            elif conn.unsent:
                                # Notifications the call made (console lines, say) are not
                                # sent yet: the answer goes after them, as Moonraker's does.
                                conn.unsent += 1
                                await send.send(reply)
                            else:
                                # Straight out, not through the notifications' writer: one
                                # task switch less per answer. Frames go out whole either way.
                                await sock.send(reply.decode("utf-8"))
                        finally:
                            conn.busy = False
                            if conn.idle is not None:
                                conn.idle.set()
                                conn.idle = None
        finally:
            facade.connections.discard(conn)
            send.close()
    if scope.cancelled_caught:
        # We ended it (shutdown, or a client too slow to take its notifications): say so
        # with a close frame rather than dropping the TCP connection.
        with trio.move_on_after(1.0):
            await sock.close(1001, "going away")
    return None


def _size(data: str | bytes, limit: int) -> int:
    """The frame's size in bytes, or (for a text frame too short to reach ``limit``) its
    length in characters: a character is at most 4 bytes of UTF-8."""
    if isinstance(data, bytes) or len(data) * 4 <= limit:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def frame_too_large(limit: int) -> bytes:
    """The answer to a frame over ``limit`` bytes (it is not parsed; the connection stays)."""
    message = f"Invalid Request: frame larger than {limit} bytes"
    return orjson.dumps(
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": message}, "id": None}
    )
