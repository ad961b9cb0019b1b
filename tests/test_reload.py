"""Issue 8: SIGHUP reloads the printers; jobs and unchanged printers are untouched, and a
bad config is refused with the old one kept. Real daemon processes, real signals."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from printfarmd.config import PrinterConfig, SimulatorOptions
from printfarmd.core.reload import plan_printer_reload
from tests.conftest import DaemonProcess, make_config, sim_printer, write_config


def _wait(pred: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _printers(c: httpx.Client) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in c.get("/api/printers").json()["printers"]}


def _slow(pid: str, materials: tuple[str, ...] = ("PLA",)) -> PrinterConfig:
    # speed 1: a real-time simulated print, so it is still printing during the test.
    return msgspec.structs.replace(
        sim_printer(pid, materials), simulator=SimulatorOptions(speed=1.0)
    )


def test_sighup_adds_removes_and_changes_printers_mid_print(
    tmp_path: Path, daemon_factory: Any
) -> None:
    busy, idle, gone = _slow("busy"), _slow("idle", ("PETG",)), _slow("gone", ("ABS",))
    d: DaemonProcess = daemon_factory(make_config(tmp_path, (busy, idle, gone)))
    d.start()
    with d.client() as c:
        job = c.post("/api/jobs", json={"filename": "benchy_pla.gcode"}).json()["jobs"][0]
        _wait(lambda: _printers(c)["busy"]["current_job"] == job["id"], "busy printing")
        assert c.get(f"/api/jobs/{job['id']}").json()["state"] == "printing"

        # busy: capabilities change (in place); idle: driver option change (restart);
        # gone: removed; new: added.
        new_busy = msgspec.structs.replace(busy, materials=("PLA", "TPU"), tags=("big",))
        new_idle = msgspec.structs.replace(idle, simulator=SimulatorOptions(speed=2.0))
        cfg = msgspec.structs.replace(
            make_config(tmp_path, (new_busy, new_idle, _slow("new", ("PETG",)))),
            server=msgspec.structs.replace(make_config(tmp_path).server, port=d.port),
        )
        write_config(cfg, d.config_path)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        _wait(lambda: set(_printers(c)) == {"busy", "idle", "new"}, "printers reloaded")
        printers = _printers(c)
        assert printers["busy"]["materials"] == ["PLA", "TPU"]
        assert printers["busy"]["current_job"] == job["id"]
        assert printers["busy"]["state"] == "printing"
        _wait(lambda: _printers(c)["new"]["state"] == "idle", "new printer idle")
        assert c.get(f"/api/jobs/{job['id']}").json()["state"] == "printing"
        # The reloaded farm dispatches to the added printer.
        petg = c.post("/api/jobs", json={"filename": "phone_stand_petg.gcode"}).json()["jobs"][0]
        _wait(
            lambda: c.get(f"/api/jobs/{petg['id']}").json()["state"] == "printing",
            "PETG job printing",
        )
    assert d.kill(signal.SIGTERM) == 0
    assert "printers reloaded" in d.log()


def test_sighup_with_bad_config_keeps_the_old_one(tmp_path: Path, daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(make_config(tmp_path, (_slow("p1"), _slow("p2"))))
    d.start()
    d.config_path.write_text("[server]\nport = 'seven'\n[[printers]]\nid = 'p1'\n")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    _wait(lambda: "config reload refused" in d.log(), "refusal logged")
    with d.client() as c:
        assert set(_printers(c)) == {"p1", "p2"}
        job = c.post("/api/jobs", json={"filename": "benchy_pla.gcode"}).json()["jobs"][0]
        _wait(lambda: c.get(f"/api/jobs/{job['id']}").json()["state"] == "printing", "printing")
    assert d.proc.poll() is None
    assert d.kill(signal.SIGTERM) == 0


def test_removing_a_printing_printer_is_deferred(tmp_path: Path, daemon_factory: Any) -> None:
    cfg = make_config(tmp_path, (_slow("p1"),))
    d: DaemonProcess = daemon_factory(cfg)
    d.start()
    with d.client() as c:
        job = c.post("/api/jobs", json={"filename": "benchy_pla.gcode"}).json()["jobs"][0]
        _wait(lambda: _printers(c)["p1"]["current_job"] == job["id"], "p1 printing")
        text = d.config_path.read_text()
        later = make_config(tmp_path, (_slow("p2"),))
        write_config(
            msgspec.structs.replace(
                later, server=msgspec.structs.replace(later.server, port=d.port)
            ),
            d.config_path,
        )
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        _wait(lambda: "p2" in _printers(c), "p2 added")
        # p1 holds a job: it stays (with its job) until a later reload finds it free.
        assert _printers(c)["p1"]["current_job"] == job["id"]
        assert c.get(f"/api/jobs/{job['id']}").json()["state"] == "printing"
        assert "reload change deferred" in d.log()
        assert text  # the original config was a real file
    assert d.kill(signal.SIGTERM) == 0


def test_plan_is_pure_and_minimal() -> None:
    a, b, c = sim_printer("a"), sim_printer("b"), sim_printer("c")
    old = {p.id: p for p in (a, b, c)}
    plan = plan_printer_reload(
        old,
        [
            a,
            msgspec.structs.replace(b, materials=("PETG",)),
            msgspec.structs.replace(c, simulator=SimulatorOptions(speed=5.0)),
            sim_printer("d"),
        ],
    )
    assert [p.id for p in plan.updated] == ["b"]
    assert [p.id for p in plan.restarted] == ["c"]
    assert [p.id for p in plan.added] == ["d"]
    assert plan.removed == ()
    assert plan_printer_reload(old, [a]).removed == ("b", "c")
    assert plan_printer_reload(old, [a, b, c]).empty
