"""The PrusaLink driver against the PrusaLink stand-in (written from Prusa's OpenAPI
document), over real sockets with HTTP digest authentication.

The driver's timings are set short (``FAST``); the benchy prints in ``print_seconds``
(the stand-in's time-scale knob). Every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio

from printfarmd.config import PrinterConfig, PrusaLinkOptions, config_from_dict
from printfarmd.drivers import make_driver
from printfarmd.drivers.base import (
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    NotSupported,
    PrinterBusy,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.drivers.prusalink import PrusaLinkDriver
from printfarmd.drivers.prusalink_sim import NetworkMode, PrusaLinkSim, open_prusalink_sim
from printfarmd.errors import ConfigError
from printfarmd.models import PrinterState
from tests.conftest import DEMO_GCODES, REPO, LiveFarm, live_farm, make_config
from tests.keyleak import register_key

PASSWORD = "digest-secret-0123"
register_key(PASSWORD)
FAST = PrusaLinkOptions(
    password=PASSWORD,
    timeout=0.5,
    heartbeat=0.1,
    offline_after=2,
    backoff_initial=0.1,
    backoff_max=0.3,
    upload_timeout=5.0,
)
JOB = "0123456789ABCDEF"
OTHER = "FEDCBA9876543210"
GCODE = str(DEMO_GCODES / "benchy_pla.gcode")
NAME = f"printfarmd/{JOB}_benchy_pla.gcode"


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polling state owned by other tasks
            await trio.sleep(0.02)


@attrs.define
class Link:
    driver: PrusaLinkDriver
    sim: PrusaLinkSim
    events: list[DriverEvent]

    def reports(self) -> list[StatusReport]:
        return [e for e in self.events if isinstance(e, StatusReport)]

    def last(self) -> StatusReport:
        return self.reports()[-1]

    def last_state(self) -> PrinterState | None:
        reports = self.reports()
        return reports[-1].state if reports else None

    def outcomes(self) -> list[JobFinished | JobFailed]:
        return [e for e in self.events if isinstance(e, JobFinished | JobFailed)]


@asynccontextmanager
async def driven(sim: PrusaLinkSim, **changes: Any) -> AsyncIterator[Link]:
    driver = PrusaLinkDriver("p1", msgspec.structs.replace(FAST, url=sim.url, **changes))
    send, receive = trio.open_memory_channel[DriverEvent](100000)
    link = Link(driver, sim, [])

    async def collect() -> None:
        async for event in receive:
            link.events.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await nursery.start(driver.run, send)
        yield link
        nursery.cancel_scope.cancel()


#: The benchy's slicer estimate (``; estimated printing time (normal mode) = 0h 42m 10s``).
BENCHY_SECONDS = 2530.0


def sim(print_seconds: float = 1.5, **kw: Any) -> Any:
    """A stand-in on which the benchy prints in ``print_seconds`` (the time-scale knob)."""
    kw.setdefault("password", PASSWORD)
    return open_prusalink_sim(time_scale=print_seconds / BENCHY_SECONDS, **kw)


# ------------------------------------------------------------------ driver on its own


async def test_prints_to_the_end_once_and_never_prints_a_finished_job_again() -> None:
    async with sim() as printer, driven(printer) as link:
        assert link.last_state() is PrinterState.IDLE
        spec = JobSpec(JOB, "benchy_pla.gcode", GCODE)
        await link.driver.start_job(spec)
        assert printer.printer.files[("local", NAME)].data == await trio.Path(GCODE).read_bytes()
        await link.driver.start_job(spec)  # an answer lost, a retry: not started twice
        assert printer.printer.printed == [f"/local/{NAME}"]
        await wait_until(lambda: bool(link.outcomes()))
        printing = [r for r in link.reports() if r.state is PrinterState.PRINTING]
        assert printing and all(r.job_id == JOB for r in printing)
        assert [r.progress for r in printing] == sorted(r.progress for r in printing)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        done = link.events.index(JobFinished("p1", JOB))
        after = [e for e in link.events[done:] if isinstance(e, StatusReport)]
        assert after and all(
            (r.state, r.job_id, r.progress) == (PrinterState.IDLE, None, 0.0) for r in after
        )
        seen = len(link.reports())
        await wait_until(lambda: len(link.reports()) > seen + 5)  # FINISHED, again and again
        assert link.outcomes() == [JobFinished("p1", JOB)]
        # The farm asks again for a job the printer shows finished: told, not reprinted.
        await link.driver.start_job(spec)
        await wait_until(lambda: len(link.outcomes()) == 2)
        assert printer.printer.printed == [f"/local/{NAME}"]
        await link.driver.forget_job(OTHER)
        assert ("local", NAME) in printer.printer.files
        await link.driver.forget_job(JOB)
        assert ("local", NAME) not in printer.printer.files
        await link.driver.forget_job(JOB)  # nothing left: fine


async def test_pause_resume_stop_busy_and_what_it_cannot_do() -> None:
    async with sim(print_seconds=60.0) as printer, driven(printer) as link:
        driver = link.driver
        await driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        await driver.pause_job(OTHER)  # not this printer's job: a no-op
        assert printer.printer.state == "PRINTING"
        await driver.pause_job(JOB)
        assert printer.printer.state == "PAUSED"
        report = await driver.status()
        assert (report.state, report.job_id) == (PrinterState.PAUSED, JOB)
        await driver.resume_job(JOB)
        assert printer.printer.state == "PRINTING"
        with pytest.raises(PrinterBusy, match="busy"):
            await driver.start_job(JobSpec(OTHER, "cube.gcode", GCODE))
        await driver.cancel_job(JOB)
        assert printer.printer.state == "STOPPED"
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        seen = len(link.reports())
        await wait_until(lambda: len(link.reports()) > seen + 3)
        assert link.outcomes() == []  # stopped by the farm: no printer failure
        with pytest.raises(NotSupported):
            await driver.run_gcode("G28")
        assert await driver.snapshot() is None  # no camera: 204
        printer.camera = True
        image = await driver.snapshot()
        assert image is not None and image.startswith(b"\x89PNG\r\n\x1a\n")


async def test_emergency_stop_stops_whatever_prints() -> None:
    async with sim(print_seconds=60.0) as printer, driven(printer) as link:
        await link.driver.emergency_stop()  # nothing printing: nothing to do
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await link.driver.emergency_stop()
        assert printer.printer.state == "STOPPED"
        await wait_until(lambda: bool(link.outcomes()))
        assert link.outcomes() == [JobFailed("p1", JOB, "print stopped on the printer")]


@pytest.mark.parametrize("keep_job", [True, False])
async def test_ends_on_the_printer_fail_or_finish_once(keep_job: bool) -> None:
    """Buddy firmware keeps the ended job in the status; PrusaLink on a Pi drops it."""
    async with (
        sim(print_seconds=60.0, keep_job_after_end=keep_job) as printer,
        driven(printer) as link,
    ):
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        printer.stop_on_printer()
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        assert link.outcomes() == [JobFailed("p1", JOB, "print stopped on the printer")]
        printer.reboot()
        await link.driver.start_job(JobSpec(OTHER, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        printer.attention()
        await wait_until(lambda: link.last_state() is PrinterState.PAUSED)
        assert link.last().job_id == OTHER
        assert "needs attention" in link.last().message
        await link.driver.resume_job(OTHER)
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        printer.fail("Thermal runaway")
        await wait_until(lambda: link.last_state() is PrinterState.ERROR)
        assert link.outcomes()[1:] == [JobFailed("p1", OTHER, "printer error: Thermal runaway")]
        printer.reboot()
        await link.driver.start_job(JobSpec("AAAA000011112222", "benchy_pla.gcode", GCODE))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        printer.finish()
        await wait_until(lambda: len(link.outcomes()) == 3)
        assert link.outcomes()[2] == JobFinished("p1", "AAAA000011112222")
        seen = len(link.reports())
        await wait_until(lambda: len(link.reports()) > seen + 5)
        assert len(link.outcomes()) == 3


async def test_driver_restarted_after_the_job_ended_reports_it_once() -> None:
    async with sim(print_seconds=60.0) as printer:
        async with driven(printer) as link:
            await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
            await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        printer.finish()  # while no driver watches
        async with driven(printer) as again:
            await wait_until(lambda: len(again.reports()) > 5)
            assert again.outcomes() == [JobFinished("p1", JOB)]
            assert {r.state for r in again.reports()} == {PrinterState.IDLE}


async def test_wrong_credentials_are_a_clear_error_and_keep_it_offline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="printfarmd.drivers.prusalink")
    async with sim(api_key="key-for-old-firmware-42") as printer:
        register_key("key-for-old-firmware-42")
        async with driven(printer, password="wrong") as link:
            assert link.last_state() is PrinterState.OFFLINE
            assert "PrusaLink refused the credentials" in link.last().message
            assert "HTTP 401" in link.last().message
            assert "prusalink refused the credentials" in [r.getMessage() for r in caplog.records]
            report = await link.driver.status()
            assert report.state is PrinterState.OFFLINE and "credentials refused" in report.message
            await wait_until(lambda: link.driver.health.failures >= 3)
            assert {r.state for r in link.reports()} == {PrinterState.OFFLINE}
        async with driven(printer, password="", api_key="key-for-old-firmware-42") as link:
            assert link.last_state() is PrinterState.IDLE  # X-Api-Key works too
        async with driven(printer) as link:
            assert link.last_state() is PrinterState.IDLE
        assert printer.printer.printed == []


async def test_faults_unreachable_5xx_slow_and_back() -> None:
    async with sim() as printer, driven(printer) as link:
        assert link.last_state() is PrinterState.IDLE
        printer.errors["status"] = (503, "Service Unavailable")
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        assert "HTTP 503" in link.last().message
        del printer.errors["status"]
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        printer.delay = FAST.timeout * 2
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        with pytest.raises(PrinterUnreachable):
            await link.driver.status()
        printer.delay = 0.0
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        printer.set_network(NetworkMode.RESET)
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        printer.set_network(NetworkMode.BLACK_HOLE)
        with pytest.raises(PrinterUnreachable):
            await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        printer.set_network(NetworkMode.OK)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        printer.set_printer_link(False)
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        assert "no link to the printer" in link.last().message
        with pytest.raises(PrinterBusy):
            await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        printer.set_printer_link(True)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        assert printer.printer.printed == []


async def test_a_printer_down_at_start_is_offline_at_once() -> None:
    async with sim() as printer:
        printer.set_network(NetworkMode.RESET)
        async with driven(printer, offline_after=5) as link:
            assert link.last_state() is PrinterState.OFFLINE
            printer.set_network(NetworkMode.OK)
            await wait_until(lambda: link.last_state() is PrinterState.IDLE)


async def test_malformed_answers_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="printfarmd.drivers.prusalink")
    data = Path(__file__).parent / "data" / "prusalink"
    async with sim(print_seconds=60.0) as printer, driven(printer) as link:
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        for path in [*sorted(data.glob("bad_*")), data / "status_odd_fields.json"]:
            printer.malformed["status"] = path.read_bytes()
            calls = printer.calls.count("status") + 1
            await wait_until(lambda n=calls: printer.calls.count("status") > n)
        printer.malformed.clear()
        printer.malformed["job"] = b"{not json"
        messages = [r.getMessage() for r in caplog.records]
        assert "odd answer from prusalink ignored" in messages
        assert "odd prusalink status field ignored" in messages
        assert link.driver.health.failures == 0
        assert link.last_state() is PrinterState.PRINTING
        printer.malformed.clear()
        printer.finish()
        await wait_until(lambda: link.outcomes() == [JobFinished("p1", JOB)])


# ------------------------------------------------------------------ config


def test_config_knows_the_driver_and_checks_its_options() -> None:
    config = config_from_dict(
        {
            "printers": [
                {
                    "id": "mk4",
                    "driver": "prusalink",
                    "prusalink": {"url": "http://mk4.local", "password": "p"},
                }
            ]
        }
    )
    assert isinstance(make_driver(config.printers[0]), PrusaLinkDriver)
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "printers": [
                    {"id": "a", "driver": "prusalink", "prusalink": {"timeout": 0}},
                    {
                        "id": "b",
                        "driver": "prusalink",
                        "prusalink": {
                            "url": "http://x",
                            "password": "p",
                            "api_key": "k",
                            "storage": "usb",
                        },
                    },
                ]
            }
        )
    lines = str(err.value).splitlines()
    assert 'printers[0].prusalink.url: expected an http:// or https:// URL, got ""' in lines
    assert (
        'printers[0].prusalink.password: required with driver = "prusalink" (or set api_key)'
        in lines
    )
    assert "printers[0].prusalink.timeout: must be > 0" in lines
    assert "printers[1].prusalink.api_key: set either password or api_key, not both" in lines
    assert "printers[1].prusalink.storage: expected a storage path like /local or /usb" in lines


def test_driver_doc_examples_are_valid_configs() -> None:
    doc = (REPO / "docs" / "drivers.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.DOTALL) if "prusalink" in b]
    assert blocks
    for block in blocks:
        config = config_from_dict(tomllib.loads(block))
        assert any(p.driver == "prusalink" for p in config.printers)


def test_the_stand_in_names_its_document() -> None:
    from printfarmd.drivers import prusalink_sim

    doc = prusalink_sim.__doc__ or ""
    assert "prusa3d/Prusa-Link-Web" in doc and "1.0.0-draft" in doc
    drivers = (REPO / "docs" / "drivers.md").read_text(encoding="utf-8")
    assert "prusa3d/Prusa-Link-Web" in drivers and "1.0.0-draft" in drivers


# ------------------------------------------------------------------ through the daemon


def prusa_printer(pid: str, printer: PrusaLinkSim) -> PrinterConfig:
    return PrinterConfig(
        id=pid,
        driver="prusalink",
        materials=("PLA",),
        prusalink=msgspec.structs.replace(FAST, url=printer.url),
    )


async def api(farm: LiveFarm, path: str) -> Any:
    response = await farm.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def job_state(farm: LiveFarm, job_id: str) -> str:
    return str((await api(farm, f"/api/jobs/{job_id}"))["state"])


async def printer_state(farm: LiveFarm, pid: str) -> str:
    return str((await api(farm, f"/api/printers/{pid}"))["state"])


async def submit(farm: LiveFarm) -> str:
    response = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
    assert response.status_code == 201, response.text
    return str(response.json()["jobs"][0]["id"])


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    with trio.fail_after(within):
        while not await predicate():  # noqa: ASYNC110 - polling the daemon over HTTP
            await trio.sleep(0.05)


async def test_farm_prints_a_job_to_post_process_and_cancels_another(tmp_path: Path) -> None:
    async with (
        sim() as printer,
        live_farm(make_config(tmp_path, (prusa_printer("pl1", printer),))) as farm,
    ):
        if True:
            job = await submit(farm)

            async def finished() -> bool:
                return await job_state(farm, job) == "post_process"

            await until(finished)

            async def awaiting_clear() -> bool:
                return await printer_state(farm, "pl1") == "awaiting_clear"

            await until(awaiting_clear)
            assert printer.printer.printed == [f"/local/printfarmd/{job}_benchy_pla.gcode"]
            printer.printer.time_scale = 60.0 / BENCHY_SECONDS  # the next print takes long
            response = await farm.client.post("/api/printers/pl1/clear")
            assert response.status_code == 200, response.text
            long = await submit(farm)

            async def printing() -> bool:
                here = await api(farm, "/api/printers/pl1")
                return here["current_job"] == long and printer.printer.state == "PRINTING"

            await until(printing)
            response = await farm.client.post(f"/api/jobs/{long}/cancel")
            assert response.status_code == 200, response.text
            assert await job_state(farm, long) == "cancelled"

            async def stopped() -> bool:
                return printer.printer.state == "STOPPED"

            await until(stopped)
            events = await farm.running.services.store.events_since(
                0, job_id=long, types=["job.transition"]
            )
            assert "failed" not in [e.to_state for e in events]


@pytest.mark.parametrize("returns", ["printing", "idle"])
async def test_printer_lost_mid_print_then_back(tmp_path: Path, returns: str) -> None:
    async with sim(print_seconds=60.0) as printer:
        config = make_config(tmp_path, (prusa_printer("pl1", printer),), retry_backoff=(3600.0,))
        async with live_farm(config) as farm:
            job = await submit(farm)

            async def confirmed() -> bool:
                here = await api(farm, "/api/printers/pl1")
                return here["current_job"] == job and here["state"] == "printing"

            await until(confirmed)
            await until(lambda: _true(printer.printer.state == "PRINTING"))
            printer.set_network(NetworkMode.RESET)

            async def offline() -> bool:
                return await printer_state(farm, "pl1") == "offline"

            await until(offline)
            # While the printer is away nothing is decided about its job.
            assert await job_state(farm, job) == "printing"
            if returns == "idle":
                printer.reboot()
            printer.set_network(NetworkMode.OK)

            async def back() -> bool:
                return await printer_state(farm, "pl1") != "offline"

            await until(back)
            store = farm.running.services.store
            if returns == "printing":
                assert await job_state(farm, job) == "printing"
                printer.finish()

                async def finished() -> bool:
                    return await job_state(farm, job) == "post_process"

                await until(finished)
            else:

                async def failed() -> bool:
                    return await job_state(farm, job) == "failed"

                await until(failed)
                detail = await api(farm, f"/api/jobs/{job}")
                assert "went idle without finishing" in detail["last_error"]
            events = await store.events_since(0, job_id=job, types=["job.transition"])
            assert [e.to_state for e in events].count("failed") == (returns == "idle")
            assert printer.printer.printed == [f"/local/printfarmd/{job}_benchy_pla.gcode"]


async def _true(value: bool) -> bool:
    return value
