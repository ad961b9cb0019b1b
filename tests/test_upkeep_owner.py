"""Upkeep rules through the real owner and a real store on a temp file (issue 16), under
trio's MockClock (jumping after 10 ms of real idleness), printers played by stub drivers, the daemon
restarted on the same file (a new owner, the mock clock going on):

- staggered starts: 20 idle printers, 40 jobs, at most 3 starts per 60 s: never more
  than 3 starts in any 60 s window, and every job runs;
- ``not_before`` and quiet hours hold a start across a restart, and the start comes as
  soon as the window opens (a wake-up timer, armed again after the restart);
- maintenance counters and the maintenance log survive a restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from printfarmd.config import Config, MaintenanceConfig, PowerConfig, PrinterConfig
from printfarmd.core.farm.inputs import JobRequest
from printfarmd.drivers.base import JobFinished, JobSpec, StatusReport
from printfarmd.models import JobState, PrinterState
from printfarmd.services.bus import Bus
from printfarmd.services.owner import Owner
from printfarmd.store import open_backend
from printfarmd.store.upkeep import UpkeepStore
from tests.conftest import make_config, sim_printer
from tests.test_owner import StubPrinter

EPOCH = 1_800_000_000.0  # 2027-01-15 08:00 UTC


@pytest.fixture
def farm_clock() -> trio.testing.MockClock:
    """Jump the clock only after 10 ms of real idleness: the store commits in a worker
    thread, and a zero threshold would let simulated time leap while it does (a leap
    goes to the next deadline: the owner's 5 s progress flush bounds it)."""
    return trio.testing.MockClock(autojump_threshold=0.01)


class TimedPrinter(StubPrinter):
    """A stub printer that notes when it was handed each job and finishes a print after
    ``print_time`` seconds (then reports idle; its plate clears itself)."""

    def __init__(self, printer_id: str, print_time: float, log: list[tuple[float, str, str]]):
        super().__init__(printer_id)
        self.print_time = print_time
        self.log = log
        self.nursery: trio.Nursery | None = None

    async def run(self, events: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await super().run(events, task_status=task_status)

    async def start_job(self, job: JobSpec) -> None:
        self.log.append((trio.current_time(), self.printer_id, job.job_id))
        await super().start_job(job)
        assert self.nursery is not None
        with contextlib.suppress(RuntimeError):  # the farm is shutting down
            self.nursery.start_soon(self._finish, job.job_id)

    async def _finish(self, job_id: str) -> None:
        await trio.sleep(self.print_time)
        if self.printing == job_id:
            self.printing = None
            self.say(JobFinished(self.printer_id, job_id))
            self.say(StatusReport(self.printer_id, PrinterState.IDLE))


#: The engine of this test's store: ``(backend, dsn)``; every test here runs on SQLite and
#: on PostgreSQL (issue 18), a restart in a test reopening the same database.
_ENGINE: list[tuple[str, str]] = [("sqlite", "")]


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def _engine(request: pytest.FixtureRequest) -> Iterator[str]:
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else ""
    _ENGINE[0] = (request.param, dsn)
    yield request.param
    _ENGINE[0] = ("sqlite", "")


@contextlib.asynccontextmanager
async def open_owner(config: Config, stubs: dict[str, StubPrinter]) -> AsyncIterator[Owner]:
    config.data_path.mkdir(parents=True, exist_ok=True)
    backend, dsn = _ENGINE[0]
    async with open_backend(backend, path=config.data_path / "t.db", dsn=dsn) as store:
        owner = Owner(
            config=config,
            store=store,
            bus=Bus(),
            drivers=stubs,  # type: ignore[arg-type]
            wall=lambda: EPOCH + trio.current_time(),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            await owner.running.wait()
            yield owner
            nursery.cancel_scope.cancel()


async def printed(owner: Owner, ids: set[str]) -> int:
    """How many of ``ids`` have been printed."""
    done = 0
    for jid in ids:
        if (await owner.get_job(jid)).state in (JobState.POST_PROCESS, JobState.READY):
            done += 1
    return done


def farm(tmp: Path, printers: tuple[PrinterConfig, ...], **upkeep: Any) -> Config:
    return msgspec.structs.replace(make_config(tmp, printers), **upkeep)


async def test_twenty_printers_forty_jobs_three_starts_per_minute(
    tmp_path: Path, farm_clock: trio.testing.MockClock
) -> None:
    log: list[tuple[float, str, str]] = []
    printers = tuple(sim_printer(f"p{k:02}", auto_clear=True) for k in range(20))
    stubs = {p.id: TimedPrinter(p.id, 240.0, log) for p in printers}
    config = farm(tmp_path, printers, power=PowerConfig(max_starts=3, window=60.0))
    async with open_owner(config, stubs) as owner:  # type: ignore[arg-type]
        jobs, _ = await owner.submit(JobRequest(filename="benchy_pla.gcode", copies=40))
        ids = {j.id for j in jobs}
        # The dashboard shows idle printers waiting for their power group.
        with trio.fail_after(600):
            while not any(  # noqa: ASYNC110 - the farm's state, polled on the mock clock
                "power group default" in (owner.printer_waiting(pid) or "")
                for pid in owner.printers
            ):
                await trio.sleep(1)
        with trio.fail_after(3 * 3600):
            while await printed(owner, ids) < len(ids):  # noqa: ASYNC110 - as above
                await trio.sleep(30)
    assert {jid for _, _, jid in log} == ids  # every job ran, once
    assert len(log) == 40
    times = sorted(t for t, _, _ in log)
    for t in times:
        assert sum(1 for u in times if t <= u < t + 60.0) <= 3, times
    # Queued starts waited in order: they were handed over in queue order.
    positions = {j.id: j.position for j in jobs}
    handed = [positions[jid] for _, _, jid in sorted(log)]
    assert handed == sorted(handed)


async def test_not_before_and_quiet_hours_hold_across_a_restart(
    tmp_path: Path, farm_clock: trio.testing.MockClock
) -> None:
    log: list[tuple[float, str, str]] = []
    # At EPOCH it is 08:00 UTC. "quiet" may start nothing until 10:00; "spare" any time.
    # Tags pin each job to its printer, so each rule is what holds it.
    printers = (
        sim_printer("quiet", tags=("q",), auto_clear=True, quiet_hours=("07:00", "10:00")),
        sim_printer("spare", tags=("s",), auto_clear=True),
    )
    config = farm(tmp_path, printers, power=PowerConfig(timezone="UTC"))

    def stubs() -> dict[str, StubPrinter]:
        return {p.id: TimedPrinter(p.id, 600.0, log) for p in printers}

    async with open_owner(config, stubs()) as owner:
        t0 = trio.current_time()
        not_before = EPOCH + t0 + 3600.0
        (scheduled,), _ = await owner.submit(
            JobRequest(filename="benchy_pla.gcode", required_tags=("s",), not_before=not_before)
        )
        (held,), _ = await owner.submit(
            JobRequest(filename="benchy_pla.gcode", required_tags=("q",))
        )
        await trio.sleep(60)
        assert log == []  # both printers idle, neither job may start
        waiting = owner.job_waiting(await owner.get_job(held.id))
        assert waiting == "quiet: quiet hours until 10:00"
        why = owner.job_waiting(await owner.get_job(scheduled.id)) or ""
        assert why.startswith("scheduled: not before 2027-01-15T09:")
        await trio.sleep(1800)
    # A restart half-way: nothing of the schedule or the quiet hours is lost.
    async with open_owner(config, stubs()) as owner:
        assert (await owner.get_job(scheduled.id)).state is JobState.QUEUED
        await trio.sleep(3600 - (trio.current_time() - t0) - 60)
        assert (await owner.get_job(scheduled.id)).state is JobState.QUEUED
        await trio.sleep(120)  # just past not_before: the wake-up timer started it
        job = await owner.get_job(scheduled.id)
        assert job.state is not JobState.QUEUED and job.printer_id == "spare"
        assert job.started_at is not None and job.started_at >= not_before
        assert (await owner.get_job(held.id)).state is JobState.QUEUED  # still quiet
        await trio.sleep(7200 - (trio.current_time() - t0) + 60)  # just past 10:00
        job = await owner.get_job(held.id)
        assert job.state is not JobState.QUEUED and job.printer_id == "quiet"
        assert job.started_at is not None and job.started_at >= EPOCH + 7200.0
    assert [(pid, jid) for _, pid, jid in log] == [("spare", scheduled.id), ("quiet", held.id)]


async def test_maintenance_counters_and_log_survive_a_restart(
    tmp_path: Path, farm_clock: trio.testing.MockClock
) -> None:
    log: list[tuple[float, str, str]] = []
    printers = (sim_printer("p", auto_clear=True),)
    config = farm(tmp_path, printers, maintenance=MaintenanceConfig(every_prints=2))

    def stubs() -> dict[str, StubPrinter]:
        return {"p": TimedPrinter("p", 300.0, log)}

    async with open_owner(config, stubs()) as owner:
        await owner.submit(JobRequest(filename="benchy_pla.gcode"))
        await trio.sleep(400)
        assert owner.printers["p"].counters.prints == 1
    async with open_owner(config, stubs()) as owner:
        assert owner.printers["p"].counters.prints == 1  # restored
        jobs, _ = await owner.submit(JobRequest(filename="benchy_pla.gcode", copies=2))
        await trio.sleep(400)
        slot = owner.printers["p"]
        assert slot.counters.prints == 2 and slot.maintenance and slot.due is not None
        await trio.sleep(600)
        assert (await owner.get_job(jobs[1].id)).state is JobState.QUEUED
        await owner.record_maintenance("p", "alice", "nozzle swapped")
        await trio.sleep(400)
        assert (await owner.get_job(jobs[1].id)).state is not JobState.QUEUED
    async with open_owner(config, stubs()) as owner:
        entries, total = await UpkeepStore(owner.store).log_page("p", 10, 0)
        assert total == 1 and (entries[0].by, entries[0].work) == ("alice", "nozzle swapped")
        assert entries[0].counters.prints == 2
        assert owner.printers["p"].counters.prints == 1 and owner.printers["p"].due is None
