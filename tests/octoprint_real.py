"""A real OctoPrint for the tests: the PyPI package, in its own virtualenv, serving on a
free 127.0.0.1 port with its bundled Virtual Printer plugin as the printer.

OctoPrint pins its own dependency versions, so it lives in ``.venv-octoprint``, never in
the project's venv: the first test that needs it installs it there from PyPI
(``PRINTFARMD_OCTOPRINT`` may name another ``octoprint`` executable). If that cannot be
done the test fails, naming the command that installs it.

Each ``RealOctoPrint`` has its own base directory (``--basedir``): a ``config.yaml``
with the first-run wizard done, every plugin that would reach the internet or the LAN
(announcements, software update, plugin repository, tracking, discovery, ...) disabled,
the connectivity check off, the serial port ``VIRTUAL`` with autoconnect, and the
Virtual Printer tuned for quick runs; and a ``users.yaml`` with one admin user whose API
key is ``api_key``. Prints take as long as their ``G4`` dwells (``dwell_gcode``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from tests.conftest import REPO, free_port

OCTOPRINT_VERSION = "1.11.8"
VENV = REPO / ".venv-octoprint"
INSTALL = (
    "python3 -m venv .venv-octoprint && "
    f".venv-octoprint/bin/pip install 'OctoPrint=={OCTOPRINT_VERSION}'"
)
USER = "farm"

_CONFIG = """\
server:
  firstRun: false
  onlineCheck:
    enabled: false
  pythonEolCheck:
    enabled: false
  commands:
    serverRestartCommand: ''
    systemRestartCommand: ''
    systemShutdownCommand: ''
accessControl:
  autologinLocal: false
serial:
  port: VIRTUAL
  baudrate: 0
  autoconnect: true
plugins:
  _disabled:
  - achievements
  - announcements
  - backup
  - discovery
  - errortracking
  - file_check
  - firmware_check
  - health_check
  - pi_support
  - pluginmanager
  - softwareupdate
  - tracking
  virtual_printer:
    enabled: true
    okAfterResend: true
    simulateReset: false
    throttle: 0.001
    waitInterval: 0.5
"""


def octoprint_executable() -> Path:
    """The ``octoprint`` command. Without one, it is installed from PyPI into
    ``.venv-octoprint`` once (so the README's one test command is enough on a fresh
    machine); if that fails the test fails loudly, naming the command — never a skip."""
    named = os.environ.get("PRINTFARMD_OCTOPRINT")
    path = Path(named) if named else VENV / "bin" / "octoprint"
    if not path.exists() and not named:
        result = subprocess.run(
            ["sh", "-c", INSTALL], cwd=REPO, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            pytest.fail(
                f"installing OctoPrint failed ({result.stderr.strip()[-500:]}); run: {INSTALL}"
            )
    if not path.exists():
        pytest.fail(f"OctoPrint is not installed for the tests ({path} missing); run: {INSTALL}")
    return path


def _password_hash(password: str) -> str:
    """A ``$pbkdf2-sha256$`` hash as OctoPrint's users.yaml stores one (passlib's format)."""
    salt, rounds = secrets.token_bytes(16), 29000
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)

    def ab64(raw: bytes) -> str:
        return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")

    return f"$pbkdf2-sha256${rounds}${ab64(salt)}${ab64(digest)}"


def dwell_gcode(seconds: float, *, step_ms: int = 100, name: str = "test print") -> bytes:
    """G-code that takes about ``seconds`` on the Virtual Printer (``G4`` dwells)."""
    lines = [f"; {name}", "M117 printfarmd test"]
    lines += [f"G4 P{step_ms}"] * max(1, round(seconds * 1000 / step_ms))
    lines.append("M117 done")
    return ("\n".join(lines) + "\n").encode()


@attrs.define
class RealOctoPrint:
    """One OctoPrint server process (see the module docstring)."""

    basedir: Path
    port: int = attrs.field(factory=free_port)
    api_key: str = attrs.field(factory=lambda: secrets.token_hex(16).upper())
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.basedir / "serve.log"

    def prepare(self) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        (self.basedir / "config.yaml").write_text(_CONFIG)
        (self.basedir / "users.yaml").write_text(
            "_version: 2\n"
            f"{USER}:\n"
            "  active: true\n"
            f"  apikey: {self.api_key}\n"
            "  groups: [admins, users]\n"
            f"  password: '{_password_hash(secrets.token_hex(8))}'\n"
            "  permissions: []\n"
            "  settings: {}\n"
        )

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until its printer is connected (Operational)."""
        exe = octoprint_executable()
        if not (self.basedir / "config.yaml").exists():
            self.prepare()
        args = [str(exe), "--basedir", str(self.basedir), "serve"]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--iknowwhatimdoing")  # CI runs as root; OctoPrint refuses otherwise
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"OctoPrint exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.connection_state() == "Operational":
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"OctoPrint did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-6000:]

    # -- talking to it directly (the tests' own view, not the driver's) ---------------

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-Api-Key": self.api_key}, timeout=10.0)

    def get(self, path: str) -> Any:
        with self.client() as http:
            response = http.get(path)
            response.raise_for_status()
            return response.json()

    def post(self, path: str, body: dict[str, Any]) -> int:
        with self.client() as http:
            return http.post(path, json=body).status_code

    def connection_state(self) -> str:
        return str(self.get("/api/connection")["current"]["state"])

    def job_state(self) -> str:
        return str(self.get("/api/job")["state"])

    def connect(self) -> None:
        self.post("/api/connection", {"command": "connect", "port": "VIRTUAL"})

    def disconnect(self) -> None:
        self.post("/api/connection", {"command": "disconnect"})

    def cancel(self) -> None:
        self.post("/api/job", {"command": "cancel"})

    def file(self, path: str) -> Any:
        with self.client() as http:
            response = http.get(f"/api/files/local/{path}")
            return None if response.status_code == 404 else response.json()

    def farm_files(self) -> list[str]:
        folder = self.file("printfarmd")
        return sorted(c["path"] for c in folder["children"]) if folder else []

    def reset(self, timeout: float = 30.0) -> None:
        """Back to a quiet, connected printer with an empty ``printfarmd/`` folder."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state()
            if state == "Operational":
                break
            if state in ("Printing", "Paused", "Pausing", "Starting", "Resuming"):
                self.cancel()
            elif state.startswith("Offline") or state in ("Closed", "Error"):
                self.connect()
            time.sleep(0.2)
        else:
            raise RuntimeError(f"OctoPrint did not settle: {self.job_state()}")
        with self.client() as http:
            http.delete("/api/files/local/printfarmd")


def start_octoprint(basedir: Path) -> RealOctoPrint:
    octo = RealOctoPrint(basedir)
    octo.prepare()
    octo.start()
    return octo
