"""Retries, re-routing, escalation and the stuck-job watchdog: the real owner, store and
simulated printers under trio's MockClock (``autojump_clock``): minutes pass, no real waiting.

Wall time is tied to the mock clock so stored timestamps follow the simulated minutes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio
import trio.testing

from printfarmd.config import WatchdogConfig
from printfarmd.core import watchdog as rules
from printfarmd.core.farm.inputs import JobRequest
from printfarmd.core.retry import RetryPolicy
from printfarmd.drivers import make_driver
from printfarmd.drivers.simulator import SimulatedPrinter
from printfarmd.models import Event, Job, JobState
from printfarmd.services.bus import Bus
from printfarmd.services.owner import Owner
from printfarmd.services.watchdog import Watchdog
from printfarmd.store import open_store
from tests.conftest import make_config, sim_printer

EPOCH = 1_800_000_000.0


@pytest.fixture
def farm_clock() -> trio.testing.MockClock:
    """Jump the clock only after 50 ms of real idleness: the store commits in a worker
    thread, and a zero threshold would let simulated time leap while it does."""
    return trio.testing.MockClock(autojump_threshold=0.05)


@attrs.define
class Core:
    owner: Owner
    drivers: dict[str, Any]
    escalated: list[Job]

    async def events(self, job_id: str) -> list[Event]:
        return await self.owner.store.events_since(0, job_id=job_id)

    async def wait_state(self, job_id: str, *states: JobState, within: float = 10_000) -> Job:
        """Wait (on the bus, no polling) until the job has entered one of ``states``;
        returns the job as stored right after that transition."""
        wanted = {s.value for s in states}
        with trio.fail_after(within):
            with self.owner.bus.subscribed(
                lambda m: isinstance(m, Event) and m.job_id == job_id and m.to_state in wanted,
                buffer_size=1000,
            ) as sub:
                if (await self.owner.get_job(job_id)).state.value in wanted:
                    return await self.owner.get_job(job_id)
                async for _ in sub.receive_channel:
                    return await self.owner.get_job(job_id)
        raise AssertionError("bus subscription ended")


@contextlib.asynccontextmanager
async def farm_core(
    tmp_path: Path,
    printers: tuple[Any, ...],
    watchdog: WatchdogConfig | None = None,
    prepare: Any = None,
    **sched: Any,
) -> AsyncIterator[Core]:
    config = make_config(tmp_path, printers, **sched)
    config.data_path.mkdir(parents=True, exist_ok=True)
    async with open_store(config.data_path / "t.db") as store:
        drivers = {p.id: make_driver(p) for p in config.printers}
        if prepare is not None:
            prepare(drivers)
        owner = Owner(
            config=config,
            store=store,
            bus=Bus(),
            drivers=drivers,
            wall=lambda: EPOCH + trio.current_time(),
        )
        escalated: list[Job] = []
        owner.effects.escalate = escalated.append
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            await owner.running.wait()
            if watchdog is not None:
                await nursery.start(Watchdog(owner, watchdog).run)
            yield Core(owner, drivers, escalated)
            nursery.cancel_scope.cancel()


def transitions(events: list[Event]) -> list[tuple[str | None, float, str | None, str | None]]:
    return [
        (e.to_state, e.at - EPOCH, e.printer_id, e.reason)
        for e in events
        if e.type == "job.transition"
    ]


# ------------------------------------------------------------------ pure rules


def test_find_stuck_uses_only_monotonic_age_and_skips_paused() -> None:
    last = {"A": 100.0, "B": 50.0, "C": 10.0}
    stuck = rules.find_stuck(last, paused={"C"}, now=110.0, threshold=60.0)
    assert stuck == [rules.Stuck("B", 60.0)]
    # At exactly the threshold a job is stuck; just below it is not.
    assert rules.find_stuck(last, set(), now=110.0, threshold=60.0) == [
        rules.Stuck("B", 60.0),
        rules.Stuck("C", 100.0),
    ]
    assert [x.job_id for x in rules.find_stuck(last, set(), now=109.9, threshold=60.0)] == ["C"]
    assert [s.job_id for s in rules.find_stuck(last, set(), now=70.0, threshold=60.0)] == ["C"]


def test_requeue_below_the_limit_records_position_then_fails_at_the_limit() -> None:
    job = Job(
        id="A" * 16,
        filename="x.gcode",
        state=JobState.PRINTING,
        printer_id="p1",
        progress=42.5,
        retry_count=1,
    )
    steps = rules.requeue_or_fail(job, 901.0, RetryPolicy(3, (60.0,)), now=1000.0)
    assert [(e.value, j.state) for e, j in steps] == [
        ("fail", JobState.FAILED),
        ("retry", JobState.QUEUED),
    ]
    requeued = steps[-1][1]
    assert requeued.retry_count == 2 and requeued.resume_progress == 42.5
    assert "no progress for 901 s at 42.5%" in (requeued.last_error or "")
    spent = msgspec.structs.replace(job, retry_count=3)
    steps = rules.requeue_or_fail(spent, 901.0, RetryPolicy(3, (60.0,)), now=1000.0)
    assert len(steps) == 1
    assert steps[0][1].state is JobState.FAILED and steps[0][1].retry_at is None
    assert (steps[0][1].last_error or "").startswith("max retries reached")


# ------------------------------------------------------------------ services


async def failed_for_good(
    core: Core,
) -> tuple[Job, list[tuple[str | None, float, str | None, str | None]]]:
    """Submit one 60 s job and wait (simulated time) until it has failed with no retry
    left; the job then and its transitions."""
    jobs, _ = await core.owner.submit(JobRequest(filename="benchy_pla.gcode", estimated_time=60.0))
    job = await core.wait_state(jobs[0].id, JobState.FAILED, within=10_000)
    with trio.fail_after(5_000):
        while not (job.state is JobState.FAILED and job.retry_at is None):
            await trio.sleep(10)
            job = await core.owner.get_job(job.id)
    return job, transitions(await core.events(job.id))


async def test_whole_backoff_schedule_then_escalation(tmp_path: Path, farm_clock: Any) -> None:
    printers = (sim_printer("bad", ("PLA",), failure_rate=1.0, auto_clear=True, speed=60.0),)
    async with farm_core(tmp_path, printers) as core:
        job, trail = await failed_for_good(core)
    states = [t[0] for t in trail]
    assert states.count("failed") == 4  # first attempt + 3 retries
    assert states.count("printing") == 4
    fails = [t for t in trail if t[0] == "failed"]
    retries = [t for t in trail if t[0] == "queued"][1:]  # the first queued is the submission
    gaps = [r[1] - f[1] for f, r in zip(fails, retries, strict=False)]
    assert gaps == pytest.approx([60.0, 300.0, 1500.0], abs=2.0)
    assert all("simulated failure" in (f[3] or "") for f in fails)
    assert (fails[-1][3] or "").startswith("max retries reached")
    final = await_job = job
    assert final.state is JobState.FAILED and final.retry_count == 3
    assert [j.id for j in core.escalated] == [await_job.id]


async def test_a_retry_goes_to_another_printer(tmp_path: Path, farm_clock: Any) -> None:
    printers = (
        sim_printer("a", ("PLA",), failure_rate=1.0, auto_clear=True, speed=60.0),
        sim_printer("b", ("PLA",), auto_clear=True, speed=60.0),
    )
    async with farm_core(tmp_path, printers, retry_backoff=(5.0,)) as core:
        # b is busy with a long print when the job starts, so the job lands on a.
        await core.owner.set_paused(True)
        await core.owner.release(
            (
                await core.owner.submit(
                    JobRequest(filename="keychain_any.gcode", estimated_time=60.0)
                )
            )[0][0].id,
            "b",
        )
        await core.owner.set_paused(False)
        jobs, _ = await core.owner.submit(
            JobRequest(filename="benchy_pla.gcode", estimated_time=600.0)
        )
        job = await core.wait_state(jobs[0].id, JobState.READY, within=10_000)
        trail = transitions(await core.events(job.id))
    printed_on = [t[2] for t in trail if t[0] == "printing"]
    assert printed_on == ["a", "b"]
    assert job.failed_printers == ("a",) and job.retry_count == 1


async def test_watchdog_requeues_a_hung_print_then_fails_it_at_the_limit(
    tmp_path: Path, farm_clock: Any
) -> None:
    printers = (sim_printer("p", ("PLA",), auto_clear=True, speed=1.0),)
    wd = WatchdogConfig(interval=60.0, stale_threshold=600.0)
    async with farm_core(
        tmp_path, printers, watchdog=wd, max_retries=1, retry_backoff=(1.0,)
    ) as core:
        sim: SimulatedPrinter = core.drivers["p"]
        jobs, _ = await core.owner.submit(
            JobRequest(filename="benchy_pla.gcode", estimated_time=3600.0)
        )
        jid = jobs[0].id
        await core.wait_state(jid, JobState.PRINTING)
        await trio.sleep(300)  # prints normally for 5 minutes: never stuck
        assert (await core.owner.get_job(jid)).state is JobState.PRINTING
        sim.hang()
        t_hang = trio.current_time()
        job = await core.wait_state(jid, JobState.QUEUED, JobState.FAILED, within=5_000)
        assert job.state is JobState.QUEUED
        assert 600 <= trio.current_time() - t_hang <= 600 + 60 + 5
        assert job.retry_count == 1 and 5.0 < job.resume_progress < 20.0
        # the printer's plate is not known to be clear; auto_clear frees it, and the job
        # goes back to it, resuming from the recorded position.
        sim.unhang()
        job = await core.wait_state(jid, JobState.PRINTING)
        await trio.sleep(1.0)  # the start command reaches the printer after the commit
        report = await sim.status()
        assert report.job_id == jid
        # resumed at the recorded position, not from 0 (1 s of a 1 h print is 0.03%)
        assert job.resume_progress <= report.progress <= job.resume_progress + 0.1
        sim.hang()
        job = await core.wait_state(jid, JobState.FAILED, within=5_000)
        assert (job.last_error or "").startswith("max retries reached: watchdog")
        trail = transitions(await core.events(jid))
    assert [t[0] for t in trail] == [
        "created",
        "validated",
        "sliced",
        "queued",
        "printing",
        "failed",
        "queued",
        "printing",
        "failed",
    ]
    assert [j.id for j in core.escalated] == [jid]


async def test_watchdog_leaves_paused_and_progressing_prints_alone(
    tmp_path: Path, farm_clock: Any
) -> None:
    printers = (
        sim_printer("slow", ("PLA",), speed=1.0),
        sim_printer("held", ("PLA",), speed=1.0),
    )
    wd = WatchdogConfig(interval=30.0, stale_threshold=120.0)
    async with farm_core(tmp_path, printers, watchdog=wd) as core:
        a = (
            await core.owner.submit(JobRequest(filename="benchy_pla.gcode", estimated_time=7200.0))
        )[0][0]
        b = (
            await core.owner.submit(JobRequest(filename="benchy_pla.gcode", estimated_time=7200.0))
        )[0][0]
        a = await core.wait_state(a.id, JobState.PRINTING)
        b = await core.wait_state(b.id, JobState.PRINTING)
        held = core.drivers[b.printer_id or ""]
        await held.pause_job(b.id)
        await trio.sleep(600)  # 20 watchdog sweeps, 5 stale thresholds
        for jid in (a.id, b.id):
            assert (await core.owner.get_job(jid)).state is JobState.PRINTING
            assert [t[0] for t in transitions(await core.events(jid))].count("failed") == 0


async def test_restart_reconciles_printing_jobs_unreachable_printer_waits_then_fails(
    tmp_path: Path, farm_clock: Any
) -> None:
    """Start-up reconciliation: a printer that answers idle -> failure path at once with the
    reason; an unreachable one -> the job is kept for the stale threshold, then requeued."""
    printers = (
        sim_printer("answers", ("PLA",), speed=1.0),
        sim_printer("silent", ("PLA",), speed=1.0),
    )
    async with farm_core(tmp_path, printers) as core:
        a = (
            await core.owner.submit(JobRequest(filename="benchy_pla.gcode", estimated_time=7200.0))
        )[0][0]
        b = (
            await core.owner.submit(JobRequest(filename="benchy_pla.gcode", estimated_time=7200.0))
        )[0][0]
        a = await core.wait_state(a.id, JobState.PRINTING)
        b = await core.wait_state(b.id, JobState.PRINTING)
        on = {a.printer_id: a.id, b.printer_id: b.id}
    # the daemon "restarts": fresh simulators (they forgot their jobs); one is unreachable
    wd = WatchdogConfig(interval=30.0, stale_threshold=300.0)
    async with farm_core(
        tmp_path, printers, watchdog=wd, prepare=lambda d: d["silent"].set_offline(True)
    ) as core:
        lost = await core.owner.get_job(on["answers"])
        assert lost.state in (JobState.FAILED, JobState.QUEUED, JobState.PRINTING)
        reasons = [t[3] or "" for t in transitions(await core.events(lost.id)) if t[0] == "failed"]
        assert reasons and "no longer has the job after a restart" in reasons[0]
        kept = await core.owner.get_job(on["silent"])
        assert kept.state is JobState.PRINTING  # unreachable: wait, do not guess
        t0 = trio.current_time()
        requeued = await core.wait_state(kept.id, JobState.FAILED, within=1_000)
        assert 300 <= trio.current_time() - t0 <= 300 + 30 + 5
        assert "watchdog: no progress" in (requeued.last_error or "")


async def test_a_slow_commit_does_not_delay_the_retry(tmp_path: Path, farm_clock: Any) -> None:
    """The retry fires at the recorded ``retry_at`` even when the failure's commit took a
    while (an fsync on a busy SD card): the timer is armed from the clock read after it."""
    printers = (sim_printer("bad", ("PLA",), failure_rate=1.0, auto_clear=True, speed=60.0),)
    async with farm_core(tmp_path, printers, max_retries=1, retry_backoff=(60.0,)) as core:
        store = core.owner.store
        commit = store.commit

        async def slow_commit(*args: Any, **kwargs: Any) -> Any:
            await trio.sleep(7.0)  # simulated time: the commit is slow
            return await commit(*args, **kwargs)

        store.commit = slow_commit  # type: ignore[method-assign]
        _, trail = await failed_for_good(core)
    first_fail = next(t for t in trail if t[0] == "failed")
    requeued = [t for t in trail if t[0] == "queued"][1]
    # retry_at = failure time + 60; the requeue itself is recorded at the wake-up time
    assert requeued[1] - first_fail[1] == pytest.approx(60.0, abs=0.5)
