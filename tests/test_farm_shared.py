"""The farm core's part in several daemons sharing one farm (issue 18,
``core/farm/shared.py``): another daemon's commits arriving, a daemon that stopped being
taken over. Deterministic, on the model harness of ``tests/test_farm_core.py`` (which
checks every conditional write against its stored rows, and every stop the farm sends)."""

from __future__ import annotations

import msgspec

from printfarmd.core.farm import inputs as i
from printfarmd.core.farm import outputs as out
from printfarmd.drivers.base import JobFinished
from printfarmd.errors import FarmError
from printfarmd.models import Job, JobState
from tests.test_farm_core import EPOCH, FarmMachine


def printing_farm() -> tuple[FarmMachine, str]:
    """One PLA printer p0 of this daemon, printing job ``jid`` (confirmed)."""
    m = FarmMachine()
    m.make_farm(["PLA"], [False] * 8)
    m.state.cluster = True
    (jid,) = m.create("a.gcode", None, 1, 0).values
    m.start_returns(0, True)
    m.printer_prints_on(0, 10.0)
    assert m.state.printers["p0"].current_job == jid and m.state.printers["p0"].confirmed
    return m, jid


def foreign(m: FarmMachine, job: Job) -> None:
    """``job`` as another daemon committed it: in the shared rows, then heard of."""
    m.rows[job.id] = job
    m.trail.setdefault(job.id, []).append(job.state.value)
    m.step(i.SharedChanges(jobs=(job,), seqs={job.id: 1}))


def test_a_job_another_daemon_cancelled_is_stopped_on_our_printer() -> None:
    m, jid = printing_farm()
    cancelled = msgspec.structs.replace(m.rows[jid], state=JobState.CANCELLED, updated_at=EPOCH + 5)
    m.rows[jid] = cancelled
    m.step(i.SharedChanges(jobs=(cancelled,), seqs={jid: 99}))
    assert ("p0", jid) in m.stops  # told to stop the print
    slot = m.state.printers["p0"]
    assert slot.current_job is None and not slot.plate_clear  # it had printed something
    assert jid not in m.state.jobs  # a cancelled job is not live


def test_a_job_taken_back_from_this_daemon_is_let_go_and_never_written_by_it() -> None:
    m, jid = printing_farm()
    requeued = msgspec.structs.replace(
        m.rows[jid], state=JobState.QUEUED, printer_id=None, retry_count=1
    )
    m.rows[jid] = requeued
    m.trail[jid].append("queued")
    m.step(i.SharedChanges(jobs=(requeued,), resync=True, epoch=7))
    assert ("p0", jid) in m.stops
    assert m.state.printers["p0"].current_job is None
    assert m.state.jobs[jid].state is JobState.QUEUED
    # Its printer finishing the old attempt changes nothing of the job.
    before = m.rows[jid]
    m.step(i.Report(JobFinished("p0", jid)))
    assert m.rows[jid] == before


def test_a_daemon_that_stopped_has_its_printing_jobs_requeued_with_the_fence() -> None:
    m, mine = printing_farm()
    lost = Job(
        id="LOST0000000000001",
        filename="a.gcode",
        state=JobState.PRINTING,
        printer_id="q1",
        progress=42.0,
        created_at=EPOCH,
        updated_at=EPOCH,
        started_at=EPOCH,
    )
    alive = msgspec.structs.replace(lost, id="ALIVE000000000001", printer_id="r1")
    foreign(m, lost)
    foreign(m, alive)
    assert m.state.printers["p0"].current_job == mine  # the foreign jobs are not ours

    tx_records: list[object] = []
    original = m._store

    def spy(records: list[object]) -> None:
        tx_records.extend(records)
        original(records)  # type: ignore[arg-type]

    m._store = spy  # type: ignore[method-assign]
    taken = m.step(i.NodeLost("nq", 3, ("q1", "q2"), 20.0))
    assert taken == [lost.id]
    assert tx_records[0] == out.FenceNode("nq", 3)  # the fence commits with the takeover
    requeued = m.rows[lost.id]
    assert requeued.state is JobState.QUEUED and requeued.retry_count == 1
    assert requeued.resume_progress == 42.0  # a printer that can resume goes on from there
    assert "node nq stopped renewing its lease" in (requeued.last_error or "")
    assert m.rows[alive.id].state is JobState.PRINTING  # another daemon's, alive
    assert m.rows[mine].state is JobState.PRINTING  # ours
    assert not [s for s in m.stops if s[1] == lost.id]  # nobody here drives q1


def test_a_job_none_of_this_daemons_printers_can_print_is_taken_in_a_cluster() -> None:
    m = FarmMachine()
    m.make_farm(["PLA"], [False] * 8)
    refused = m.step(i.CreateJobs(i.JobRequest("a.gcode", material="PETG"), i.FileFacts()))
    assert isinstance(refused, FarmError)
    m.state.cluster = True  # another daemon's printer may print it
    created = m.step(i.CreateJobs(i.JobRequest("a.gcode", material="PETG"), i.FileFacts()))
    assert not isinstance(created, FarmError)
    assert m.state.jobs[created.ids[0]].state is JobState.QUEUED


def test_at_start_a_job_printing_on_another_daemons_printer_is_left_alone() -> None:
    m = FarmMachine()
    m.make_farm(["PLA"], [False] * 8)
    elsewhere = Job(
        id="ELSEWHERE00000001",
        filename="a.gcode",
        state=JobState.PRINTING,
        printer_id="q1",
        created_at=EPOCH,
        updated_at=EPOCH,
    )
    removed = msgspec.structs.replace(elsewhere, id="REMOVED000000001", printer_id="old")
    for job in (elsewhere, removed):
        m.rows[job.id] = job
        m.trail[job.id] = ["printing"]
    state = m.state
    m.state = type(state)(
        printers=state.printers.values(),
        jobs=[elsewhere, removed],
        cluster=True,
        dropped=("old",),  # this daemon drove "old" before its restart, no more
    )
    m.step(i.Startup())
    assert m.rows[elsewhere.id].state is JobState.PRINTING
    assert m.rows[removed.id].state is JobState.FAILED


def test_a_retry_another_daemon_scheduled_is_armed_here_too() -> None:
    m = FarmMachine()
    m.make_farm(["PLA"], [False] * 8)
    m.state.cluster = True
    waiting = Job(
        id="RETRY00000000001",
        filename="a.gcode",
        state=JobState.FAILED,
        retry_at=EPOCH + 60.0,
        retry_count=1,
        created_at=EPOCH,
        updated_at=EPOCH,
    )
    m.timers.clear()
    foreign(m, waiting)
    assert (out.TimerKind.RETRY, waiting.id) in m.timers
    m.mono += 61.0
    m.step(i.TimerFired(out.TimerKind.RETRY, waiting.id))
    assert m.rows[waiting.id].state is not JobState.FAILED  # back in the queue (or printing)
