"""The farm core, model-based (issue 13): random sequences of commands, printer reports
(stale, duplicate, out of order, for unknown or cancelled jobs), timer firings and effect
outcomes over farms of 1-8 printers, with no threads and no clock.

A harness plays the owner (decide each input in its own overlay, apply, dispatch when
asked) and the store (a
dict of rows that checks every conditional write), and keeps a small model of what each
printer really does, so reports can be true, stale or made up. After every step:
- no printer holds two jobs and no job is active on two printers;
- every created job exists exactly once in the store;
- every job's states follow the spec's transition table (written below as a literal,
  copied from the spec, not imported from the code);
- a cancelled job is never started again;
- a printer reporting a farm job it should not print (cancelled, moved) has been told to
  stop it (within the rate limit);
- an idle printer that clears its own plate always has that clear coming (a timer);
- the farm's memory holds exactly the live jobs, equal to their stored rows.
"""

from __future__ import annotations

from typing import Any

import attrs
import hypothesis.strategies as st
import msgspec
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from printfarmd.config import PrinterConfig
from printfarmd.core.farm import FarmState, Now, Slot, Tx, decide
from printfarmd.core.farm import inputs as i
from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.state import STRAY_STOP_INTERVAL
from printfarmd.drivers.base import JobFailed, JobFinished, PlateCleared, StatusReport
from printfarmd.errors import FarmError
from printfarmd.models import Job, JobState, PrinterState

EPOCH = 1_800_000_000.0

# The spec's table (../shared/seeds/printstudio-job-queue.txt, "State / Next"), copied
# as text: CANCELLED is reachable from any state that is not final ("(any state)").
SPEC_NEXT = {
    "created": {"validated", "cancelled"},
    "validated": {"sliced", "cancelled"},
    "sliced": {"queued"},
    "queued": {"printing", "cancelled"},
    "printing": {"post_process", "failed"},
    "post_process": {"ready"},
    "ready": {"shipped"},
    "shipped": set(),
    "failed": {"queued", "cancelled"},
    "cancelled": set(),
}
FINAL = {"shipped", "cancelled"}
ALLOWED = {(a, b) for a, nexts in SPEC_NEXT.items() for b in nexts} | {
    (a, "cancelled") for a in SPEC_NEXT if a not in FINAL
}
FILES = ("a.gcode", "b.gcode")
MATERIALS = ("PLA", "PETG")


@attrs.define
class World:
    """What a printer really does (the drivers' truth)."""

    state: PrinterState = PrinterState.IDLE
    job: str | None = None
    progress: float = 0.0


class FarmMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.state = FarmState()
        self.mono = 0.0
        self.rows: dict[str, Job] = {}
        self.created: list[str] = []
        self.trail: dict[str, list[str]] = {}
        self.cancelled: set[str] = set()
        self.world: dict[str, World] = {}
        self.starts: list[tuple[str, str]] = []  # hand-overs in flight
        self.stops: list[tuple[str, str]] = []  # stop commands in flight
        self.last_stop: dict[tuple[str, str], float] = {}
        self.timers: list[tuple[out.TimerKind, str]] = []
        self.strays: list[tuple[str, str, float]] = []

    # ------------------------------------------------------------------ the harness

    def now(self) -> Now:
        return Now(EPOCH + self.mono, self.mono)

    def step(self, inp: i.Input) -> Any:
        tx = Tx(self.state)
        layer = Tx(tx)
        try:
            reply = decide(layer, inp, self.now())
        except FarmError as exc:
            return exc
        layer.merge()
        self._store(tx.records)
        self.state.apply(tx)
        for effect in tx.effects:
            self._effect(effect)
        if tx.kick and not isinstance(inp, i.Dispatch):
            self.step(i.Dispatch())  # as the owner does after a batch that asks for it
        return reply

    def _store(self, records: list[Any]) -> None:
        for rec in records:
            if isinstance(rec, out.InsertJob):
                assert rec.job.id not in self.rows, "a job inserted twice"
                self.rows[rec.job.id] = rec.job
            elif isinstance(rec, out.UpdateJob):
                stored = self.rows.get(rec.job.id)
                assert stored is not None, "an update of a job never stored"
                assert stored.state is rec.expect, (stored.state, rec.expect)
                self.rows[rec.job.id] = rec.job
            elif isinstance(rec, out.SaveProgress):
                row = self.rows.get(rec.job_id)
                if row is not None and row.state.value == "printing":
                    self.rows[rec.job_id] = msgspec.structs.replace(
                        row, progress=rec.progress, eta=rec.eta, updated_at=rec.at
                    )
            elif isinstance(rec, out.AppendEvent) and rec.event.type == "job.transition":
                ev = rec.event
                assert ev.job_id is not None
                frm, to = ev.from_state, ev.to_state
                assert to is not None
                if frm is None:
                    assert to == "created"
                else:
                    assert (frm, to) in ALLOWED, (ev.job_id, frm, to)
                    assert self.trail[ev.job_id][-1] == frm, (self.trail[ev.job_id], frm)
                    assert ev.job_id not in self.cancelled, "a cancelled job changed again"
                self.trail.setdefault(ev.job_id, []).append(to)
                if to == "cancelled":
                    self.cancelled.add(ev.job_id)

    def _effect(self, effect: Any) -> None:
        if isinstance(effect, out.StartPrint):
            job = effect.job
            assert job.id not in self.cancelled, "a cancelled job was started"
            assert self.rows[job.id].state.value == "printing"
            assert self.rows[job.id].printer_id == effect.printer_id
            self.starts.append((effect.printer_id, job.id))
        elif isinstance(effect, out.StopPrint):
            # Never told to stop what the farm itself holds on that printer.
            row = self.rows.get(effect.job_id)
            held = row is not None and row.printer_id == effect.printer_id
            assert not (held and row.state.value in ("printing", "post_process")), row
            self.stops.append((effect.printer_id, effect.job_id))
            self.last_stop[(effect.printer_id, effect.job_id)] = self.mono
        elif isinstance(effect, out.EmergencyStop):
            # It stops whatever the printer does: the job it prints and one handed to it
            # whose answer is still out. A stale report of either within the stray
            # interval needs no second stop.
            pid = effect.printer_id
            told = {jid for p, jid in self.starts if p == pid}
            if self.world[pid].job is not None:
                told.add(self.world[pid].job)
            for jid in told:
                self.last_stop[(pid, jid)] = self.mono
            self.world[pid] = World()
        elif isinstance(effect, out.ArmTimer):
            self.timers.append((effect.kind, effect.key))

    def report(self, pid: str, state: PrinterState, job: str | None, progress: float) -> None:
        self.step(i.Report(StatusReport(pid, state, job, progress)))
        slot = self.state.printers[pid]
        busy = state in (PrinterState.PRINTING, PrinterState.PAUSED)
        if busy and job is not None and job != slot.current_job:
            self.strays.append((pid, job, self.mono))

    # ------------------------------------------------------------------ the farm

    @initialize(
        materials=st.lists(st.sampled_from(MATERIALS), min_size=1, max_size=8),
        auto=st.lists(st.booleans(), min_size=8, max_size=8),
    )
    def make_farm(self, materials: list[str], auto: list[bool]) -> None:
        slots = []
        for n, material in enumerate(materials):
            pid = f"p{n}"
            config = PrinterConfig(id=pid, materials=(material,), auto_clear=auto[n])
            slots.append(Slot.from_config(config))
            self.world[pid] = World()
        self.state = FarmState(printers=slots)
        self.step(i.Startup())
        # Every printer says what it does at start: reconciliation ends, dispatch runs.
        for pid in self.world:
            self.report(pid, PrinterState.IDLE, None, 0.0)

    def printer_ids(self) -> list[str]:
        return sorted(self.state.printers)

    # ------------------------------------------------------------------ commands

    @rule(
        target=jobs,
        file=st.sampled_from(FILES),
        material=st.sampled_from((*MATERIALS, None)),
        copies=st.integers(1, 3),
        priority=st.integers(-2, 2),
    )
    def create(self, file: str, material: str | None, copies: int, priority: int) -> Any:
        request = i.JobRequest(filename=file, material=material, copies=copies, priority=priority)
        reply = self.step(i.CreateJobs(request, i.FileFacts()))
        if isinstance(reply, FarmError):
            return multiple()
        self.created.extend(reply.ids)
        return multiple(*reply.ids)

    @rule(job=jobs)
    def cancel(self, job: str) -> None:
        self.step(i.Cancel(job, "test", snapshot=self.rows.get(job)))

    @rule(job=jobs, n=st.integers(0, 7))
    def release(self, job: str, n: int) -> None:
        ids = self.printer_ids()
        self.step(i.Release(job, ids[n % len(ids)]))

    @rule(job=jobs, priority=st.integers(-3, 3))
    def reprioritize(self, job: str, priority: int) -> None:
        self.step(i.Reprioritize(job, priority, snapshot=self.rows.get(job)))

    @rule(job=jobs)
    def jump(self, job: str) -> None:
        self.step(i.Jump(job))

    @rule(job=jobs)
    def ship(self, job: str) -> None:
        self.step(i.Ship(job, "TRACK", snapshot=self.rows.get(job)))

    @rule(n=st.integers(0, 7))
    def clear_plate(self, n: int) -> None:
        ids = self.printer_ids()
        self.step(i.ClearPlate(ids[n % len(ids)]))

    @rule(n=st.integers(0, 7), enabled=st.booleans())
    def maintenance(self, n: int, enabled: bool) -> None:
        ids = self.printer_ids()
        self.step(i.SetMaintenance(ids[n % len(ids)], enabled))

    @rule(paused=st.sampled_from((False, False, False, True)))
    def pause(self, paused: bool) -> None:
        self.step(i.SetPaused(paused))

    @rule()
    def dispatch(self) -> None:
        self.step(i.Dispatch())

    @rule(now=st.integers(0, 9))
    def emergency_stop(self, now: int) -> None:
        if now == 0:  # rare: it pauses the whole farm
            self.step(i.EmergencyStopFarm("test"))

    # ------------------------------------------------------------------ effects come back

    @precondition(lambda self: bool(self.starts))
    @rule(n=st.integers(0, 20), accepted=st.booleans())
    def start_returns(self, n: int, accepted: bool) -> None:
        pid, jid = self.starts.pop(n % len(self.starts))
        outcome = i.StartOutcome.ACCEPTED if accepted else i.StartOutcome.REFUSED
        if accepted:  # the printer really started it, whatever the farm thinks now
            self.world[pid] = World(PrinterState.PRINTING, jid, 0.0)
        self.step(i.StartResult(pid, jid, outcome, "" if accepted else "busy"))

    @precondition(lambda self: bool(self.starts))
    @rule(n=st.integers(0, 20))
    def printer_starts_before_it_answers(self, n: int) -> None:
        """The upload is through and the printer prints; the start's answer is late."""
        pid, jid = self.starts[n % len(self.starts)]
        self.world[pid] = World(PrinterState.PRINTING, jid, 0.0)

    @precondition(lambda self: bool(self.stops))
    @rule(n=st.integers(0, 20), reached=st.booleans())
    def stop_returns(self, n: int, reached: bool) -> None:
        pid, jid = self.stops.pop(n % len(self.stops))
        if reached and self.world[pid].job == jid:
            self.world[pid] = World()
        self.step(i.CommandResult(pid, jid, "cancel", reached, "" if reached else "unreachable"))

    @precondition(lambda self: bool(self.timers))
    @rule(n=st.integers(0, 20))
    def timer_fires(self, n: int) -> None:
        kind, key = self.timers.pop(n % len(self.timers))
        self.step(i.TimerFired(kind, key))

    @rule(dt=st.sampled_from((0.5, 2.0, 5.0, 11.0, 120.0, 4000.0)))
    def time_passes(self, dt: float) -> None:
        self.mono += dt

    @rule(threshold=st.sampled_from((60.0, 900.0)))
    def watchdog(self, threshold: float) -> None:
        self.step(i.WatchdogSweep(threshold))

    @rule()
    def flush(self) -> None:
        self.step(i.FlushProgress())

    # ------------------------------------------------------------------ printers report

    @rule(n=st.integers(0, 7), progress=st.floats(0, 100))
    def true_report(self, n: int, progress: float) -> None:
        pid = self.printer_ids()[n % len(self.world)]
        w = self.world[pid]
        if w.state is PrinterState.PRINTING:
            w.progress = max(w.progress, progress)
        self.report(pid, w.state, w.job, w.progress)

    @rule(
        n=st.integers(0, 7),
        state=st.sampled_from(list(PrinterState)),
        job=st.one_of(st.none(), jobs, st.just("FFFFFFFFFFFFFFFF")),
        progress=st.floats(0, 100),
    )
    def made_up_report(self, n: int, state: PrinterState, job: str | None, progress: float) -> None:
        """Stale, duplicate, out of order or simply wrong: the farm must stay sound."""
        pid = self.printer_ids()[n % len(self.world)]
        self.report(pid, state, job, progress)

    def busy(self) -> list[str]:
        return sorted(pid for pid, w in self.world.items() if w.job is not None)

    @precondition(lambda self: bool(self.busy()))
    @rule(n=st.integers(0, 7), progress=st.floats(1, 99))
    def printer_prints_on(self, n: int, progress: float) -> None:
        busy = self.busy()
        pid = busy[n % len(busy)]
        w = self.world[pid]
        w.progress = max(w.progress, progress)
        self.report(pid, w.state, w.job, w.progress)

    @precondition(lambda self: bool(self.busy()))
    @rule(n=st.integers(0, 7))
    def printer_finishes(self, n: int) -> None:
        busy = self.busy()
        pid = busy[n % len(busy)]
        jid, self.world[pid] = self.world[pid].job, World()
        assert jid is not None
        self.step(i.Report(JobFinished(pid, jid)))
        self.report(pid, PrinterState.IDLE, None, 0.0)

    @rule(n=st.integers(0, 7), job=jobs)
    def printer_fails(self, n: int, job: str) -> None:
        pid = self.printer_ids()[n % len(self.world)]
        if self.world[pid].job == job:
            self.world[pid] = World()
        self.step(i.Report(JobFailed(pid, job, "nozzle clog")))

    @rule(n=st.integers(0, 7))
    def robot_clears(self, n: int) -> None:
        pid = self.printer_ids()[n % len(self.world)]
        self.step(i.Report(PlateCleared(pid)))

    @rule(n=st.integers(0, 7))
    def printer_goes_offline(self, n: int) -> None:
        pid = self.printer_ids()[n % len(self.world)]
        self.step(i.Report(StatusReport(pid, PrinterState.OFFLINE)))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def one_job_per_printer_and_one_printer_per_job(self) -> None:
        active = [j for j in self.rows.values() if j.state.value in ("printing", "post_process")]
        by_printer: dict[str, str] = {}
        for job in active:
            assert job.printer_id is not None
            assert job.printer_id not in by_printer, (job.printer_id, by_printer)
            by_printer[job.printer_id] = job.id
        holders = [s.current_job for s in self.state.printers.values() if s.current_job]
        assert len(holders) == len(set(holders)), holders
        for slot in self.state.printers.values():
            if slot.current_job is not None:
                assert by_printer.get(slot.id) == slot.current_job
        for pid, jid in by_printer.items():
            assert self.state.printers[pid].current_job == jid

    @invariant()
    def every_created_job_exists_once(self) -> None:
        assert len(self.created) == len(set(self.created))
        assert set(self.created) == set(self.rows)

    @invariant()
    def memory_is_the_live_stored_jobs(self) -> None:
        live = {
            jid
            for jid, j in self.rows.items()
            if j.state.value not in ("ready", "shipped", "cancelled")
            and not (j.state.value == "failed" and j.retry_at is None)
        }
        assert set(self.state.jobs) == live
        for jid in live:
            assert self.state.jobs[jid] == self.rows[jid]
        queued = {jid for jid in live if self.rows[jid].state.value == "queued"}
        assert {j.id for j in self.state.queue.ordered()} == queued

    @invariant()
    def a_printer_that_clears_itself_is_never_left_waiting(self) -> None:
        """Liveness: an idle auto-clear printer with a dirty plate has a clear coming."""
        armed = {key for kind, key in self.timers if kind is out.TimerKind.AUTOCLEAR}
        for slot in self.state.printers.values():
            held = self.rows.get(slot.current_job or "")
            waiting = (
                slot.config.auto_clear
                and slot.reported is PrinterState.IDLE
                and (held is None or held.state.value != "printing")
                and slot.handing is None
                and not slot.plate_clear
            )
            assert not waiting or slot.id in armed, slot

    @invariant()
    def a_stray_farm_print_is_told_to_stop(self) -> None:
        for pid, jid, at in self.strays:
            stopped = self.last_stop.get((pid, jid))
            assert stopped is not None and at - stopped < STRAY_STOP_INTERVAL, (pid, jid)
        self.strays.clear()


FarmMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_farm_core = FarmMachine.TestCase


def test_a_silent_printer_that_clears_itself_gets_its_plate_cleared_once_it_is_idle() -> None:
    """Found under load: the watchdog takes the job from a silent auto-clear printer; the
    clear timer fires while the printer still counts as printing (its last word), so it
    must be armed again when the printer reports idle, or it waits forever."""
    m = FarmMachine()
    m.make_farm(["PLA"], [True] * 8)
    (jid,) = m.create("a.gcode", None, 1, 0).values
    m.start_returns(0, True)
    m.printer_prints_on(0, 10.0)  # confirmed, printing
    m.time_passes(4000.0)  # then silence
    m.watchdog(900.0)  # requeued: the plate is not known clear
    assert m.state.jobs[jid].state.value == "queued"
    assert not m.state.printers["p0"].plate_clear
    while m.timers:  # the clear fires now: the printer still counts as printing
        m.timer_fires(0)
    assert not m.state.printers["p0"].plate_clear
    m.stop_returns(0, True)  # the watchdog's stop reached it
    m.true_report(0, 0.0)  # it says idle at last
    m.a_printer_that_clears_itself_is_never_left_waiting()
    while m.timers:
        m.timer_fires(0)
    # cleared, and the queued job went straight back to it
    assert m.state.jobs[jid].state.value == "printing"


def test_a_print_that_ends_before_the_start_answer_is_not_taken_for_a_stray() -> None:
    """A short print can start, finish and be reported before the printer's answer to
    the start comes back: that answer must not stop anything or dirty anything."""
    m = FarmMachine()
    m.make_farm(["PLA"], [False] * 8)
    (jid,) = m.create("a.gcode", None, 1, 0).values
    m.printer_starts_before_it_answers(0)
    m.printer_finishes(0)
    assert m.rows[jid].state.value == "post_process"
    m.start_returns(0, True)  # the answer, late: the farm's _effect check sees any stop
    assert m.stops == []
    assert m.state.printers["p0"].current_job == jid


def test_what_an_ams_reports_is_what_routing_goes_by() -> None:
    """A MaterialsReport replaces the configured materials and colours (and a report
    naming none brings the configured ones back)."""
    from printfarmd.drivers.base import MaterialsReport

    m = FarmMachine()
    m.make_farm(["PLA"], [False] * 8)
    m.step(i.Report(MaterialsReport("p0", ("PETG", "PLA"), ("#000000", "#FF6600"))))
    caps = m.state.printers["p0"].capabilities
    assert caps.materials == ("PETG", "PLA") and caps.colours == ("#000000", "#FF6600")
    reply = m.step(
        i.CreateJobs(
            i.JobRequest(filename="a.gcode", material="PLA", colour="#FF6600"), i.FileFacts()
        )
    )
    assert not isinstance(reply, FarmError)
    assert m.rows[reply.ids[0]].state.value == "printing"  # dispatched to the AMS printer
    m.step(i.Report(MaterialsReport("p0", (), ())))
    assert m.state.printers["p0"].capabilities.materials == ("PLA",)


def test_why_a_queued_job_waits() -> None:
    from printfarmd.core.farm.eligibility import explain_job

    def why_waiting(state: FarmState, job: Job) -> str | None:
        return explain_job(state, job, state.printers.values(), 0.0)

    m = FarmMachine()
    m.make_farm(["PLA", "PLA"], [False] * 8)
    m.pause(True)
    (a,) = m.create("a.gcode", "PLA", 1, 0).values
    assert why_waiting(m.state, m.state.jobs[a]) == "dispatch is paused"
    m.pause(False)  # a goes to p0, b to p1, c waits
    m.create("a.gcode", "PLA", 1, 0)
    (c,) = m.create("a.gcode", "PLA", 1, 0).values
    assert m.state.jobs[c].state is JobState.QUEUED
    assert why_waiting(m.state, m.state.jobs[c]) == (
        "waiting for a free printer (p0 printing; p1 printing)"
    )
    d = c
    reply = m.step(i.CreateJobs(i.JobRequest(filename="a.gcode", material="PETG"), i.FileFacts()))
    assert isinstance(reply, FarmError)  # refused at once: no printer could ever print it
    empty = FarmState(accept_without_printers=True)
    empty.running = True
    assert "announce itself" in (why_waiting(empty, m.state.jobs[d]) or "")
    assert why_waiting(m.state, m.rows[a]) is None  # printing: not waiting


def test_a_finished_print_on_a_printer_still_reporting_it_is_cleared_once_idle() -> None:
    """Found with a real OctoPrint: the job is reported finished while the printer still
    says "printing" for a moment; the clear timer fires then and finds it busy, so the
    printer's idle report must arm it again (the job is on the plate, post_process)."""
    m = FarmMachine()
    m.make_farm(["PLA"], [True] * 8)
    (jid,) = m.create("a.gcode", None, 1, 0).values
    m.start_returns(0, True)
    m.printer_prints_on(0, 50.0)
    m.step(i.Report(JobFinished("p0", jid)))  # finished, but its status still says printing
    m.report("p0", PrinterState.PRINTING, jid, 100.0)
    while m.timers:
        m.timer_fires(0)
    assert m.rows[jid].state.value == "post_process"
    m.report("p0", PrinterState.IDLE, None, 0.0)
    m.a_printer_that_clears_itself_is_never_left_waiting()
    while m.timers:
        m.timer_fires(0)
    assert m.rows[jid].state.value == "ready"
