"""The simulated printer driver: timing, determinism, commands and test knobs.

Every test runs on the trio clock under ``autojump_clock``: no real sleeps.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import attrs
import msgspec
import pytest
import trio
import trio.testing

from printfarmd.config import SimulatorOptions
from printfarmd.drivers.base import (
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    PrinterBusy,
    PrinterDriver,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.drivers.simulator import PNG_SIGNATURE, SimulatedPrinter, encode_solid_png
from printfarmd.models import PrinterState

FAST = SimulatorOptions(speed=60.0, report_interval=5.0, default_print_time=600.0)
E = TypeVar("E")
REASON_RE = re.compile(r"^simulated failure at (\d+)%$")


def spec(job_id: str = "JOB1", **kw: object) -> JobSpec:
    return JobSpec(job_id=job_id, filename=f"{job_id}.gcode", path=f"/g/{job_id}.gcode", **kw)  # type: ignore[arg-type]


@attrs.define
class Farm:
    """A running simulator and everything it sent, stamped with trio time."""

    sim: SimulatedPrinter
    log: list[tuple[float, DriverEvent]] = attrs.field(factory=list)

    def events(self, since: float = -math.inf) -> list[DriverEvent]:
        return [e for t, e in self.log if t >= since]

    def of(self, kind: type[E], since: float = -math.inf) -> list[tuple[float, E]]:
        return [(t, e) for t, e in self.log if isinstance(e, kind) and t >= since]

    def reports(self, since: float = -math.inf) -> list[StatusReport]:
        return [e for t, e in self.log if isinstance(e, StatusReport) and t >= since]

    async def outcome(self) -> JobFinished | JobFailed:
        """Wait until the next JobFinished/JobFailed arrives after now and return it."""
        seen = len(self.log)
        while True:
            for _, event in self.log[seen:]:
                if isinstance(event, JobFinished | JobFailed):
                    return event
            seen = len(self.log)
            await trio.sleep(0.01)


async def settle() -> None:
    """Let every pending event reach the log without moving the clock."""
    await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def running(sim: SimulatedPrinter) -> AsyncIterator[Farm]:
    farm = Farm(sim)
    send, receive = trio.open_memory_channel[DriverEvent](100)

    async def collect() -> None:
        async for event in receive:
            farm.log.append((trio.current_time(), event))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await nursery.start(sim.run, send)
        yield farm
        nursery.cancel_scope.cancel()


def test_satisfies_the_driver_protocol() -> None:
    driver: PrinterDriver = SimulatedPrinter("p1", FAST)
    assert driver.printer_id == "p1"


async def test_run_reports_idle_before_started(autojump_clock: trio.abc.Clock) -> None:
    sim = SimulatedPrinter("p1", FAST)
    send, receive = trio.open_memory_channel[DriverEvent](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run, send)
        assert receive.receive_nowait() == StatusReport("p1", PrinterState.IDLE)
        assert await sim.status() == StatusReport("p1", PrinterState.IDLE)
        nursery.cancel_scope.cancel()


async def test_print_finishes_on_the_scaled_clock(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        t0 = trio.current_time()
        await farm.sim.start_job(spec(estimated_time=600.0))
        await trio.sleep(30)

        finished = farm.of(JobFinished)
        assert [e for _, e in finished] == [JobFinished("p1", "JOB1")]
        assert finished[0][0] - t0 == pytest.approx(10.0)
        assert farm.of(JobFailed) == []

        printing = [r for r in farm.reports(t0) if r.state is PrinterState.PRINTING]
        progress = [r.progress for r in printing]
        assert progress == sorted(progress)
        assert progress[0] == 0.0
        assert progress[-1] == 100.0
        # report_interval 5 s / speed 60 -> about one report per 1/12 trio second
        assert 100 <= len(printing) <= 130
        assert all(r.job_id == "JOB1" for r in printing)
        mid = printing[len(printing) // 2]
        # remaining is in real (trio) seconds: 600 s at speed 60 is 10 s in all
        assert mid.remaining == pytest.approx((100 - mid.progress) * 0.1)
        # the end is the final 100% report, JobFinished, then IDLE
        assert farm.events()[-3:] == [
            StatusReport("p1", PrinterState.PRINTING, "JOB1", 100.0, remaining=0.0),
            JobFinished("p1", "JOB1"),
            StatusReport("p1", PrinterState.IDLE),
        ]
        assert (await farm.sim.status()).state is PrinterState.IDLE


async def test_default_print_time_when_no_estimate(autojump_clock: trio.abc.Clock) -> None:
    opts = SimulatorOptions(speed=10.0, default_print_time=50.0)
    async with running(SimulatedPrinter("p1", opts)) as farm:
        t0 = trio.current_time()
        await farm.sim.start_job(spec())
        await farm.outcome()
        assert trio.current_time() - t0 == pytest.approx(5.0, abs=0.02)


async def test_reports_never_closer_than_50ms(autojump_clock: trio.abc.Clock) -> None:
    opts = SimulatorOptions(speed=1000.0, report_interval=5.0)
    async with running(SimulatedPrinter("p1", opts)) as farm:
        await farm.sim.start_job(spec(estimated_time=5000.0))  # 5 trio seconds
        await farm.outcome()
        times = [t for t, e in farm.of(StatusReport) if e.state is PrinterState.PRINTING]
        # the final 100 % report is event-driven, not periodic: leave it out
        gaps = [b - a for a, b in itertools.pairwise(times[:-1])]
        assert min(gaps) >= 0.05 - 1e-9
        assert 90 <= len(times) <= 110


async def run_jobs(opts: SimulatorOptions, n: int, printer_id: str = "p1") -> list[str]:
    outcomes = []
    async with running(SimulatedPrinter(printer_id, opts)) as farm:
        for i in range(n):
            await farm.sim.start_job(spec(f"J{i}"))
            event = await farm.outcome()
            outcomes.append(event.reason if isinstance(event, JobFailed) else "finished")
    return outcomes


async def test_failures_are_deterministic(autojump_clock: trio.abc.Clock) -> None:
    opts = SimulatorOptions(speed=600.0, failure_rate=0.5, seed=7)
    first = await run_jobs(opts, 50)
    again = await run_jobs(opts, 50)
    assert first == again
    failed = [o for o in first if o != "finished"]
    assert 10 <= len(failed) <= 40  # both outcomes occur at rate 0.5
    assert len(set(failed)) > 5  # failure points vary
    assert await run_jobs(msgspec.structs.replace(opts, seed=8), 50) != first
    assert await run_jobs(opts, 50, printer_id="p2") != first


async def test_failure_rate_one_always_fails(autojump_clock: trio.abc.Clock) -> None:
    opts = SimulatorOptions(speed=60.0, failure_rate=1.0)
    async with running(SimulatedPrinter("p1", opts)) as farm:
        for i in range(10):
            t0 = trio.current_time()
            await farm.sim.start_job(spec(f"J{i}"))
            event = await farm.outcome()
            assert isinstance(event, JobFailed)
            assert (event.printer_id, event.job_id) == ("p1", f"J{i}")
            match = REASON_RE.match(event.reason)
            assert match, event.reason
            pct = int(match.group(1))
            assert 5 <= pct <= 95
            # it failed when the print reached that point (10 trio s for 100 %)
            assert trio.current_time() - t0 == pytest.approx(pct / 10, abs=0.1)
            before = [r.progress for r in farm.reports(t0) if r.job_id == f"J{i}"]
            assert max(before) <= pct + 0.5
            await trio.sleep(1)
            assert farm.events()[-1] == StatusReport("p1", PrinterState.IDLE)
            assert (await farm.sim.status()).state is PrinterState.IDLE
        assert farm.of(JobFinished) == []


async def test_failure_rate_zero_never_fails(autojump_clock: trio.abc.Clock) -> None:
    outcomes = await run_jobs(SimulatorOptions(speed=600.0, failure_rate=0.0), 30)
    assert outcomes == ["finished"] * 30


async def test_cancel_stops_without_failure(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        await farm.sim.start_job(spec())
        await trio.sleep(3)
        await farm.sim.cancel_job("OTHER")  # not this job: no-op
        assert (await farm.sim.status()).state is PrinterState.PRINTING
        t_cancel = trio.current_time()
        await farm.sim.cancel_job("JOB1")
        await trio.sleep(30)
        assert farm.events(t_cancel) == [StatusReport("p1", PrinterState.IDLE)]
        assert farm.of(JobFinished) == []
        assert farm.of(JobFailed) == []
        assert (await farm.sim.status()).state is PrinterState.IDLE
        await farm.sim.start_job(spec("JOB2"))  # the printer is free again
        assert await farm.outcome() == JobFinished("p1", "JOB2")


async def test_pause_and_resume(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        t0 = trio.current_time()
        await farm.sim.start_job(spec())
        await trio.sleep(3)
        await farm.sim.pause_job("OTHER")  # no-op
        assert (await farm.sim.status()).state is PrinterState.PRINTING
        await farm.sim.pause_job("JOB1")
        paused = await farm.sim.status()
        assert paused.state is PrinterState.PAUSED
        assert paused.progress == pytest.approx(30.0)
        t_pause = trio.current_time()
        await trio.sleep(20)

        during = farm.reports(t_pause)
        assert len(during) > 10  # reports continue while paused...
        assert all(r.state is PrinterState.PAUSED for r in during)
        assert {r.progress for r in during} == {paused.progress}  # ...frozen
        with pytest.raises(PrinterBusy):
            await farm.sim.start_job(spec("JOB2"))

        await farm.sim.resume_job("OTHER")  # no-op
        assert (await farm.sim.status()).state is PrinterState.PAUSED
        await farm.sim.resume_job("JOB1")
        assert (await farm.sim.status()).state is PrinterState.PRINTING
        assert await farm.outcome() == JobFinished("p1", "JOB1")
        # 3 s + 20 s paused + the remaining 7 s
        assert trio.current_time() - t0 == pytest.approx(30.0, abs=0.02)
        progress = [r.progress for r in farm.reports() if r.job_id == "JOB1"]
        assert progress == sorted(progress)


async def test_busy_printer_refuses_a_second_job(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        await farm.sim.start_job(spec("A"))
        with pytest.raises(PrinterBusy):
            await farm.sim.start_job(spec("B"))
        assert await farm.outcome() == JobFinished("p1", "A")
        await trio.sleep(0.1)
        await farm.sim.start_job(spec("B"))
        assert await farm.outcome() == JobFinished("p1", "B")
        assert [e.job_id for _, e in farm.of(JobFinished)] == ["A", "B"]


async def test_resume_progress_prints_only_the_rest(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        t0 = trio.current_time()
        await farm.sim.start_job(spec(estimated_time=600.0, resume_progress=50.0))
        report = await farm.sim.status()
        assert report.progress == 50.0
        assert report.remaining == pytest.approx(5.0)  # real seconds at speed 60
        assert await farm.outcome() == JobFinished("p1", "JOB1")
        assert trio.current_time() - t0 == pytest.approx(5.0, abs=0.02)
        assert min(r.progress for r in farm.reports() if r.job_id == "JOB1") == 50.0


async def test_offline_holds_a_finish_until_return(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        await farm.sim.start_job(spec())
        await trio.sleep(2)
        t_off = trio.current_time()
        farm.sim.set_offline(True)
        farm.sim.set_offline(True)  # idempotent: still one OFFLINE report
        await settle()
        for call in (
            farm.sim.status(),
            farm.sim.start_job(spec("X")),
            farm.sim.cancel_job("JOB1"),
            farm.sim.pause_job("JOB1"),
            farm.sim.resume_job("JOB1"),
            farm.sim.run_gcode("G28"),
            farm.sim.snapshot(),
        ):
            with pytest.raises(PrinterUnreachable):
                await call
        await trio.sleep(30)  # the print finishes "physically" meanwhile
        assert [(type(e), getattr(e, "state", None)) for e in farm.events(t_off)] == [
            (StatusReport, PrinterState.OFFLINE)
        ]

        t_on = trio.current_time()
        farm.sim.set_offline(False)
        await trio.sleep(1)
        assert farm.events(t_on) == [
            JobFinished("p1", "JOB1"),
            StatusReport("p1", PrinterState.IDLE),
        ]
        assert (await farm.sim.status()).state is PrinterState.IDLE
        assert farm.sim.gcode_log == []


async def test_offline_while_printing_reports_progress_on_return(
    autojump_clock: trio.abc.Clock,
) -> None:
    opts = msgspec.structs.replace(FAST, failure_rate=1.0)
    async with running(SimulatedPrinter("p1", opts)) as farm:
        t0 = trio.current_time()
        await farm.sim.start_job(spec())
        farm.sim.set_offline(True)
        await trio.sleep(0.3)  # failure points are >= 5 %, i.e. >= 0.5 s
        farm.sim.set_offline(False)
        await settle()
        back = farm.reports()[-1]
        assert back.state is PrinterState.PRINTING
        assert back.progress == pytest.approx(3.0)  # printing went on while offline
        failed = await farm.outcome()
        assert isinstance(failed, JobFailed)

        # A failure while offline is delivered on return, then the IDLE status.
        await farm.sim.start_job(spec("JOB2"))
        farm.sim.set_offline(True)
        await trio.sleep(30)
        assert farm.of(JobFailed, since=t0 + 0.5)[-1][1] == failed
        farm.sim.set_offline(False)
        await settle()
        held, idle = farm.events()[-2:]
        assert isinstance(held, JobFailed)
        assert (held.job_id, REASON_RE.match(held.reason) is not None) == ("JOB2", True)
        assert idle == StatusReport("p1", PrinterState.IDLE)
        assert len(farm.of(JobFailed)) == 2


async def test_offline_before_run_starts_offline(autojump_clock: trio.abc.Clock) -> None:
    sim = SimulatedPrinter("p1", FAST)
    sim.set_offline(True)
    async with running(sim) as farm:
        await settle()
        assert [r.state for r in farm.reports()] == [PrinterState.OFFLINE]
        sim.set_offline(False)
        await settle()
        assert [r.state for r in farm.reports()] == [PrinterState.OFFLINE, PrinterState.IDLE]


async def test_hang_freezes_progress_and_reports(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        t0 = trio.current_time()
        await farm.sim.start_job(spec())
        await trio.sleep(2)
        farm.sim.hang()
        t_hang = trio.current_time()
        frozen = (await farm.sim.status()).progress
        assert frozen == pytest.approx(20.0)
        await trio.sleep(100)
        assert farm.events(t_hang) == []
        assert (await farm.sim.status()).progress == frozen
        assert (await farm.sim.status()).state is PrinterState.PRINTING

        farm.sim.unhang()
        assert await farm.outcome() == JobFinished("p1", "JOB1")
        assert trio.current_time() - t0 == pytest.approx(110.0, abs=0.02)


async def test_hung_print_can_be_cancelled(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        await farm.sim.start_job(spec())
        await trio.sleep(1)
        farm.sim.hang()
        await farm.sim.cancel_job("JOB1")
        await settle()
        assert farm.events()[-1] == StatusReport("p1", PrinterState.IDLE)
        await farm.sim.start_job(spec("JOB2"))  # a new print is not hung
        assert await farm.outcome() == JobFinished("p1", "JOB2")


def parse_png(data: bytes) -> dict[bytes, bytes]:
    assert data.startswith(PNG_SIGNATURE)
    chunks: dict[bytes, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    assert next(iter(chunks)) == b"IHDR"
    assert list(chunks)[-1] == b"IEND"
    return chunks


async def test_snapshot_is_a_valid_png(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        idle = await farm.sim.snapshot()
        await farm.sim.start_job(spec())
        await trio.sleep(5)
        mid = await farm.sim.snapshot()
        for image in (idle, mid):
            chunks = parse_png(image)
            width, height, depth, colour_type, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
            assert (width, height, depth, colour_type) == (64, 48, 8, 2)
            pixels = zlib.decompress(chunks[b"IDAT"])
            assert len(pixels) == 48 * (1 + 64 * 3)
        assert mid != idle  # the colour follows the print


def test_encode_solid_png_pixels() -> None:
    chunks = parse_png(encode_solid_png(3, 2, (1, 2, 3)))
    assert zlib.decompress(chunks[b"IDAT"]) == (b"\x00" + b"\x01\x02\x03" * 3) * 2


async def test_run_gcode_is_recorded(autojump_clock: trio.abc.Clock) -> None:
    async with running(SimulatedPrinter("p1", FAST)) as farm:
        await farm.sim.run_gcode("G28")
        await farm.sim.run_gcode("M84")
        assert farm.sim.gcode_log == ["G28", "M84"]


async def test_start_job_needs_run(autojump_clock: trio.abc.Clock) -> None:
    sim = SimulatedPrinter("p1", FAST)
    with pytest.raises(PrinterUnreachable, match="simulator not running"):
        await sim.start_job(spec())
    async with running(sim):
        await sim.start_job(spec())
        assert (await sim.status()).job_id == "JOB1"
    # run ended: the in-memory printer forgot its job and refuses new ones
    assert await sim.status() == StatusReport("p1", PrinterState.IDLE)
    with pytest.raises(PrinterUnreachable, match="simulator not running"):
        await sim.start_job(spec("JOB2"))
    # a fresh instance (a daemon restart) knows no job either
    assert await SimulatedPrinter("p1", FAST).status() == StatusReport("p1", PrinterState.IDLE)


async def test_closed_receive_channel_does_not_crash_run(
    autojump_clock: trio.abc.Clock,
) -> None:
    sim = SimulatedPrinter("p1", FAST)
    send, receive = trio.open_memory_channel[DriverEvent](0)
    receive.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run, send)
        await sim.start_job(spec())
        await trio.sleep(5)
        assert (await sim.status()).progress == pytest.approx(50.0)
        await trio.sleep(30)
        assert (await sim.status()).state is PrinterState.IDLE
        nursery.cancel_scope.cancel()


async def test_receiver_closing_mid_print_does_not_crash_run(
    autojump_clock: trio.abc.Clock,
) -> None:
    sim = SimulatedPrinter("p1", FAST)
    send, receive = trio.open_memory_channel[DriverEvent](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run, send)
        assert (await receive.receive()).state is PrinterState.IDLE  # type: ignore[union-attr]
        await sim.start_job(spec())
        await trio.sleep(1)  # the driver is now blocked on a full channel
        receive.close()
        await trio.sleep(30)
        assert (await sim.status()).state is PrinterState.IDLE
        await sim.start_job(spec("JOB2"))  # still fully working
        await trio.sleep(30)
        assert (await sim.status()).state is PrinterState.IDLE
        nursery.cancel_scope.cancel()
