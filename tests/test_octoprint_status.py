"""Pure parsing of OctoPrint's answers and push messages, with payloads recorded from a
real OctoPrint 1.11.8 and its Virtual Printer (``tests/data/octoprint/``).

The recorded states are those the Virtual Printer passes through in a print, a pause,
a cancel, a disconnect and an emergency stop; the states it passes too quickly to
record (Starting, Finishing, ...) or cannot reach (Error, Closed) are the recorded
printing answer with OctoPrint's own state text put in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from printfarmd.drivers import octoprint_status as op
from printfarmd.drivers.base import JobFailed, JobFinished
from printfarmd.models import PrinterState

DATA = Path(__file__).parent / "data" / "octoprint"
JOB = "0123456789ABCDEF"
PATH = f"printfarmd/{JOB}_cube.gcode"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


RECORDED_JOBS = {
    "job_operational.json": (op.OctoState.OPERATIONAL, PrinterState.IDLE),
    "job_printing.json": (op.OctoState.PRINTING, PrinterState.PRINTING),
    "job_pausing.json": (op.OctoState.PAUSING, PrinterState.PAUSED),
    "job_paused.json": (op.OctoState.PAUSED, PrinterState.PAUSED),
    "job_resuming.json": (op.OctoState.RESUMING, PrinterState.PRINTING),
    "job_cancelling.json": (op.OctoState.CANCELLING, PrinterState.PRINTING),
    "job_offline.json": (op.OctoState.OFFLINE, PrinterState.OFFLINE),
    "job_detecting_serial_connection.json": (op.OctoState.CONNECTING, PrinterState.OFFLINE),
    "job_offline_after_error.json": (op.OctoState.ERROR, PrinterState.OFFLINE),
}


@pytest.mark.parametrize(("name", "expected"), RECORDED_JOBS.items())
def test_recorded_job_answers_map_onto_farm_states(
    name: str, expected: tuple[op.OctoState, PrinterState]
) -> None:
    status, problems = op.from_job(load(name))
    assert problems == []
    assert (status.state, op.farm_state(status)) == expected
    report = op.status_report("o1", status)
    assert report.state is expected[1]
    if status.busy:
        assert report.job_id == JOB and 0.0 <= report.progress <= 100.0
    else:
        assert (report.job_id, report.progress) == (None, 0.0)


DERIVED_TEXTS = {
    "Starting": (op.OctoState.STARTING, PrinterState.PRINTING),
    "Starting print from SD": (op.OctoState.STARTING, PrinterState.PRINTING),
    "Printing from SD": (op.OctoState.PRINTING, PrinterState.PRINTING),
    "Sending file to SD": (op.OctoState.PRINTING, PrinterState.PRINTING),
    "Finishing": (op.OctoState.FINISHING, PrinterState.PRINTING),
    "Transferring file to SD": (op.OctoState.TRANSFERRING, PrinterState.PRINTING),
    "Opening serial connection": (op.OctoState.CONNECTING, PrinterState.OFFLINE),
    "Connecting": (op.OctoState.CONNECTING, PrinterState.OFFLINE),
    "Closed": (op.OctoState.OFFLINE, PrinterState.OFFLINE),
    "Error": (op.OctoState.ERROR, PrinterState.OFFLINE),
    "Error: Printer halted. kill() called!": (op.OctoState.ERROR, PrinterState.OFFLINE),
}


@pytest.mark.parametrize(("text", "expected"), DERIVED_TEXTS.items())
def test_every_other_state_text_maps_too(
    text: str, expected: tuple[op.OctoState, PrinterState]
) -> None:
    answer = load("job_printing.json") | {"state": text}
    status, _ = op.from_job(answer)
    assert (status.state, op.farm_state(status)) == expected


def test_an_unknown_state_is_offline_and_flags_decide_on_the_socket() -> None:
    status, problems = op.from_job(load("job_printing.json") | {"state": "Mystery"})
    assert status.state is op.OctoState.UNKNOWN
    assert op.farm_state(status) is PrinterState.OFFLINE  # never idle when unknown
    assert problems == ["unknown printer state 'Mystery'"]
    message = load("current_printing.json")
    message["current"]["state"]["text"] = "Druckt"  # a plugin's own text: flags decide
    parsed = op.parse_message(json.dumps(message))
    assert isinstance(parsed, op.Current)
    assert parsed.status.state is op.OctoState.PRINTING


RECORDED_CURRENT = {
    "current_operational.json": PrinterState.IDLE,
    "current_printing.json": PrinterState.PRINTING,
    "current_pausing.json": PrinterState.PAUSED,
    "current_paused.json": PrinterState.PAUSED,
    "current_offline.json": PrinterState.OFFLINE,
    "current_detecting_serial_connection.json": PrinterState.OFFLINE,
    "current_offline_after_error.json": PrinterState.OFFLINE,
    "history_operational.json": PrinterState.IDLE,
}


@pytest.mark.parametrize(("name", "expected"), RECORDED_CURRENT.items())
def test_recorded_push_states(name: str, expected: PrinterState) -> None:
    message = op.parse_message((DATA / name).read_text())
    assert isinstance(message, op.Current)
    assert message.problems == ()
    assert op.farm_state(message.status) is expected
    if expected is PrinterState.PRINTING:
        assert message.status.job_id == JOB


def test_the_emergency_stop_answer_says_why() -> None:
    status, _ = op.from_job(load("job_offline_after_error.json"))
    report = op.status_report("o1", status)
    assert report.state is PrinterState.OFFLINE
    assert report.message == (
        "OctoPrint: Offline after error: Closing serial port due to emergency stop M112."
    )


def test_print_events_become_outcomes() -> None:
    done = op.parse_message((DATA / "event_print_done.json").read_text())
    assert done == op.PrintEnded(PATH, "local", success=True)
    assert op.ended_outcome("o1", done) == JobFinished("o1", JOB)
    cancelled = op.parse_message((DATA / "event_print_failed_cancelled.json").read_text())
    assert isinstance(cancelled, op.PrintEnded)
    assert op.ended_outcome("o1", cancelled) == JobFailed("o1", JOB, "print cancelled on OctoPrint")
    error = op.parse_message((DATA / "event_print_failed_error.json").read_text())
    assert isinstance(error, op.PrintEnded)
    assert op.ended_outcome("o1", error) == JobFailed(
        "o1", JOB, "print failed on OctoPrint: Closing serial port due to emergency stop M112."
    )
    started = op.parse_message((DATA / "event_print_started.json").read_text())
    assert started == op.PrintBegan(PATH, "local")
    changed = op.parse_message((DATA / "event_printer_state_changed.json").read_text())
    assert isinstance(changed, op.StateChanged)
    for other in ("event_file_added.json", "event_print_paused.json", "timelapse.json"):
        assert isinstance(op.parse_message((DATA / other).read_text()), op.Other)
    assert isinstance(op.parse_message((DATA / "connected.json").read_text()), op.Connected)
    # A print of a file that is not the farm's has no farm outcome.
    foreign = op.PrintEnded("benchy.gcode", "local", success=True)
    assert op.ended_outcome("o1", foreign) is None


def test_finished_shows_in_the_job_answer_and_the_file_record() -> None:
    cancelled, _ = op.from_job(load("job_operational_after_cancel.json"))
    assert cancelled.job_id == JOB and op.finished_in_status("o1", cancelled) is None
    status, _ = op.from_job(load("job_operational_after_done.json"))
    # Recorded after PrintDone: still selected at 100 %, but reported idle at 0.
    assert status.completion == 100.0
    assert op.finished_in_status("o1", status) == JobFinished("o1", JOB)
    report = op.status_report("o1", status)
    assert (report.state, report.job_id, report.progress) == (PrinterState.IDLE, None, 0.0)
    success = op.parse_file(load("file_success.json"))
    assert op.record_outcome("o1", JOB, success) == JobFinished("o1", JOB)
    failure = op.parse_file(load("file_failure.json"))
    assert isinstance(op.record_outcome("o1", JOB, failure), JobFailed)
    # A record older than the upload belongs to an earlier attempt.
    stale = op.PrintRecord(uploaded=200.0, last_date=100.0, last_success=True)
    assert op.record_outcome("o1", JOB, stale) is None
    assert op.record_outcome("o1", JOB, op.PrintRecord(uploaded=1.0)) is None
    assert op.record_outcome("o1", JOB, None) is None
    assert op.folder_files(load("folder.json")) == [PATH]


def test_passive_login_gives_the_socket_auth() -> None:
    assert op.parse_login(load("login_passive.json")) == "farm:" + "0f" * 32
    with pytest.raises(op.PayloadError, match="user name and session"):
        op.parse_login({"name": None, "session": None})  # the anonymous user


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("bad_*")))
def test_malformed_frames_raise_payload_error(name: str) -> None:
    with pytest.raises(op.PayloadError):
        op.parse_message((DATA / name).read_text())


@pytest.mark.parametrize(
    "frame",
    [
        "[1, 2]",
        "{}",
        '{"current": 5}',
        '{"event": {"payload": {}}}',
        '{"event": {"type": "PrintDone", "payload": {"name": "x"}}}',
        '{"event": {"type": "PrintStarted", "payload": null}}',
    ],
)
def test_more_malformed_frames(frame: str) -> None:
    with pytest.raises(op.PayloadError):
        op.parse_message(frame)


def test_odd_fields_are_skipped_and_named() -> None:
    message = op.parse_message((DATA / "current_odd_fields.json").read_text())
    assert isinstance(message, op.Current)
    assert message.status.state is op.OctoState.OPERATIONAL  # from the flags
    assert message.status.completion is None and message.status.path == ""
    assert set(message.problems) == {
        "state text: unusable value 7",
        "job.file.path: unusable value 5",
        "job.file.date: unusable value 'yesterday'",
        "progress.completion: unusable value 'half'",
        "progress.printTime: unusable value -3",
    }
    with pytest.raises(op.PayloadError):
        op.from_job({"job": {}})
    with pytest.raises(op.PayloadError):
        op.parse_file([])


def test_upload_names_carry_the_job_id() -> None:
    assert op.upload_name(JOB, "parts/a b (1).gcode") == f"printfarmd/{JOB}_a_b_1_.gcode"
    assert op.upload_name(JOB, "x.stl") == f"printfarmd/{JOB}_x.stl.gcode"
    assert op.upload_name(JOB, "...") == f"printfarmd/{JOB}_job.gcode"
    assert op.job_id_of(op.upload_name(JOB, "a.gcode")) == JOB
    for other in ("benchy.gcode", "printfarmd/benchy.gcode", f"elsewhere/{JOB}_a.gcode"):
        assert op.job_id_of(other) is None


def test_a_print_the_farm_did_not_start_is_printing_without_a_job() -> None:
    answer = load("job_printing.json")
    answer["job"]["file"]["path"] = "benchy.gcode"
    status, _ = op.from_job(answer)
    report = op.status_report("o1", status)
    assert (report.state, report.job_id) == (PrinterState.PRINTING, None)
    sd = load("job_printing.json") | {"state": "Printing from SD"}
    sd["job"]["file"]["origin"] = "sdcard"  # same name, but on the printer's SD card
    status, _ = op.from_job(sd)
    assert (op.farm_state(status), status.job_id) == (PrinterState.PRINTING, None)
