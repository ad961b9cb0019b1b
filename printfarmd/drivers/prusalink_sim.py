"""A PrusaLink-speaking printer, written from Prusa's published API document.

The document: PrusaLink's OpenAPI description, ``spec/openapi.yaml`` in the
``prusa3d/Prusa-Link-Web`` repository, ``info.version: 1.0.0-draft`` (the revision of
2024-07-18, "update to current Prusa Connect website"). What it serves, as that document
describes it:

- ``GET /api/version`` (``api``, ``version``, ``printer``, ``text``, ``firmware``,
  ``capabilities.upload-by-put``) and ``GET /api/v1/info``;
- ``GET /api/v1/status``: ``printer`` (``state`` one of IDLE, BUSY, PRINTING, PAUSED,
  FINISHED, STOPPED, ERROR, ATTENTION, READY; temperatures; ``status_printer``), ``job``
  (``id``, ``progress``, ``time_remaining``, ``time_printing``) while there is one,
  ``storage``;
- ``GET /api/v1/job`` (204 without a job), ``DELETE /api/v1/job/{id}`` (stop),
  ``PUT /api/v1/job/{id}/pause|resume|continue``;
- ``GET /api/v1/storage`` (``storage_list``);
- ``PUT /api/v1/files/{storage}/{path}`` (body = the file; ``Print-After-Upload`` and
  ``Overwrite`` as RFC 8941 booleans ``?0``/``?1``), ``GET`` (file or folder info),
  ``HEAD``, ``POST`` (print it), ``DELETE``;
- ``GET /api/v1/cameras/snap`` (204: no camera, unless ``camera`` is set).

Authentication is HTTP digest (RFC 7616: MD5, ``qop=auth``), as the document's
``securitySchemes`` says, or an ``X-Api-Key`` (older firmware). Error answers are plain
text, as the document's ``ResponsePlaintext``.

Where the document leaves it open, the stand-in follows one published firmware and has a
knob for the other: ``keep_job_after_end`` (default true, as Prusa's Buddy firmware:
``/api/v1/status`` keeps the ended job while the printer shows FINISHED or STOPPED; false:
the job disappears at once, as PrusaLink on a Raspberry Pi does). ``job.file.path`` is the
folder of the file (the document's example), not the whole path.

The printer: a print lasts ``default_print_time x time_scale`` trio seconds (the
time-scale knob), or the file's own ``; estimated printing time (normal mode) =`` comment
times ``time_scale``. Printer knobs: ``finish``, ``fail`` (ERROR), ``stop_on_printer``,
``attention``, ``reboot`` (back IDLE with no job), ``set_printer_link``. Fault knobs:
``set_network`` (connections reset, or a black hole that accepts and stays silent: real
socket faults through a TCP relay), ``errors`` (an endpoint answers e.g. 503),
``malformed`` (an endpoint answers these raw bytes), ``delay`` (slow answers).
``open_prusalink_sim(port=0)`` yields the handle with its ``url``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import attrs
import msgspec
import orjson
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio

from printfarmd.drivers.simulator import encode_solid_png

log = logging.getLogger("printfarmd.prusalink_sim")

REALM = "Printer API"
SPEC = "prusa3d/Prusa-Link-Web spec/openapi.yaml, info.version 1.0.0-draft (2024-07-18)"
_ESTIMATE_RE = re.compile(
    rb"^;\s*estimated printing time \(normal mode\)\s*=\s*(.+)$", re.IGNORECASE | re.MULTILINE
)
_DURATION_RE = re.compile(r"(\d+)\s*([dhms])")
_ACTIVE = ("PRINTING", "PAUSED", "ATTENTION")
_ENDED = ("FINISHED", "STOPPED", "ERROR")
_PRINTABLE = ("IDLE", "READY", "FINISHED", "STOPPED")


# ------------------------------------------------------------------------ network faults


class NetworkMode(enum.StrEnum):
    OK = "ok"
    RESET = "reset"
    BLACK_HOLE = "black_hole"


@attrs.define(eq=False)
class Relay:
    """A TCP relay in front of a server, with real network faults (``set_network``):
    ``RESET`` answers every connection, new and open, with a TCP reset; ``BLACK_HOLE``
    accepts connections and never sends a byte. Used in front of the stand-in and, in the
    tests, in front of a real OctoPrint."""

    target_host: str
    target_port: int
    url: str = ""
    network: NetworkMode = NetworkMode.OK
    _scopes: set[trio.CancelScope] = attrs.field(factory=set)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def set_network(self, mode: NetworkMode) -> None:
        """Switch the fault; open connections are reset or silenced at once."""
        self.network = mode
        if mode is not NetworkMode.OK:
            for scope in list(self._scopes):
                scope.cancel()
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.network is NetworkMode.OK:
                scope = trio.CancelScope()
                self._scopes.add(scope)
                try:
                    with scope:
                        await self._pipe(client)
                        return
                finally:
                    self._scopes.discard(scope)
            while self.network is NetworkMode.BLACK_HOLE:
                await self._changed.wait()  # silence: read nothing, answer nothing
            # SO_LINGER 0 makes close() send RST instead of FIN: a real connection reset.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def _pipe(self, client: trio.SocketStream) -> None:
        try:
            backend = await trio.open_tcp_stream(self.target_host, self.target_port)
        except OSError:
            return
        async with backend, trio.open_nursery() as nursery:

            async def one_way(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async for chunk in src:
                        await dst.send_all(chunk)
                nursery.cancel_scope.cancel()

            nursery.start_soon(one_way, client, backend)
            nursery.start_soon(one_way, backend, client)


@asynccontextmanager
async def open_relay(host: str, port: int, listen_port: int = 0) -> AsyncIterator[Relay]:
    """A ``Relay`` to ``host:port`` listening on 127.0.0.1:``listen_port`` (0 = free)."""
    relay = Relay(host, port)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(listen_port, host="127.0.0.1")
        relay.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.start_soon(trio.serve_listeners, relay._handle, listeners)
        try:
            yield relay
        finally:
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------ the printer


def estimated_seconds(data: bytes) -> float | None:
    """A PrusaSlicer ``estimated printing time (normal mode)`` comment, in seconds."""
    match = _ESTIMATE_RE.search(data[:200_000]) or _ESTIMATE_RE.search(data[-200_000:])
    if match is None:
        return None
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = match.group(1).decode("ascii", "replace")
    total = sum(int(n) * units[u] for n, u in _DURATION_RE.findall(text))
    return float(total) if total > 0 else None


class SimFile(msgspec.Struct):
    data: bytes
    m_timestamp: int


class SimPrusa(msgspec.Struct):
    """The printer side, on the trio clock. Mutated only inside trio."""

    time_scale: float = 1.0
    default_print_time: float = 60.0
    state: str = "IDLE"
    printer_ok: bool = True
    printer_message: str = "OK"
    job_number: int | None = None
    #: (storage, path) of the job's file.
    job_file: tuple[str, str] | None = None
    job_time: float = 60.0
    base: float = 0.0
    since: float | None = None
    last_job: int = 100
    storages: dict[str, bool] = msgspec.field(
        default_factory=lambda: {"local": False, "sdcard": True}
    )
    #: (storage, path) -> file. ``storages`` maps a storage name to read-only.
    files: dict[tuple[str, str], SimFile] = msgspec.field(default_factory=dict)
    #: Every file printed, as "/storage/path", in order.
    printed: list[str] = msgspec.field(default_factory=list)

    def progress(self, now: float) -> float:
        if self.since is None:
            return self.base
        return min(1.0, self.base + (now - self.since) / self.job_time)

    def advance(self, now: float) -> None:
        if self.state == "PRINTING" and self.progress(now) >= 1.0:
            self.base, self.since, self.state = 1.0, None, "FINISHED"

    def start(self, storage: str, path: str, now: float) -> None:
        data = self.files[(storage, path)].data
        estimate = estimated_seconds(data) or self.default_print_time
        self.last_job += 1
        self.job_number, self.job_file = self.last_job, (storage, path)
        self.job_time = max(estimate * self.time_scale, 1e-3)
        self.state, self.base, self.since = "PRINTING", 0.0, now
        self.printed.append(f"/{storage}/{path}")

    def halt(self, now: float, state: str) -> None:
        self.base, self.since, self.state = self.progress(now), None, state


@attrs.define(eq=False)
class PrusaLinkSim:
    """Handle of a running stand-in (see the module docstring for the knobs)."""

    printer: SimPrusa
    username: str = "maker"
    password: str = ""
    api_key: str = ""
    keep_job_after_end: bool = True
    camera: bool = False
    delay: float = 0.0
    #: Endpoint name (``status``, ``job``, ``upload``, ``files``, ``command``, ``storage``,
    #: ``info``, ``version``, ``snap``) -> (HTTP status, text) to answer instead.
    errors: dict[str, tuple[int, str]] = attrs.field(factory=dict)
    #: Endpoint name -> raw body answered with 200 (malformed on purpose).
    malformed: dict[str, bytes] = attrs.field(factory=dict)
    #: Every endpoint answered, by name, in order (after authentication).
    calls: list[str] = attrs.field(factory=list)
    #: How many requests were refused for their credentials.
    refused: int = 0
    relay: Relay | None = None
    _nonces: set[str] = attrs.field(factory=set)

    @property
    def url(self) -> str:
        return self.relay.url if self.relay is not None else ""

    # -- knobs --------------------------------------------------------------------------

    def set_network(self, mode: NetworkMode) -> None:
        assert self.relay is not None
        self.relay.set_network(mode)

    def finish(self) -> None:
        p = self.printer
        if p.state in _ACTIVE:
            p.base, p.since, p.state = 1.0, None, "FINISHED"

    def fail(self, message: str) -> None:
        """The print stops with a printer error (thermal runaway, a crash...)."""
        p = self.printer
        if p.state in _ACTIVE:
            p.halt(trio.current_time(), "ERROR")
        else:
            p.state = "ERROR"
        p.printer_message = message

    def stop_on_printer(self) -> None:
        p = self.printer
        if p.state in _ACTIVE:
            p.halt(trio.current_time(), "STOPPED")

    def attention(self) -> None:
        """The printer waits for someone (filament runout): the print is held."""
        p = self.printer
        if p.state == "PRINTING":
            p.halt(trio.current_time(), "ATTENTION")

    def reboot(self) -> None:
        """Power-cycled: idle, no job, nothing remembered of the print."""
        p = self.printer
        p.state, p.job_number, p.job_file, p.base, p.since = "IDLE", None, None, 0.0, None
        p.printer_ok, p.printer_message = True, "OK"

    def set_printer_link(self, ok: bool, message: str = "") -> None:
        """PrusaLink lost (or regained) its serial link to the printer board."""
        self.printer.printer_ok = ok
        self.printer.printer_message = message or ("OK" if ok else "Printer not responding")

    # -- auth ---------------------------------------------------------------------------

    def challenge(self, stale: bool = False) -> str:
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        if len(self._nonces) > 1000:
            self._nonces.pop()
        extra = ", stale=true" if stale else ""
        return f'Digest realm="{REALM}", nonce="{nonce}", qop="auth", algorithm=MD5{extra}'

    def authorized(self, method: str, uri: str, headers: Any) -> bool | str:
        """True, or the reason the request is refused (``"stale"`` for an old nonce)."""
        key = headers.get("X-Api-Key")
        if self.api_key and key is not None:
            return hmac.compare_digest(key, self.api_key) or "wrong key"
        header = headers.get("Authorization", "")
        if not self.password or not header.startswith("Digest "):
            return "no credentials"
        fields: dict[str, str] = {}
        for name, quoted, bare in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', header[7:]):
            fields[name] = quoted or bare
        if fields.get("nonce") not in self._nonces:
            return "stale"
        if fields.get("username") != self.username or fields.get("uri") != uri:
            return "wrong user or uri"
        ha1 = _md5(f"{self.username}:{REALM}:{self.password}")
        ha2 = _md5(f"{method}:{uri}")
        expected = _md5(
            f"{ha1}:{fields['nonce']}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:"
            f"{fields.get('qop', '')}:{ha2}"
        )
        return hmac.compare_digest(expected, fields.get("response", "")) or "wrong password"

    # -- the protocol -------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        p = self.printer
        p.advance(now)
        printer: dict[str, Any] = {
            "state": p.state,
            "temp_nozzle": 214.8 if p.state == "PRINTING" else 24.1,
            "target_nozzle": 215.0 if p.state == "PRINTING" else 0.0,
            "temp_bed": 59.6 if p.state == "PRINTING" else 23.9,
            "target_bed": 60.0 if p.state == "PRINTING" else 0.0,
            "axis_z": 1.2,
            "flow": 100,
            "speed": 100,
            "fan_hotend": 4200 if p.state == "PRINTING" else 0,
            "fan_print": 3100 if p.state == "PRINTING" else 0,
            "status_printer": {"ok": p.printer_ok, "message": p.printer_message},
            "status_connect": {"ok": False, "message": "Not connected to Prusa Connect"},
        }
        if p.state not in ("PRINTING", "BUSY"):
            printer["axis_x"], printer["axis_y"] = 10.0, 200.0
        body: dict[str, Any] = {
            "storage": {"name": "local", "path": "/local", "read_only": False},
            "printer": printer,
        }
        if self._job_shown():
            progress = p.progress(now)
            body["job"] = {
                "id": p.job_number,
                "progress": round(progress * 100.0, 2),
                "time_remaining": round((1.0 - progress) * p.job_time),
                "time_printing": int(progress * p.job_time),
            }
        return body

    def _job_shown(self) -> bool:
        p = self.printer
        if p.job_number is None:
            return False
        return p.state in _ACTIVE or (self.keep_job_after_end and p.state in _ENDED)

    def job(self, now: float) -> dict[str, Any] | None:
        p = self.printer
        p.advance(now)
        if not self._job_shown() or p.job_file is None:
            return None
        storage, path = p.job_file
        folder, _, name = path.rpartition("/")
        file = self.printer.files.get((storage, path))
        progress = p.progress(now)
        return {
            "id": p.job_number,
            "state": p.state if p.state in ("PRINTING", "PAUSED", *_ENDED) else "PAUSED",
            "progress": round(progress * 100.0, 2),
            "time_remaining": round((1.0 - progress) * p.job_time),
            "time_printing": int(progress * p.job_time),
            "inaccurate_estimates": False,
            "file": {
                "name": _short_name(name),
                "display_name": name,
                "path": f"/{storage}/{folder}".rstrip("/"),
                "display_path": f"/{storage}/{folder}".rstrip("/"),
                "size": len(file.data) if file else 0,
                "m_timestamp": file.m_timestamp if file else 0,
                "refs": {"download": f"/api/v1/files/{storage}/{path}"},
            },
        }


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _short_name(name: str) -> str:
    """An 8.3 name as FAT storage shows a long one (``SPICE~1.GCO``)."""
    stem, _, ext = name.rpartition(".")
    stem = re.sub(r"[^A-Z0-9]", "", (stem or name).upper())[:6] or "FILE"
    return f"{stem}~1.{ext.upper()[:3] or 'GCO'}"


def _flag(value: str | None) -> bool:
    return (value or "").strip() == "?1"


# ------------------------------------------------------------------------ the quart app


def _text(body: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status=status, content_type="text/plain", headers=headers or {})


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def _make_app(sim: PrusaLinkSim) -> QuartTrio:
    app = QuartTrio("printfarmd-prusalink-sim")
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

    async def gate(name: str) -> Response | None:
        """Authentication, then the knobs; ``None`` lets the endpoint answer."""
        raw = request.scope.get("raw_path") or request.path.encode()
        query = request.scope.get("query_string") or b""
        uri = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        verdict = sim.authorized(request.method, uri, request.headers)
        if verdict is not True:
            sim.refused += 1
            headers = {}
            if sim.password:
                headers["WWW-Authenticate"] = sim.challenge(stale=verdict == "stale")
            return _text("Unauthorized", 401, headers)
        await trio.sleep(sim.delay)
        sim.calls.append(name)
        if name in sim.errors:
            code, message = sim.errors[name]
            return _text(message, code)
        if name in sim.malformed:
            return Response(sim.malformed[name], status=200, content_type="application/json")
        return None

    @app.route("/api/version")
    async def version() -> Response:
        if (refused := await gate("version")) is not None:
            return refused
        return _json(
            {
                "api": "2.0.0",
                "version": "2.1.2",
                "printer": "1.3.1",
                "text": "PrusaLink (stand-in)",
                "firmware": "6.1.3+8138",
                "sdk": "0.7.0",
                "capabilities": {"upload-by-put": True},
            }
        )

    @app.route("/api/v1/info")
    async def info() -> Response:
        if (refused := await gate("info")) is not None:
            return refused
        return _json(
            {
                "mmu": False,
                "name": "prusa-sim",
                "location": "test bench",
                "farm_mode": False,
                "nozzle_diameter": 0.4,
                "min_extrusion_temp": 170,
                "serial": "CZPX4720X004XC34242",
                "sd_ready": True,
                "active_camera": sim.camera,
                "hostname": "prusa-sim.local",
                "port": "/dev/ttyAMA0",
            }
        )

    @app.route("/api/v1/status")
    async def status() -> Response:
        if (refused := await gate("status")) is not None:
            return refused
        return _json(sim.status(trio.current_time()))

    @app.route("/api/v1/job")
    async def job() -> Response:
        if (refused := await gate("job")) is not None:
            return refused
        body = sim.job(trio.current_time())
        return _json(body) if body is not None else Response(b"", status=204)

    @app.route("/api/v1/job/<int:number>", methods=["DELETE"])
    async def stop(number: int) -> Response:
        if (refused := await gate("command")) is not None:
            return refused
        p = sim.printer
        p.advance(trio.current_time())
        if number != p.job_number:
            return _text("Not current job", 404)
        if p.state not in _ACTIVE:
            return _text("Not printing", 409)
        p.halt(trio.current_time(), "STOPPED")
        return Response(b"", status=204)

    @app.route("/api/v1/job/<int:number>/<command>", methods=["PUT"])
    async def command(number: int, command: str) -> Response:
        if (refused := await gate("command")) is not None:
            return refused
        p = sim.printer
        now = trio.current_time()
        p.advance(now)
        if number != p.job_number:
            return _text("Not current job", 404)
        if command == "pause":
            if p.state != "PRINTING":
                return _text("Not printing", 409)
            p.halt(now, "PAUSED")
        elif command == "resume":
            if p.state not in ("PAUSED", "ATTENTION"):
                return _text("Not paused", 409)
            p.state, p.since = "PRINTING", now
        elif command != "continue":
            return _text("Not found", 404)
        return Response(b"", status=204)

    @app.route("/api/v1/storage")
    async def storage() -> Response:
        if (refused := await gate("storage")) is not None:
            return refused
        kinds = {"local": "LOCAL", "sdcard": "SDCARD", "usb": "USB"}
        listing = [
            {
                "name": name,
                "type": kinds.get(name, "LOCAL"),
                "path": f"/{name}",
                "available": True,
                "read_only": read_only,
                "free_space": 4_000_000_000,
                "total_space": 8_000_000_000,
                "print_files": sum(
                    len(f.data) for (s, _), f in sim.printer.files.items() if s == name
                ),
            }
            for name, read_only in sim.printer.storages.items()
        ]
        return _json({"storage_list": listing})

    @app.route("/api/v1/cameras/snap")
    async def snap() -> Response:
        if (refused := await gate("snap")) is not None:
            return refused
        if not sim.camera:
            return Response(b"", status=204)
        return Response(encode_solid_png(32, 24, (200, 90, 20)), content_type="image/png")

    @app.route(
        "/api/v1/files/<storage>/<path:path>", methods=["GET", "PUT", "POST", "HEAD", "DELETE"]
    )
    async def files(storage: str, path: str) -> Response:
        name = "upload" if request.method == "PUT" else "files"
        if (refused := await gate(name)) is not None:
            return refused
        p = sim.printer
        now = trio.current_time()
        p.advance(now)
        if storage not in p.storages:
            return _text("Storage not found", 404)
        path = path.strip("/")
        if not path or ".." in path.split("/"):
            return _text("Invalid path", 400)
        key = (storage, path)
        printing = p.job_file == key and p.state in _ACTIVE
        if request.method == "PUT":
            if p.storages[storage]:
                return _text("Storage is read only", 409)
            data = await request.get_data(as_text=False)
            assert isinstance(data, bytes)
            if key in p.files and not _flag(request.headers.get("Overwrite")):
                return _text("File already exists", 409)
            if printing:
                return _text("File is being printed", 409)
            to_print = _flag(request.headers.get("Print-After-Upload"))
            if to_print and p.state not in _PRINTABLE:
                return _text("Printer is busy", 409)
            p.files[key] = SimFile(data, int(trio.current_time()) + 1_700_000_000)
            if to_print:
                p.start(storage, path, now)
            return Response(b"", status=201)
        if request.method == "DELETE":
            if key in p.files:
                if printing:
                    return _text("File is being printed", 409)
                del p.files[key]
                return Response(b"", status=204)
            prefix = path + "/"
            inside = [k for k in p.files if k[0] == storage and k[1].startswith(prefix)]
            if not inside:
                return _text("Not found", 404)
            if not _flag(request.headers.get("Force")):
                return _text("Folder is not empty", 409)
            for k in inside:
                del p.files[k]
            return Response(b"", status=204)
        if request.method == "POST":
            if key not in p.files:
                return _text("Not found", 404)
            if p.state not in _PRINTABLE:
                return _text("Printer is busy", 409)
            p.start(storage, path, now)
            return Response(b"", status=204)
        if key in p.files:
            if request.method == "HEAD":
                headers = {
                    "Read-Only": "true" if p.storages[storage] else "false",
                    "Currently-Printed": "true" if printing else "false",
                }
                return Response(b"", status=200, headers=headers)
            return _json(_file_info(storage, path, p.files[key]))
        prefix = path + "/"
        children = {
            k[1][len(prefix) :].split("/", 1)[0]
            for k in p.files
            if k[0] == storage and k[1].startswith(prefix)
        }
        if not children:
            return _text("Not found", 404)
        listing = []
        for child in sorted(children):
            full = f"{path}/{child}"
            if (storage, full) in p.files:
                listing.append(_file_info(storage, full, p.files[(storage, full)]))
            else:
                listing.append(
                    {"name": child, "type": "FOLDER", "read_only": False, "m_timestamp": 0}
                )
        return _json(
            {
                "name": path.rsplit("/", 1)[-1],
                "type": "FOLDER",
                "read_only": p.storages[storage],
                "m_timestamp": 0,
                "children": listing,
            }
        )

    return app


def _file_info(storage: str, path: str, file: SimFile) -> dict[str, Any]:
    name = path.rsplit("/", 1)[-1]
    return {
        "name": _short_name(name),
        "display_name": name,
        "type": "PRINT_FILE",
        "read_only": False,
        "size": len(file.data),
        "m_timestamp": file.m_timestamp,
        "refs": {"download": f"/api/v1/files/{storage}/{path}"},
    }


# ------------------------------------------------------------------------ serving


async def _serve(sim: PrusaLinkSim, port: int, task_status: trio.TaskStatus[None]) -> None:
    hconf = HyperConfig()
    hconf.bind = ["127.0.0.1:0"]
    hconf.accesslog = None
    hconf.errorlog = log
    hconf.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: hypercorn_serve(_make_app(sim), hconf, task_status=task_status)
        )
        backend = int(binds[0].rsplit(":", 1)[1])
        sim.relay = await nursery.start(_relay_task, backend, port)
        task_status.started()


async def _relay_task(backend: int, port: int, task_status: trio.TaskStatus[Relay]) -> None:
    async with open_relay("127.0.0.1", backend, port) as relay:
        task_status.started(relay)
        await trio.sleep_forever()


@asynccontextmanager
async def open_prusalink_sim(
    port: int = 0,
    *,
    password: str = "",
    api_key: str = "",
    username: str = "maker",
    time_scale: float = 1.0,
    default_print_time: float = 60.0,
    keep_job_after_end: bool = True,
) -> AsyncIterator[PrusaLinkSim]:
    """Run a PrusaLink stand-in on 127.0.0.1:``port`` (0 = a free port).

    Digest authentication with ``username``/``password``, or ``X-Api-Key`` with
    ``api_key`` (either or both). Yields the handle once it accepts connections.
    """
    printer = SimPrusa(time_scale=time_scale, default_print_time=default_print_time)
    sim = PrusaLinkSim(
        printer,
        username=username,
        password=password,
        api_key=api_key,
        keep_job_after_end=keep_job_after_end,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(_serve, sim, port)
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()


async def serve_forever(port: int, *, password: str, ready: Callable[[str], None]) -> None:
    """Run one stand-in until cancelled (for trying the driver by hand)."""
    async with open_prusalink_sim(port, password=password) as sim:
        ready(sim.url)
        await trio.sleep_forever()
