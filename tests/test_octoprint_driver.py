"""The OctoPrint driver against a real OctoPrint (PyPI) with its Virtual Printer.

One OctoPrint serves the whole module (``octo``); each test starts from a connected,
idle printer with an empty ``printfarmd/`` folder. Prints are ``G4`` dwells, so their
length is known; the driver's timings are set short (``FAST``). Nothing here waits for
a fixed time to let something happen: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import logging
import re
import signal
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio

from printfarmd.config import OctoPrintOptions, PrinterConfig, config_from_dict
from printfarmd.drivers import make_driver
from printfarmd.drivers.base import (
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    PrinterBusy,
    StatusReport,
)
from printfarmd.drivers.octoprint import OctoPrintDriver
from printfarmd.drivers.prusalink_sim import NetworkMode, open_relay
from printfarmd.errors import ConfigError
from printfarmd.models import PrinterState
from tests.conftest import REPO, LiveFarm, live_farm, make_config
from tests.keyleak import register_key
from tests.octoprint_real import (
    OCTOPRINT_VERSION,
    RealOctoPrint,
    dwell_gcode,
    start_octoprint,
)

FAST = OctoPrintOptions(
    api_key="set-per-test",
    timeout=2.0,
    heartbeat=0.3,
    offline_after=2,
    backoff_initial=0.1,
    backoff_max=0.5,
    upload_timeout=10.0,
)
JOB = "0123456789ABCDEF"
OTHER = "FEDCBA9876543210"


@pytest.fixture(scope="module")
def octo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealOctoPrint]:
    server = start_octoprint(tmp_path_factory.mktemp("octoprint"))
    register_key(server.api_key)  # it must never show up in anything the farm says
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh(octo: RealOctoPrint) -> RealOctoPrint:
    if octo.proc is None or octo.proc.poll() is not None:
        octo.start()
    octo.reset()
    return octo


@pytest.fixture
def gcode(tmp_path: Path) -> Callable[[float, str], JobSpec]:
    def make(seconds: float, job_id: str = JOB) -> JobSpec:
        path = tmp_path / f"dwell_{seconds:g}.gcode"
        path.write_bytes(dwell_gcode(seconds))
        return JobSpec(job_id, f"parts/{path.name}", str(path))

    return make


async def wait_until(predicate: Callable[[], bool], within: float = 30.0) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polling state owned by other tasks
            await trio.sleep(0.05)


async def wait_for(check: Callable[[], Any], within: float = 30.0) -> None:
    """Poll a blocking check of the real OctoPrint (in a thread) until it is truthy."""
    with trio.fail_after(within):
        while not await trio.to_thread.run_sync(check):  # noqa: ASYNC110 - another process
            await trio.sleep(0.1)


@attrs.define
class Link:
    driver: OctoPrintDriver
    events: list[DriverEvent]

    def reports(self) -> list[StatusReport]:
        return [e for e in self.events if isinstance(e, StatusReport)]

    def last(self) -> StatusReport | None:
        reports = self.reports()
        return reports[-1] if reports else None

    def last_state(self) -> PrinterState | None:
        last = self.last()
        return last.state if last else None

    def outcomes(self) -> list[JobFinished | JobFailed]:
        return [e for e in self.events if isinstance(e, JobFinished | JobFailed)]


@asynccontextmanager
async def driven(url: str, api_key: str, **changes: Any) -> AsyncIterator[Link]:
    driver = OctoPrintDriver(
        "o1", msgspec.structs.replace(FAST, url=url, api_key=api_key, **changes)
    )
    send, receive = trio.open_memory_channel[DriverEvent](10000)
    link = Link(driver, [])

    async def collect() -> None:
        async for event in receive:
            link.events.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await nursery.start(driver.run, send)
        yield link
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ driver on its own


async def test_prints_to_the_end_once_and_never_prints_a_completed_job_again(
    fresh: RealOctoPrint, gcode: Callable[[float], JobSpec]
) -> None:
    async with driven(fresh.url, fresh.api_key) as link:
        assert link.last_state() is PrinterState.IDLE
        await wait_until(lambda: link.driver.push_up)
        spec = gcode(2.0)
        await link.driver.start_job(spec)
        name = f"printfarmd/{JOB}_dwell_2.gcode"
        assert fresh.farm_files() == [name]
        # Started again (an answer lost): OctoPrint is not asked to print it twice.
        await link.driver.start_job(spec)
        await wait_until(lambda: bool(link.outcomes()))
        assert link.outcomes() == [JobFinished("o1", JOB)]
        printing = [r for r in link.reports() if r.state is PrinterState.PRINTING]
        assert printing and all(r.job_id == JOB for r in printing)
        progress = [r.progress for r in printing]
        assert progress == sorted(progress) and 0 <= progress[-1] <= 100
        # The outcome comes before the idle report; idle shows no job and progress 0.
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        after = link.reports()[len(printing) :]
        idle = [r for r in after if r.state is PrinterState.IDLE]
        assert idle and all(r.job_id is None and r.progress == 0.0 for r in idle)
        seen = len(link.events)
        await wait_until(lambda: len(link.reports()) > len(printing) + 6)  # polls go on
        assert link.outcomes() == [JobFinished("o1", JOB)]
        assert len(link.events) > seen
        assert (await link.driver.status()).state is PrinterState.IDLE
        record = fresh.file(name)["prints"]
        assert (record["success"], record["failure"]) == (1, 0)
        # The farm asks again for a job the printer shows completed: told, not reprinted.
        await link.driver.start_job(spec)
        await wait_until(lambda: len(link.outcomes()) == 2)
        assert link.outcomes() == [JobFinished("o1", JOB)] * 2
        assert fresh.file(name)["prints"]["success"] == 1
        assert fresh.job_state() == "Operational"
        # forget_job removes what the farm uploaded; a second time, or another id, is fine.
        await link.driver.forget_job(OTHER)
        assert fresh.farm_files() == [name]
        await link.driver.forget_job(JOB)
        assert fresh.farm_files() == []
        await link.driver.forget_job(JOB)


async def test_pause_resume_cancel_gcode_and_busy(
    fresh: RealOctoPrint, gcode: Callable[..., JobSpec]
) -> None:
    async with driven(fresh.url, fresh.api_key) as link:
        driver = link.driver
        await driver.start_job(gcode(60.0))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        await driver.pause_job(OTHER)  # not this printer's job: a no-op
        assert fresh.job_state() == "Printing"
        await driver.pause_job(JOB)
        await wait_for(lambda: fresh.job_state() == "Paused")
        await wait_until(lambda: link.last_state() is PrinterState.PAUSED)
        report = await driver.status()
        assert (report.state, report.job_id) == (PrinterState.PAUSED, JOB)
        await driver.resume_job(JOB)
        await wait_for(lambda: fresh.job_state() == "Printing")
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        with pytest.raises(PrinterBusy, match="busy"):
            await driver.start_job(gcode(1.0, OTHER))
        await driver.cancel_job(JOB)
        await wait_for(lambda: fresh.job_state() == "Operational")
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        # Cancelled by the farm: not reported as a printer failure.
        assert link.outcomes() == []
        await driver.run_gcode("M117 hello from the farm\nG4 P10")
        assert await driver.snapshot() is None  # no camera configured


async def test_a_print_started_on_octoprint_is_printing_without_a_job(
    fresh: RealOctoPrint, gcode: Callable[..., JobSpec]
) -> None:
    async with driven(fresh.url, fresh.api_key) as link:
        with fresh.client() as http:
            response = http.post(
                "/api/files/local",
                files={"file": ("benchy.gcode", dwell_gcode(30.0))},
                data={"select": "true", "print": "true"},
            )
            assert response.status_code == 201, response.text
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        last = link.last()
        assert last is not None and last.job_id is None
        with pytest.raises(PrinterBusy):
            await link.driver.start_job(gcode(1.0))
        await link.driver.cancel_job(JOB)  # not the farm's print: left alone
        assert fresh.job_state() == "Printing"
        await trio.to_thread.run_sync(fresh.cancel)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        assert link.outcomes() == []
    with fresh.client() as http:
        http.delete("/api/files/local/benchy.gcode")


async def test_a_print_cancelled_on_octoprint_fails_once(
    fresh: RealOctoPrint, gcode: Callable[..., JobSpec]
) -> None:
    async with driven(fresh.url, fresh.api_key) as link:
        await wait_until(lambda: link.driver.push_up)
        await link.driver.start_job(gcode(60.0))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        await trio.to_thread.run_sync(fresh.cancel)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        assert link.outcomes() == [JobFailed("o1", JOB, "print cancelled on OctoPrint")]


async def test_emergency_stop_kills_the_print_and_leaves_the_printer_offline(
    fresh: RealOctoPrint, gcode: Callable[..., JobSpec]
) -> None:
    async with driven(fresh.url, fresh.api_key) as link:
        await link.driver.start_job(gcode(60.0))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        await link.driver.emergency_stop()
        await wait_for(lambda: fresh.job_state() == "Offline after error")
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        await wait_until(lambda: bool(link.outcomes()))
        [failed] = link.outcomes()
        assert isinstance(failed, JobFailed) and failed.job_id == JOB
        assert "M112" in failed.reason
        last = link.last()
        assert last is not None and "emergency stop" in last.message
        await link.driver.emergency_stop()  # no printer link: nothing to stop, no error
        await trio.to_thread.run_sync(fresh.connect)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        assert len(link.outcomes()) == 1


async def test_printer_disconnected_from_octoprint_is_offline_then_back(
    fresh: RealOctoPrint, gcode: Callable[..., JobSpec]
) -> None:
    async with driven(fresh.url, fresh.api_key) as link:
        assert link.last_state() is PrinterState.IDLE
        await trio.to_thread.run_sync(fresh.disconnect)
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        last = link.last()
        assert last is not None and last.message.startswith("OctoPrint: Offline")
        assert (await link.driver.status()).state is PrinterState.OFFLINE
        with pytest.raises(PrinterBusy, match="cannot print: OctoPrint is Offline"):
            await link.driver.start_job(gcode(1.0))
        assert fresh.farm_files() == []
        await trio.to_thread.run_sync(fresh.connect)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        assert link.outcomes() == []


async def test_a_wrong_key_is_a_clear_error_and_touches_nothing_else(
    fresh: RealOctoPrint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="printfarmd.drivers.octoprint")
    async with (
        driven(fresh.url, "WRONG-KEY-0123456789") as wrong,
        driven(fresh.url, fresh.api_key) as right,
    ):
        last = wrong.last()
        assert last is not None and last.state is PrinterState.OFFLINE
        assert "OctoPrint refused the API key" in last.message
        assert "HTTP 403" in last.message
        assert "octoprint refused the API key" in [r.getMessage() for r in caplog.records]
        report = await wrong.driver.status()
        assert report.state is PrinterState.OFFLINE and "refused" in report.message
        # The other printer on the same OctoPrint is unaffected.
        assert right.last_state() is PrinterState.IDLE
        await wait_until(lambda: right.driver.push_up)
        await wait_until(lambda: wrong.driver.health.failures >= 3)
        assert {r.state for r in wrong.reports()} == {PrinterState.OFFLINE}
        assert right.last_state() is PrinterState.IDLE


async def test_link_lost_mid_print_keeps_the_job_and_follows_it_after(
    fresh: RealOctoPrint, gcode: Callable[..., JobSpec]
) -> None:
    async with (
        open_relay("127.0.0.1", fresh.port) as relay,
        driven(relay.url, fresh.api_key) as link,
    ):
        await link.driver.start_job(gcode(6.0))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        relay.set_network(NetworkMode.RESET)
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        assert link.outcomes() == []
        assert fresh.job_state() == "Printing"  # OctoPrint prints on meanwhile
        relay.set_network(NetworkMode.OK)
        await wait_until(lambda: link.last_state() is not PrinterState.OFFLINE)
        last = link.last()
        assert last is not None and (last.state, last.job_id) == (PrinterState.PRINTING, JOB)
        await wait_until(lambda: bool(link.outcomes()))
        assert link.outcomes() == [JobFinished("o1", JOB)]


async def test_driver_restarted_after_the_print_ended_reports_it_once(
    fresh: RealOctoPrint, gcode: Callable[..., JobSpec]
) -> None:
    async with driven(fresh.url, fresh.api_key) as link:
        await link.driver.start_job(gcode(1.0))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
    # The print ends while no driver watches.
    await wait_for(lambda: fresh.get("/api/job")["progress"]["completion"] == 100.0)
    async with driven(fresh.url, fresh.api_key) as again:
        await wait_until(lambda: bool(again.outcomes()))
        await wait_until(lambda: len(again.reports()) > 5)
        assert again.outcomes() == [JobFinished("o1", JOB)]
        assert {r.state for r in again.reports()} == {PrinterState.IDLE}


async def test_malformed_frames_and_answers_are_logged_and_ignored(
    fresh: RealOctoPrint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="printfarmd.drivers.octoprint")
    data = Path(__file__).parent / "data" / "octoprint"
    async with driven(fresh.url, fresh.api_key) as link:
        for path in sorted(data.glob("bad_*")):
            await link.driver._on_frame(path.read_text())
        await link.driver._on_frame((data / "current_odd_fields.json").read_text())
        messages = [r.getMessage() for r in caplog.records]
        assert "bad frame from octoprint ignored" in messages
        assert "odd octoprint status field ignored" in messages
        # The link survived and follows the printer as before.
        assert link.driver.health.failures == 0
        seen = len(link.reports())
        await wait_until(lambda: len(link.reports()) > seen + 2)
        assert link.last_state() is PrinterState.IDLE


# ------------------------------------------------------------------ config


def test_config_knows_the_driver_and_checks_its_options() -> None:
    config = config_from_dict(
        {
            "printers": [
                {
                    "id": "mk3",
                    "driver": "octoprint",
                    "octoprint": {"url": "http://octopi.local", "api_key": "k"},
                }
            ]
        }
    )
    assert isinstance(make_driver(config.printers[0]), OctoPrintDriver)
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "printers": [
                    {"id": "o", "driver": "octoprint", "octoprint": {"heartbeat": 0}},
                ]
            }
        )
    lines = str(err.value).splitlines()
    assert 'printers[0].octoprint.url: expected an http:// or https:// URL, got ""' in lines
    assert 'printers[0].octoprint.api_key: required with driver = "octoprint"' in lines
    assert "printers[0].octoprint.heartbeat: must be > 0" in lines


def test_ci_installs_the_octoprint_the_tests_expect() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert f".venv-octoprint/bin/pip install -q 'OctoPrint=={OCTOPRINT_VERSION}'" in ci


def test_driver_doc_examples_are_valid_configs() -> None:
    doc = (REPO / "docs" / "drivers.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.DOTALL) if "octoprint" in b]
    assert blocks
    for block in blocks:
        config = config_from_dict(tomllib.loads(block))
        assert any(p.driver == "octoprint" for p in config.printers)


# ------------------------------------------------------------------ through the daemon


def octoprint_printer(pid: str, url: str, api_key: str) -> PrinterConfig:
    return PrinterConfig(
        id=pid,
        driver="octoprint",
        materials=("PLA",),
        octoprint=msgspec.structs.replace(FAST, url=url, api_key=api_key),
    )


async def api(farm: LiveFarm, path: str) -> Any:
    response = await farm.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def job_state(farm: LiveFarm, job_id: str) -> str:
    return str((await api(farm, f"/api/jobs/{job_id}"))["state"])


async def printer_state(farm: LiveFarm, pid: str) -> str:
    return str((await api(farm, f"/api/printers/{pid}"))["state"])


async def submit(farm: LiveFarm, filename: str) -> str:
    response = await farm.client.post("/api/jobs", json={"filename": filename})
    assert response.status_code == 201, response.text
    return str(response.json()["jobs"][0]["id"])


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 40.0) -> None:
    with trio.fail_after(within):
        while not await predicate():  # noqa: ASYNC110 - polling the daemon over HTTP
            await trio.sleep(0.1)


def farm_with_gcodes(tmp_path: Path, printers: tuple[PrinterConfig, ...], **kw: Any) -> Any:
    config = make_config(tmp_path, printers, **kw)
    (config.gcodes_path / "dwell_short.gcode").write_bytes(dwell_gcode(2.0))
    (config.gcodes_path / "dwell_long.gcode").write_bytes(dwell_gcode(120.0))
    return config


async def test_farm_prints_a_job_to_post_process_and_cancels_another(
    fresh: RealOctoPrint, tmp_path: Path
) -> None:
    config = farm_with_gcodes(tmp_path, (octoprint_printer("op1", fresh.url, fresh.api_key),))
    async with live_farm(config) as farm:
        job = await submit(farm, "dwell_short.gcode")

        async def finished() -> bool:
            return await job_state(farm, job) == "post_process"

        await until(finished)
        # The job ended: the farm removes its upload from OctoPrint (remove_uploads).
        await wait_for(lambda: fresh.farm_files() == [])

        async def awaiting_clear() -> bool:
            return await printer_state(farm, "op1") == "awaiting_clear"

        await until(awaiting_clear)
        response = await farm.client.post("/api/printers/op1/clear")
        assert response.status_code == 200, response.text
        long = await submit(farm, "dwell_long.gcode")

        async def printing_on_octoprint() -> bool:
            here = await api(farm, "/api/printers/op1")
            return here["current_job"] == long and here["progress"] > 0  # OctoPrint says so

        await until(printing_on_octoprint)
        assert fresh.job_state() == "Printing"
        response = await farm.client.post(f"/api/jobs/{long}/cancel")
        assert response.status_code == 200, response.text
        await wait_for(lambda: fresh.job_state() == "Operational")
        assert await job_state(farm, long) == "cancelled"

        async def not_printing() -> bool:
            return await printer_state(farm, "op1") != "printing"

        await until(not_printing)
        events = await farm.running.services.store.events_since(
            0, job_id=long, types=["job.transition"]
        )
        assert [e.to_state for e in events][-1] == "cancelled"
        assert "failed" not in [e.to_state for e in events]


async def test_farm_keeps_the_job_while_octoprint_restarts_then_fails_it_once(
    fresh: RealOctoPrint, tmp_path: Path
) -> None:
    config = farm_with_gcodes(
        tmp_path, (octoprint_printer("op1", fresh.url, fresh.api_key),), retry_backoff=(3600.0,)
    )
    async with live_farm(config) as farm:
        job = await submit(farm, "dwell_long.gcode")

        async def printing() -> bool:
            here = await api(farm, "/api/printers/op1")
            return here["current_job"] == job and here["progress"] > 0  # reported by OctoPrint

        await until(printing)
        assert fresh.job_state() == "Printing"
        # OctoPrint dies mid-print (a crash, the Pi loses power): it cannot say a word.
        await trio.to_thread.run_sync(fresh.stop, signal.SIGKILL)

        async def offline() -> bool:
            return await printer_state(farm, "op1") == "offline"

        await until(offline)
        # While OctoPrint is away nothing is decided about the job.
        assert await job_state(farm, job) == "printing"
        await trio.to_thread.run_sync(fresh.start)

        async def back() -> bool:
            return await printer_state(farm, "op1") not in ("offline", "printing")

        await until(back)

        async def failed() -> bool:
            return await job_state(farm, job) == "failed"

        await until(failed)
        # The driver is connected again and the printer idle; OctoPrint streamed the print
        # itself, so the restart ended it: the job failed once, with the reason kept.
        events = await farm.running.services.store.events_since(
            0, job_id=job, types=["job.transition"]
        )
        assert [e.to_state for e in events].count("failed") == 1
        detail = await api(farm, f"/api/jobs/{job}")
        assert "went idle without finishing" in detail["last_error"]
        assert await printer_state(farm, "op1") == "awaiting_clear"
        assert fresh.job_state() == "Operational"
