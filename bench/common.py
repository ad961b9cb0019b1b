"""Shared helpers for the benches that run ``printfarmd serve`` as a child process.

- ``farm_config``: a farm in a temp folder (data dir, a copy of ``demo/gcodes``,
  N simulated PLA+PETG printers), written as TOML with ``printfarmd.config.dump_config``.
- ``Daemon``: spawn the daemon on a free loopback port, poll ``GET /api/health`` until
  it answers 200 with ``{"status": "ok"}`` (time from spawn to that answer), read its
  RSS and CPU time from ``/proc``, stop it with SIGTERM.
- ``wait_http_ok``: the poller, shared with the baselines so every case is timed the
  same way (a new TCP connection per poll, ``http.client``, ``poll`` seconds between
  refused connections).
- Small statistics and table helpers.

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from printfarmd.config import (  # noqa: E402 - needs the repository on sys.path
    Config,
    PrinterConfig,
    SchedulerConfig,
    ServerConfig,
    SimulatorOptions,
    StorageConfig,
    Synchronous,
    dump_config,
)

DEMO_GCODES = REPO / "demo" / "gcodes"
API_KEY = "bench-key-0123456789abcdef"
DB_NAME = "printfarmd.db"
HEALTH_PATH = "/api/health"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def farm_config(
    root: Path,
    *,
    printers: int,
    port: int,
    synchronous: str = "FULL",
    dispatch_paused: bool = True,
    data_dir: Path | None = None,
) -> Config:
    """A farm under ``root``: ``root/data`` (or ``data_dir``), ``root/gcodes`` (a copy of
    the demo files, made once), ``printers`` simulated printers loaded with PLA and PETG."""
    gcodes = root / "gcodes"
    if not gcodes.exists():
        shutil.copytree(DEMO_GCODES, gcodes)
    sims = tuple(
        PrinterConfig(
            id=f"sim-{i:03d}",
            name=f"Simulated printer {i}",
            materials=("PLA", "PETG"),
            simulator=SimulatorOptions(speed=1.0, report_interval=5.0),
        )
        for i in range(1, printers + 1)
    )
    return Config(
        server=ServerConfig(host="127.0.0.1", port=port, api_key=API_KEY),
        storage=StorageConfig(
            data_dir=str(data_dir or root / "data"),
            gcodes_dir=str(gcodes),
            synchronous=Synchronous(synchronous),
            backup_interval=0.0,
        ),
        scheduler=SchedulerConfig(dispatch_paused=dispatch_paused),
        printers=sims,
        base_dir=root,
    )


def write_config(config: Config, path: Path) -> Path:
    path.write_text(dump_config(config))
    return path


# ------------------------------------------------------------------------------ /proc


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of ``pid`` (all threads) from ``/proc/<pid>/stat``; with
    ``tid``, of that one thread (``tid == pid`` is the main thread: trio's, in the daemon)."""
    where = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    stat = Path(where).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields after the command name start at field 3 (state); utime is 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# ------------------------------------------------------------------------------ HTTP


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http_ok(
    port: int,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    path: str = HEALTH_PATH,
    poll: float = 0.005,
    timeout: float = 60.0,
) -> float:
    """Poll ``GET path`` until 200 with JSON ``status == "ok"``; return ``time.perf_counter()``
    at that answer. Raises ``RuntimeError`` if ``proc`` exits or ``timeout`` passes."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before answering")
        try:
            status, body = http_get(port, path)
        except OSError:  # refused (not listening yet), reset, timeout
            time.sleep(poll)
            continue
        if status == 200:
            try:
                if json.loads(body).get("status") == "ok":
                    return time.perf_counter()
            except ValueError:
                pass
        time.sleep(poll)
    raise RuntimeError(f"no 200 from 127.0.0.1:{port}{path} within {timeout} s")


# ------------------------------------------------------------------------------ daemon


class Daemon:
    """``python -m printfarmd serve --config FILE`` as a child; its output goes to ``log``."""

    def __init__(self, config: Config, config_path: Path, log_path: Path) -> None:
        self.config = config
        self.port = config.server.port
        self.config_path = write_config(config, config_path)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        #: Seconds from just before ``Popen`` to the first ``200 {"status": "ok"}``.
        self.ready_after = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, poll: float = 0.005, timeout: float = 60.0) -> float:
        """Spawn and wait until healthy; returns (and keeps) the time to first 200."""
        with open(self.log_path, "ab") as log:
            self.spawned_at = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "printfarmd", "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
            )
        try:
            ready = wait_http_ok(self.port, proc=self.proc, poll=poll, timeout=timeout)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n--- daemon log ---\n{self.log()}") from None
        self.ready_after = ready - self.spawned_at
        return self.ready_after

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit within ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            raise RuntimeError(f"daemon ignored SIGTERM for {timeout} s") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        self.kill()


@contextlib.contextmanager
def running_daemon(config: Config, folder: Path, name: str = "daemon") -> Iterator[Daemon]:
    """A started daemon; stopped (SIGTERM) on exit."""
    with Daemon(config, folder / f"{name}.toml", folder / f"{name}.log") as d:
        d.start()
        yield d


# ------------------------------------------------------------------------------ numbers


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities turned into ``None`` (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
