"""The Spoolman client (issue 16) against the stand-in (``tests/spoolman_sim.py``, written
from Spoolman 0.26.1's OpenAPI document) over real HTTP, and the farm around it.

- Parsing: recorded ``Spool`` payloads (``tests/data/spoolman/``).
- The outbox: a report is sent once; while Spoolman is down it waits and is retried
  with backoff; a ``PUT`` whose answer was lost (applied, then a 500) or a daemon that
  died between Spoolman's answer and the mark is not sent twice (read-back).
- The owner with a real store, stub printers and the stand-in: a completed print
  reports the file's weight once, a cancel at 40 % reports 40 %; the farm keeps routing
  from the last known spool state while Spoolman is down.
- The daemon: Spoolman down when a print ends, the daemon killed with -9 before it
  comes back: the usage is reported exactly once after both return.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import msgspec
import orjson
import pytest
import trio

from printfarmd.config import Config, SpoolmanConfig, StorageBackend
from printfarmd.core.farm import inputs as i
from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.inputs import JobRequest
from printfarmd.models import JobState, PrinterState
from printfarmd.services.bus import Bus
from printfarmd.services.owner import Owner
from printfarmd.services.spoolman import SpoolmanService, parse_spool
from printfarmd.store import Store
from printfarmd.store.store import open_backend
from printfarmd.store.upkeep import UpkeepStore
from tests.conftest import DaemonProcess, make_config, sim_printer
from tests.pg_server import PgServer
from tests.spoolman_sim import SimSpool, SpoolmanSim, SpoolmanThread, open_spoolman_sim
from tests.test_owner import StubPrinter

DATA = Path(__file__).parent / "data" / "spoolman"
FAST = SpoolmanConfig(url="http://unused", timeout=2.0, refresh_interval=0.2, retry_backoff=(0.05,))


def test_parse_a_spool_as_spoolman_sends_it() -> None:
    info = parse_spool(orjson.loads((DATA / "spool.json").read_bytes()), 5.0)
    assert (info.id, info.material, info.colours) == (12, "PLA", ("#F4F1E8",))
    assert info.remaining == 612.4 and info.used == 137.6
    assert info.price_per_kg == pytest.approx(18.0 / 750 * 1000)  # the spool's own price
    assert info.name == "Polymaker PolyTerra Cotton White" and not info.archived
    multi = parse_spool(orjson.loads((DATA / "spool_multicolour_archived.json").read_bytes()), 5)
    assert multi.colours == ("#FF0000", "#00FF00", "#0000FF")
    assert multi.archived and multi.remaining is None and multi.price_per_kg is None
    for bad in ([], {"id": "7"}, {"id": True}, "spool"):
        with pytest.raises(ValueError):
            parse_spool(bad, 0.0)


# ---------------------------------------------------------------------- both engines

#: Every test here runs on SQLite and on PostgreSQL (issue 18): ``open_store(path)``
#: opens the SQLite file, or the PostgreSQL schema this test gave that path.
_ENGINE: list[tuple[str, PgServer | None, dict[Path, str]]] = [("sqlite", None, {})]


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def _engine(request: pytest.FixtureRequest) -> Iterator[str]:
    server = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    _ENGINE[0] = (request.param, server, {})
    yield request.param
    _ENGINE[0] = ("sqlite", None, {})


def open_store(path: Path) -> contextlib.AbstractAsyncContextManager[Store]:
    backend, server, dsns = _ENGINE[0]
    if server is not None and path not in dsns:
        dsns[path] = server.fresh_dsn()
    return open_backend(backend, path=path, dsn=dsns.get(path, ""))


def on_engine(config: Config) -> Config:
    """``config`` with its store on this test's engine."""
    _, server, dsns = _ENGINE[0]
    if server is None:
        return config
    if config.data_path not in dsns:
        dsns[config.data_path] = server.fresh_dsn()
    dsn = dsns[config.data_path]
    storage = msgspec.structs.replace(config.storage, backend=StorageBackend.POSTGRESQL, dsn=dsn)
    return msgspec.structs.replace(config, storage=storage)


# ---------------------------------------------------------------------- the outbox alone


async def _store_with_rows(path: Path, rows: list[tuple[str, int, float]]) -> None:
    async with open_store(path) as store:
        await store.commit(
            [
                out.RecordUsage(
                    key,
                    "A" * 16,
                    "p",
                    spool,
                    "completed",
                    1.0,
                    grams,
                    60.0,
                    0,
                    0,
                    0,
                    "EUR",
                    1.0,
                    True,
                )
                for key, spool, grams in rows
            ]
        )


@contextlib.asynccontextmanager
async def running_service(path: Path, sim: SpoolmanSim, posted: list[Any]) -> AsyncIterator[Any]:
    async with open_store(path) as store, trio.open_nursery() as nursery:
        service = SpoolmanService(
            config=msgspec.structs.replace(FAST, url=sim.url),
            store=store,
            post=posted.append,
            bound=set,
        )
        await nursery.start(service.run)
        yield service, store
        nursery.cancel_scope.cancel()


async def until(predicate: Any, within: float = 20.0) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - state other tasks and threads change
            await trio.sleep(0.02)


def settled(posted: list[Any]) -> list[i.UsageReported]:
    return [p for p in posted if isinstance(p, i.UsageReported)]


async def test_a_report_is_sent_once_and_waits_while_spoolman_is_down(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    await _store_with_rows(db, [("j1@1", 1, 42.5), ("j2@1", 2, 7.0)])
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(1))
        sim.add(SimSpool(2))
        sim.stop()  # down
        posted: list[Any] = []
        async with running_service(db, sim, posted) as (service, store):
            await until(lambda: service.connected is False)
            rows = await UpkeepStore(store).pending()
            assert [r.key for r in rows] == ["j1@1", "j2@1"] and not settled(posted)
            assert rows[0].attempts >= 1 and rows[0].last_error  # tried, and why not
            await sim.start()  # back
            await until(lambda: len(settled(posted)) == 2)
            assert [(p.key, p.applied) for p in settled(posted)] == [
                ("j1@1", True),
                ("j2@1", True),
            ]
            assert sim.uses == [(1, 42.5), (2, 7.0)]
            await until(lambda: service.connected is True)
            assert await UpkeepStore(store).pending() != []  # the owner marks them, not us


async def test_an_applied_use_whose_answer_was_lost_is_not_sent_again(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    await _store_with_rows(db, [("j1@1", 1, 30.0)])
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(1, used_weight=100.0))
        sim.fail_after_use = 1  # applied, then answered 500
        posted: list[Any] = []
        async with running_service(db, sim, posted):
            await until(lambda: bool(settled(posted)))
        assert sim.uses == [(1, 30.0)] and sim.used(1) == 130.0
        assert settled(posted)[0].applied


async def test_a_daemon_that_died_between_the_answer_and_the_mark_does_not_resend(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    await _store_with_rows(db, [("j1@1", 1, 30.0), ("j2@1", 1, 5.0)])
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(1, used_weight=100.0))
        async with open_store(db) as store:
            # The first row was sent (base 100 read, PUT applied) and then the process died.
            await UpkeepStore(store).set_base("j1@1", 100.0)
        sim.spools[1].used_weight = 130.0
        posted: list[Any] = []
        async with running_service(db, sim, posted):
            await until(lambda: len(settled(posted)) == 2)
        assert sim.uses == [(1, 5.0)]  # only the second one went out
        assert sim.used(1) == 135.0


async def test_a_spool_deleted_in_spoolman_drops_its_report(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    await _store_with_rows(db, [("j1@1", 9, 30.0)])
    async with open_spoolman_sim() as sim:
        posted: list[Any] = []
        async with running_service(db, sim, posted):
            await until(lambda: bool(settled(posted)))
        (report,) = settled(posted)
        assert not report.applied and report.error and "not found" in report.error
        assert sim.uses == []


async def test_5xx_answers_are_retried_with_backoff(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    await _store_with_rows(db, [("j1@1", 1, 3.0)])
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(1))
        sim.fail = 3
        posted: list[Any] = []
        async with running_service(db, sim, posted):
            await until(lambda: bool(settled(posted)))
        assert sim.uses == [(1, 3.0)] and sim.fail == 0


# ---------------------------------------------------------------------- the owner


WEIGHED = "; filament used [g] = {g}\n; filament_type = PLA\nG28\nG1 X10 Y10\n"


@attrs.define
class SpoolFarm:
    owner: Owner
    printers: dict[str, StubPrinter]
    sim: SpoolmanSim
    service: SpoolmanService

    async def settle(self) -> None:
        for _ in range(3):
            await self.owner.ping()
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def spool_farm(tmp_path: Path, sim: SpoolmanSim, n: int = 1) -> AsyncIterator[SpoolFarm]:
    printers = tuple(sim_printer(f"p{k}", ("PLA",), power_watts=200.0) for k in range(n))
    config = make_config(tmp_path, printers)
    config = msgspec.structs.replace(
        config,
        spoolman=msgspec.structs.replace(
            FAST, url=sim.url, weight_margin=5.0, weight_margin_percent=0.0
        ),
    )
    for grams in (60, 10):
        (config.gcodes_path / f"part_{grams}g.gcode").write_text(WEIGHED.format(g=grams))
    config.data_path.mkdir(parents=True, exist_ok=True)
    stubs = {p.id: StubPrinter(p.id) for p in printers}
    async with open_store(config.data_path / "t.db") as store:
        owner = Owner(config=config, store=store, bus=Bus(), drivers=stubs)  # type: ignore[arg-type]
        service = SpoolmanService(
            config=config.spoolman, store=store, post=owner.post, bound=owner.bound_spools
        )
        owner.spoolman = service
        owner.effects.spoolman_kick = service.kick
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            await nursery.start(service.run)
            await owner.running.wait()
            yield SpoolFarm(owner, stubs, sim, service)
            nursery.cancel_scope.cancel()


async def test_a_completed_print_reports_its_weight_once_and_a_cancel_at_40_percent_40(
    tmp_path: Path,
) -> None:
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(1, initial_weight=500.0))
        async with spool_farm(tmp_path, sim) as farm:
            owner = farm.owner
            await owner.bind_spool("p0", 0, 1)
            assert owner.state.spools[1].remaining == 500.0
            (job,), _ = await owner.submit(JobRequest(filename="part_60g.gcode"))
            await farm.settle()
            assert owner.state.jobs[job.id].spool_id == 1
            farm.printers["p0"].say(out_finished("p0", job.id))
            farm.printers["p0"].say(idle("p0"))
            await until(lambda: sim.uses == [(1, 60.0)])
            await owner.clear_plate("p0")
            (job2,), _ = await owner.submit(JobRequest(filename="part_10g.gcode"))
            await farm.settle()
            farm.printers["p0"].say(printing("p0", job2.id, 40.0))
            await farm.settle()
            await owner.cancel(job2.id)
            await until(lambda: len(sim.uses) == 2)
            assert sim.uses[1] == (1, pytest.approx(4.0))
            await until(lambda: not owner.state.pending)
            await until(lambda: owner.state.spools[1].remaining == pytest.approx(436.0))
            await farm.settle()
            assert len(sim.uses) == 2
            rows = await UpkeepStore(owner.store).usage_of_jobs([job.id, job2.id])
            assert [u.report for u in rows[job.id]] == ["sent"]
            assert rows[job2.id][0].status == "cancelled" and rows[job2.id][0].fraction == 0.4


async def test_routing_keeps_the_last_known_spool_state_while_spoolman_is_down(
    tmp_path: Path,
) -> None:
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(1, initial_weight=100.0))
        async with spool_farm(tmp_path, sim) as farm:
            owner = farm.owner
            await owner.bind_spool("p0", 0, 1)
            sim.stop()
            (job,), _ = await owner.submit(JobRequest(filename="part_60g.gcode"))
            await farm.settle()
            assert owner.state.jobs[job.id].state is JobState.PRINTING  # 100 g known
            farm.printers["p0"].say(out_finished("p0", job.id))
            farm.printers["p0"].say(idle("p0"))
            await farm.settle()
            await owner.clear_plate("p0")
            (job2,), _ = await owner.submit(JobRequest(filename="part_60g.gcode"))
            await farm.settle()
            # 40 g left once the owed 60 g count: the 60 g job waits, and says why.
            assert owner.state.jobs[job2.id].state is JobState.QUEUED
            why = owner.job_waiting(owner.state.jobs[job2.id])
            assert why == "p0: spool 1 holds 40 g, the job needs 65 g"
            assert sim.uses == []
            await sim.start()
            await until(lambda: sim.uses == [(1, 60.0)])
            await until(lambda: owner.state.spools[1].remaining == pytest.approx(40.0))
            assert owner.state.jobs[job2.id].state is JobState.QUEUED


def out_finished(pid: str, job_id: str) -> Any:
    from printfarmd.drivers.base import JobFinished

    return JobFinished(pid, job_id)


def idle(pid: str) -> Any:
    from printfarmd.drivers.base import StatusReport

    return StatusReport(pid, PrinterState.IDLE)


def printing(pid: str, job_id: str, progress: float) -> Any:
    from printfarmd.drivers.base import StatusReport

    return StatusReport(pid, PrinterState.PRINTING, job_id, progress)


# ---------------------------------------------------------------------- the daemon, kill -9


def wait(predicate: Any, within: float = 30.0) -> None:
    """Poll ``predicate`` until it holds (a synchronous test: the daemon is a process)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.1)


@pytest.mark.slow
def test_spoolman_down_at_the_end_of_a_print_and_kill_9_reports_exactly_once(
    tmp_path: Path, daemon_factory: Any
) -> None:
    with SpoolmanThread() as spoolman:
        sim = spoolman.sim
        assert sim is not None
        sim.add(SimSpool(1, initial_weight=800.0))
        printer = sim_printer("p1", ("PLA",), speed=600.0, auto_clear=True)
        config = make_config(tmp_path, (printer,))
        config = msgspec.structs.replace(
            config,
            spoolman=SpoolmanConfig(
                url=sim.url, refresh_interval=0.5, retry_backoff=(0.2,), timeout=2.0
            ),
        )
        config = on_engine(config)  # issue 18: the daemon on SQLite, or on PostgreSQL
        (config.gcodes_path / "part.gcode").write_text(
            WEIGHED.format(g=60) + "; estimated printing time (normal mode) = 0h 1m 0s\n"
        )
        d: DaemonProcess = daemon_factory(config)
        d.start()
        with d.client() as c:
            r = c.put("/api/printers/p1/spool", json={"spool_id": 1})
            assert r.status_code == 200, r.text
            assert r.json()["spools"][0]["remaining_g"] == 800.0
            spoolman.stop()  # Spoolman goes down
            jid = c.post("/api/jobs", json={"filename": "part.gcode"}).json()["jobs"][0]["id"]

            def owed() -> bool:
                body = c.get("/api/spools").json()
                job = c.get(f"/api/jobs/{jid}").json()
                return bool(body["pending_reports"]) and job["state"] in ("post_process", "ready")

            wait(owed)
        assert d.kill(signal.SIGKILL) == -signal.SIGKILL
        assert sim.uses == []
        spoolman.start()  # Spoolman is back; then the daemon
        d.start()
        with d.client() as c:
            wait(lambda: c.get("/api/spools").json()["pending_reports"] == [])
            cost = c.get(f"/api/jobs/{jid}").json()["cost"]
        assert sim.uses == [(1, 60.0)]
        assert cost["filament_g"] == 60.0
        # Another restart sends nothing more.
        assert d.kill(signal.SIGTERM) == 0
        d.start()
        with d.client() as c:
            assert c.get("/api/spools").json()["pending_reports"] == []
            wait(lambda: c.get("/api/printers/p1").json()["spools"][0]["remaining_g"] == 740.0)
        assert sim.uses == [(1, 60.0)]
