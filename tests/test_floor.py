"""Issue 17: the hot paths at the stack's floor, shown by behaviour rather than by timing
(the timings are bench/bench_moonraker.py's): one encoding per queue notification for
every websocket client, a verified key remembered per connection, the front's fast
answer equal to the one through Quart, the queue's wire form re-encoding only new jobs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from printfarmd.api import auth
from printfarmd.api.moonraker import facade as facade_module
from printfarmd.core.queue import JobQueue
from printfarmd.models import Job, JobState
from tests.conftest import API_KEY, LiveFarm, live_farm, make_config, raw_http, sim_printer
from tests.moonraker_client import ws_url

A = "benchy_pla.gcode"


async def queue_jobs(farm: LiveFarm, n: int) -> list[str]:
    for start in range(0, n, 1000):
        r = await farm.client.post(
            "/server/job_queue/job", json={"filenames": [A] * min(1000, n - start)}
        )
        assert r.status_code == 200, r.text
    r = await farm.client.get("/server/job_queue/status")
    jobs = r.json()["result"]["queued_jobs"]
    assert len(jobs) == n
    return [j["job_id"] for j in jobs]


async def test_a_queue_change_is_encoded_once_for_fifty_websocket_clients(
    farm: LiveFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await queue_jobs(farm, 1000)
    encoded: list[bytes] = []
    real = facade_module.encode_queue_notification

    def counting(action: str, queue: bytes, state: str) -> bytes:
        frame = real(action, queue, state)
        encoded.append(frame)
        return frame

    monkeypatch.setattr(facade_module, "encode_queue_notification", counting)
    received: list[str] = []
    clients = 50

    async def client(*, task_status: trio.TaskStatus[None]) -> None:
        async with open_websocket_url(
            ws_url(farm.url),
            extra_headers=[(b"X-Api-Key", API_KEY.encode())],
            max_message_size=1 << 24,
        ) as ws:
            # A round trip: the connection is served (and subscribed) from here on.
            await ws.send_message('{"jsonrpc":"2.0","method":"server.connection.id","id":1}')
            assert '"result"' in await ws.get_message()
            task_status.started()
            while True:
                msg = await ws.get_message()
                if "notify_job_queue_changed" in msg:
                    received.append(str(msg))
                    return

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                await nursery.start(client)
            r = await farm.client.post("/server/job_queue/jump", params={"job_id": ids[-1]})
            assert r.status_code == 200
    assert len(received) == clients
    # One encoding, and every client got exactly its bytes.
    assert len(encoded) == 1, f"{len(encoded)} encodings for one change"
    assert set(received) == {encoded[0].decode()}
    note = json.loads(received[0])["params"][0]
    assert note["action"] == "jobs_added"
    assert [j["job_id"] for j in note["updated_queue"]] == [ids[-1], *ids[:-1]]


def test_the_wire_form_encodes_each_job_once_and_matches_a_plain_encoding() -> None:
    def job(i: int, queued_at: float) -> Job:
        return Job(
            id=f"{i:016X}",
            filename=f'part {i} \u00e9"quoted".gcode',
            state=JobState.QUEUED,
            priority=0,
            position=i + 1,
            group_id="g",
            name="part",
            created_at=1_700_000_000.0 + i / 3,
            queued_at=queued_at,
        )

    def plain(jobs: list[Job], now: float) -> bytes:
        return orjson.dumps(
            [
                {
                    "filename": j.filename,
                    "job_id": j.id,
                    "time_added": j.created_at,
                    "time_in_queue": max(now - (j.queued_at or j.created_at), 0.0),
                }
                for j in jobs
            ]
        )

    wire = facade_module.QueueWire()
    jobs = [job(i, 1_700_000_100.0 + i * 0.7) for i in range(300)]
    queue = JobQueue(jobs)
    now = 1_700_001_000.123
    assert wire.queued_jobs(queue, now) == plain(queue.ordered(), now)
    assert wire.encoded == 300
    # More jobs, one removed, one jumped: only the new ones are encoded again.
    for i in range(300, 310):
        queue.push(job(i, 1_700_000_900.0))
    queue.remove(jobs[5].id)
    queue.jump(jobs[7].id)
    assert wire.queued_jobs(queue, now + 1) == plain(queue.ordered(), now + 1)
    assert wire.encoded == 310
    # A wall clock that stepped back gives no negative ages.
    early = 1_700_000_500.0
    assert wire.queued_jobs(queue, early) == plain(queue.ordered(), early)
    assert wire.queued_jobs(JobQueue(), now) == b"[]"
    # Jobs queued in batches share their queue time: one number per batch.
    for batches in (1, 3):
        batched = JobQueue(job(i, 1_700_000_100.0 + i % batches) for i in range(40))
        for at in (now, early, 1_700_000_101.5):
            assert wire.queued_jobs(batched, at) == plain(batched.ordered(), at)


async def test_a_verified_key_is_remembered_for_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str | None] = []
    real = auth.key_matches

    def counting(presented: str | None, expected: bytes | None) -> bool:
        hashed.append(presented)
        return real(presented, expected)

    monkeypatch.setattr(auth, "key_matches", counting)
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    async with live_farm(config) as farm:
        hashed.clear()
        # One keep-alive connection: the key is hashed once, not per request.
        async with httpx.AsyncClient(base_url=farm.url, headers={"X-Api-Key": API_KEY}) as c:
            for _ in range(5):
                assert (await c.get("/api/jobs")).status_code == 200
                assert (await c.get("/server/job_queue/status")).status_code == 200
        assert hashed == [API_KEY]
        # A new connection is checked afresh.
        async with httpx.AsyncClient(base_url=farm.url, headers={"X-Api-Key": API_KEY}) as c:
            assert (await c.get("/api/jobs")).status_code == 200
            assert len(hashed) == 2
            # Other bytes on a connection that verified a key are checked (and refused).
            r = await c.get("/api/jobs", headers={"X-Api-Key": API_KEY + "x"})
            assert r.status_code == 401
            assert hashed[-1] == API_KEY + "x"
            # A rotated key: what was remembered no longer lets anyone in.
            svc = farm.running.services
            svc.access.update(
                msgspec.structs.replace(config.server, api_key="a-new-key-0123456789")
            )
            assert (await c.get("/api/jobs")).status_code == 401
            r = await c.get("/api/jobs", headers={"X-Api-Key": "a-new-key-0123456789"})
            assert r.status_code == 200


def _head_and_body(raw: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


def _queue_of(body: bytes, headers: dict[str, list[str]]) -> Any:
    if headers.get("content-encoding") == ["gzip"]:
        body = gzip.decompress(body)
    result = json.loads(body)["result"]
    for job in result["queued_jobs"]:
        job.pop("time_in_queue")
    return result


@pytest.mark.parametrize("accept", ["", "gzip"])
async def test_the_fast_status_answer_is_the_one_quart_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accept: str
) -> None:
    fast: list[int] = []
    real = facade_module.Facade.fast_status

    def counting(self: Any, scope: Any, headers: Any) -> Any:
        fast.append(1)
        return real(self, scope, headers)

    monkeypatch.setattr(facade_module.Facade, "fast_status", counting)
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    async with live_farm(config) as farm:
        await queue_jobs(farm, 200)  # > 16 KiB: gzipped for a client that accepts it
        await _compare(farm, fast, accept)


async def _compare(farm: LiveFarm, fast: list[int], accept: str) -> None:
    fast.clear()
    host = farm.url.removeprefix("http://")
    base = (
        f"GET /server/job_queue/status HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {API_KEY}\r\n"
        "Connection: close\r\n"
    )
    if accept:
        base += f"Accept-Encoding: {accept}\r\n"
    # Content-Length: 0 sends the request through Quart (the front answers body-less
    # GETs only); without it the front answers.
    through_quart = await raw_http(farm.url, (base + "Content-Length: 0\r\n\r\n").encode())
    assert fast == []
    answered_fast = await raw_http(farm.url, (base + "\r\n").encode())
    assert fast == [1]
    slow_status, slow_headers, slow_body = _head_and_body(through_quart)
    fast_status, fast_headers, fast_body = _head_and_body(answered_fast)
    assert slow_status == fast_status == 200
    for h in (slow_headers, fast_headers):
        h.pop("date")
        h.pop("content-length")  # the gzipped size depends on the time_in_queue digits
    assert fast_headers == slow_headers
    assert fast_headers["x-content-type-options"] == ["nosniff"]
    assert fast_headers["cache-control"] == ["no-store"]
    assert (fast_headers.get("content-encoding") == ["gzip"]) == (accept == "gzip")
    assert _queue_of(fast_body, fast_headers) == _queue_of(slow_body, slow_headers)


async def test_the_metadata_cache_is_warm_after_start_without_a_request(tmp_path: Path) -> None:
    from printfarmd.services import files

    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    async with live_farm(config) as farm:
        assert farm.owner.ready  # serving and dispatching: start did not wait for it
        root = config.gcodes_path.resolve()
        wanted = {str(root / f.path) for f in files.list_gcodes(root)}
        assert len(wanted) >= 5
        with trio.fail_after(20):
            while not wanted <= {key[0] for key in list(files._meta_cache)}:  # noqa: ASYNC110
                await trio.sleep(0.02)
