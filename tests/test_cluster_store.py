"""Several daemons on one PostgreSQL database (issue 18), at the store: the claim that
keeps two daemons from starting one job, the fence that keeps a daemon taken over from
writing, the lease, and the event feed saying who appended what. Two stores on one real
PostgreSQL server, as two daemons would have them. The whole daemons are in
``tests/test_cluster.py``; the owner's part in ``tests/test_cluster_owner.py``."""

from __future__ import annotations

import msgspec
import pytest

from printfarmd.core.farm import outputs as out
from printfarmd.errors import Fenced, StaleWrite, StorageBusy
from printfarmd.models import JobState
from printfarmd.store import cluster
from printfarmd.store.postgresql import PgStore, open_pg_store
from printfarmd.store.upkeep import UpkeepStore
from tests.test_store import created_event, mkjob


async def _join(store: PgStore, printers: tuple[str, ...], lease: float = 60.0) -> int:
    assert store.membership is not None
    member = store.membership

    def run(conn: cluster.Conn) -> tuple[int, tuple[str, ...]]:
        return cluster.join(conn, member.node, printers, lease)

    # join runs its own transaction: on a reader connection, not in the writer's.
    epoch, _ = await store.run_read(run)
    member.epoch = epoch
    return epoch


async def test_two_daemons_never_both_start_one_job(pg_dsn: str) -> None:
    async with open_pg_store(pg_dsn, node="n1") as a, open_pg_store(pg_dsn, node="n2") as b:
        await _join(a, ("a1",))
        await _join(b, ("b1",))
        job = mkjob(state=JobState.QUEUED)
        await a.commit([out.InsertJob(job), out.AppendEvent(created_event(job))])
        on_a = msgspec.structs.replace(job, state=JobState.PRINTING, printer_id="a1")
        on_b = msgspec.structs.replace(job, state=JobState.PRINTING, printer_id="b1")
        await b.commit([out.UpdateJob(on_b, JobState.QUEUED)])
        with pytest.raises(StaleWrite, match="claimed by another daemon"):
            await a.commit([out.UpdateJob(on_a, JobState.QUEUED)])
        stored = await a.get_job(job.id)
        assert stored is not None and stored.printer_id == "b1"


async def test_a_daemon_taken_over_writes_nothing_until_it_rejoins(pg_dsn: str) -> None:
    async with open_pg_store(pg_dsn, node="n1") as a, open_pg_store(pg_dsn, node="n2") as b:
        assert a.membership is not None and b.membership is not None
        # n1's lease is already over (a negative lease: expired when taken).
        old = await _join(a, ("a1",), lease=-1.0)
        await _join(b, ("b1",))
        peers = {p.node: p for p in await b.run_read(cluster.peers)}
        assert peers["n1"].expires_in < 0 and peers["n2"].expires_in > 0
        # n2 takes n1 over: the fence commits with what n2 decided.
        job = mkjob(state=JobState.QUEUED)
        await b.commit(
            [out.FenceNode("n1", old), out.InsertJob(job), out.AppendEvent(created_event(job))]
        )
        # A second takeover of the same epoch is refused whole.
        other = mkjob(state=JobState.QUEUED)
        with pytest.raises(StaleWrite):
            await b.commit([out.FenceNode("n1", old), out.InsertJob(other)])
        assert await b.get_job(other.id) is None
        # n1 is fenced: any write of it fails and stores nothing; its lease is not renewed.
        late = mkjob(state=JobState.QUEUED)
        with pytest.raises(Fenced):
            await a.commit([out.InsertJob(late)])
        assert await a.get_job(late.id) is None
        assert not await a.run_read(lambda c: cluster.renew(c, a.membership, 60.0))  # type: ignore[arg-type]
        # Rejoined under a new epoch, it writes again.
        assert await _join(a, ("a1",)) > old + 1
        await a.commit([out.InsertJob(late)])
        assert await a.get_job(late.id) is not None


async def test_a_lease_still_running_is_not_taken_over(pg_dsn: str) -> None:
    async with open_pg_store(pg_dsn, node="n1") as a, open_pg_store(pg_dsn, node="n2") as b:
        epoch = await _join(a, ("a1",))
        await _join(b, ("b1",))
        with pytest.raises(StaleWrite, match="renewed"):
            await b.commit([out.FenceNode("n1", epoch)])
        job = mkjob()
        await a.commit([out.InsertJob(job)])  # n1 writes on


async def test_the_feed_says_which_daemon_appended_each_event(pg_dsn: str) -> None:
    async with open_pg_store(pg_dsn, node="n1") as a, open_pg_store(pg_dsn, node="n2") as b:
        await _join(a, ())
        await _join(b, ())
        j1, j2 = mkjob(), mkjob()
        await a.commit([out.InsertJob(j1), out.AppendEvent(created_event(j1))])
        await b.commit([out.InsertJob(j2), out.AppendEvent(created_event(j2))])
        rows = await a.run_read(lambda c: cluster.events_after(c, 0))
        assert [(ev.job_id, node) for ev, node in rows] == [(j1.id, "n1"), (j2.id, "n2")]
        assert rows[0][0].seq < rows[1][0].seq


async def test_a_daemon_writes_nothing_before_it_joined(pg_dsn: str) -> None:
    async with open_pg_store(pg_dsn, node="n1") as a:
        with pytest.raises(Fenced):
            await a.commit([out.InsertJob(mkjob())])


async def test_one_node_id_is_one_daemon(pg_dsn: str) -> None:
    async with open_pg_store(pg_dsn, node="n1"):
        with pytest.raises(StorageBusy, match="as node n1"):
            async with open_pg_store(pg_dsn, node="n1"):
                pass  # pragma: no cover
        # A daemon without a node id cannot share the database with a cluster either.
        with pytest.raises(StorageBusy, match="one daemon per database"):
            async with open_pg_store(pg_dsn):
                pass  # pragma: no cover


def _usage(key: str, printer: str) -> out.RecordUsage:
    return out.RecordUsage(
        key, "A" * 16, printer, 7, "completed", 1.0, 12.0, 60.0, 0, 0, 0, "EUR", 1.0, True
    )


async def test_each_daemon_reports_the_spool_usage_of_its_own_printers(pg_dsn: str) -> None:
    """Both daemons read one outbox; each sends Spoolman only its printers' rows, so no
    usage is reported twice."""
    async with open_pg_store(pg_dsn, node="n1") as a, open_pg_store(pg_dsn, node="n2") as b:
        await _join(a, ("a1",))
        await _join(b, ("b1",))
        await a.commit([_usage("k-a", "a1")])
        await b.commit([_usage("k-b", "b1")])
        outbox = UpkeepStore(a)
        assert [r.key for r in await outbox.pending()] == ["k-a", "k-b"]
        assert [r.key for r in await outbox.pending(["a1"])] == ["k-a"]
        assert [r.key for r in await UpkeepStore(b).pending(["b1"])] == ["k-b"]
        assert await outbox.pending([]) == []
