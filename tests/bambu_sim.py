"""A Bambu Lab printer in LAN mode, for tests: real mosquitto, real FTPS, simulated printer.

No real Bambu printer can run here, so the stand-in is built from the public protocol
documentation of the OpenBambuAPI project (github.com/Doridian/OpenBambuAPI:
``mqtt.md`` for ``device/<serial>/report|request``, ``pushing.pushall``,
``print.push_status``, ``print.project_file``/``gcode_file``/``gcode_line``,
``pause``/``resume``/``stop`` and their ``result`` replies; ``ftp.md`` for implicit
FTPS on 990 with user ``bblp``; ``tls.md`` for the printer's own certificate) and the
``gcode_state`` names the ha-bambulab integration lists. Three parts:

- ``BambuBroker``: a real ``mosquitto`` the test starts, with a TLS listener (a fresh
  self-signed certificate made with ``cryptography``, CN = the serial) that wants user
  ``bblp`` and the access code, as the printer's own broker does, and a plain listener
  for the simulated printer itself. It can be killed and restarted on the same ports,
  with the same or a new certificate.
- ``FtpsServer``: pyftpdlib with implicit TLS (TLS from the first byte) on the same
  certificate, serving the simulated SD card (a folder).
- ``SimBambuPrinter``: the printer's firmware: it obeys requests, prints files that are
  on its SD card (``speed`` scales time), and reports like a P1 (only what changed; a
  full report on ``pushall``) or, with ``full_reports``, like an X1. Knobs: ``finish``,
  ``fail``, ``reboot``, ``set_ams``, ``inject`` (raw payloads).

Missing ``mosquitto`` or pyftpdlib makes the tests that use them FAIL, never skip.
"""

from __future__ import annotations

import datetime
import getpass
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from printfarmd.drivers import bambu_protocol as proto
from printfarmd.mqtt_trio import Message, MqttLink, MqttSettings
from tests.conftest import free_port
from tests.mosquitto import mosquitto_binary

SERIAL = "01S00A123456789"
ACCESS_CODE = "12345678"
_PRINTER_USER, _PRINTER_SECRET = "firmware", "firmware-secret"


# ------------------------------------------------------------------ certificates


def make_certificate(directory: Path, common_name: str) -> bytes:
    """Write a fresh self-signed EC certificate (``cert.pem``) and key (``key.pem``)
    into ``directory``; returns the certificate's DER (its fingerprint is the pin)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ the broker


class BambuBroker:
    """mosquitto as the printer's broker: TLS + password for clients, plain for the
    simulated firmware. ``kill`` / ``start`` keep the ports; ``new_certificate``
    replaces the certificate (restart to serve it)."""

    def __init__(self, workdir: Path, access_code: str = ACCESS_CODE) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.cert_dir = workdir / "tls"
        self.der = make_certificate(self.cert_dir, SERIAL)
        self.log = workdir / "mosquitto.log"
        passwords = workdir / "passwords"
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not os.path.exists(passwd):
            pytest.fail("mosquitto_passwd is missing (it comes with Debian's mosquitto)")
        subprocess.run(
            [passwd, "-b", "-c", str(passwords), "bblp", access_code],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [passwd, "-b", str(passwords), _PRINTER_USER, _PRINTER_SECRET],
            check=True,
            capture_output=True,
        )
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            "persistence false\n"
            "log_dest stderr\n"
            # As root, mosquitto would switch to a user that cannot read the key.
            f"user {getpass.getuser()}\n"
            f"listener {self.tls_port} 127.0.0.1\n"
            f"certfile {self.cert_dir / 'cert.pem'}\n"
            f"keyfile {self.cert_dir / 'key.pem'}\n"
            f"listener {self.plain_port} 127.0.0.1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def new_certificate(self) -> bytes:
        self.der = make_certificate(self.cert_dir, SERIAL)
        return self.der

    def start(self) -> None:
        assert self.proc is None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            try:
                for port in (self.tls_port, self.plain_port):
                    socket.create_connection((self.host, port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.01)  # polling with a deadline
        pytest.fail("mosquitto did not start listening within 10 s")

    def kill(self) -> None:
        """SIGKILL (no goodbye to anyone) and reap."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


# ------------------------------------------------------------------ FTPS


class FtpsServer:
    """pyftpdlib with implicit TLS serving ``root`` (the SD card) to ``bblp``."""

    def __init__(self, root: Path, cert_dir: Path, access_code: str = ACCESS_CODE) -> None:
        self.root = root
        self.cert_dir = cert_dir
        self.access_code = access_code
        self.port = free_port()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            from OpenSSL import SSL

            with warnings.catch_warnings():
                # pyftpdlib 2 still builds on asyncore, deprecated in Python 3.11.
                warnings.simplefilter("ignore", DeprecationWarning)
                from pyftpdlib.authorizers import DummyAuthorizer
                from pyftpdlib.handlers import TLS_FTPHandler
                from pyftpdlib.servers import FTPServer
        except ImportError as exc:  # pragma: no cover - CI installs the test extras
            pytest.fail(f"pyftpdlib with TLS is not installed ({exc}); pip install -e '.[test]'")
        self.root.mkdir(parents=True, exist_ok=True)
        authorizer = DummyAuthorizer()
        authorizer.add_user("bblp", self.access_code, str(self.root), perm="elradfmw")
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(str(self.cert_dir / "cert.pem"))
        context.use_privatekey_file(str(self.cert_dir / "key.pem"))

        class Implicit(TLS_FTPHandler):  # type: ignore[misc]
            """TLS from the first byte, then the greeting (what port 990 speaks)."""

            def handle(self) -> None:
                self.secure_connection(self.ssl_context)

            def handle_ssl_established(self) -> None:
                if not getattr(self, "_greeted", False):
                    self._greeted = True
                    TLS_FTPHandler.handle(self)

        Implicit.ssl_context = context
        Implicit.authorizer = authorizer
        Implicit.tls_data_required = True
        Implicit.passive_ports = None
        Implicit.banner = "printfarmd Bambu stand-in"
        server = FTPServer(("127.0.0.1", self.port), Implicit)
        stop = threading.Event()

        def serve() -> None:
            # pyftpdlib's loop is not thread-safe: it runs, and is closed, in this thread.
            try:
                while not stop.is_set():
                    server.ioloop.loop(timeout=0.05, blocking=False)
            finally:
                server.close_all()

        self._stop = stop
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
            self._thread = None


# ------------------------------------------------------------------ the printer


class SimBambuPrinter:
    """The printer's firmware (see the module docstring). Mutated only inside trio.

    ``requests`` keeps every request received; ``started`` every file a print began.
    A print takes ``print_time / speed`` seconds after ``prepare_time / speed`` of
    PREPARE.
    """

    def __init__(
        self,
        broker: BambuBroker,
        sdcard: Path,
        *,
        print_time: float = 60.0,
        prepare_time: float = 2.0,
        speed: float = 1.0,
        report_interval: float = 0.2,
        full_reports: bool = False,
    ) -> None:
        self.broker = broker
        self.sdcard = sdcard
        self.print_time = print_time
        self.prepare_time = prepare_time
        self.speed = speed
        self.report_interval = report_interval
        self.full_reports = full_reports
        self.requests: list[dict[str, Any]] = []
        #: The next this many ``pushall`` requests go unanswered (as if lost).
        self.ignore_pushalls = 0
        self.started: list[str] = []
        self.gcode: list[str] = []
        self.state = proto.GcodeState.IDLE
        self.gcode_file = ""
        self.subtask_name = ""
        self.print_error = 0
        self.hms: list[dict[str, int]] = []
        self.ams: list[dict[str, Any]] = []
        self.tray_now = proto.TRAY_NONE
        self.vt_tray: dict[str, Any] = {"id": "254", "tray_type": "", "tray_color": "00000000"}
        self._base = 0.0
        self._since: float | None = None
        self._prepare_until: float | None = None
        self._last: dict[str, Any] = {}
        self._wake = trio.Event()
        self._seq = 0
        self.link: MqttLink | None = None

    # -- knobs ------------------------------------------------------------------------

    def _poke(self) -> None:
        self._wake.set()

    def percent(self, now: float) -> float:
        if self._since is None:
            return self._base
        return min(100.0, self._base + (now - self._since) * self.speed / self.print_time * 100)

    def finish(self) -> None:
        if self.state in (proto.GcodeState.RUNNING, proto.GcodeState.PAUSE):
            self._end(proto.GcodeState.FINISH, 100.0)

    def fail(self, print_error: int, hms: list[dict[str, int]] | None = None) -> None:
        """End the print with an error (``print_error``) and HMS messages."""
        now = trio.current_time()
        self._end(proto.GcodeState.FAILED, self.percent(now))
        self.print_error = print_error
        self.hms = list(hms or [])

    def reboot(self) -> None:
        """Power cycled: idle, no file, no print."""
        self.state, self.gcode_file, self.subtask_name = proto.GcodeState.IDLE, "", ""
        self._base, self._since, self._prepare_until = 0.0, None, None
        self.print_error, self.hms = 0, []
        self._poke()

    def set_ams(
        self,
        trays: list[tuple[str, str]],
        tray_now: str,
        external: tuple[str, str] = ("", "00000000"),
    ) -> None:
        """One AMS unit with ``trays`` ((type, RRGGBBAA); type "" = empty slot)."""
        self.ams = [
            {
                "id": "0",
                "humidity": "4",
                "temp": "22.7",
                "tray": [
                    {"id": str(i), "tray_type": t, "tray_color": c} if t else {"id": str(i)}
                    for i, (t, c) in enumerate(trays)
                ],
            }
        ]
        self.tray_now = tray_now
        self.vt_tray = {"id": "254", "tray_type": external[0], "tray_color": external[1]}
        self._poke()

    def push_full(self) -> None:
        """Publish a full report now (as after a ``pushall``)."""
        self._send(full=True)

    def inject(self, payload: bytes) -> None:
        """Publish ``payload`` on the report topic as is (malformed on purpose)."""
        if self.link is not None:
            self.link.publish(f"device/{SERIAL}/report", payload, qos=0)

    def _end(self, state: proto.GcodeState, percent: float) -> None:
        self.state, self._base, self._since, self._prepare_until = state, percent, None, None
        self._poke()

    # -- the protocol -----------------------------------------------------------------

    def _full(self, now: float) -> dict[str, Any]:
        running = self.state in (proto.GcodeState.RUNNING, proto.GcodeState.PAUSE)
        percent = int(self.percent(now)) if running or self.state.value == "FINISH" else 0
        left = (100 - percent) / 100 * self.print_time / self.speed / 60 if running else 0
        return {
            "command": "push_status",
            "gcode_state": self.state.value,
            "gcode_file": self.gcode_file,
            "subtask_name": self.subtask_name,
            "mc_percent": percent,
            "mc_remaining_time": math.ceil(left),
            "print_error": self.print_error,
            "hms": list(self.hms),
            "ams": {"ams": self.ams, "tray_now": self.tray_now, "ams_exist_bits": "1"},
            "vt_tray": dict(self.vt_tray),
            "nozzle_temper": 220.0,
            "bed_temper": 60.0,
            "wifi_signal": "-45dBm",
        }

    def _report(self, now: float, *, full: bool) -> bytes | None:
        body = self._full(now)
        if not (full or self.full_reports):
            changed = {k: v for k, v in body.items() if self._last.get(k) != v}
            if not changed:
                return None
            body = {"command": "push_status", **changed}
        self._last = self._full(now)
        self._seq += 1
        return orjson.dumps({"print": {**body, "sequence_id": str(self._seq)}})

    def _reply(self, section: str, request: dict[str, Any], result: str, reason: str = "") -> None:
        reply = {
            "command": request.get("command"),
            "sequence_id": request.get("sequence_id"),
            "result": result,
        }
        if reason:
            reply["reason"] = reason
        if self.link is not None:
            self.link.publish(f"device/{SERIAL}/report", orjson.dumps({section: reply}), qos=0)

    def on_message(self, msg: Message) -> None:
        try:
            data = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        self.requests.append(data)
        if isinstance(data.get("pushing"), dict) and data["pushing"].get("command") == "pushall":
            if self.ignore_pushalls > 0:
                self.ignore_pushalls -= 1
                return
            self._send(full=True)
            return
        request = data.get("print")
        if not isinstance(request, dict):
            return
        command = request.get("command")
        now = trio.current_time()
        busy = self.state in (
            proto.GcodeState.PREPARE,
            proto.GcodeState.RUNNING,
            proto.GcodeState.PAUSE,
        )
        if command in ("project_file", "gcode_file"):
            if busy:
                self._reply("print", request, "fail", "printer busy")
                return
            if command == "project_file":
                path = str(request.get("url", "")).removeprefix("ftp:///")
            else:
                path = str(request.get("param", "")).removeprefix(proto.SDCARD_ROOT + "/")
            if not path or ".." in path.split("/") or not (self.sdcard / path).is_file():
                self._reply("print", request, "fail", f"file not found: {path}")
                return
            self.started.append(path)
            self.gcode_file = path
            self.subtask_name = str(request.get("subtask_name", ""))
            self.print_error, self.hms = 0, []
            self.state, self._base, self._since = proto.GcodeState.PREPARE, 0.0, None
            self._prepare_until = now + self.prepare_time / self.speed
            self._reply("print", request, "success")
        elif command == "pause" and self.state is proto.GcodeState.RUNNING:
            self._base, self._since, self.state = self.percent(now), None, proto.GcodeState.PAUSE
            self._reply("print", request, "success")
        elif command == "resume" and self.state is proto.GcodeState.PAUSE:
            self._since, self.state = now, proto.GcodeState.RUNNING
            self._reply("print", request, "success")
        elif command == "stop" and busy:
            self._end(proto.GcodeState.FAILED, self.percent(now))
            self.print_error = proto.PRINT_CANCELLED
            self._reply("print", request, "success")
        elif command == "gcode_line":
            self.gcode.append(str(request.get("param", "")))
            self._reply("print", request, "success")
        elif command in ("pause", "resume", "stop"):
            self._reply("print", request, "success")  # nothing to do, as the printer says
        else:
            self._reply("print", request, "fail", f"unsupported: {command}")
        self._poke()

    def _advance(self, now: float) -> None:
        until = self._prepare_until
        if self.state is proto.GcodeState.PREPARE and until is not None and now >= until:
            self.state, self._since, self._prepare_until = proto.GcodeState.RUNNING, now, None
        if self.state is proto.GcodeState.RUNNING and self.percent(now) >= 100.0:
            self._end(proto.GcodeState.FINISH, 100.0)

    def _send(self, *, full: bool = False) -> None:
        now = trio.current_time()
        self._advance(now)
        if self.link is None or not self.link.connected:
            return  # changes made meanwhile go out with the next report
        payload = self._report(now, full=full)
        if payload is not None:
            self.link.publish(f"device/{SERIAL}/report", payload, qos=0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.link = MqttLink(
            MqttSettings(
                host=self.broker.host,
                port=self.broker.plain_port,
                username=_PRINTER_USER,
                password=_PRINTER_SECRET,
                keepalive=5,
                backoff_initial=0.1,
                backoff_max=0.5,
            ),
            subscriptions=[(f"device/{SERIAL}/request", 0)],
            on_message=self.on_message,
            on_state=lambda up: self._poke() if up else None,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.link.run)
            task_status.started()
            while True:
                self._send(full=False)
                deadline = trio.current_time() + self.report_interval
                if self._prepare_until is not None:
                    deadline = min(deadline, self._prepare_until + 0.001)
                self._wake = trio.Event()
                with trio.move_on_at(deadline):
                    await self._wake.wait()


@asynccontextmanager
async def open_bambu(
    workdir: Path, **printer: Any
) -> AsyncIterator[tuple[BambuBroker, FtpsServer, SimBambuPrinter]]:
    """Broker, FTPS server and firmware of one simulated printer, for the block."""
    broker = BambuBroker(workdir)
    ftps = FtpsServer(workdir / "sdcard", broker.cert_dir)
    try:
        broker.start()
        ftps.start()
        sim = SimBambuPrinter(broker, workdir / "sdcard", **printer)
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            try:
                yield broker, ftps, sim
            finally:
                nursery.cancel_scope.cancel()
    finally:
        ftps.stop()
        broker.stop()
