"""Issue 8: the systemd unit (security score, ExecStart) and the notify protocol.

The notify tests bind their own ``AF_UNIX`` datagram socket, start ``printfarmd serve``
with ``NOTIFY_SOCKET`` (and ``WATCHDOG_USEC``) pointing at it, as systemd would, and read
what the daemon says.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from printfarmd.cli import build_parser
from tests.conftest import API_KEY, REPO, DaemonProcess, free_port, make_config, write_config

UNIT = REPO / "systemd" / "printfarmd.service"
MAX_EXPOSURE = 2.0


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_security_exposure_at_most_2() -> None:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze missing: .ci/run installs the systemd package"
    out = subprocess.run(
        [tool, "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, out.stdout


def test_unit_declares_notify_watchdog_dirs_user() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["StateDirectory"] == "printfarmd"
    assert service["ConfigurationDirectory"] == "printfarmd"
    assert service["User"] == "printfarmd"


def test_unit_execstart_is_the_console_script_with_valid_options() -> None:
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    # The unit runs the console script pip installs into the venv's bin/.
    assert Path(argv[0]).name in scripts
    assert scripts[Path(argv[0]).name] == "printfarmd.__main__:main"
    assert Path(argv[0]).parent.name == "bin"
    args = build_parser().parse_args(argv[1:])
    assert args.handler.__name__ == "cmd_serve"
    # The config lives in the unit's ConfigurationDirectory (/etc/printfarmd).
    assert args.config == Path("/etc/printfarmd/config.toml")
    assert argv[1:] == ["serve", "--config", "/etc/printfarmd/config.toml"]
    # docs/operations.md installs into that very venv.
    ops = (REPO / "docs" / "operations.md").read_text()
    assert str(Path(argv[0]).parent.parent) in ops


# ---------------------------------------------------------------- the notify protocol


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    # A short path: AF_UNIX paths are limited to ~108 bytes.
    path = f"/tmp/pfd-notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)


def _spawn(tmp_path: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    config = make_config(tmp_path, port=port)
    cfg_path = write_config(config, tmp_path / "farm.toml")
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "printfarmd", "serve", "--config", str(cfg_path)],
        stdout=log,
        stderr=log,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env},
    )
    log.close()
    return proc


def _messages(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Every datagram received within ``seconds``, with its arrival time."""
    out: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        out.append((time.monotonic(), data.decode()))
    return out


def _wait_for(sock: socket.socket, text: str, within: float) -> float:
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        if text in sock.recv(4096).decode():
            return time.monotonic()
    raise AssertionError(f"no {text} within {within} s")


def _wait_pings(sock: socket.socket, count: int, within: float) -> list[tuple[float, str]]:
    """Read datagrams until ``count`` WATCHDOG=1 pings arrived (AssertionError after
    ``within`` seconds)."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + within
    while sum("WATCHDOG=1" in m for _, m in got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"fewer than {count} pings within {within} s: {got}"
        got += _messages(sock, min(left, 0.5))
    return got


def test_notify_ready_after_port_accepts_watchdog_pings_stopping_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    port = free_port()
    proc = _spawn(tmp_path, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, port)
    try:
        sock.settimeout(20)
        first = sock.recv(4096).decode()
        # READY is the first thing said, and the HTTP port already accepts when it comes.
        assert "READY=1" in first, first
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        # And then it keeps pinging (at what rate is the event loop's business: a
        # wedged one stops, see below).
        _wait_pings(sock, 5, 20)
        proc.send_signal(signal.SIGTERM)
        _wait_for(sock, "STOPPING=1", 10)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _trigger_a_commit(port: int) -> None:
    # (The answer may or may not get out before the fault hits.)
    with contextlib.suppress(httpx.TimeoutException):
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/jobs",
            json={"filename": "benchy_pla.gcode"},
            headers={"X-Api-Key": API_KEY},
            timeout=1.0,
        )
        assert r.status_code == 201, r.text


def test_no_watchdog_ping_while_the_event_loop_is_wedged(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    port = free_port()
    env = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "400000",
        "PRINTFARMD_FAULTS": "wedge@dispatch:1",
    }
    proc = _spawn(tmp_path, env, port)
    try:
        _wait_for(sock, "READY=1", 20)
        _wait_pings(sock, 3, 20)
        # A job reaches its printer's hand-over, which wedges the event loop (the hook).
        _trigger_a_commit(port)
        _messages(sock, 0.3)  # a ping already in flight
        # Ten ping intervals of silence: systemd would have restarted it long ago.
        after = _messages(sock, 2.0)
        assert not [m for _, m in after if "WATCHDOG=1" in m], after
        assert proc.poll() is None  # wedged, not dead: only systemd's watchdog would act
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_no_watchdog_ping_while_the_owner_stops_finishing_cycles(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """The event loop still runs (HTTP answers) but the owner is stuck in a commit: the
    ping is a round trip through the owner, so it stops too (issue 13)."""
    sock, path = notify_socket
    port = free_port()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "PRINTFARMD_FAULTS": "hang@commit:1"}
    proc = _spawn(tmp_path, env, port)
    try:
        _wait_for(sock, "READY=1", 20)
        _wait_pings(sock, 3, 20)
        _trigger_a_commit(port)
        _messages(sock, 0.5)  # a ping already in flight
        after = _messages(sock, 2.0)
        assert not [m for _, m in after if "WATCHDOG=1" in m], after
        health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
        assert health.status_code == 200  # the loop is fine; the owner is not
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_no_notify_socket_means_no_messages(tmp_path: Path, daemon_factory: Any) -> None:
    """Outside systemd the daemon runs as before (no socket, no error)."""
    d: DaemonProcess = daemon_factory(make_config(tmp_path))
    d.start()
    assert d.kill(signal.SIGTERM) == 0
    assert "sd_notify failed" not in d.log()
