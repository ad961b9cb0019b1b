"""Pure parsing of Bambu Lab LAN-mode reports over recorded payloads (tests/data/bambu/):
every gcode_state, P1-style partial reports merged into the known status, outcomes
once, AMS trays to materials, HMS and print-error codes, and malformed payloads."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from printfarmd.drivers import bambu_protocol as proto
from printfarmd.drivers.bambu_tls import normalize_fingerprint, short
from printfarmd.drivers.base import JobFailed, JobFinished
from printfarmd.models import PrinterState

DATA = Path(__file__).parent / "data" / "bambu"
JOB = "ABCDEF0123456789"
PID = "x1c"


def payload(name: str) -> bytes:
    return (DATA / name).read_bytes()


def merged(*names: str, status: proto.BambuStatus | None = None) -> proto.BambuStatus:
    status = status or proto.BambuStatus()
    for name in names:
        status, problems = proto.apply_report(status, proto.parse_report(payload(name)))
        assert problems == [], (name, problems)
    return status


@pytest.mark.parametrize(
    ("name", "state", "job", "progress", "remaining"),
    [
        ("push_idle.json", PrinterState.IDLE, None, 0.0, None),
        ("push_prepare.json", PrinterState.PRINTING, JOB, 0.0, 43 * 60.0),
        ("push_slicing.json", PrinterState.PRINTING, JOB, 0.0, 0.0),
        ("push_init.json", PrinterState.PRINTING, JOB, 0.0, 0.0),
        ("push_running.json", PrinterState.PRINTING, JOB, 42.0, 25 * 60.0),
        ("push_pause.json", PrinterState.PAUSED, JOB, 42.0, 25 * 60.0),
        ("push_finish.json", PrinterState.IDLE, None, 0.0, None),
        ("push_failed.json", PrinterState.ERROR, None, 0.0, None),
        ("push_failed_cancelled.json", PrinterState.IDLE, None, 0.0, None),
        ("push_offline.json", PrinterState.OFFLINE, None, 0.0, None),
        ("push_unknown.json", PrinterState.OFFLINE, None, 0.0, None),
        ("push_project_running.json", PrinterState.PRINTING, JOB, 10.0, 90 * 60.0),
        ("push_other_file.json", PrinterState.PRINTING, None, 60.0, 12 * 60.0),
    ],
)
def test_every_gcode_state_maps_onto_the_farm(
    name: str,
    state: PrinterState,
    job: str | None,
    progress: float,
    remaining: float | None,
) -> None:
    status = merged(name)
    assert status.complete
    report = proto.status_report(PID, status)
    assert (report.state, report.job_id, report.progress, report.remaining) == (
        state,
        job,
        progress,
        remaining,
    )


def test_outcomes_come_from_finish_and_failed_only() -> None:
    assert proto.outcome(PID, merged("push_finish.json")) == JobFinished(PID, JOB)
    failed = proto.outcome(PID, merged("push_failed.json"))
    assert isinstance(failed, JobFailed) and failed.job_id == JOB
    assert failed.reason == "bambu: print error 0300_8003; HMS 0300_0100_0001_0007 (fatal)"
    cancelled = proto.outcome(PID, merged("push_failed_cancelled.json"))
    assert isinstance(cancelled, JobFailed) and "cancelled 0300_400C" in cancelled.reason
    for name in ("push_idle.json", "push_running.json", "push_pause.json", "push_other_file.json"):
        assert proto.outcome(PID, merged(name)) is None
    # Somebody else's print finishing is nobody's outcome.
    other = merged("push_other_file.json", "delta_finish.json")
    assert other.gcode_state is proto.GcodeState.FINISH and proto.outcome(PID, other) is None


def test_messages_name_the_codes() -> None:
    paused = proto.status_report(PID, merged("push_pause.json"))
    assert paused.message == "print error 0700_8011; HMS 0700_0300_0003_0002 (common)"
    failed = proto.status_report(PID, merged("push_failed.json"))
    assert failed.message.startswith("last print failed: print error 0300_8003")
    assert proto.status_report(PID, merged("push_prepare.json")).message == "prepare"


def test_partial_reports_merge_into_the_known_status() -> None:
    running = merged("push_running.json")
    status = merged("delta_progress.json", status=running)
    assert status.gcode_file == running.gcode_file  # fields not in the delta are kept
    report = proto.status_report(PID, status)
    assert (report.state, report.job_id, report.progress) == (PrinterState.PRINTING, JOB, 55.0)
    assert report.remaining == 19 * 60.0
    paused = merged("delta_pause.json", status=status)
    assert proto.status_report(PID, paused).state is PrinterState.PAUSED
    resumed = merged("delta_resume_running.json", status=paused)
    assert proto.status_report(PID, resumed).progress == 55.0
    done = merged("delta_finish.json", status=resumed)
    assert proto.outcome(PID, done) == JobFinished(PID, JOB)
    assert proto.status_report(PID, done).state is PrinterState.IDLE


def test_nothing_is_known_before_a_full_report() -> None:
    # After a reconnect the first words may be a delta: no state, no decision.
    status = merged("delta_state_only.json", "delta_progress.json")
    assert not status.complete
    report = proto.status_report(PID, status)
    assert report.state is PrinterState.OFFLINE and report.job_id is None
    assert proto.outcome(PID, merged("delta_finish.json")) is None
    assert merged("delta_finish.json", "push_running.json").complete


def test_ams_trays_and_the_external_spool_give_the_materials_active_first() -> None:
    status = merged("push_running.json")
    assert proto.materials(status) == (
        ("PETG", "PLA", "PLA", "TPU"),
        ("#DFE2E3", "#000000", "#F95959", "#FF8000"),
    )
    external = merged("delta_tray_now_external.json", status=status)
    assert proto.materials(external) == (
        ("TPU", "PLA", "PETG", "PLA"),
        ("#FF8000", "#000000", "#DFE2E3", "#F95959"),
    )
    none = proto.BambuStatus()
    assert proto.materials(none) == ((), ())


def test_replies_to_our_requests() -> None:
    ok = proto.command_reply(proto.parse_report(payload("reply_project_file_ok.json")))
    assert ok == proto.CommandReply("project_file", "12", "SUCCESS", "") and ok.ok
    bad = proto.command_reply(proto.parse_report(payload("reply_gcode_file_fail.json")))
    assert bad is not None and not bad.ok and bad.reason == "file not found"
    assert proto.command_reply(proto.parse_report(payload("push_running.json"))) is None


def test_other_report_types_change_nothing() -> None:
    status = merged("push_running.json")
    for name in ("mc_print_push_info.json", "info_get_version.json"):
        assert merged(name, status=status) == status


@pytest.mark.parametrize("name", ["bad_not_json.txt", "bad_array.json", "bad_binary.bin"])
def test_malformed_payloads_raise(name: str) -> None:
    with pytest.raises(proto.BambuPayloadError):
        proto.parse_report(payload(name))


def test_fields_of_the_wrong_type_are_skipped_and_named() -> None:
    running = merged("push_running.json")
    status, problems = proto.apply_report(running, proto.parse_report(payload("odd_fields.json")))
    joined = "\n".join(problems)
    for bad in (
        "gcode_state",
        "mc_percent",
        "mc_remaining_time",
        "print_error",
        "hms",
        "gcode_file",
        "ams.tray_now",
        "tray without a usable id",
        "vt_tray",
    ):
        assert bad in joined
    assert status.gcode_state is running.gcode_state and status.percent == running.percent
    _, problems = proto.apply_report(
        running, proto.parse_report(payload("bad_print_not_object.json"))
    )
    assert problems == ["print: expected an object, got str"]


def test_hms_and_print_error_codes_read_as_the_wiki_writes_them() -> None:
    hms = proto.Hms(attr=0x0C00_0300, code=0x0003_0008)
    assert (hms.text, hms.severity) == ("0C00_0300_0003_0008", "common")
    assert proto.Hms(0x0300_0100, 0x0001_0007).severity == "fatal"
    assert proto.Hms(0x0300_0100, 0x0009_0007).severity == "unknown"
    assert proto.print_error_text(50348044) == "0300_400C"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("benchy.gcode", f"printfarmd/{JOB}--benchy.gcode"),
        ("parts/left arm (v2).3mf", f"printfarmd/{JOB}--left_arm_v2_.3mf"),
        ("..", f"printfarmd/{JOB}--job.gcode"),
    ],
)
def test_upload_names_carry_the_job_id(filename: str, expected: str) -> None:
    name = proto.upload_name(JOB, filename)
    assert name == expected
    assert proto.job_id_of(name) == JOB
    assert proto.job_id_of(f"/sdcard/{name}") == JOB


@pytest.mark.parametrize(
    "name", ["", "benchy.gcode", "/sdcard/Cube.gcode.3mf", "abc--x.gcode", "printfarmd/x.gcode"]
)
def test_other_files_name_no_job(name: str) -> None:
    assert proto.job_id_of(name) is None


def test_requests_follow_the_documented_shapes() -> None:
    assert orjson.loads(proto.pushall(4)) == {
        "pushing": {"sequence_id": "4", "command": "pushall", "version": 1, "push_target": 1}
    }
    assert orjson.loads(proto.print_command(5, "stop")) == {
        "print": {"sequence_id": "5", "command": "stop", "param": ""}
    }
    assert orjson.loads(proto.gcode_line(6, "G28"))["print"]["param"] == "G28\n"
    gcode = orjson.loads(proto.start_request(7, JOB, f"printfarmd/{JOB}--a.gcode", use_ams=False))
    assert gcode["print"]["command"] == "gcode_file"
    assert gcode["print"]["param"] == f"/sdcard/printfarmd/{JOB}--a.gcode"
    project = orjson.loads(proto.start_request(8, JOB, f"printfarmd/{JOB}--a.3mf", use_ams=True))
    body = project["print"]
    assert (body["command"], body["url"], body["subtask_name"], body["use_ams"]) == (
        "project_file",
        f"ftp:///printfarmd/{JOB}--a.3mf",
        f"{JOB}--a",
        True,
    )


def test_fingerprints() -> None:
    fp = "ab:" * 31 + "ab"
    assert normalize_fingerprint(fp) == "AB" * 32
    assert normalize_fingerprint("AB" * 31) is None
    assert normalize_fingerprint("zz" * 32) is None
    assert short("AB" * 32) == "AB:AB:AB:AB:...:AB:AB:AB:AB"
