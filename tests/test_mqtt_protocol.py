"""The pure MQTT protocol over recorded payloads (``tests/data/mqtt/``): every message
of the seed, what the farm sends, malformed input, and the at-most-once tracker."""

from __future__ import annotations

import datetime
from pathlib import Path

import orjson
import pytest

from printfarmd.drivers import mqtt_protocol as proto
from printfarmd.drivers.base import JobFailed, JobFinished, JobSpec, StatusReport
from printfarmd.models import PrinterState

DATA = Path(__file__).parent / "data" / "mqtt"


def payload(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_seed_printer_progress() -> None:
    p = proto.parse_printer_progress(payload("seed_printer_progress.json"), "printer-1")
    assert p == proto.PrinterProgress(
        printer_id="printer-1",
        status=proto.DeviceStatus.PRINTING,
        job_id="job-123",
        progress=42.0,
        timestamp=datetime.datetime(2025, 6, 15, 8, 32, tzinfo=datetime.UTC),
    )


def test_seed_robot_progress() -> None:
    r = proto.parse_robot_progress(payload("seed_robot_progress.json"), "rob-1")
    assert (r.robot_id, r.printer_id, r.action, r.completed) == ("rob-1", "printer-1", "pick", True)
    started = proto.parse_robot_progress(payload("robot_started.json"), "rob-1")
    assert not started.completed


def test_seed_assignment_parses_and_ours_has_every_seed_key() -> None:
    seed = proto.parse_assignment(payload("seed_assignment.json"))
    assert seed.job_id == "job-123" and seed.model_url == "models/model-456.gcode"
    assert (seed.filament_type, seed.estimated_time, seed.priority) == ("PLA", 3600.0, 10)
    assert seed.parameters["nozzleTemp"] == 210 and seed.resume_progress == 0.0
    spec = JobSpec("ABCDEF0123456789", "benchy.gcode", "/x/benchy.gcode", 3600.0, "PLA", 37.5)
    ours = proto.build_assignment(spec, model_url="models/benchy.gcode", now=1749976200.0)
    data = orjson.loads(ours)
    assert set(orjson.loads(payload("seed_assignment.json"))) <= set(data)
    assert data["assignedAt"] == "2025-06-15T08:30:00.000Z"
    back = proto.parse_assignment(ours)
    assert (back.job_id, back.resume_progress, back.filament_type) == (spec.job_id, 37.5, "PLA")


def test_finished_idle_error_and_announcement() -> None:
    done = proto.parse_printer_progress(payload("printer_finished.json"), "printer-1")
    assert (done.status, done.job_id, done.progress) == (proto.DeviceStatus.IDLE, "job-123", 100)
    idle = proto.parse_printer_progress(payload("printer_idle.json"), "printer-1")
    assert (idle.status, idle.job_id) == (proto.DeviceStatus.IDLE, None)
    err = proto.parse_printer_progress(payload("printer_error.json"), "printer-1")
    assert (err.status, err.message) == (proto.DeviceStatus.ERROR, "thermal runaway")
    built = proto.build_announcement("printer-1", "job-123", 1749979800.0)
    assert orjson.loads(built) == orjson.loads(payload("printers_announcement.json"))
    assert proto.parse_announcement(built) == ("printer-1", "job-123")


def test_commands_round_trip() -> None:
    for command in proto.Command:
        parsed = proto.parse_command(proto.build_command(command, "J1", "G28"))
        assert (parsed.command, parsed.job_id, parsed.script) == (command, "J1", "G28")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_json.txt", "not JSON"),
        ("not_object.json", "expected a JSON object"),
        ("missing_status.json", "status: required"),
        ("missing_job.json", "jobId: required"),
        ("other_printer_id.json", "does not match"),
        ("unknown_status.json", "unknown value"),
        ("progress_string.json", "expected a number"),
        ("progress_range.json", "between 0 and 100"),
    ],
)
def test_malformed_printer_progress(name: str, message: str) -> None:
    with pytest.raises(proto.ProtocolError, match=message):
        proto.parse_printer_progress(payload(name), "printer-1")


def test_malformed_robot_progress() -> None:
    with pytest.raises(proto.ProtocolError, match="printerId: required"):
        proto.parse_robot_progress(payload("robot_missing_printer.json"), "rob-1")
    with pytest.raises(proto.ProtocolError, match="does not match"):
        proto.parse_robot_progress(payload("seed_robot_progress.json"), "rob-2")
    with pytest.raises(proto.ProtocolError, match="not JSON"):
        proto.parse_robot_progress(payload("bad_json.txt"), "rob-1")


@pytest.mark.parametrize(
    ("template", "topic", "expected"),
    [
        ("device/printer/{id}/progress", "device/printer/p-1/progress", "p-1"),
        ("device/printer/{id}/progress", "device/printer//progress", None),
        ("device/printer/{id}/progress", "device/printer/a/b/progress", None),
        ("device/robot/{id}/progress", "device/printer/p-1/progress", None),
        ("farm/{id}", "farm/x", "x"),
    ],
)
def test_match_topic(template: str, topic: str, expected: str | None) -> None:
    assert proto.match_topic(template, topic) == expected
    assert proto.topic_filter(template).count("+") == 1


def _feed(tracker: proto.PrinterTracker, name: str) -> list[object]:
    return list(tracker.feed(proto.parse_printer_progress(payload(name), "printer-1")))


def test_tracker_finishes_a_job_once_despite_repeats_and_redeliveries() -> None:
    t = proto.PrinterTracker("printer-1")
    assert _feed(t, "printer_idle.json") == [StatusReport("printer-1", PrinterState.IDLE)]
    assert _feed(t, "seed_printer_progress.json") == [
        StatusReport("printer-1", PrinterState.PRINTING, "job-123", 42.0)
    ]
    first = _feed(t, "printer_finished.json")
    assert first.count(JobFinished("printer-1", "job-123")) == 1
    # The same message again (QoS 1 redelivery) and a late, older progress report:
    assert JobFinished("printer-1", "job-123") not in _feed(t, "printer_finished.json")
    assert _feed(t, "seed_printer_progress.json") == []
    assert t.current() == StatusReport("printer-1", PrinterState.IDLE)


def test_tracker_fails_a_job_once() -> None:
    t = proto.PrinterTracker("printer-1")
    _feed(t, "seed_printer_progress.json")
    events = _feed(t, "printer_error.json")
    assert JobFailed("printer-1", "job-123", "thermal runaway") in events
    assert not [e for e in _feed(t, "printer_error.json") if isinstance(e, JobFailed)]
    # Without timestamps, repeats are still filtered by job id.
    again = proto.PrinterProgress("printer-1", proto.DeviceStatus.ERROR, "job-123", 57.0)
    assert not [e for e in t.feed(again) if isinstance(e, JobFailed)]


def test_tracker_follows_a_printer_whose_clock_was_reset() -> None:
    t = proto.PrinterTracker("printer-1")
    _feed(t, "printer_finished.json")  # 2025-06-15T09:30
    rebooted = proto.PrinterProgress(
        "printer-1",
        proto.DeviceStatus.IDLE,
        timestamp=datetime.datetime(1970, 1, 1, 0, 1, tzinfo=datetime.UTC),
    )
    assert t.feed(rebooted) == [StatusReport("printer-1", PrinterState.IDLE)]
