"""The owner's part in several daemons sharing one farm (issue 18): another daemon's
rows are applied only when newer than what this daemon committed itself, and its events
reach this daemon's clients once applied. The real owner and store, stub printers."""

from __future__ import annotations

from pathlib import Path

import msgspec
import trio

from printfarmd.core.farm import inputs as i
from printfarmd.core.farm.inputs import JobRequest
from printfarmd.models import Event, JobState
from tests.test_owner import open_farm


async def test_a_row_read_before_our_own_commit_never_undoes_it(tmp_path: Path) -> None:
    async with open_farm(tmp_path, n=1) as farm:
        owner = farm.owner
        job = (await owner.submit(JobRequest(filename="benchy_pla.gcode")))[0][0]
        await farm.settle()
        assert owner.state.jobs[job.id].state is JobState.PRINTING  # dispatched to p0
        ours = max(e.seq for e in await owner.store.events_since(0) if e.job_id == job.id)
        # Another daemon's feed brings the job as it was read before our dispatch.
        stale = msgspec.structs.replace(
            owner.state.jobs[job.id], state=JobState.QUEUED, printer_id=None
        )
        await owner.call(i.SharedChanges(jobs=(stale,), seqs={job.id: ours - 1}))
        assert owner.state.jobs[job.id].state is JobState.PRINTING
        assert farm.printers["p0"].cancelled == []
        # A newer row (another daemon cancelled it) is applied: our printer stops it.
        event = Event(
            seq=ours + 1, type="job.transition", at=0.0, job_id=job.id, to_state="cancelled"
        )
        cancelled = msgspec.structs.replace(owner.state.jobs[job.id], state=JobState.CANCELLED)
        with owner.bus.subscribed(lambda m: isinstance(m, Event)) as heard:
            await owner.call(
                i.SharedChanges(jobs=(cancelled,), seqs={job.id: ours + 1}, events=(event,))
            )
            with trio.fail_after(5):
                # this daemon's clients hear it
                assert await heard.receive_channel.receive() == event
        await farm.settle()
        assert job.id not in owner.state.jobs
        assert farm.printers["p0"].cancelled == [job.id]
        assert owner.state.printers["p0"].current_job is None
