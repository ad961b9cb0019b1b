"""Pure parsing of Moonraker frames over recorded payloads (``tests/data/klipper/``).

Every Klipper state maps onto the farm's, outcomes are derived once per status, and
malformed frames raise ``PayloadError`` (which the driver logs and drops) or leave the
good fields applied and name the bad ones.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from printfarmd.drivers import klipper_status as ks
from printfarmd.drivers.base import JobFailed, JobFinished
from printfarmd.models import PrinterState

DATA = Path(__file__).parent / "data" / "klipper"
JOB = "ABCDEF0123456789"
PID = "voron"


def frame(name: str) -> bytes:
    return (DATA / name).read_bytes()


def subscribed(name: str) -> ks.KlipperStatus:
    """The status after a recorded subscribe/query answer."""
    message = ks.parse_message(frame(name))
    assert isinstance(message, ks.RpcResponse)
    status, problems = ks.apply_update(ks.KlipperStatus(), ks.status_objects(message.result))
    assert problems == []
    return status


def updated(status: ks.KlipperStatus, name: str) -> ks.KlipperStatus:
    message = ks.parse_message(frame(name))
    assert isinstance(message, ks.StatusUpdate)
    new, problems = ks.apply_update(status, message.objects)
    assert problems == []
    return new


PRINTING = subscribed("subscribe_printing.json")


def test_standby_is_idle_with_no_job() -> None:
    status = subscribed("subscribe_standby.json")
    assert status.klippy is ks.KlippyState.READY
    assert status.print_state is ks.PrintState.STANDBY
    report = ks.status_report(PID, status)
    assert (report.state, report.job_id, report.progress) == (PrinterState.IDLE, None, 0.0)
    assert ks.outcome(PID, status) is None


def test_printing_names_the_job_and_prefers_the_slicer_progress() -> None:
    assert PRINTING.filename == f"printfarmd/{JOB}--benchy_pla.gcode"
    report = ks.status_report(PID, PRINTING)
    assert report.state is PrinterState.PRINTING
    assert report.job_id == JOB
    assert report.progress == pytest.approx(25.0)  # display_status, not the file position
    # Time left: the rest of the file at the rate so far, from total_duration (the whole
    # print) and the file position, not print_duration (counted from the first extrusion).
    assert report.remaining == pytest.approx(612.4 * (1 - 0.2413) / 0.2413)
    assert ks.outcome(PID, PRINTING) is None


def test_partial_update_merges_into_the_known_status() -> None:
    status = updated(PRINTING, "update_progress.json")
    assert status.filename == PRINTING.filename  # fields not in the update are kept
    assert status.print_state is ks.PrintState.PRINTING
    report = ks.status_report(PID, status)
    assert report.progress == pytest.approx(50.0)
    assert report.remaining == pytest.approx(1212.6 * (1 - 0.4981) / 0.4981)


def test_a_pause_neither_counts_as_printing_time_nor_takes_progress_back() -> None:
    status = updated(PRINTING, "update_progress.json")
    paused = updated(status, "update_paused_at.json")
    report = ks.status_report(PID, paused)
    assert report.state is PrinterState.PAUSED and report.progress == pytest.approx(50.0)
    # After 600 s paused, the slicer's M73 progress (45 %) is behind what was shown.
    resumed = updated(paused, "update_resumed_m73_behind.json")
    report = ks.status_report(PID, resumed)
    assert report.state is PrinterState.PRINTING
    assert report.progress == pytest.approx(50.0)  # never steps back
    assert resumed.running_for == pytest.approx(1900.0 - 600.0)
    assert report.remaining == pytest.approx(1300.0 * 0.48 / 0.52)
    # The next print starts from nothing.
    idle = updated(updated(resumed, "update_complete.json"), "update_standby.json")
    again, _ = ks.apply_update(
        idle,
        {
            "print_stats": {"state": "printing", "filename": PRINTING.filename},
            "display_status": {"progress": 0.01},
        },
    )
    assert ks.status_report(PID, again).progress == pytest.approx(1.0)
    assert again.paused_for == 0.0


def test_an_idle_printer_shows_no_progress_after_a_print() -> None:
    done = updated(updated(PRINTING, "update_progress.json"), "update_complete.json")
    assert ks.status_report(PID, done).progress == 0.0
    standby = updated(done, "update_standby.json")
    report = ks.status_report(PID, standby)
    assert (report.state, report.progress, report.remaining) == (PrinterState.IDLE, 0.0, None)


@pytest.mark.parametrize("state", ["disconnected", "startup"])
def test_klippy_not_ready_says_so_and_never_idle(state: str) -> None:
    status, _ = ks.apply_update(PRINTING, {"webhooks": {"state": state}})
    report = ks.status_report(PID, status)
    assert report.state is PrinterState.OFFLINE
    assert report.message == f"Klippy not ready ({state})"  # not the stale "Printer is ready"
    standby, _ = ks.apply_update(
        ks.KlipperStatus(), {"webhooks": {"state": state}, "print_stats": {"state": "standby"}}
    )
    assert ks.status_report(PID, standby).state is PrinterState.OFFLINE
    with_words, _ = ks.apply_update(
        PRINTING, {"webhooks": {"state": state, "state_message": "Klipper is starting"}}
    )
    assert ks.status_report(PID, with_words).message == (
        f"Klippy not ready ({state}): Klipper is starting"
    )


def test_paused_then_resumed() -> None:
    paused = updated(PRINTING, "update_paused.json")
    report = ks.status_report(PID, paused)
    assert (report.state, report.job_id) == (PrinterState.PAUSED, JOB)
    assert ks.outcome(PID, paused) is None
    resumed = updated(paused, "update_resumed.json")
    assert ks.status_report(PID, resumed).state is PrinterState.PRINTING


def test_complete_finishes_the_job_and_leaves_the_printer_idle() -> None:
    status = updated(PRINTING, "update_complete.json")
    assert ks.outcome(PID, status) == JobFinished(PID, JOB)
    report = ks.status_report(PID, status)
    assert (report.state, report.job_id, report.progress) == (PrinterState.IDLE, None, 0.0)


def test_cancelled_on_the_printer_fails_the_job() -> None:
    status = updated(PRINTING, "update_cancelled.json")
    assert ks.outcome(PID, status) == JobFailed(PID, JOB, "print cancelled on the printer")
    assert ks.status_report(PID, status).state is PrinterState.IDLE


def test_print_error_fails_the_job_with_klippers_message() -> None:
    status = updated(PRINTING, "update_error.json")
    done = ks.outcome(PID, status)
    assert isinstance(done, JobFailed)
    assert done.job_id == JOB
    assert "Move out of range" in done.reason
    report = ks.status_report(PID, status)
    assert report.state is PrinterState.IDLE
    assert "Move out of range" in report.message


def test_klippy_shutdown_is_an_error_and_fails_the_job() -> None:
    status = updated(PRINTING, "update_shutdown.json")
    report = ks.status_report(PID, status)
    assert report.state is PrinterState.ERROR
    assert "Timer too close" in report.message
    done = ks.outcome(PID, status)
    assert isinstance(done, JobFailed)
    assert done.reason.startswith("klipper shutdown: MCU 'mcu' shutdown")


@pytest.mark.parametrize(
    ("name", "state", "farm"),
    [
        ("notify_klippy_shutdown.json", ks.KlippyState.SHUTDOWN, PrinterState.ERROR),
        ("notify_klippy_disconnected.json", ks.KlippyState.DISCONNECTED, PrinterState.OFFLINE),
        ("notify_klippy_ready.json", ks.KlippyState.READY, PrinterState.PRINTING),
    ],
)
def test_klippy_notices(name: str, state: ks.KlippyState, farm: PrinterState) -> None:
    message = ks.parse_message(frame(name))
    assert message == ks.KlippyNotice(state)
    status = msgspec.structs.replace(PRINTING, klippy=state)
    assert ks.status_report(PID, status).state is farm


def test_klippy_disconnected_mid_print_decides_nothing() -> None:
    status = msgspec.structs.replace(PRINTING, klippy=ks.KlippyState.DISCONNECTED)
    assert ks.outcome(PID, status) is None  # the print's fate is unknown until it returns
    assert ks.status_report(PID, status).job_id is None
    startup = msgspec.structs.replace(PRINTING, klippy=ks.KlippyState.STARTUP)
    assert ks.status_report(PID, startup).state is PrinterState.OFFLINE


def test_a_file_that_is_not_ours_names_no_job() -> None:
    status = msgspec.structs.replace(PRINTING, filename="calibration_cube.gcode")
    assert ks.status_report(PID, status).job_id is None
    assert (
        ks.outcome(PID, msgspec.structs.replace(status, print_state=ks.PrintState.COMPLETE)) is None
    )


def test_server_info_and_error_answers() -> None:
    info = ks.parse_message(frame("server_info.json"))
    assert isinstance(info, ks.RpcResponse)
    assert info.id == 1
    assert info.result["klippy_state"] == "ready"
    err = ks.parse_message(frame("error_klippy_disconnected.json"))
    assert err == ks.RpcResponse(11, error=(503, "Klippy Disconnected"))


def test_other_notifications_are_recognised_and_ignored() -> None:
    assert ks.parse_message(frame("notify_proc_stat_update.json")) == ks.OtherNotice(
        "notify_proc_stat_update"
    )


@pytest.mark.parametrize(
    "name",
    [
        "bad_truncated.txt",
        "bad_not_json.txt",
        "bad_array.json",
        "bad_no_id.json",
        "bad_id_type.json",
        "bad_no_result.json",
        "bad_update_params.json",
        "bad_method_type.json",
    ],
)
def test_malformed_frames_raise_payload_error(name: str) -> None:
    with pytest.raises(ks.PayloadError):
        ks.parse_message(frame(name))


def test_query_answer_without_status_is_a_payload_error() -> None:
    message = ks.parse_message(frame("bad_query_no_status.json"))
    assert isinstance(message, ks.RpcResponse)
    with pytest.raises(ks.PayloadError):
        ks.status_objects(message.result)


def test_fields_of_the_wrong_type_are_skipped_and_named() -> None:
    message = ks.parse_message(frame("odd_fields.json"))
    assert isinstance(message, ks.StatusUpdate)
    status, problems = ks.apply_update(PRINTING, message.objects)
    assert status == PRINTING  # nothing usable: the known status stands
    joined = "\n".join(problems)
    for bad in (
        "print_stats.state",
        "print_stats.print_duration",
        "print_stats.filename",
        "virtual_sdcard.progress",
        "display_status: expected an object",
        "webhooks.state",
    ):
        assert bad in joined
    assert "extruder" not in joined  # objects we do not use are not problems


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("benchy.gcode", f"printfarmd/{JOB}--benchy.gcode"),
        ("parts/left arm (v2).gcode", f"printfarmd/{JOB}--left_arm_v2_.gcode"),
        ("..", f"printfarmd/{JOB}--job.gcode"),
    ],
)
def test_upload_names_carry_the_job_id(filename: str, expected: str) -> None:
    name = ks.upload_name(JOB, filename)
    assert name == expected
    assert ks.job_id_of(name) == JOB


@pytest.mark.parametrize(
    "filename", ["", "benchy.gcode", "printfarmd/benchy.gcode", "other/ABC--x.gcode"]
)
def test_other_files_name_no_job(filename: str) -> None:
    assert ks.job_id_of(filename) is None
