"""Server-Sent Events over real loopback sockets: the job stream, the event stream with
filters, replay with Last-Event-ID, heartbeats, a client that never reads, and shutdown
with streams open (in-process and as a real ``printfarmd serve`` process)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from printfarmd.api.events import (
    EventFilter,
    event_frame,
    job_is_final,
    parse_last_event_id,
)
from printfarmd.config import Config
from printfarmd.models import Event, Job, JobState, PrinterState
from printfarmd.services.bus import Bus, ProgressUpdate
from tests.conftest import API_KEY, LiveFarm, live_farm, make_config, sim_printer
from tests.sse_client import SSEClient, SSEMessage, StreamEnded

KEY = {"X-Api-Key": API_KEY}


def sse_config(tmp: Path, **server: Any) -> Config:
    printers = (
        sim_printer("p1", ("PLA",), speed=3000.0),
        sim_printer("p2", ("PLA", "PETG"), speed=3000.0),
    )
    config = make_config(tmp, printers, dispatch_paused=True)
    return msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, **server))


@pytest.fixture
async def sse_farm(tmp_path: Path) -> AsyncIterator[LiveFarm]:
    async with live_farm(sse_config(tmp_path, sse_heartbeat=0.2)) as f:
        yield f


async def open_stream(farm: LiveFarm, path: str, **headers: str) -> SSEClient:
    client = await SSEClient.open(farm.url, path, {**KEY, **headers})
    assert client.status == 200, client.status
    assert client.headers["content-type"].startswith("text/event-stream")
    return client


async def submit(farm: LiveFarm, **body: Any) -> list[dict[str, Any]]:
    r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode", **body})
    assert r.status_code == 201, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


async def messages_until(client: SSEClient, done: Any, within: float = 15.0) -> list[SSEMessage]:
    """Messages (no comments) until ``done(messages)`` holds."""
    got: list[SSEMessage] = []
    with trio.fail_after(within):
        while not done(got):
            got.append(await client.next_message())
    return got


async def until(predicate: Callable[[], bool], within: float = 10.0, poll: float = 0.01) -> None:
    """Poll ``predicate`` until it holds, failing after ``within`` seconds."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polling state owned elsewhere, with a deadline
            await trio.sleep(poll)


async def history(farm: LiveFarm, **params: Any) -> list[dict[str, Any]]:
    r = await farm.client.get("/api/events/history", params={"limit": 5000, **params})
    assert r.status_code == 200
    events: list[dict[str, Any]] = r.json()["events"]
    return events


# ------------------------------------------------------------------ the job stream


async def test_job_stream_sends_the_state_at_once_then_each_change_and_ends_when_final(
    sse_farm: LiveFarm,
) -> None:
    farm = sse_farm
    job = (await submit(farm))[0]
    stream = await open_stream(farm, f"/api/jobs/{job['id']}/stream")
    first = await stream.next_message()
    assert first.event == "job" and first.json()["id"] == job["id"]
    assert first.json()["state"] == "queued"

    await farm.client.post("/api/orchestrator/resume")
    transitions: list[dict[str, Any]] = []
    progress: list[dict[str, Any]] = []
    with trio.fail_after(20):
        while not transitions or transitions[-1]["to_state"] != "post_process":
            msg = await stream.next_message()
            if msg.event == "progress":
                progress.append(msg.json())
            else:
                assert msg.event == "job.transition" and msg.id == msg.json()["seq"]
                transitions.append(msg.json())
        printer = transitions[-1]["printer_id"]
        assert (await farm.client.post(f"/api/printers/{printer}/clear")).status_code == 200
        msg = await stream.next_message()
        while msg.event == "progress":
            msg = await stream.next_message()
        transitions.append(msg.json())
        r = await farm.client.post(f"/api/jobs/{job['id']}/ship", json={"tracking": "1Z"})
        assert r.status_code == 200
        rest = []
        with pytest.raises(StreamEnded):
            while True:  # the stream ends by itself after the final state
                rest.append(await stream.next_message())
    await stream.aclose()
    transitions += [m.json() for m in rest if m.event == "job.transition"]
    assert [t["to_state"] for t in transitions] == ["printing", "post_process", "ready", "shipped"]
    seqs = [t["seq"] for t in transitions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert progress and all(p["job_id"] == job["id"] for p in progress)
    # exactly the job's changes since it was queued, as the event log has them
    logged = [e for e in await history(farm, job=job["id"]) if e["type"] == "job.transition"]
    assert [e["seq"] for e in logged if e["seq"] > logged[3]["seq"]] == seqs


async def test_job_stream_of_a_finished_job_sends_it_and_ends(sse_farm: LiveFarm) -> None:
    farm = sse_farm
    job = (await submit(farm))[0]
    assert (await farm.client.post(f"/api/jobs/{job['id']}/cancel", json={})).status_code == 200
    stream = await open_stream(farm, f"/api/jobs/{job['id']}/stream")
    msg = await stream.next_message()
    assert msg.event == "job" and msg.json()["state"] == "cancelled"
    with trio.fail_after(5), pytest.raises(StreamEnded):
        await stream.next_message()
    await stream.aclose()


async def test_job_stream_ends_when_the_job_fails_for_good_but_not_on_a_retried_failure(
    tmp_path: Path,
) -> None:
    printers = (sim_printer("p1", ("PLA",), failure_rate=1.0),)
    config = make_config(tmp_path, printers, max_retries=1, retry_backoff=(0.0,))
    async with live_farm(config) as farm:
        await farm.client.post("/api/orchestrator/pause")
        job = (await submit(farm))[0]
        stream = await open_stream(farm, f"/api/jobs/{job['id']}/stream")
        assert (await stream.next_message()).json()["state"] == "queued"
        await farm.client.post("/api/orchestrator/resume")
        states: list[str] = []
        with trio.fail_after(30), pytest.raises(StreamEnded):
            while True:
                msg = await stream.next_message()
                if msg.event == "job.transition":
                    states.append(msg.json()["to_state"])
                    if msg.json()["to_state"] == "failed":
                        # a failed print leaves the plate dirty: clear it for the retry
                        r = await farm.client.post("/api/printers/p1/clear")
                        assert r.status_code == 200, r.text
        await stream.aclose()
        assert states == ["printing", "failed", "queued", "printing", "failed"]
        final = (await farm.client.get(f"/api/jobs/{job['id']}")).json()
        assert final["state"] == "failed" and final["retry_at"] is None


async def test_job_stream_refuses_bad_and_unknown_ids(sse_farm: LiveFarm) -> None:
    for path, status in (
        ("/api/jobs/0123456789ABCDEF/stream", 404),
        ("/api/jobs/not-a-job/stream", 404),
        ("/api/jobs/0123456789abcdef/stream", 404),
    ):
        r = await sse_farm.client.get(path)
        assert r.status_code == status
        assert r.json()["error"]["code"] == "not_found"
        assert "Traceback" not in r.text and "/" not in r.json()["error"]["message"]


# ------------------------------------------------------------------ the event stream


async def test_event_stream_delivers_changes_in_order_with_the_log_seq_as_id(
    sse_farm: LiveFarm,
) -> None:
    farm = sse_farm
    stream = await open_stream(farm, "/api/events")
    jobs = await submit(farm, copies=3)
    await farm.client.post(
        "/api/orchestrator/reprioritize", json={"jobId": jobs[1]["id"], "priority": 7}
    )
    await farm.client.post("/api/orchestrator/pause")
    logged = await history(farm)
    got = await messages_until(stream, lambda m: len(m) == len(logged))
    await stream.aclose()
    assert [m.id for m in got] == [e["seq"] for e in logged]
    assert [m.event for m in got] == [e["type"] for e in logged]
    assert [m.json() for m in got] == logged
    assert {"job.transition", "job.reprioritized", "orchestrator.paused"} <= {m.event for m in got}


async def test_event_stream_filters_by_job_printer_and_type(sse_farm: LiveFarm) -> None:
    farm = sse_farm
    a, b = await submit(farm), await submit(farm)
    by_job = await open_stream(farm, f"/api/events?job={b[0]['id']}")
    by_type = await open_stream(farm, "/api/events?type=job.reprioritized,printer.maintenance")
    by_printer = await open_stream(farm, "/api/events?printer=p2&type=printer.maintenance")
    for job in (a[0], b[0]):
        await farm.client.post(
            "/api/orchestrator/reprioritize", json={"jobId": job["id"], "priority": 3}
        )
    for pid in ("p1", "p2"):
        await farm.client.post(f"/api/printers/{pid}/maintenance", json={"enabled": True})
    await farm.client.post(f"/api/jobs/{b[0]['id']}/cancel", json={})

    job_msgs = await messages_until(by_job, lambda m: len(m) == 2)
    assert [m.event for m in job_msgs] == ["job.reprioritized", "job.transition"]
    assert {m.json()["job_id"] for m in job_msgs} == {b[0]["id"]}
    type_msgs = await messages_until(by_type, lambda m: len(m) == 4)
    assert [m.event for m in type_msgs] == ["job.reprioritized"] * 2 + ["printer.maintenance"] * 2
    printer_msgs = await messages_until(by_printer, lambda m: len(m) == 1)
    assert printer_msgs[0].json()["printer_id"] == "p2"
    # nothing else arrives on the narrow streams: the next thing is a heartbeat
    for stream in (by_job, by_type, by_printer):
        with trio.fail_after(5):
            assert (await stream.next()).comment == "heartbeat"
        await stream.aclose()


async def test_heartbeats_keep_an_idle_stream_alive(sse_farm: LiveFarm) -> None:
    stream = await open_stream(sse_farm, "/api/events?type=nothing.ever")
    beats = 0
    with trio.fail_after(5):
        while beats < 3:
            msg = await stream.next()
            assert msg.comment is not None, msg
            beats += msg.comment == "heartbeat"
    await stream.aclose()


@pytest.mark.parametrize(
    ("path", "headers", "message"),
    [
        ("/api/events", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ("/api/events", {"Last-Event-ID": "-1"}, "Last-Event-ID"),
        ("/api/events", {"Last-Event-ID": "9" * 30}, "Last-Event-ID"),
        ("/api/events?last_event_id=1.5", {}, "Last-Event-ID"),
        ("/api/events?job=<script>", {}, "job:"),
        ("/api/events?printer=a%20b", {}, "printer:"),
    ],
)
async def test_event_stream_refuses_bad_parameters(
    sse_farm: LiveFarm, path: str, headers: dict[str, str], message: str
) -> None:
    r = await sse_farm.client.get(path, headers=headers)
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["code"] == "bad_request" and message in body["error"]["message"]
    assert "<script>" not in r.text


# ------------------------------------------------------------------ replay


async def test_reconnecting_with_last_event_id_gets_exactly_what_was_missed(
    sse_farm: LiveFarm,
) -> None:
    farm = sse_farm
    first = await open_stream(farm, "/api/events")
    await submit(farm, copies=2)  # 8 events
    seen = await messages_until(first, lambda m: len(m) == 8)
    await first.aclose()
    last = seen[-1].id
    assert last is not None

    # missed while disconnected
    missed_jobs = await submit(farm, copies=3)
    stop_writing = trio.Event()
    written = 0

    async def keep_writing() -> None:
        # changes keep arriving *while* the client reconnects and replays
        nonlocal written
        while not stop_writing.is_set():
            job = missed_jobs[written % 3]
            await farm.client.post(
                "/api/orchestrator/reprioritize", json={"jobId": job["id"], "priority": written}
            )
            written += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_writing)
        await until(lambda: written >= 5)
        second = await open_stream(farm, "/api/events", **{"Last-Event-ID": str(last)})
        await until(lambda: written >= 30)
        stop_writing.set()
    logged = await history(farm, after=last)
    got = await messages_until(second, lambda m: len(m) == len(logged))
    await second.aclose()
    assert [m.id for m in got] == [e["seq"] for e in logged]  # no gap, no duplicate
    assert got[0].id == last + 1
    assert len(logged) == 12 + written


async def test_replay_respects_the_filters(sse_farm: LiveFarm) -> None:
    farm = sse_farm
    a = (await submit(farm))[0]
    b = (await submit(farm))[0]
    stream = await open_stream(farm, f"/api/events?job={a['id']}", **{"Last-Event-ID": "0"})
    got = await messages_until(stream, lambda m: len(m) == 4)
    await stream.aclose()
    assert {m.json()["job_id"] for m in got} == {a["id"]} != {b["id"]}
    assert [m.json()["to_state"] for m in got] == ["created", "validated", "sliced", "queued"]


# ------------------------------------------------------------------ slow clients

ESTABLISHED = "01"


def server_side_state(server_port: int, client_port: int) -> str | None:
    """The kernel's TCP state (hex, as in /proc/net/tcp) of the server's end of the
    connection from ``client_port``, or None once it is gone."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if (
            int(local.split(":")[1], 16) == server_port
            and int(remote.split(":")[1], 16) == client_port
        ):
            return state
    return None


async def test_a_client_that_never_reads_is_dropped_while_another_keeps_receiving(
    tmp_path: Path,
) -> None:
    async with live_farm(sse_config(tmp_path, sse_buffer=64)) as farm:
        bus = farm.running.services.bus
        stuck = await SSEClient.open(farm.url, "/api/events", KEY, rcvbuf=4096, read_head=False)
        healthy = await open_stream(farm, "/api/events")
        await until(lambda: bus.statistics().subscribers == 2)
        received: list[SSEMessage] = []

        async def read_healthy() -> None:
            with trio.fail_after(60):
                while True:
                    received.append(await healthy.next_message())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_healthy)
            # 4 events of ~300 bytes per job, in bursts of 40 (the buffer holds 64) that
            # the healthy client reads as they come: they fill the stuck socket's
            # buffers, then its bus buffer
            with trio.fail_after(30):
                while bus.statistics().dropped_subscribers < 1:
                    await submit(farm, copies=10)
                    status = await farm.client.get("/api/orchestrator/status")
                    target: int = status.json()["last_event_seq"]
                    await until(lambda t=target: bool(received) and received[-1].id == t)
            last = (await history(farm, after=0, limit=1))[0]["seq"]
            total = (await farm.client.get("/api/orchestrator/status")).json()["last_event_seq"]
            await until(lambda: bool(received) and received[-1].id == total, within=20)
            nursery.cancel_scope.cancel()
        # the healthy client got every event, in order, none twice
        assert [m.id for m in received] == list(range(last, total + 1))
        assert bus.statistics().subscribers == 1  # the stuck one is gone
        # the server closed the stuck connection *while the client still is not
        # reading*: its side left ESTABLISHED (the unsent bytes keep its FIN queued)
        server_port = int(farm.url.rsplit(":", 1)[1])
        client_port = stuck.stream.socket.getsockname()[1]
        await until(lambda: server_side_state(server_port, client_port) != ESTABLISHED)
        # and reading it now ends (after the bytes that were already in flight)
        with trio.fail_after(10):
            while await stuck.stream.receive_some(65536):
                pass
        await stuck.aclose()
        await healthy.aclose()
        # and new clients are served as before
        again = await open_stream(farm, "/api/events", **{"Last-Event-ID": str(total - 1)})
        assert (await again.next_message()).id == total
        await again.aclose()


async def test_in_process_shutdown_with_open_streams_does_not_hang(tmp_path: Path) -> None:
    config = sse_config(tmp_path)
    # Shutdown must not hang on a client that stops reading (how quick it is: bench/).
    with trio.fail_after(30):
        async with live_farm(config) as farm:
            healthy = await open_stream(farm, "/api/events")
            job_stream_id = (await submit(farm))[0]["id"]
            job_stream = await open_stream(farm, f"/api/jobs/{job_stream_id}/stream")
            stuck = await SSEClient.open(farm.url, "/api/events", KEY, rcvbuf=4096, read_head=False)
            # enough to fill the stuck client's socket (its writer blocks), not its buffer
            for _ in range(4):
                await submit(farm, copies=10)
            farm.stop.set()
    for stream in (healthy, job_stream):
        with trio.fail_after(5), pytest.raises(StreamEnded):
            while True:
                await stream.next()
        await stream.aclose()
    await stuck.aclose()


def test_sigterm_with_open_streams_exits_and_ends_them(tmp_path: Path, daemon_factory: Any) -> None:
    daemon = daemon_factory(sse_config(tmp_path))
    daemon.start()
    assert daemon.proc is not None

    async def scenario() -> list[str]:
        healthy = await open_stream_url(daemon.url, "/api/events")
        stuck = await SSEClient.open(daemon.url, "/api/events", KEY, rcvbuf=4096, read_head=False)
        async with httpx.AsyncClient(base_url=daemon.url, headers=KEY) as client:
            for _ in range(4):  # fills the stuck client's socket, not its buffer
                r = await client.post(
                    "/api/jobs", json={"filename": "benchy_pla.gcode", "copies": 10}
                )
                assert r.status_code == 201
        daemon.proc.send_signal(signal.SIGTERM)
        ended: list[str] = []
        with trio.fail_after(10):
            try:
                while True:
                    await healthy.next()
            except StreamEnded as exc:
                ended.append(str(exc))
            await until(lambda: daemon.proc.poll() is not None)
        await healthy.aclose()
        await stuck.aclose()
        return ended

    # The 10 s deadline above catches a hang; how fast SIGTERM ends it is a benchmark.
    ended = trio.run(scenario)
    assert daemon.proc.returncode == 0, daemon.log()
    assert ended == ["response ended"]  # a clean end of the response, not a cut


async def open_stream_url(url: str, path: str) -> SSEClient:
    client = await SSEClient.open(url, path, KEY)
    assert client.status == 200
    return client


# ------------------------------------------------------------------ pure parts


def test_a_frame_is_one_data_line_whatever_the_text() -> None:
    ev = Event(seq=7, type="job.transition", at=0.0, job_id="A" * 16, reason="a\n\ndata: x\r\n")
    text = event_frame(ev).decode()
    assert text.startswith("id: 7\nevent: job.transition\ndata: {")
    assert text.endswith("}\n\n") and text.count("\n") == 4  # no forged fields or messages
    assert event_frame(ev) is event_frame(ev)  # encoded once for every client


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [(None, None, None), ("", None, None), ("0", None, 0), (" 42 ", "7", 42), (None, "7", 7)],
)
def test_last_event_id_parsing(header: str | None, query: str | None, expected: int | None) -> None:
    assert parse_last_event_id(header, query) == expected


def test_filters_apply_to_progress_updates_too() -> None:
    p = ProgressUpdate("p1", PrinterState.PRINTING, "J" * 16, 50.0, None)
    assert EventFilter().accepts(p)
    assert EventFilter(printer_id="p1", types=frozenset({"progress"})).accepts(p)
    assert not EventFilter(printer_id="p2").accepts(p)
    assert not EventFilter(types=frozenset({"job.transition"})).accepts(p)
    assert EventFilter(job_id="J" * 16).accepts(p)


def test_final_states() -> None:
    job = Job(id="A" * 16, filename="x.gcode")
    assert job_is_final(msgspec.structs.replace(job, state=JobState.SHIPPED))
    assert job_is_final(msgspec.structs.replace(job, state=JobState.CANCELLED))
    assert job_is_final(msgspec.structs.replace(job, state=JobState.FAILED, retry_at=None))
    assert not job_is_final(msgspec.structs.replace(job, state=JobState.FAILED, retry_at=5.0))
    assert not job_is_final(msgspec.structs.replace(job, state=JobState.READY))


async def test_bus_tells_a_subscriber_why_it_ended() -> None:
    bus = Bus(buffer_size=2)
    why: list[tuple[str, bool]] = []
    slow = bus.subscribe(on_end=lambda dropped: why.append(("slow", dropped)))
    quick = bus.subscribe(on_end=lambda dropped: why.append(("quick", dropped)))
    with bus.subscribed(on_end=lambda dropped: why.append(("gone", dropped))):
        pass  # unsubscribing yourself is not an "end" the bus reports
    for seq in range(1, 4):
        bus.publish(Event(seq=seq, type="t", at=0.0))
        if seq < 3:
            await quick.receive_channel.receive()
    assert why == [("slow", True)] and slow.dropped
    bus.close()
    assert why == [("slow", True), ("quick", False)]
    late = bus.subscribe()  # born ended after close()
    with pytest.raises(trio.EndOfChannel):
        await late.receive_channel.receive()
