"""The Bambu Lab LAN-mode driver against the stand-in (tests/bambu_sim.py) over real
sockets: a real mosquitto with TLS and a self-signed certificate, real implicit FTPS
(pyftpdlib), the simulated firmware on the broker. Timings are the driver's knobs set
short; nothing asserts a duration."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import msgspec
import orjson
import pytest
import trio

from printfarmd.config import BambuOptions, PrinterConfig, config_from_dict
from printfarmd.drivers import bambu_protocol as proto
from printfarmd.drivers import make_driver
from printfarmd.drivers.bambu import BambuDriver
from printfarmd.drivers.bambu_tls import fingerprint
from printfarmd.drivers.base import (
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    MaterialsReport,
    PrinterBusy,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.errors import ConfigError
from printfarmd.models import PrinterState
from tests.bambu_sim import (
    ACCESS_CODE,
    SERIAL,
    BambuBroker,
    FtpsServer,
    SimBambuPrinter,
    open_bambu,
)
from tests.conftest import DEMO_GCODES, REPO, LiveFarm, live_farm, make_config, sim_printer

JOB = "0123456789ABCDEF"
OTHER = "FEDCBA9876543210"
GCODE = str(DEMO_GCODES / "benchy_pla.gcode")
Env = tuple[BambuBroker, FtpsServer, SimBambuPrinter]


async def wait_until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polling state owned by other tasks
            await trio.sleep(0.02)


def options(broker: BambuBroker, ftps: FtpsServer, state: Path, **changes: Any) -> BambuOptions:
    base = BambuOptions(
        host="127.0.0.1",
        serial=SERIAL,
        access_code=ACCESS_CODE,
        mqtt_port=broker.tls_port,
        ftps_port=ftps.port,
        timeout=5.0,
        upload_timeout=30.0,
        start_timeout=20.0,
        keepalive=5,
        backoff_initial=0.1,
        backoff_max=0.5,
        state_dir=str(state),
    )
    return msgspec.structs.replace(base, **changes)


@attrs.define
class Link:
    driver: BambuDriver
    events: list[DriverEvent]

    def reports(self) -> list[StatusReport]:
        return [e for e in self.events if isinstance(e, StatusReport)]

    def last_state(self) -> PrinterState | None:
        reports = self.reports()
        return reports[-1].state if reports else None

    def outcomes(self) -> list[DriverEvent]:
        return [e for e in self.events if isinstance(e, JobFinished | JobFailed)]


@asynccontextmanager
async def driven(opts: BambuOptions, pid: str = "b1") -> AsyncIterator[Link]:
    driver = BambuDriver(pid, opts)
    send, receive = trio.open_memory_channel[DriverEvent](10_000)
    link = Link(driver, [])

    async def collect() -> None:
        async for event in receive:
            link.events.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await nursery.start(driver.run, send)
        # run() reported before it returned; let the collector catch up.
        await wait_until(lambda: bool(link.reports()))
        yield link
        nursery.cancel_scope.cancel()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_bambu(
        tmp_path / "printer", print_time=3.0, prepare_time=0.3, report_interval=0.1
    ) as parts:
        yield parts


def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bambu"


# ------------------------------------------------------------------ a print's life


async def test_print_to_completion_reports_once_and_never_prints_twice(
    env: Env, tmp_path: Path
) -> None:
    broker, ftps, sim = env
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        assert link.last_state() is PrinterState.IDLE
        spec = JobSpec(JOB, "benchy_pla.gcode", GCODE)
        await link.driver.start_job(spec)
        name = proto.upload_name(JOB, "benchy_pla.gcode")
        assert (
            await trio.Path(sim.sdcard / name).read_bytes() == await trio.Path(GCODE).read_bytes()
        )
        gcode_file = [r["print"] for r in sim.requests if r.get("print", {}).get("command")]
        assert gcode_file[0]["command"] == "gcode_file"
        assert gcode_file[0]["param"] == f"/sdcard/{name}"
        await link.driver.start_job(spec)  # a repeated start: not started again
        await wait_until(lambda: JobFinished("b1", JOB) in link.events)
        printing = [r for r in link.reports() if r.state is PrinterState.PRINTING]
        assert printing and all(r.job_id == JOB for r in printing)
        progress = [r.progress for r in printing]
        assert progress == sorted(progress) and progress[-1] > 50
        assert any(r.remaining is not None and r.remaining > 0 for r in printing)
        # It says FINISH until the next print, a full report again and again: once only.
        for _ in range(3):
            sim.push_full()
        await wait_until(lambda: len(link.reports()) > len(printing) + 3)
        assert link.outcomes() == [JobFinished("b1", JOB)]
        after = [e for e in link.events[link.events.index(JobFinished("b1", JOB)) :]]
        idle = [e for e in after if isinstance(e, StatusReport)]
        assert idle and all(r.state is PrinterState.IDLE and r.progress == 0 for r in idle)
        # Started again once it FINISHed (an answer lost, a restart): reported, not reprinted.
        await link.driver.start_job(spec)
        await wait_until(lambda: link.outcomes().count(JobFinished("b1", JOB)) == 2)
        assert sim.started == [name]
        assert (await link.driver.status()).state is PrinterState.IDLE


async def test_a_3mf_project_prints_with_project_file(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    project = tmp_path / "plate.3mf"
    project.write_bytes(b"PK\x03\x04 a 3MF is a zip")
    async with driven(options(broker, ftps, state_dir(tmp_path), use_ams=True)) as link:
        await link.driver.start_job(JobSpec(JOB, "parts/plate.3mf", str(project)))
        request = next(r["print"] for r in sim.requests if "print" in r)
        assert request["command"] == "project_file"
        assert request["url"] == f"ftp:///{proto.upload_name(JOB, 'plate.3mf')}"
        assert request["param"] == "Metadata/plate_1.gcode"
        assert request["subtask_name"] == f"{JOB}--plate" and request["use_ams"] is True
        await wait_until(lambda: JobFinished("b1", JOB) in link.events)


async def test_cancel_pause_resume_and_gcode(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    sim.print_time = 60.0
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        driver = link.driver
        await driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: sim.state is proto.GcodeState.RUNNING)
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        await driver.pause_job(JOB)
        assert sim.state is proto.GcodeState.PAUSE
        await wait_until(lambda: link.last_state() is PrinterState.PAUSED)
        assert (await driver.status()).job_id == JOB
        await driver.pause_job(OTHER)  # not this printer's job: a no-op
        with pytest.raises(PrinterBusy):
            await driver.start_job(JobSpec(OTHER, "cube.gcode", GCODE))
        await driver.resume_job(JOB)
        assert sim.state is proto.GcodeState.RUNNING
        await driver.run_gcode("M140 S0\nG28")
        assert sim.gcode == ["M140 S0\nG28\n"]
        await driver.cancel_job(JOB)
        assert sim.state is proto.GcodeState.FAILED
        assert sim.print_error == proto.PRINT_CANCELLED
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        sim.push_full()
        await trio.sleep(0.5)
        assert link.outcomes() == []  # cancelled by the farm: not a printer failure
        assert await driver.snapshot() is None


async def test_a_print_that_fails_on_the_printer_fails_once_with_its_codes(
    env: Env, tmp_path: Path
) -> None:
    broker, ftps, sim = env
    sim.print_time = 60.0
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: sim.state is proto.GcodeState.RUNNING)
        # A nozzle clog (as the printer's HMS names it): the print stops, FAILED.
        sim.fail(0x0300_8003, [{"attr": 0x0300_0100, "code": 0x0001_0007}])
        await wait_until(lambda: bool(link.outcomes()))
        sim.push_full()
        await trio.sleep(0.5)
        [failed] = link.outcomes()
        assert isinstance(failed, JobFailed) and failed.job_id == JOB
        assert "0300_8003" in failed.reason and "HMS 0300_0100_0001_0007 (fatal)" in failed.reason
        # A fatal HMS message up: the printer needs someone before the next job.
        assert link.last_state() is PrinterState.ERROR


async def test_a_retry_on_the_same_printer_is_not_failed_by_the_last_attempt(
    env: Env, tmp_path: Path
) -> None:
    broker, ftps, sim = env
    sim.print_time = 60.0
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        spec = JobSpec(JOB, "benchy_pla.gcode", GCODE)
        await link.driver.start_job(spec)
        await wait_until(lambda: sim.state is proto.GcodeState.RUNNING)
        sim.fail(0x0300_8003)
        await wait_until(lambda: bool(link.outcomes()))
        # The farm retries the job here; the printer still says FAILED for it until
        # the new attempt shows, and its answer to the start comes first.
        sim.print_time = 2.0
        await link.driver.start_job(spec)
        await wait_until(lambda: JobFinished("b1", JOB) in link.events)
        outcomes = link.outcomes()
        assert len(outcomes) == 2 and isinstance(outcomes[0], JobFailed)
        assert outcomes[1] == JobFinished("b1", JOB)


async def test_printer_lost_and_back(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    sim.print_time = 120.0
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        broker.kill()
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        with pytest.raises(PrinterUnreachable):
            await link.driver.status()
        broker.start()
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        assert link.reports()[-1].job_id == JOB  # still printing it: it stays printing
        broker.kill()
        await wait_until(lambda: link.last_state() is PrinterState.OFFLINE)
        sim.reboot()
        broker.start()
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        # Back idle without the job: reported as it is; no outcome is invented (the farm
        # fails the job once, see the daemon test below).
        assert link.outcomes() == []


async def test_a_full_report_is_asked_for_again_until_one_arrives(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    sim.ignore_pushalls = 2  # the first requests are lost
    async with driven(options(broker, ftps, state_dir(tmp_path), timeout=0.5)) as link:
        # Nothing known yet: offline, nothing decided; idle once a full report came.
        assert link.reports()[0].state is PrinterState.OFFLINE
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        asked = [r for r in sim.requests if r.get("pushing", {}).get("command") == "pushall"]
        assert len(asked) == 3
        await trio.sleep(2.0)  # once it has one, not again before pushall_interval
        asked = [r for r in sim.requests if r.get("pushing", {}).get("command") == "pushall"]
        assert len(asked) == 3


async def test_malformed_payloads_are_logged_and_ignored(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="printfarmd.drivers.bambu")
    broker, ftps, sim = env
    sim.print_time = 60.0
    data = Path(__file__).parent / "data" / "bambu"
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: sim.state is proto.GcodeState.RUNNING)
        for path in sorted(data.glob("bad_*")):
            sim.inject(path.read_bytes())
        await wait_until(lambda: link.driver.rejected >= 4)
        assert "bambu report ignored" in [r.getMessage() for r in caplog.records]
        seen = len(link.events)
        await wait_until(lambda: len(link.events) > seen + 3)
        assert link.last_state() is PrinterState.PRINTING  # the link and the print go on
        assert link.reports()[-1].job_id == JOB
        sim.finish()
        await wait_until(lambda: JobFinished("b1", JOB) in link.events)


async def test_ams_trays_become_a_materials_report(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    sim.set_ams(
        [("PLA", "000000FF"), ("", ""), ("PETG", "DFE2E3FF"), ("pla", "F95959FF")],
        tray_now="2",
        external=("TPU", "FF8000FF"),
    )
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        first = MaterialsReport(
            "b1", ("PETG", "PLA", "PLA", "TPU"), ("#DFE2E3", "#000000", "#F95959", "#FF8000")
        )
        await wait_until(lambda: first in link.events)
        sim.set_ams(
            [("PLA", "000000FF")], tray_now=proto.TRAY_EXTERNAL, external=("TPU", "FF8000FF")
        )
        await wait_until(
            lambda: MaterialsReport("b1", ("TPU", "PLA"), ("#FF8000", "#000000")) in link.events
        )
        reports = [e for e in link.events if isinstance(e, MaterialsReport)]
        assert len(reports) == 2  # sent when it changes, not with every status


async def test_forget_job_deletes_the_upload_from_the_sd_card(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    async with driven(options(broker, ftps, state_dir(tmp_path))) as link:
        await link.driver.forget_job(JOB)  # nothing uploaded yet: fine
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: JobFinished("b1", JOB) in link.events)
        sim.print_time = 60.0
        await link.driver.start_job(JobSpec(OTHER, "benchy_pla.gcode", GCODE))
        folder = sim.sdcard / proto.UPLOAD_DIR
        assert {p.name for p in folder.iterdir()} == {
            f"{JOB}--benchy_pla.gcode",
            f"{OTHER}--benchy_pla.gcode",
        }
        await link.driver.forget_job(JOB)
        assert {p.name for p in folder.iterdir()} == {f"{OTHER}--benchy_pla.gcode"}
        await link.driver.forget_job(JOB)  # already gone: fine
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        await link.driver.forget_job(OTHER)  # on the plate now: kept
        assert {p.name for p in folder.iterdir()} == {f"{OTHER}--benchy_pla.gcode"}
        await link.driver.cancel_job(OTHER)
        await wait_until(lambda: link.last_state() is PrinterState.IDLE)
        ftps.stop()
        with pytest.raises(PrinterUnreachable):
            await link.driver.forget_job(OTHER)


# ------------------------------------------------------------------ refusals


async def test_a_wrong_access_code_is_a_clear_error_and_affects_nothing_else(
    env: Env, tmp_path: Path
) -> None:
    broker, ftps, sim = env
    bad = options(broker, ftps, tmp_path / "bad-pins", access_code="00000000")
    async with (
        driven(bad, "wrong") as wrong,
        driven(options(broker, ftps, state_dir(tmp_path))) as good,
    ):
        # run() returned: the first connection was refused and said so.
        assert wrong.last_state() is PrinterState.OFFLINE
        message = wrong.reports()[-1].message
        assert "access code refused by the printer" in message
        assert ACCESS_CODE not in message and "00000000" not in message
        with pytest.raises(PrinterUnreachable, match="access code refused"):
            await wrong.driver.start_job(JobSpec(OTHER, "benchy_pla.gcode", GCODE))
        # The other driver (and the printer) carry on.
        assert good.last_state() is PrinterState.IDLE
        await good.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: JobFinished("b1", JOB) in good.events)
        assert all(r.state is PrinterState.OFFLINE for r in wrong.reports())
        assert sim.started == [proto.upload_name(JOB, "benchy_pla.gcode")]


async def test_a_changed_certificate_is_refused(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    pins = state_dir(tmp_path)
    async with driven(options(broker, ftps, pins)) as link:
        assert link.last_state() is PrinterState.IDLE
        pinned = orjson.loads((pins / "b1.json").read_bytes())
        assert pinned["mqtt"] == fingerprint(broker.der) and pinned["serial"] == SERIAL
        # Someone else answers at the printer's address with another certificate.
        broker.kill()
        ftps.stop()
        new = broker.new_certificate()
        broker.start()
        ftps.start()
        await wait_until(lambda: "certificate changed" in link.reports()[-1].message)
        assert link.last_state() is PrinterState.OFFLINE
        await trio.sleep(1.0)  # reconnect attempts go on, and are refused every time
        assert link.last_state() is PrinterState.OFFLINE
        with pytest.raises(PrinterUnreachable, match="certificate changed"):
            await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        assert orjson.loads((pins / "b1.json").read_bytes()) == pinned  # never re-pinned
        assert sim.started == []
    # FTPS pins too: a job cannot be uploaded to an impostor.
    assert orjson.loads((pins / "b1.json").read_bytes()).get("ftps") in (None, pinned.get("ftps"))
    # The operator confirms the new certificate: ca_fingerprint overrides the pins.
    colons = ":".join(fingerprint(new)[i : i + 2] for i in range(0, 64, 2)).lower()
    async with driven(options(broker, ftps, pins, ca_fingerprint=colons)) as link:
        assert link.last_state() is PrinterState.IDLE
        await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        await wait_until(lambda: JobFinished("b1", JOB) in link.events)
    # A configured fingerprint that does not match is refused on first contact too.
    async with driven(options(broker, ftps, tmp_path / "p2", ca_fingerprint="ab" * 32)) as link:
        assert link.last_state() is PrinterState.OFFLINE
        assert "certificate changed" in link.reports()[-1].message


async def test_an_ftps_server_with_another_certificate_is_refused(env: Env, tmp_path: Path) -> None:
    broker, ftps, sim = env
    pins = state_dir(tmp_path)
    async with driven(options(broker, ftps, pins)) as link:
        await link.driver.forget_job(JOB)  # first FTPS contact: pinned
        ftps.stop()
        other = tmp_path / "other-tls"
        from tests.bambu_sim import make_certificate

        make_certificate(other, SERIAL)
        impostor = FtpsServer(sim.sdcard, other)
        impostor.port = ftps.port
        impostor.start()
        try:
            with pytest.raises(PrinterUnreachable, match="ftps certificate changed"):
                await link.driver.start_job(JobSpec(JOB, "benchy_pla.gcode", GCODE))
        finally:
            impostor.stop()
        assert not (sim.sdcard / proto.UPLOAD_DIR / f"{JOB}--benchy_pla.gcode").exists()


# ------------------------------------------------------------------ config


def test_config_knows_the_driver_and_checks_its_options(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "storage": {"data_dir": "farm-data"},
            "printers": [
                {
                    "id": "x1c",
                    "driver": "bambu",
                    "bambu": {"host": "192.168.1.50", "serial": SERIAL, "access_code": "1234"},
                }
            ],
        },
        base_dir=tmp_path,
    )
    printer = config.printers[0]
    assert printer.bambu.mqtt_port == 8883 and printer.bambu.ftps_port == 990
    assert printer.bambu.state_dir == str((tmp_path / "farm-data" / "bambu").resolve())
    assert isinstance(make_driver(printer), BambuDriver)
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "printers": [
                    {
                        "id": "b",
                        "driver": "bambu",
                        "bambu": {
                            "serial": "../x",
                            "ca_fingerprint": "nope",
                            "mqtt_port": 0,
                            "timeout": 0,
                        },
                    }
                ]
            }
        )
    lines = str(err.value).splitlines()
    assert 'printers[0].bambu.host: required with driver = "bambu"' in lines
    assert any(
        line.startswith("printers[0].bambu.serial: expected the printer's serial") for line in lines
    )
    assert 'printers[0].bambu.access_code: required with driver = "bambu"' in lines
    assert any(
        line.startswith("printers[0].bambu.ca_fingerprint: expected a SHA-256") for line in lines
    )
    assert "printers[0].bambu.mqtt_port: must be between 1 and 65535, got 0" in lines
    assert "printers[0].bambu.timeout: must be > 0" in lines
    with pytest.raises(ConfigError, match="state_dir"):
        config_from_dict({"printers": [{"id": "b", "bambu": {"state_dir": "/tmp"}}]})


def test_driver_doc_examples_are_valid_configs() -> None:
    import re

    doc = (REPO / "docs" / "drivers.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.DOTALL) if '"bambu"' in b]
    assert blocks
    for block in blocks:
        config = config_from_dict(tomllib.loads(block))
        assert any(p.driver == "bambu" for p in config.printers)


# ------------------------------------------------------------------ through the daemon


def bambu_printer(pid: str, broker: BambuBroker, ftps: FtpsServer, tmp: Path) -> PrinterConfig:
    return PrinterConfig(
        id=pid, driver="bambu", materials=("PLA",), bambu=options(broker, ftps, tmp / "pins")
    )


async def api(farm: LiveFarm, path: str) -> Any:
    response = await farm.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def job_state(farm: LiveFarm, job: str) -> str:
    return str((await api(farm, f"/api/jobs/{job}"))["state"])


async def printer_state(farm: LiveFarm, pid: str) -> str:
    return str((await api(farm, f"/api/printers/{pid}"))["state"])


@pytest.mark.parametrize("returns", ["printing", "idle"])
async def test_printer_lost_and_back_mid_print_through_the_farm(
    env: Env, tmp_path: Path, returns: str
) -> None:
    broker, ftps, sim = env
    sim.print_time = 200.0  # 1 % in 2 s: long enough not to end during the outage
    config = make_config(
        tmp_path, (bambu_printer("bb", broker, ftps, tmp_path),), retry_backoff=(3600.0,)
    )
    async with live_farm(config) as farm:
        response = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
        assert response.status_code == 201, response.text
        job = response.json()["jobs"][0]["id"]
        await wait_until(lambda: sim.state is proto.GcodeState.RUNNING)

        async def reported() -> bool:
            printer = await api(farm, "/api/printers/bb")
            return bool(printer["current_job"] == job and printer["progress"] > 0)

        await farm.wait_for(reported)
        broker.kill()
        await farm.wait_for(lambda: _is(printer_state(farm, "bb"), "offline"))
        assert await job_state(farm, job) == "printing"  # unreachable is no reason to give up
        if returns == "idle":
            sim.reboot()
        broker.start()
        await farm.wait_for(lambda: _not_offline(farm))
        store = farm.running.services.store
        if returns == "printing":
            await trio.sleep(1.0)
            assert await job_state(farm, job) == "printing"
            assert await printer_state(farm, "bb") == "printing"
            sim.finish()
            await farm.wait_for(lambda: _is(job_state(farm, job), "post_process"))
        else:
            await farm.wait_for(lambda: _is(job_state(farm, job), "failed"))
            await trio.sleep(1.0)  # the printer keeps saying idle: the job fails once
            events = await store.events_since(0, job_id=job, types=["job.transition"])
            failures = [e for e in events if e.to_state == "failed"]
            assert len(failures) == 1
            assert "went idle without finishing" in (failures[0].reason or "")
        assert len(sim.started) == 1


async def _not_offline(farm: LiveFarm) -> bool:
    return await printer_state(farm, "bb") != "offline"


async def test_a_wrong_access_code_leaves_the_rest_of_the_farm_printing(
    env: Env, tmp_path: Path
) -> None:
    broker, ftps, sim = env
    wrong = msgspec.structs.replace(
        bambu_printer("bad", broker, ftps, tmp_path),
        bambu=options(broker, ftps, tmp_path / "pins", access_code="99999999"),
    )
    config = make_config(tmp_path, (wrong, sim_printer("s1", speed=3000.0)))
    async with live_farm(config) as farm:
        # "offline" is also the state before the first connection attempt ends: wait for
        # the refusal itself (under load the first poll could see the state without it).

        async def refused() -> bool:
            printer = await api(farm, "/api/printers/bad")
            return bool(
                printer["state"] == "offline" and "access code refused" in printer["message"]
            )

        await farm.wait_for(refused)
        response = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
        job = response.json()["jobs"][0]["id"]
        await farm.wait_for(lambda: _is(job_state(farm, job), "post_process"))
        assert (await api(farm, f"/api/jobs/{job}"))["printer_id"] == "s1"
        assert sim.started == []
