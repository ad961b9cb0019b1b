"""Shared test fixtures: farms built in code, the daemon in-process on a real socket,
and the daemon as a subprocess (for end-to-end, crash and CLI tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import msgspec
import pytest
import trio

from printfarmd.config import (
    Config,
    PrinterConfig,
    SchedulerConfig,
    ServerConfig,
    SimulatorOptions,
    StorageConfig,
    dump_config,
)
from printfarmd.daemon import Running, run
from printfarmd.store.store import Store, open_backend
from tests.pg_server import PgServer, running_server

REPO = Path(__file__).resolve().parent.parent
DEMO_GCODES = REPO / "demo" / "gcodes"
API_KEY = "test-key-0123456789abcdef"


def wait_until(pred: Callable[[], bool], timeout: float, what: Callable[[], str] | str) -> None:
    """Poll ``pred`` (every 0.1 s) until it holds; after ``timeout`` seconds fail saying
    ``what`` (a text, or a callable giving one so the message shows the state at the end).
    For real processes; in-process farms wait with ``LiveFarm.wait_for``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


#: Every port ``free_port`` handed out in this session.
_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one handed out before in this session:
    two ports asked for before either daemon binds could otherwise be the same one (the
    kernel may give a just-closed port again), and the second daemon would refuse it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def sim_printer(pid: str, materials: tuple[str, ...] = ("PLA",), **kw: Any) -> PrinterConfig:
    speed = kw.pop("speed", 600.0)
    failure_rate = kw.pop("failure_rate", 0.0)
    return PrinterConfig(
        id=pid,
        name=kw.pop("name", pid),
        materials=materials,
        simulator=SimulatorOptions(speed=speed, failure_rate=failure_rate, report_interval=5.0),
        **kw,
    )


def make_config(
    tmp: Path,
    printers: tuple[PrinterConfig, ...] = (),
    *,
    gcodes: Path | None = None,
    port: int = 0,
    **sched: Any,
) -> Config:
    """A farm in ``tmp`` (data dir) with the demo G-code files copied into its gcodes folder."""
    gdir = gcodes or tmp / "gcodes"
    if gcodes is None and not gdir.exists():
        shutil.copytree(DEMO_GCODES, gdir)
    return Config(
        server=ServerConfig(host="127.0.0.1", port=port, api_key=API_KEY),
        storage=StorageConfig(data_dir=str(tmp / "data"), gcodes_dir=str(gdir)),
        scheduler=SchedulerConfig(**sched),
        printers=printers or (sim_printer("p1"),),
        base_dir=tmp,
    )


def write_config(config: Config, path: Path) -> Path:
    """Write ``config`` as the TOML a user would write (absolute paths, so base_dir is moot)."""
    path.write_text(dump_config(config))
    return path


@attrs.define
class LiveFarm:
    """An in-process daemon serving on a real loopback socket."""

    running: Running
    client: httpx.AsyncClient
    stop: trio.Event

    @property
    def url(self) -> str:
        return self.running.urls[0]

    @property
    def owner(self) -> Any:
        return self.running.services.owner

    async def wait_for(self, predicate: Any, within: float = 20.0, poll: float = 0.05) -> None:
        """Poll ``predicate`` (an async callable) over the API until it holds."""
        with trio.fail_after(within):
            while not await predicate():  # noqa: ASYNC110 - polling the daemon over HTTP
                await trio.sleep(poll)


async def raw_http(url: str, head: bytes, body: bytes = b"", read_limit: int = 1 << 20) -> bytes:
    """Send raw bytes to the daemon at ``url`` and return what it answers (until it closes
    or ``read_limit`` bytes). For requests httpx will not send or cannot send cleanly."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head + body)
        data = b""
        with trio.move_on_after(5):
            while len(data) < read_limit:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                    break
        return data


@contextlib.asynccontextmanager
async def live_farm(config: Config) -> AsyncIterator[LiveFarm]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def runner(*, task_status: trio.TaskStatus[Running]) -> None:
            await run(config, stop=stop, task_status=task_status)

        running: Running = await nursery.start(runner)
        async with httpx.AsyncClient(
            base_url=running.urls[0], headers={"X-Api-Key": API_KEY}, timeout=10.0
        ) as client:
            try:
                yield LiveFarm(running, client, stop)
            finally:
                stop.set()


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[LiveFarm]:
    """A one-printer farm, dispatch paused (tests drive it explicitly)."""
    printers = (
        sim_printer("p1", ("PLA",)),
        sim_printer("p2", ("PLA", "PETG")),
        sim_printer("p3", ("PETG",), nozzle_diameter=0.6),
    )
    async with live_farm(make_config(tmp_path, printers, dispatch_paused=True)) as f:
        yield f


# ---------------------------------------------------------------- subprocess daemon


@attrs.define
class DaemonProcess:
    """``printfarmd serve`` as a child process; stderr goes to a log file."""

    config_path: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    #: Extra environment for the child (fault hooks, faketime).
    env: dict[str, str] = attrs.field(factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "printfarmd", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            cwd=REPO,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **self.env},
        )
        log.close()
        started, started_at = time.monotonic(), time.strftime("%H:%M:%S", time.gmtime())
        deadline = started + timeout
        polls, last = 0, "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            polls += 1
            try:
                status = httpx.get(self.url + "/api/health", timeout=1.0).json().get("status")
                if status == "ok":
                    return
                last = f"status {status!r}"
            except (httpx.HTTPError, ValueError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.05)
        # What the wait saw, so that a slow start on a loaded machine can be told from a
        # daemon that answered but never became ready.
        raise RuntimeError(
            f"daemon did not become ready in {time.monotonic() - started:.1f} s "
            f"({polls} health polls, the last: {last}; started at {started_at}Z):\n{self.log()}"
        )

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-Api-Key": API_KEY}, timeout=10.0)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def make(config: Config) -> DaemonProcess:
        port = free_port()
        cfg = msgspec.structs.replace(
            config, server=msgspec.structs.replace(config.server, port=port)
        )
        path = write_config(cfg, tmp_path / f"farm-{len(started)}.toml")
        d = DaemonProcess(path, port, tmp_path / f"daemon-{len(started)}.log")
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


# ---------------------------------------------------------------- key-leak scan (issue 9)
# tests/keyleak.py has every daemon of the run record what it sends and logs, and fails the
# session if an API key (or an unsafe response) shows up in it: S12, S14, S16. It reads
# API_KEY and wraps DaemonProcess.start (to learn its log file and key) from this module.
pytest_plugins = [*globals().get("pytest_plugins", ()), "tests.keyleak"]


# ---------------------------------------------------------------- the store on both engines


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (``tests/pg_server.py``)."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A DSN of this test's own empty schema on the session's server."""
    return pg_server.fresh_dsn()


@attrs.frozen
class StoreTarget:
    """Where a test's store lives: the SQLite file ``path`` or the PostgreSQL ``dsn``."""

    backend: str
    path: Path
    dsn: str = ""

    def open(self) -> contextlib.AbstractAsyncContextManager[Store]:
        return open_backend(self.backend, path=self.path, dsn=self.dsn)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> StoreTarget:
    """The store tests run once per engine (issue 18)."""
    if request.param == "postgresql":
        return StoreTarget("postgresql", tmp_path / "unused.db", request.getfixturevalue("pg_dsn"))
    return StoreTarget("sqlite", tmp_path / "t.db")
