"""Several daemons, one farm (issue 18, phase 2): real daemons (``printfarmd serve``
subprocesses) over real sockets on one real PostgreSQL server, each driving simulated
printers of its own, sharing the jobs.

What the tests read, and why:

- the event log straight from PostgreSQL (``events``, with the ``node`` column saying
  which daemon appended each row), so a check never depends on the daemon under test;
- every daemon's REST API (``/api/jobs``, ``/api/events/history``), which must show the
  whole farm;
- every daemon's SSE stream ``GET /api/events``, opened *without* ``Last-Event-ID`` before
  any job exists: such a stream replays nothing from the store, so it can only see the
  events of the other daemons if its daemon hears them (LISTEN/NOTIFY, replay after a gap).
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import httpx
import msgspec
import orjson
import psycopg
import pytest

from printfarmd.config import Config, StorageBackend
from tests.conftest import API_KEY, DaemonProcess, make_config, sim_printer, wait_until
from tests.pg_server import PgServer

pytestmark = pytest.mark.slow

#: The smallest demo file (9 min 30 s estimated, no material: any printer takes it).
FILE = "keychain_any.gcode"
#: Simulator speed of the 500-job runs: a print takes 570 s / 3000 = 0.19 s.
FAST = 3000.0
#: Simulator speed where a daemon must be caught with prints under way: about 2.9 s each.
SLOW = 200.0
#: SSE heartbeat of the test daemons (s): the reader threads see a line at least this
#: often, so they notice they should stop, and an idle stream never hits the read timeout.
HEARTBEAT = 0.5
TRANSITION = "job.transition"


# ---------------------------------------------------------------- helpers


def node_config(
    tmp: Path,
    dsn: str,
    node: str,
    printers: Iterable[str],
    *,
    speed: float,
    lease_seconds: float | None = None,
    **sched: Any,
) -> Config:
    """Daemon ``node`` of a farm on ``dsn``: its own data and gcodes folders (the demo
    files, the same on every daemon) and its own simulated printers, all PLA, plates
    clearing themselves."""
    base = tmp / node
    base.mkdir()
    sims = tuple(sim_printer(p, ("PLA",), speed=speed, auto_clear=True) for p in printers)
    config = make_config(base, sims, **sched)
    lease = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
    return msgspec.structs.replace(
        config,
        server=msgspec.structs.replace(
            config.server, node_id=node, sse_heartbeat=HEARTBEAT, **lease
        ),
        storage=msgspec.structs.replace(config.storage, backend=StorageBackend.POSTGRESQL, dsn=dsn),
    )


def printer_ids(node: str, count: int) -> tuple[str, ...]:
    return tuple(f"{node}-p{k}" for k in range(1, count + 1))


def start_farm(
    tmp: Path,
    factory: Any,
    dsn: str,
    nodes: dict[str, tuple[str, ...]],
    *,
    speed: float,
    **kw: Any,
) -> dict[str, DaemonProcess]:
    daemons = {
        node: factory(node_config(tmp, dsn, node, printers, speed=speed, **kw))
        for node, printers in nodes.items()
    }
    for d in daemons.values():
        d.start()
    return daemons


def create(d: DaemonProcess, copies: int, file: str = FILE) -> list[str]:
    """``copies`` jobs created on ``d``; their ids (the daemon acknowledged them)."""
    with d.client() as c:
        r = c.post("/api/jobs", json={"filename": file, "copies": copies})
    assert r.status_code == 201, r.text
    return [j["id"] for j in r.json()["jobs"]]


def health(d: DaemonProcess) -> dict[str, Any]:
    with d.client() as c:
        body: dict[str, Any] = c.get("/api/health").json()
    return body


def epoch_of(d: DaemonProcess) -> int:
    node = health(d).get("node")
    assert isinstance(node, dict), f"/api/health has no node in cluster mode: {health(d)}"
    return int(node["epoch"])


def total_jobs(d: DaemonProcess, status: str | None = None) -> int:
    params: dict[str, Any] = {"limit": 1}
    if status is not None:
        params["status"] = status
    with d.client() as c:
        return int(c.get("/api/jobs", params=params).json()["total"])


@attrs.frozen
class Row:
    """One row of the event log, as stored."""

    seq: int
    type: str
    job_id: str | None
    printer_id: str | None
    from_state: str | None
    to_state: str | None
    reason: str | None
    node: str | None

    @property
    def move(self) -> tuple[str | None, str | None]:
        return (self.from_state, self.to_state)


def event_log(dsn: str) -> list[Row]:
    """The whole event log, in seq order, read from PostgreSQL itself."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT seq, type, job_id, printer_id, from_state, to_state, reason, node "
            "FROM events ORDER BY seq"
        ).fetchall()
    return [Row(*r) for r in rows]


def job_states(dsn: str) -> dict[str, tuple[str, str | None]]:
    """Every job's (state, printer_id), from PostgreSQL."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, state, printer_id FROM jobs").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def transitions(log: Iterable[Row]) -> list[Row]:
    return [r for r in log if r.type == TRANSITION]


def moves_of(log: Iterable[Row], move: tuple[str, str]) -> collections.Counter[str]:
    """How many times each job made ``move`` (from_state, to_state)."""
    return collections.Counter(r.job_id for r in transitions(log) if r.move == move and r.job_id)


def printing_on(dsn: str, printers: set[str]) -> set[str]:
    """Jobs stored as printing on one of ``printers``."""
    return {j for j, (s, p) in job_states(dsn).items() if s == "printing" and p in printers}


def printers_printing(dsn: str) -> set[str]:
    """Printers a job is stored as printing on."""
    return {p for s, p in job_states(dsn).values() if s == "printing" and p}


def last_transitions(log: Iterable[Row]) -> dict[str, Row]:
    """Each job's latest transition."""
    last: dict[str, Row] = {}
    for r in transitions(log):
        if r.job_id:
            last[r.job_id] = r
    return last


def taken_over(log: Iterable[Row], since: int, *, by: str, dead: str) -> set[str]:
    """Jobs daemon ``by`` took back from daemon ``dead`` after seq ``since``: a
    printing -> failed that ``by`` appended with a reason naming ``dead``."""
    return {
        r.job_id
        for r in transitions(log)
        if r.seq > since
        and r.job_id
        and r.move == ("printing", "failed")
        and r.node == by
        and dead in (r.reason or "")
    }


def check_were_on(log: list[Row], jobs: set[str], printers: set[str]) -> None:
    """Each taken-over job was printing on one of ``printers`` (the dead daemon's) right
    before it was taken over."""
    trail: dict[str, list[Row]] = collections.defaultdict(list)
    for r in transitions(log):
        if r.job_id in jobs:
            trail[r.job_id].append(r)
    for j in jobs:
        moves = trail[j]
        k = max(i for i, r in enumerate(moves) if r.move == ("printing", "failed"))
        before = moves[k - 1] if k > 0 else None
        assert before is not None and before.to_state == "printing", (j, moves)
        assert before.printer_id in printers, (j, before)


def history_seqs(d: DaemonProcess) -> list[int]:
    """Every seq of ``d``'s ``/api/events/history``, paged."""
    seqs: list[int] = []
    with d.client() as c:
        while True:
            page = c.get(
                "/api/events/history", params={"after": seqs[-1] if seqs else 0, "limit": 5000}
            ).json()["events"]
            if not page:
                return seqs
            seqs += [e["seq"] for e in page]


class EventStream:
    """``GET /api/events`` of one daemon, read in a thread with httpx streaming.

    Opened without ``Last-Event-ID`` (live only: nothing replayed from the store).
    ``opened`` is set at the ``retry:`` line, which the daemon sends after it subscribed
    to its bus, so everything committed afterwards must reach the stream. Should the
    connection end, the thread reconnects with ``Last-Event-ID`` (counted in
    ``reconnects``)."""

    def __init__(self, d: DaemonProcess) -> None:
        self.url = d.url
        self.opened = threading.Event()
        self.stopping = threading.Event()
        #: seq -> (type, job_id, from_state, to_state) of every message with an id.
        self.seen: dict[int, tuple[str, str | None, str | None, str | None]] = {}
        self.duplicates: list[int] = []
        self.reconnects = 0
        self.errors: list[str] = []
        self.last_id: int | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"sse {d.url}", daemon=True)

    def start(self) -> EventStream:
        self._thread.start()
        if not self.opened.wait(20):
            raise AssertionError(f"the event stream of {self.url} did not open: {self.errors}")
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(timeout=10)

    def transition_seqs(self) -> set[int]:
        with self._lock:
            return {seq for seq, m in self.seen.items() if m[0] == TRANSITION}

    def _run(self) -> None:
        timeout = httpx.Timeout(10.0)
        headers = {"X-Api-Key": API_KEY, "Accept": "text/event-stream"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=timeout) as client:
            while not self.stopping.is_set():
                resume = {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}
                try:
                    with client.stream("GET", "/api/events", headers=resume) as r:
                        if r.status_code == 200:
                            self._read(r.iter_lines())
                        else:
                            self.errors.append(f"status {r.status_code}")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                if self.stopping.is_set():
                    return
                self.reconnects += 1
                time.sleep(0.2)  # a client's pause before it reconnects

    def _read(self, lines: Iterable[str]) -> None:
        seq: int | None = None
        kind: str | None = None
        data: list[str] = []
        for line in lines:
            if self.stopping.is_set():
                return
            if line == "":
                if seq is not None and data:
                    self._dispatch(seq, kind or "message", "\n".join(data))
                seq, kind, data = None, None, []
                continue
            if line.startswith(":"):
                continue  # heartbeat
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "retry":
                self.opened.set()
            elif field == "id":
                seq = int(value)
            elif field == "event":
                kind = value
            elif field == "data":
                data.append(value)

    def _dispatch(self, seq: int, kind: str, data: str) -> None:
        body = orjson.loads(data)
        with self._lock:
            if seq in self.seen:
                self.duplicates.append(seq)
            self.seen[seq] = (
                kind,
                body.get("job_id"),
                body.get("from_state"),
                body.get("to_state"),
            )
            self.last_id = seq if self.last_id is None else max(self.last_id, seq)


def open_streams(daemons: Iterable[DaemonProcess]) -> list[EventStream]:
    return [EventStream(d).start() for d in daemons]


def check_streams_saw(streams: list[EventStream], log: list[Row], within: float) -> None:
    """Every stream received every job transition of the log (waiting a while for the
    last ones to arrive), no message twice."""
    want = {r.seq for r in transitions(log)}

    def missing() -> dict[str, list[int]]:
        return {s.url: sorted(want - s.transition_seqs())[:20] for s in streams}

    wait_until(
        lambda: not any(missing().values()),
        within,
        lambda: (
            f"every stream to see all {len(want)} transitions; missing (first 20): "
            f"{missing()}; reconnects {[s.reconnects for s in streams]}"
        ),
    )
    for s in streams:
        assert not s.duplicates, f"{s.url} sent seqs twice: {s.duplicates[:20]}"


def stop_streams(streams: list[EventStream]) -> None:
    for s in streams:
        s.stop()


def check_printed_once(log: list[Row], jobs: Iterable[str]) -> None:
    """Every job in ``jobs`` finished printing exactly once; no job of the log twice."""
    finished = moves_of(log, ("printing", "post_process"))
    twice = {j: n for j, n in finished.items() if n > 1}
    assert not twice, f"jobs finished printing more than once: {twice}"
    never = [j for j in jobs if finished[j] != 1]
    assert not never, f"{len(never)} jobs never finished printing: {never[:10]}"


# ---------------------------------------------------------------- 500 jobs


@pytest.mark.parametrize("count", [2, 3], ids=["two_daemons", "three_daemons"])
def test_daemons_print_500_jobs_exactly_once(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str, count: int
) -> None:
    """Two (three) daemons on one database, three printers each, 500 jobs created on all
    of them: every job is claimed once (one queued -> printing) and printed once (one
    printing -> post_process), every printer prints, every daemon's API shows the whole
    farm and every daemon's live stream shows every transition of every job."""
    nodes = {f"n{k}": printer_ids(f"n{k}", 3) for k in range(1, count + 1)}
    daemons = start_farm(tmp_path, daemon_factory, pg_dsn, nodes, speed=FAST)
    streams = open_streams(daemons.values())
    try:
        ids: list[str] = []
        order = list(daemons.values())
        for batch in range(25):  # 25 batches of 20, round robin over the daemons
            ids += create(order[batch % len(order)], 20)
        assert len(set(ids)) == 500

        def ready_everywhere() -> bool:
            return all(total_jobs(d, "ready") == 500 for d in order)

        wait_until(
            ready_everywhere,
            240,
            lambda: f"500 ready jobs on every daemon: {[total_jobs(d, 'ready') for d in order]}",
        )
        log = event_log(pg_dsn)
        check_streams_saw(streams, log, within=60)
    finally:
        stop_streams(streams)

    assert {j: s for j, (s, _) in job_states(pg_dsn).items()} == dict.fromkeys(ids, "ready")
    claimed = moves_of(log, ("queued", "printing"))
    assert {j: n for j, n in claimed.items() if n != 1} == {}, "a job was started twice"
    assert set(claimed) == set(ids)
    check_printed_once(log, ids)
    # The load is spread: every printer of every daemon printed.
    per_printer = collections.Counter(
        r.printer_id for r in transitions(log) if r.move == ("printing", "post_process")
    )
    every = {p for printers in nodes.values() for p in printers}
    assert set(per_printer) == every, f"prints per printer: {dict(per_printer)}"
    # Each daemon printed on its own printers only, and appended those events itself.
    for node, printers in nodes.items():
        starts = {
            r.node
            for r in transitions(log)
            if r.printer_id in printers and r.to_state == "printing"
        }
        assert starts == {node}, f"printers of {node} started by {starts}"
    # Every daemon serves the whole farm's log and jobs.
    seqs = [r.seq for r in log]
    for d in order:
        assert history_seqs(d) == seqs
        assert total_jobs(d) == 500


# ---------------------------------------------------------------- kill -9


def slow_pair(tmp: Path, factory: Any, dsn: str) -> tuple[DaemonProcess, DaemonProcess]:
    """n1 and n2, two printers each, prints of about 3 s, a 3 s lease, quick retries."""
    nodes = {"n1": printer_ids("n1", 2), "n2": printer_ids("n2", 2)}
    daemons = start_farm(
        tmp, factory, dsn, nodes, speed=SLOW, lease_seconds=3.0, retry_backoff=(0.5,)
    )
    return daemons["n1"], daemons["n2"]


def test_kill_9_of_a_daemon_mid_run_is_taken_over_and_it_rejoins(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str
) -> None:
    """n2 is killed -9 while its printers print. Its lease expires and n1 takes its
    printing jobs back (printing -> failed -> queued, the reason naming n2) and prints
    them and the rest of the queue; nothing acknowledged is lost, nothing is printed
    twice. n2 restarted with the same config rejoins (a new lease epoch) and prints
    again, without acting on a job n1 took over.

    How "not acting on a taken-over job" is checked: after the restart every event n2
    appends for a job is either a *new* claim (queued -> printing on one of its printers)
    or follows one in that job's trail, or it ends a job that was left on n2's printers
    and never taken over (a full plate: post_process -> ready). An event of the old
    attempt (printing -> anything, for a job n1 took over) with no new claim before it is
    exactly what fencing forbids, and fails the test."""
    n1, n2 = slow_pair(tmp_path, daemon_factory, pg_dsn)
    victim_printers = set(printer_ids("n2", 2))
    epoch_before = epoch_of(n2)
    acked = create(n1, 4) + create(n2, 4)

    # A client keeps creating jobs on n2 until it dies (at most 8 more).
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=n2.url, headers={"X-Api-Key": API_KEY}, timeout=5.0) as c:
            for _ in range(8):
                if stop.is_set():
                    return
                try:
                    r = c.post("/api/jobs", json={"filename": FILE})
                except httpx.HTTPError:
                    return  # n2 died under us: this one was never acknowledged
                if r.status_code == 201:
                    acked.extend(j["id"] for j in r.json()["jobs"])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(
            lambda: printers_printing(pg_dsn) >= victim_printers,
            60,
            "both printers of n2 printing",
        )
        assert n2.kill(signal.SIGKILL) == -signal.SIGKILL
    finally:
        stop.set()
        worker.join(timeout=20)

    # n2 appends nothing any more. Its printing jobs are the ones n1 takes back: wait
    # until no job is printing on n2's printers, then read who moved them.
    kill_seq = event_log(pg_dsn)[-1].seq
    wait_until(
        lambda: not printing_on(pg_dsn, victim_printers),
        60,
        lambda: f"n1 to take over n2's printing jobs: {printing_on(pg_dsn, victim_printers)}",
    )
    log = event_log(pg_dsn)
    orphans = taken_over(log, kill_seq, by="n1", dead="n2")
    assert orphans, "n2 was printing nothing when it was killed, or nobody took it over"
    check_were_on(log, orphans, victim_printers)
    left_on_plates = {
        j
        for j, r in last_transitions(log).items()
        if r.to_state == "post_process" and r.printer_id in victim_printers
    }

    # n1 prints everything else (the taken-over jobs too); only full plates of n2 wait.
    def drained() -> bool:
        states = job_states(pg_dsn)
        return all(
            s == "ready" or (j in left_on_plates and s == "post_process")
            for j, (s, _) in states.items()
        )

    wait_until(drained, 120, lambda: f"n1 to print the rest: {job_states(pg_dsn)}")
    states = job_states(pg_dsn)
    assert set(acked) <= set(states), "an acknowledged job is missing"
    for j in orphans:
        state, printer = states[j]
        assert state == "ready" and printer in printer_ids("n1", 2), (j, state, printer)
    before_restart = event_log(pg_dsn)
    check_printed_once(before_restart, orphans)
    restart_seq = before_restart[-1].seq

    # n2 comes back with the same config and node id.
    n2.start()
    assert epoch_of(n2) > epoch_before
    acked += create(n2, 4) + create(n1, 2)

    def n2_printed_again() -> bool:
        return any(
            r.seq > restart_seq
            and r.node == "n2"
            and r.move == ("printing", "post_process")
            and r.printer_id in victim_printers
            for r in transitions(event_log(pg_dsn))
        )

    wait_until(n2_printed_again, 60, "n2 to print a job after it rejoined")
    wait_until(
        lambda: all(s == "ready" for s, _ in job_states(pg_dsn).values()),
        120,
        lambda: f"every job ready: {job_states(pg_dsn)}",
    )
    log = event_log(pg_dsn)
    assert set(acked) <= set(job_states(pg_dsn))
    check_printed_once(log, acked)
    check_no_stale_acts(log, restart_seq, "n2", victim_printers, allowed_to_end=left_on_plates)


def check_no_stale_acts(
    log: list[Row],
    since: int,
    node: str,
    its_printers: set[str],
    *,
    allowed_to_end: set[str],
) -> None:
    """After seq ``since``, ``node`` appended no transition of a job unless it made the
    job its own first: created it (None -> created) or claimed it anew (queued ->
    printing on one of its printers). The one exception: a job left on one of its full
    plates and never taken over (``allowed_to_end``) may be cleared (post_process ->
    ready)."""
    own: set[str] = set()
    stale: list[Row] = []
    for r in transitions(log):
        if r.seq <= since or r.node != node or r.job_id is None:
            continue
        if r.move == (None, "created") or (
            r.move == ("queued", "printing") and r.printer_id in its_printers
        ):
            own.add(r.job_id)
        elif r.job_id not in own and not (
            r.job_id in allowed_to_end and r.move == ("post_process", "ready")
        ):
            stale.append(r)
    assert not stale, f"{node} acted on jobs it had not made its own again: {stale[:10]}"


# ---------------------------------------------------------------- a frozen daemon thaws


def test_a_frozen_daemon_that_thaws_after_its_lease_expired_does_not_act_on_taken_over_jobs(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str
) -> None:
    """Fencing by lease epoch, the case a restart does not show: n2 is stopped
    (SIGSTOP) with prints under way, its lease expires, n1 takes those jobs back and
    starts them again on its own printers (so they are stored as ``printing`` once
    more). Then n2 is continued: its in-process simulated printers report the old
    prints finished, and its memory still says it prints those jobs. It must learn that
    its lease epoch is gone and re-read before acting: no transition of n2 touches a
    taken-over job unless it claimed it anew, each such job finishes once (on n1), and
    n2 carries on under a new epoch and prints again."""
    n1, n2 = slow_pair(tmp_path, daemon_factory, pg_dsn)
    victim_printers = set(printer_ids("n2", 2))
    assert n2.proc is not None
    epoch_before = epoch_of(n2)
    acked = create(n1, 3) + create(n2, 3)
    wait_until(
        lambda: printers_printing(pg_dsn) >= victim_printers, 60, "both printers of n2 printing"
    )
    n2.proc.send_signal(signal.SIGSTOP)
    thawed = False
    try:
        stop_seq = event_log(pg_dsn)[-1].seq
        wait_until(
            lambda: not printing_on(pg_dsn, victim_printers),
            60,
            lambda: f"n1 to take over n2's jobs: {printing_on(pg_dsn, victim_printers)}",
        )
        orphans = taken_over(event_log(pg_dsn), stop_seq, by="n1", dead="n2")
        assert orphans, "n2 was printing nothing when it was stopped, or nobody took it over"

        def restarted_on_n1() -> bool:
            starts = {
                r.job_id
                for r in transitions(event_log(pg_dsn))
                if r.seq > stop_seq
                and r.move == ("queued", "printing")
                and r.printer_id in printer_ids("n1", 2)
            }
            return orphans <= starts

        wait_until(restarted_on_n1, 90, "n1 to start the taken-over jobs again")
        thaw_seq = event_log(pg_dsn)[-1].seq
        n2.proc.send_signal(signal.SIGCONT)
        thawed = True
    finally:
        if not thawed:
            n2.proc.send_signal(signal.SIGCONT)

    def new_epoch() -> bool:
        assert n2.proc is not None and n2.proc.poll() is None, f"n2 exited:\n{n2.log()[-3000:]}"
        try:
            return epoch_of(n2) > epoch_before
        except httpx.HTTPError:
            return False

    wait_until(new_epoch, 60, "n2 to carry on under a new lease epoch")
    acked += create(n2, 2)
    wait_until(
        lambda: all(s == "ready" for s, _ in job_states(pg_dsn).values()),
        120,
        lambda: f"every job ready: {job_states(pg_dsn)}",
    )
    log = event_log(pg_dsn)
    check_printed_once(log, acked)
    for j in orphans:
        finish = [
            (r.node, r.printer_id)
            for r in transitions(log)
            if r.job_id == j and r.move == ("printing", "post_process")
        ]
        assert len(finish) == 1 and finish[0][0] == "n1", (j, finish)
        assert finish[0][1] in printer_ids("n1", 2), (j, finish)
    check_no_stale_acts(log, thaw_seq, "n2", victim_printers, allowed_to_end=set())


# ---------------------------------------------------------------- PostgreSQL restarted


def test_postgresql_restart_mid_run(
    tmp_path: Path, daemon_factory: Any, pg_server: PgServer
) -> None:
    """The PostgreSQL server stopped and started again while two daemons print: during
    the outage creations answer 503 on both; afterwards both are healthy and take jobs
    again by themselves, every job acknowledged before and after is there and prints
    once, and the live stream of each daemon, kept open across the outage, saw every
    transition of the farm: its daemon's listener reconnected and replayed what it missed
    (a stream that had to reconnect would hide that, so it may not)."""
    dsn = pg_server.fresh_dsn()
    nodes = {"n1": printer_ids("n1", 2), "n2": printer_ids("n2", 2)}
    # Prints of about 1.9 s: printing goes on across the outage. The outage is a few
    # seconds, well inside the default lease (15 s): nobody's jobs are taken over.
    daemons = start_farm(tmp_path, daemon_factory, dsn, nodes, speed=300.0)
    n1, n2 = daemons["n1"], daemons["n2"]
    streams = open_streams(daemons.values())
    try:
        acked = create(n1, 8) + create(n2, 8)
        wait_until(
            lambda: sum(s == "printing" for s, _ in job_states(dsn).values()) >= 3,
            60,
            "prints under way on both daemons",
        )
        pg_server.stop()
        try:
            for d in (n1, n2):
                with d.client() as c:
                    refused = c.post("/api/jobs", json={"filename": FILE})
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "storage_busy"
                assert d.proc is not None and d.proc.poll() is None
        finally:
            pg_server.start()

        def accepted(d: DaemonProcess) -> Callable[[], bool]:
            def attempt() -> bool:
                try:
                    with d.client() as c:
                        r = c.post("/api/jobs", json={"filename": FILE, "copies": 4})
                except httpx.TimeoutException:
                    return False  # outcome unknown: not counted as acknowledged
                if r.status_code == 201:
                    acked.extend(j["id"] for j in r.json()["jobs"])
                    return True
                assert r.status_code == 503, r.text
                return False

            return attempt

        def healthy(d: DaemonProcess) -> Callable[[], bool]:
            return lambda: health(d)["status"] == "ok"

        for d in (n1, n2):
            wait_until(accepted(d), 60, f"{d.url} to acknowledge a creation again")
            wait_until(healthy(d), 60, f"{d.url} healthy")
        acked += create(n1, 4) + create(n2, 4)
        wait_until(
            lambda: all(s == "ready" for s, _ in job_states(dsn).values()),
            180,
            lambda: f"every job ready: {job_states(dsn)}",
        )
        log = event_log(dsn)
        check_streams_saw(streams, log, within=60)
    finally:
        stop_streams(streams)
    assert [s.reconnects for s in streams] == [0, 0], [s.errors for s in streams]
    states = job_states(dsn)
    assert set(acked) <= set(states)
    check_printed_once(log, acked)
    claimed = moves_of(log, ("queued", "printing"))
    assert {j: n for j, n in claimed.items() if n != 1} == {}, "a job was started twice"
    for d in (n1, n2):
        assert history_seqs(d) == [r.seq for r in log]


def printers_of(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    with d.client() as c:
        return {p["id"]: p for p in c.get("/api/printers").json()["printers"]}


def test_any_daemon_lists_every_printer_and_cancels_a_job_printing_on_another(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str
) -> None:
    """n1 lists n2's printers (with their node, as n2 last showed them), refuses to act
    on them or pause their print (409 naming n2), and cancels a job that prints on n2's
    printer: n2 stops the print and the printer comes free."""
    nodes = {"n1": ("n1-p1",), "n2": ("n2-p1",)}
    daemons = start_farm(tmp_path, daemon_factory, pg_dsn, nodes, speed=20.0, lease_seconds=3.0)
    n1, n2 = daemons["n1"], daemons["n2"]
    create(n2, 3)
    wait_until(lambda: "n2-p1" in printers_printing(pg_dsn), 60, "n2-p1 printing")
    wait_until(
        lambda: printers_of(n1).get("n2-p1", {}).get("state") == "printing",
        30,
        lambda: f"n1 listing n2-p1 printing: {printers_of(n1)}",
    )
    listed = printers_of(n1)
    assert listed["n2-p1"]["node"] == "n2" and listed["n1-p1"]["node"] == "n1"
    target = listed["n2-p1"]["current_job"]
    assert target is not None
    with n1.client() as c:
        assert c.get("/api/printers/n2-p1").json()["node"] == "n2"
        refused = c.post("/api/printers/n2-p1/clear")
        assert refused.status_code == 409, refused.text
        assert "daemon n2" in refused.json()["error"]["message"]
        refused = c.post(f"/api/jobs/{target}/pause")  # only n2 can pause its printer
        assert refused.status_code == 409, refused.text
        assert "daemon n2" in refused.json()["error"]["message"]
        r = c.post(f"/api/jobs/{target}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "cancelled"

    # n2 hears of the cancel and stops its printer; the next job goes to it.
    def n2_stopped_it() -> bool:
        p = printers_of(n2)["n2-p1"]
        return p["current_job"] != target and p["state"] != "offline"

    wait_until(n2_stopped_it, 30, lambda: f"n2-p1 letting go of {target}: {printers_of(n2)}")
    assert job_states(pg_dsn)[target][0] == "cancelled"
    log = event_log(pg_dsn)
    stops = [r for r in log if r.type == "job.transition" and r.job_id == target]
    assert [r.move for r in stops][-1] == ("printing", "cancelled")
    assert stops[-1].node == "n1"
    # Nothing but n1's cancel ended that attempt (n2 did not finish or fail it after).
    assert not any(r.job_id == target and r.seq > stops[-1].seq for r in transitions(log))


def test_an_emergency_stop_on_one_daemon_stops_every_daemons_printers(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str
) -> None:
    """The Moonraker facade's emergency stop on n1 stops n1's prints and, through the
    event feed, n2's as well; dispatch is paused on both, and the stop is relayed once."""
    nodes = {"n1": printer_ids("n1", 2), "n2": printer_ids("n2", 2)}
    daemons = start_farm(tmp_path, daemon_factory, pg_dsn, nodes, speed=20.0, lease_seconds=3.0)
    n1, n2 = daemons["n1"], daemons["n2"]
    create(n1, 6)
    everyone = set(nodes["n1"]) | set(nodes["n2"])
    wait_until(lambda: printers_printing(pg_dsn) >= everyone, 60, "all four printers printing")
    with n1.client() as c:
        r = c.post("/printer/emergency_stop")
        assert r.status_code == 200, r.text

    wait_until(lambda: not printers_printing(pg_dsn), 30, "no job printing anywhere")
    log = event_log(pg_dsn)
    stops = [r for r in log if r.type == "farm.emergency_stop"]
    assert sorted(r.node or "" for r in stops) == ["n1", "n2"], stops
    failed = [r for r in transitions(log) if r.move == ("printing", "failed")]
    assert {r.printer_id for r in failed} == everyone
    assert all("emergency stop" in (r.reason or "") for r in failed)
    for d in (n1, n2):
        with d.client() as c:
            wait_until(
                lambda c=c: c.get("/api/orchestrator/status").json()["paused"],
                30,
                "dispatch paused on every daemon",
            )
    # Nothing starts again while the farm is stopped.
    assert not printers_printing(pg_dsn)
