"""A Moonraker-speaking printer: the subset of Moonraker (and Klipper) the driver uses.

``open_moonraker_sim(port=0)`` starts one on 127.0.0.1 and yields a ``MoonrakerSim``
handle with its ``url`` and knobs; ``printfarmd simulate moonraker --port P`` runs one
by hand. It speaks HTTP (``/server/info``, ``/printer/info``,
``/printer/objects/query``, ``/printer/print/start|cancel|pause|resume``,
``/printer/emergency_stop``, ``/printer/gcode/script``, ``/server/files/upload``,
``/server/files/directory``, ``DELETE /server/files/gcodes/<path>``,
``/webcam/snapshot``) and JSON-RPC on
``/websocket`` (the same methods plus ``printer.objects.subscribe``), and pushes
``notify_status_update`` with the changed fields of the objects each client subscribed
to.

Like Moonraker v0.10 with a real Klipper: while Klippy is disconnected the
``printer.*`` methods do not exist (404); while it starts up only ``webhooks`` answers
a query and commands get 503; when Klippy disconnects (a restart) every subscription
is dropped and a client hears nothing until it subscribes again after
``notify_klippy_ready``; a finished print stays ``complete`` with its file name until
the next one starts, and ``printer.print.start`` prints a file again if asked.

Two layers: quart-trio on hypercorn serves the protocol on an internal port, and a
small TCP relay owns the public port so that network faults are real socket faults:
``NetworkMode.RESET`` answers every connection (new and open) with a TCP reset,
``NetworkMode.BLACK_HOLE`` accepts connections and then never sends a byte.
Application knobs: ``delay`` before every answer, ``drop_notifications``, ``errors``
(method -> error answer), ``inject`` (a raw frame to every websocket client).
Printer knobs: ``finish``, ``fail``, ``cancel_on_printer``, ``restart_firmware``,
``restart_klippy``, ``set_klippy``; ``open_moonraker_sim(klippy="startup")`` starts with
Klippy not ready. A print takes ``print_time`` trio seconds.
"""

from __future__ import annotations

import enum
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import attrs
import msgspec
import orjson
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request, websocket
from quart_trio import QuartTrio

from printfarmd.drivers.simulator import encode_solid_png

log = logging.getLogger("printfarmd.moonraker_sim")

OBJECTS = ("print_stats", "virtual_sdcard", "webhooks", "display_status")


class NetworkMode(enum.StrEnum):
    OK = "ok"
    RESET = "reset"
    BLACK_HOLE = "black_hole"


class SimError(Exception):
    """An error answer: ``code`` is the HTTP status (JSON-RPC passes it through)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SimKlipper(msgspec.Struct):
    """The Klipper side: print state on the trio clock. Mutated only inside trio."""

    print_time: float = 20.0
    klippy: str = "ready"
    klippy_message: str = "Printer is ready"
    state: str = "standby"
    filename: str = ""
    message: str = ""
    #: Fraction printed when the current running segment began, and when it began.
    base: float = 0.0
    since: float | None = None
    #: When the print started and (once over) ended: ``total_duration`` is the time
    #: between, pauses included; ``print_duration`` only the time spent printing.
    started_at: float | None = None
    ended_at: float | None = None
    files: dict[str, bytes] = msgspec.field(default_factory=dict)
    #: Every file ``printer.print.start`` started, in order.
    started: list[str] = msgspec.field(default_factory=list)
    #: How many times ``printer.emergency_stop`` was called.
    emergency_stops: int = 0
    gcode: list[str] = msgspec.field(default_factory=list)

    def progress(self, now: float) -> float:
        if self.since is None:
            return self.base
        return min(1.0, self.base + (now - self.since) / self.print_time)

    def advance(self, now: float) -> None:
        """Complete the print once its time is up."""
        if self.state == "printing" and self.progress(now) >= 1.0:
            end = now if self.since is None else self.since + (1 - self.base) * self.print_time
            self.base, self.since, self.state, self.ended_at = 1.0, None, "complete", end

    def total_duration(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at if self.ended_at is not None else now) - self.started_at

    def objects(self, now: float) -> dict[str, dict[str, Any]]:
        progress = self.progress(now)
        return {
            "print_stats": {
                "filename": self.filename,
                "state": self.state,
                "message": self.message,
                "print_duration": round(progress * self.print_time, 3),
                "total_duration": round(self.total_duration(now), 3),
                "filament_used": round(progress * 1000.0, 1),
                "info": {"total_layer": None, "current_layer": None},
            },
            "virtual_sdcard": {
                "file_path": f"/gcodes/{self.filename}" if self.filename else None,
                "progress": round(progress, 4),
                "is_active": self.state == "printing",
                "file_position": 0,
                "file_size": len(self.files.get(self.filename, b"")),
            },
            "webhooks": {"state": self.klippy, "state_message": self.klippy_message},
            "display_status": {"progress": round(progress, 4), "message": None},
        }

    def stop(self, now: float, state: str, message: str = "") -> None:
        self.base, self.since = self.progress(now), None
        self.state, self.message = state, message
        if state != "paused":
            self.ended_at = now

    def begin(self, now: float, filename: str) -> None:
        self.state, self.filename, self.message, self.base, self.since = (
            "printing",
            filename,
            "",
            0.0,
            now,
        )
        self.started_at, self.ended_at = now, None


@attrs.define(eq=False)
class MoonrakerSim:
    """Handle of a running simulated printer (see the module docstring for knobs)."""

    klipper: SimKlipper
    url: str = ""
    api_key: str = ""
    delay: float = 0.0
    drop_notifications: bool = False
    #: Lose the ``notify_klippy_*`` notices (the driver must notice from ``server.info``).
    drop_klippy_notices: bool = False
    #: Method name (e.g. ``printer.print.start``) -> (HTTP status, message) to answer.
    errors: dict[str, tuple[int, str]] = attrs.field(factory=dict)
    #: Every method called, over HTTP or websocket, in order.
    calls: list[str] = attrs.field(factory=list)
    network: NetworkMode = NetworkMode.OK
    _clients: set[trio.MemorySendChannel[str]] = attrs.field(factory=set)
    #: Objects each websocket client subscribed to (dropped when Klippy disconnects).
    subscriptions: dict[trio.MemorySendChannel[str], set[str]] = attrs.field(factory=dict)
    _relays: set[trio.CancelScope] = attrs.field(factory=set)
    _network_changed: trio.Event = attrs.field(factory=trio.Event)
    _last_sent: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    # -- knobs --------------------------------------------------------------------------

    def set_network(self, mode: NetworkMode) -> None:
        """Switch the network fault; open connections are reset or silenced at once."""
        self.network = mode
        if mode is not NetworkMode.OK:
            for scope in list(self._relays):
                scope.cancel()
        self._network_changed.set()
        self._network_changed = trio.Event()

    def inject(self, frame: str) -> None:
        """Send ``frame`` verbatim to every websocket client (malformed on purpose)."""
        for client in list(self._clients):
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                client.send_nowait(frame)

    def finish(self) -> None:
        """Complete the current print now."""
        k = self.klipper
        if k.state in ("printing", "paused"):
            k.base, k.since, k.state = 1.0, None, "complete"
            k.ended_at = trio.current_time()

    def fail(self, message: str, *, shutdown: bool = False) -> None:
        """End the current print with an error; ``shutdown`` also shuts Klipper down."""
        k = self.klipper
        if k.state in ("printing", "paused"):
            k.stop(trio.current_time(), "error", message)
        if shutdown:
            k.klippy, k.klippy_message = "shutdown", message

    def cancel_on_printer(self) -> None:
        k = self.klipper
        if k.state in ("printing", "paused"):
            k.stop(trio.current_time(), "cancelled")

    def restart_firmware(self) -> None:
        """What FIRMWARE_RESTART leaves: Klipper ready, nothing printing, no file.

        Klippy reconnects to Moonraker on the way, so every subscription is dropped
        (and connected clients hear ``notify_klippy_disconnected``, then ``_ready``)."""
        k = self.klipper
        self.set_klippy("disconnected", "Klippy disconnected")
        k.state, k.filename, k.message, k.base, k.since = "standby", "", "", 0.0, None
        k.started_at = k.ended_at = None
        self.set_klippy("ready", "Printer is ready")

    def restart_klippy(self) -> None:
        """A Klippy host restart (RESTART): like ``restart_firmware``, in one instant."""
        self.restart_firmware()

    def set_klippy(self, state: str, message: str = "") -> None:
        """Set Klipper's host state (``ready``, ``startup``, ``shutdown``, ``error``,
        ``disconnected``) and notify websocket clients as Moonraker does. Klippy leaving
        drops every subscription, as Moonraker does."""
        self.klipper.klippy, self.klipper.klippy_message = state, message
        if state in ("disconnected", "startup"):
            self.subscriptions.clear()
        notice = {
            "ready": "notify_klippy_ready",
            "shutdown": "notify_klippy_shutdown",
            "disconnected": "notify_klippy_disconnected",
        }.get(state)
        if notice is not None and not self.drop_klippy_notices:
            self.inject(orjson.dumps({"jsonrpc": "2.0", "method": notice}).decode())

    # -- the protocol -------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: Mapping[str, Any],
        client: trio.MemorySendChannel[str] | None = None,
    ) -> Any:
        """Answer one method (HTTP, or JSON-RPC from websocket ``client``). Raises
        ``SimError``."""
        self.calls.append(method)
        if method in self.errors:
            code, message = self.errors[method]
            raise SimError(code, message)
        k = self.klipper
        now = trio.current_time()
        k.advance(now)
        if method == "server.info":
            return {
                "klippy_connected": k.klippy != "disconnected",
                "klippy_state": k.klippy,
                "components": ["file_manager", "webcam"],
                "failed_components": [],
                "registered_directories": ["gcodes"],
                "warnings": [],
                "moonraker_version": "v0.10.0-printfarmd-sim",
            }
        if method == "server.files.directory":
            return self._directory(str(params.get("path", "gcodes")))
        if method == "server.files.delete_file":
            return self._delete(str(params.get("path", "")))
        if k.klippy == "disconnected" and method.startswith("printer."):
            # Klippy's endpoints are registered only while it is connected.
            raise SimError(404, "Not Found")
        if k.klippy == "startup" and method in (
            "printer.objects.query",
            "printer.objects.subscribe",
        ):
            hooks = {"state": "startup", "state_message": k.klippy_message}
            if method == "printer.objects.subscribe" and client is not None:
                self.subscriptions[client] = {"webhooks"}
            return {"eventtime": now, "status": {"webhooks": hooks}}
        if k.klippy == "startup":
            raise SimError(503, "Klippy Host not ready")
        if method == "printer.info":
            return {
                "state": k.klippy,
                "state_message": k.klippy_message,
                "hostname": "moonraker-sim",
                "software_version": "v0.12.0-sim",
            }
        if method in ("printer.objects.query", "printer.objects.subscribe"):
            wanted = params.get("objects")
            names = list(wanted) if isinstance(wanted, dict) else list(OBJECTS)
            full = k.objects(now)
            if method == "printer.objects.subscribe" and client is not None:
                self.subscriptions[client] = {n for n in names if n in full}
            return {"eventtime": now, "status": {n: full[n] for n in names if n in full}}
        if k.klippy != "ready":
            raise SimError(503, f"Klippy is {k.klippy}: {k.klippy_message}")
        if method == "printer.print.start":
            filename = str(params.get("filename", ""))
            if k.state in ("printing", "paused"):
                raise SimError(400, "SD busy")
            if filename not in k.files:
                raise SimError(400, f"File {filename} does not exist")
            k.begin(now, filename)
            k.started.append(filename)
            return "ok"
        if method == "printer.print.cancel":
            if k.state in ("printing", "paused"):
                k.stop(now, "cancelled")
            return "ok"
        if method == "printer.print.pause":
            if k.state == "printing":
                k.stop(now, "paused")
            return "ok"
        if method == "printer.print.resume":
            if k.state == "paused":
                k.state, k.since = "printing", now
            return "ok"
        if method == "printer.emergency_stop":
            # What Klipper does on M112 / the webhooks request: the print stops in error
            # and Klippy shuts down until FIRMWARE_RESTART (``restart_firmware``).
            k.emergency_stops += 1
            message = "Shutdown due to webhooks request"
            if k.state in ("printing", "paused"):
                k.stop(now, "error", message)
            self.set_klippy("shutdown", message)
            return "ok"
        if method == "printer.gcode.script":
            k.gcode.append(str(params.get("script", "")))
            return "ok"
        raise SimError(404, "Not Found")

    def _directory(self, path: str) -> dict[str, Any]:
        root, _, folder = path.strip("/").partition("/")
        if root != "gcodes":
            raise SimError(400, f"Invalid root {root}")
        prefix = f"{folder}/" if folder else ""
        names = [n for n in self.klipper.files if n.startswith(prefix)]
        if folder and not names:
            raise SimError(404, f"Directory does not exist ({path})")
        files = [
            {"filename": n[len(prefix) :], "size": len(self.klipper.files[n])}
            for n in sorted(names)
            if "/" not in n[len(prefix) :]
        ]
        return {"dirs": [], "files": files, "root_info": {"name": "gcodes"}}

    def _delete(self, path: str) -> dict[str, Any]:
        root, _, name = path.strip("/").partition("/")
        if root != "gcodes" or ".." in name.split("/"):
            raise SimError(400, f"Invalid path {path}")
        k = self.klipper
        if name not in k.files:
            raise SimError(404, f"File {path} does not exist")
        if name == k.filename and k.state in ("printing", "paused"):
            raise SimError(403, f"File is loaded, DELETE not permitted: {name}")
        del k.files[name]
        return {"item": {"path": name, "root": "gcodes"}, "action": "delete_file"}

    def _tick(self) -> None:
        """Advance the print and push the changed fields to every websocket client."""
        now = trio.current_time()
        self.klipper.advance(now)
        full = self.klipper.objects(now)
        diff: dict[str, dict[str, Any]] = {}
        for name, fields in full.items():
            last = self._last_sent.get(name, {})
            changed = {f: v for f, v in fields.items() if last.get(f) != v}
            if changed:
                diff[name] = changed
        self._last_sent = full
        if not diff or self.drop_notifications:
            return
        for client, objects in list(self.subscriptions.items()):
            mine = {name: fields for name, fields in diff.items() if name in objects}
            if not mine:
                continue
            frame = {"jsonrpc": "2.0", "method": "notify_status_update", "params": [mine, now]}
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                client.send_nowait(orjson.dumps(frame).decode())

    def authorized(self, headers: Any) -> bool:
        return not self.api_key or headers.get("X-Api-Key") == self.api_key


# ------------------------------------------------------------------------ the quart app


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def _make_app(sim: MoonrakerSim) -> QuartTrio:
    app = QuartTrio("printfarmd-moonraker-sim")

    @app.route("/server/files/upload", methods=["POST"])
    async def upload() -> Response:
        if not sim.authorized(request.headers):
            return _json({"error": {"code": 401, "message": "Unauthorized"}}, 401)
        await trio.sleep(sim.delay)
        sim.calls.append("server.files.upload")
        form = await request.form
        files = await request.files
        if "file" not in files:
            return _json({"error": {"code": 400, "message": "No file"}}, 400)
        storage = files["file"]
        folder = form.get("path", "").strip("/")
        name = f"{folder}/{storage.filename}" if folder else str(storage.filename)
        if ".." in name.split("/"):
            return _json({"error": {"code": 403, "message": "Invalid path"}}, 403)
        data = storage.read()
        sim.klipper.files[name] = data
        item = {"path": name, "root": "gcodes", "size": len(data), "permissions": "rw"}
        return _json({"action": "create_file", "item": item, "print_started": False}, 201)

    @app.route("/server/files/gcodes/<path:name>", methods=["DELETE"])
    async def delete_file(name: str) -> Response:
        if not sim.authorized(request.headers):
            return _json({"error": {"code": 401, "message": "Unauthorized"}}, 401)
        await trio.sleep(sim.delay)
        try:
            return _json(
                {"result": sim.call("server.files.delete_file", {"path": f"gcodes/{name}"})}
            )
        except SimError as exc:
            return _json({"error": {"code": exc.code, "message": exc.message}}, exc.code)

    @app.route("/webcam/snapshot")
    async def snapshot() -> Response:
        await trio.sleep(sim.delay)
        image = encode_solid_png(32, 24, (40, 180, 60))
        return Response(image, content_type="image/png")

    @app.route("/<path:path>", methods=["GET", "POST"])
    async def rpc_over_http(path: str) -> Response:
        if not sim.authorized(request.headers):
            return _json({"error": {"code": 401, "message": "Unauthorized"}}, 401)
        await trio.sleep(sim.delay)
        method = path.strip("/").replace("/", ".")
        params: dict[str, Any] = dict(request.args)
        if method == "printer.objects.query":
            params = {"objects": dict.fromkeys(request.args)}
        try:
            return _json({"result": sim.call(method, params)})
        except SimError as exc:
            return _json({"error": {"code": exc.code, "message": exc.message}}, exc.code)

    @app.websocket("/websocket")
    async def ws() -> Response | None:
        if not sim.authorized(websocket.headers):
            return _json({"error": {"code": 401, "message": "Unauthorized"}}, 401)
        send, receive = trio.open_memory_channel[str](256)
        sim._clients.add(send)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, receive)
                while True:
                    text = await websocket.receive()
                    nursery.start_soon(_answer, sim, text, send)
        finally:
            sim._clients.discard(send)
            sim.subscriptions.pop(send, None)

    return app


async def _pump(receive: trio.MemoryReceiveChannel[str]) -> None:
    async for frame in receive:
        await websocket.send(frame)


async def _answer(sim: MoonrakerSim, text: str | bytes, send: trio.MemorySendChannel[str]) -> None:
    try:
        data = orjson.loads(text)
        rid, method, params = data.get("id"), str(data["method"]), data.get("params") or {}
    except (orjson.JSONDecodeError, KeyError, AttributeError):
        reply: dict[str, Any] = {"error": {"code": -32700, "message": "Parse error"}, "id": None}
    else:
        await trio.sleep(sim.delay)
        try:
            reply = {"result": sim.call(method, params, send), "id": rid}
        except SimError as exc:
            code = -32601 if exc.code == 404 else exc.code
            reply = {"error": {"code": code, "message": exc.message}, "id": rid}
    with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        send.send_nowait(orjson.dumps({"jsonrpc": "2.0", **reply}).decode())


# ------------------------------------------------------------------------ the TCP relay


def _reset(stream: trio.SocketStream) -> None:
    # SO_LINGER 0 makes close() send RST instead of FIN: a real connection reset.
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    async for chunk in src:
        await dst.send_all(chunk)


async def _relay(sim: MoonrakerSim, backend_port: int, client: trio.SocketStream) -> None:
    async with client:
        if sim.network is NetworkMode.OK:
            scope = trio.CancelScope()
            sim._relays.add(scope)
            try:
                with scope:
                    backend = await trio.open_tcp_stream("127.0.0.1", backend_port)
                    async with backend, trio.open_nursery() as nursery:

                        async def one_way(a: trio.SocketStream, b: trio.SocketStream) -> None:
                            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                                await _copy(a, b)
                            nursery.cancel_scope.cancel()

                        nursery.start_soon(one_way, client, backend)
                        nursery.start_soon(one_way, backend, client)
                    return
            finally:
                sim._relays.discard(scope)
        while sim.network is NetworkMode.BLACK_HOLE:
            await sim._network_changed.wait()  # silence: read nothing, answer nothing
        _reset(client)


async def _serve(
    sim: MoonrakerSim,
    port: int,
    update_interval: float,
    task_status: trio.TaskStatus[None],
) -> None:
    hconf = HyperConfig()
    hconf.bind = ["127.0.0.1:0"]
    hconf.accesslog = None
    hconf.errorlog = log
    hconf.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: hypercorn_serve(_make_app(sim), hconf, task_status=task_status)
        )
        backend_port = int(binds[0].rsplit(":", 1)[1])
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        public = listeners[0].socket.getsockname()[1]
        sim.url = f"http://127.0.0.1:{public}"

        async def handler(stream: trio.SocketStream) -> None:
            await _relay(sim, backend_port, stream)

        nursery.start_soon(trio.serve_listeners, handler, listeners)

        async def ticker() -> None:
            while True:
                sim._tick()
                await trio.sleep(update_interval)

        nursery.start_soon(ticker)
        task_status.started()


@asynccontextmanager
async def open_moonraker_sim(
    port: int = 0,
    *,
    print_time: float = 20.0,
    api_key: str = "",
    update_interval: float = 0.1,
    klippy: str = "ready",
) -> AsyncIterator[MoonrakerSim]:
    """Run a simulated Moonraker printer on 127.0.0.1:``port`` (0 = a free port).

    ``klippy`` is Klippy's state at start (``"startup"``: not ready yet, as right after
    a boot). Yields the handle once it accepts connections; stops it on exit.
    """
    message = "Printer is ready" if klippy == "ready" else "Printer is not ready"
    sim = MoonrakerSim(
        SimKlipper(print_time=print_time, klippy=klippy, klippy_message=message),
        api_key=api_key,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(_serve, sim, port, update_interval)
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()


async def serve_forever(
    port: int, *, print_time: float, api_key: str, ready: Callable[[str], None]
) -> None:
    """Run one simulated printer until cancelled (``printfarmd simulate moonraker``)."""
    async with open_moonraker_sim(port, print_time=print_time, api_key=api_key) as sim:
        ready(sim.url)
        await trio.sleep_forever()
