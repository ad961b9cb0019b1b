"""Pure parsing of PrusaLink's answers, with payloads in the shapes of Prusa's published
OpenAPI document (``tests/data/prusalink/``: recorded from the stand-in, which follows the
document, plus the whole-path job answer PrusaLink for a Raspberry Pi gives)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from printfarmd.drivers import prusalink_status as pl
from printfarmd.drivers.base import JobFailed, JobFinished
from printfarmd.models import PrinterState

DATA = Path(__file__).parent / "data" / "prusalink"
JOB = "0123456789ABCDEF"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


STATES = {
    "status_idle.json": (pl.PrusaState.IDLE, PrinterState.IDLE, None),
    "status_ready.json": (pl.PrusaState.READY, PrinterState.IDLE, None),
    "status_busy.json": (pl.PrusaState.BUSY, PrinterState.PRINTING, None),
    "status_printing.json": (pl.PrusaState.PRINTING, PrinterState.PRINTING, None),
    "status_paused.json": (pl.PrusaState.PAUSED, PrinterState.PAUSED, None),
    "status_attention.json": (pl.PrusaState.ATTENTION, PrinterState.PAUSED, None),
    "status_finished.json": (pl.PrusaState.FINISHED, PrinterState.IDLE, JobFinished),
    "status_stopped.json": (pl.PrusaState.STOPPED, PrinterState.IDLE, JobFailed),
    "status_error.json": (pl.PrusaState.ERROR, PrinterState.ERROR, JobFailed),
    "status_printer_not_ok.json": (pl.PrusaState.IDLE, PrinterState.OFFLINE, None),
    "status_unknown_state.json": (pl.PrusaState.UNKNOWN, PrinterState.OFFLINE, None),
}


@pytest.mark.parametrize(("name", "expected"), STATES.items())
def test_every_state_maps_onto_the_farm(name: str, expected: tuple[Any, Any, Any]) -> None:
    status, problems = pl.parse_status(load(name))
    state, farm, ends = expected
    assert status.state is state
    assert pl.farm_state(status) is farm
    assert problems == ([] if state is not pl.PrusaState.UNKNOWN else [problems[0]])
    report = pl.status_report("p1", status, JOB)
    assert report.state is farm
    if farm in (PrinterState.PRINTING, PrinterState.PAUSED):
        assert report.job_id == JOB
    else:
        assert (report.job_id, report.progress) == (None, 0.0)  # idle after a print: 0
    done = pl.outcome("p1", status, JOB)
    assert (type(done) if done is not None else None) is ends
    assert pl.outcome("p1", status, None) is None


def test_reasons_and_messages() -> None:
    stopped, _ = pl.parse_status(load("status_stopped.json"))
    assert pl.outcome("p1", stopped, JOB) == JobFailed("p1", JOB, "print stopped on the printer")
    error, _ = pl.parse_status(load("status_error.json"))
    assert pl.outcome("p1", error, JOB) == JobFailed("p1", JOB, "printer error: Thermal runaway")
    attention, _ = pl.parse_status(load("status_attention.json"))
    report = pl.status_report("p1", attention, JOB)
    assert report.message == "the printer needs attention: Filament runout"
    lost, _ = pl.parse_status(load("status_printer_not_ok.json"))
    assert pl.status_report("p1", lost, None).message == (
        "PrusaLink has no link to the printer: Printer not responding"
    )
    without_job = pl.PrusaStatus(state=pl.PrusaState.ATTENTION)
    assert pl.farm_state(without_job) is PrinterState.ERROR


def test_job_answers_name_the_farm_job_in_both_path_styles() -> None:
    buddy = pl.parse_job(load("job_printing.json"))
    assert buddy.path == f"/local/printfarmd/{JOB}_cube.gcode"
    assert (buddy.number, buddy.job_id) == (101, JOB)
    pi = pl.parse_job(load("job_pi_full_path.json"))
    assert pi.path == f"/PrusaLink gcodes/printfarmd/{JOB}_cube.gcode"
    assert pi.job_id == JOB
    short_only = load("job_printing.json")
    short_only["file"] = {"name": "012345~1.GCO", "path": "/usb/printfarmd"}
    assert pl.parse_job(short_only).job_id is None  # an 8.3 name cannot name the job
    with pytest.raises(pl.PayloadError, match="without an id"):
        pl.parse_job({"file": {}})


def test_storage_folder_and_names() -> None:
    storages = pl.parse_storage(load("storage.json"))
    assert [s.path for s in storages] == ["/local", "/sdcard"]
    assert pl.choose_storage(storages) == "/local"
    assert pl.choose_storage([pl.Storage("/sdcard", True, True)]) is None
    assert pl.folder_names(load("folder.json")) == [f"{JOB}_cube.gcode"]
    with pytest.raises(pl.PayloadError):
        pl.parse_storage({"storage": []})
    with pytest.raises(pl.PayloadError):
        pl.folder_names({"name": "x"})
    assert pl.upload_name(JOB, "parts/Big part.bgcode") == f"printfarmd/{JOB}_Big_part.bgcode"
    assert pl.upload_name(JOB, "x.stl") == f"printfarmd/{JOB}_x.stl.gcode"
    assert pl.job_id_of(f"/usb/printfarmd/{JOB}_a.gcode") == JOB
    assert pl.job_id_of("benchy.gcode") is None


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("bad_*.json")))
def test_malformed_answers_raise_payload_error(name: str) -> None:
    with pytest.raises(pl.PayloadError):
        pl.parse_status(load(name))


def test_odd_fields_are_skipped_and_named() -> None:
    status, problems = pl.parse_status(load("status_odd_fields.json"))
    assert status.state is pl.PrusaState.PRINTING
    assert (status.job_number, status.progress, status.time_printing) == (None, None, 12.0)
    assert set(problems) == {
        "printer.status_printer: unusable value 'fine'",
        "job.id: unusable value '101'",
        "job.progress: unusable value 'half'",
        "job.time_remaining: unusable value -5",
    }


def test_a_print_the_farm_did_not_start_is_printing_without_a_job() -> None:
    status, _ = pl.parse_status(load("status_printing.json"))
    report = pl.status_report("p1", status, None)
    assert (report.state, report.job_id) == (PrinterState.PRINTING, None)
    foreign = load("job_printing.json")
    foreign["file"] = {"name": "BENCHY~1.GCO", "display_name": "benchy.gcode", "path": "/usb"}
    assert pl.parse_job(foreign).job_id is None
