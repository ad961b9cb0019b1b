"""Conformance of ``server.job_queue.*`` with the seed document, over HTTP and the
websocket, against the real daemon on a real socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.conftest import API_KEY, LiveFarm, live_farm, make_config, raw_http, sim_printer
from tests.moonraker_client import open_rpc

DATA = Path(__file__).parent / "data" / "moonraker"
A, B, C = "benchy_pla.gcode", "calibration_cube_pla.gcode", "keychain_any.gcode"
JOB_KEYS = {"filename", "job_id", "time_added", "time_in_queue"}


def check_status(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed's Job Queue Status shape, field names and types exact."""
    assert set(body) == {"queued_jobs", "queue_state"}
    assert body["queue_state"] in ("ready", "loading", "starting", "paused")
    for job in body["queued_jobs"]:
        assert set(job) == JOB_KEYS
        assert isinstance(job["filename"], str)
        assert isinstance(job["job_id"], str) and len(job["job_id"]) == 16
        assert isinstance(job["time_added"], float)
        assert isinstance(job["time_in_queue"], float) and job["time_in_queue"] >= 0
    return list(body["queued_jobs"])


async def result(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"result"}
    return body["result"]


def names(jobs: list[dict[str, Any]]) -> list[str]:
    return [j["filename"] for j in jobs]


async def test_seed_examples_over_http(farm: LiveFarm) -> None:
    c = farm.client
    status = await result(await c.get("/server/job_queue/status"))
    assert check_status(status) == [] and status["queue_state"] == "paused"  # fixture: paused
    # post_job with a JSON body (seed example), then with the comma-separated query form
    body = await result(
        await c.post("/server/job_queue/job", json={"filenames": [A, B], "reset": False})
    )
    assert names(check_status(body)) == [A, B]
    body = await result(await c.post(f"/server/job_queue/job?filenames={C},{A}"))
    jobs = check_status(body)
    assert names(jobs) == [A, B, C, A]
    # jump (seed: the job moves to the front)
    body = await result(await c.post(f"/server/job_queue/jump?job_id={jobs[1]['job_id']}"))
    assert [j["job_id"] for j in check_status(body)][:2] == [jobs[1]["job_id"], jobs[0]["job_id"]]
    # delete_job: unknown ids are ignored
    ids = f"{jobs[2]['job_id']},0000000000000000"
    body = await result(await c.delete(f"/server/job_queue/job?job_ids={ids}"))
    assert jobs[2]["job_id"] not in [j["job_id"] for j in check_status(body)]
    # start -> ready (or loading while a job is handed over), pause -> paused
    body = await result(await c.post("/server/job_queue/start"))
    assert body["queue_state"] in ("ready", "loading")
    body = await result(await c.post("/server/job_queue/pause"))
    assert body["queue_state"] == "paused"
    # delete all
    body = await result(await c.delete("/server/job_queue/job?all=true"))
    assert check_status(body) == [] or all(j["filename"] for j in body["queued_jobs"])


async def test_documented_errors_over_http_and_websocket(farm: LiveFarm) -> None:
    c = farm.client
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", "/server/job_queue/job", {}, 400, "No data for argument: filenames"),
        (
            "POST",
            "/server/job_queue/job",
            {"filenames": [A, "nope.gcode"]},
            400,
            "G-Code File nope.gcode does not exist",
        ),
        ("POST", "/server/job_queue/jump", {"job_id": "DEADBEEF"}, 400, "Invalid job id: DEADBEEF"),
        ("DELETE", "/server/job_queue/job", {}, 400, "No data for argument: job_ids"),
    ]
    for verb, path, params, code, message in cases:
        r = await c.request(verb, path, json=params)
        assert r.status_code == code, (path, r.text)
        assert r.json() == {"error": {"code": code, "message": message}}
    async with open_rpc(farm.url) as rpc:
        for method, params, code, message in [
            ("server.job_queue.post_job", {}, 400, "No data for argument: filenames"),
            (
                "server.job_queue.post_job",
                {"filenames": ["nope.gcode"]},
                400,
                "G-Code File nope.gcode does not exist",
            ),
            ("server.job_queue.jump", {"job_id": "DEADBEEF"}, 400, "Invalid job id: DEADBEEF"),
            ("server.job_queue.nope", {}, -32601, "Method not found"),
        ]:
            reply = await rpc.request(method, params)
            assert reply == {
                "jsonrpc": "2.0",
                "error": {"code": code, "message": message},
                "id": reply["id"],
            }
    # nothing was queued by any of the failed calls
    status = await result(await c.get("/server/job_queue/status"))
    assert status["queued_jobs"] == []


async def test_http_and_jsonrpc_give_the_same_results(farm: LiveFarm) -> None:
    c = farm.client
    await result(await c.post("/server/job_queue/job", json={"filenames": [A, B]}))
    http = await result(await c.get("/server/job_queue/status"))
    r = await c.post(
        "/server/jsonrpc",
        json={"jsonrpc": "2.0", "method": "server.job_queue.status", "id": 7},
    )
    over_post = r.json()
    assert over_post["id"] == 7
    async with open_rpc(farm.url) as rpc:
        over_ws = await rpc.call("server.job_queue.status")
    for other in (over_post["result"], over_ws):
        assert other["queue_state"] == http["queue_state"]
        assert [(j["job_id"], j["filename"], j["time_added"]) for j in other["queued_jobs"]] == [
            (j["job_id"], j["filename"], j["time_added"]) for j in http["queued_jobs"]
        ]


async def test_notification_follows_the_response_and_never_has_an_id(farm: LiveFarm) -> None:
    async with open_rpc(farm.url) as rpc:
        added = await rpc.call("server.job_queue.post_job", {"filenames": [A]})
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert "id" not in note and note["jsonrpc"] == "2.0"
        (payload,) = note["params"]
        assert set(payload) == {"action", "updated_queue", "queue_state"}
        assert payload["action"] == "jobs_added"
        assert [j["job_id"] for j in payload["updated_queue"]] == [
            j["job_id"] for j in added["queued_jobs"]
        ]
        # the response came first
        first_resp = next(i for i, f in enumerate(rpc.frames) if "id" in f)
        first_note = next(i for i, f in enumerate(rpc.frames) if "method" in f)
        assert first_resp < first_note
        # delete -> jobs_removed; start/pause -> state_changed with updated_queue null
        await rpc.call(
            "server.job_queue.delete_job", {"job_ids": [added["queued_jobs"][0]["job_id"]]}
        )
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert note["params"][0]["action"] == "jobs_removed"
        assert note["params"][0]["updated_queue"] == []
        await rpc.call("server.job_queue.start")
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert note["params"][0] == {
            "action": "state_changed",
            "updated_queue": None,
            "queue_state": "ready",
        }
        # a change made over REST shows up live
        r = await farm.client.post("/api/orchestrator/pause")
        assert r.status_code == 200
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert note["params"][0]["queue_state"] == "paused"
        r = await farm.client.post("/api/jobs", json={"filename": B})
        assert r.status_code == 201
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert note["params"][0]["action"] == "jobs_added"
        assert names(note["params"][0]["updated_queue"]) == [B]
        assert note["params"][0]["updated_queue"][0]["job_id"] == r.json()["jobs"][0]["id"]


async def test_reset_reorders_keeping_identities_and_changes_counts(farm: LiveFarm) -> None:
    c = farm.client
    r = await c.post("/api/jobs", json={"filename": A, "priority": 5})
    rest_id = r.json()["jobs"][0]["id"]
    jobs = check_status(
        await result(await c.post("/server/job_queue/job", json={"filenames": [B, C, B]}))
    )
    assert names(jobs) == [A, B, C, B]
    ids = [j["job_id"] for j in jobs]
    # Mainsail's drag-and-drop: the whole list in a new order, plus one more copy of C,
    # minus one B.
    new = check_status(
        await result(
            await c.post("/server/job_queue/job", json={"filenames": [C, B, A, C], "reset": True})
        )
    )
    assert names(new) == [C, B, A, C]
    assert [j["job_id"] for j in new][:3] == [ids[2], ids[1], ids[0]]  # identities kept
    assert new[3]["job_id"] not in ids  # a new job for the extra entry
    kept = await c.get(f"/api/jobs/{rest_id}")
    assert kept.json()["priority"] == 5 and kept.json()["state"] == "queued"  # history kept
    dropped = await c.get(f"/api/jobs/{ids[3]}")
    assert dropped.json()["state"] == "cancelled"
    # the same order is what the farm dispatches
    assert [j.id for j in farm.owner.queue.ordered()] == [j["job_id"] for j in new]


async def test_jsonrpc_framing(farm: LiveFarm) -> None:
    async with open_rpc(farm.url) as rpc:
        reply = await rpc.send_raw(
            json.dumps({"jsonrpc": "2.0", "method": "server.job_queue.status", "id": 0})
        )
        assert reply["id"] == 0 and "result" in reply
        batch = await rpc.send_raw(
            json.dumps(
                [
                    {"jsonrpc": "2.0", "method": "server.job_queue.status", "id": 1},
                    {"jsonrpc": "2.0", "method": "server.info", "id": 2},
                ]
            )
        )
        assert [m["id"] for m in batch] == [1, 2]
        assert await rpc.send_raw("{not json") == {
            "jsonrpc": "2.0",
            "error": {"code": -32700, "message": "Parse error"},
            "id": None,
        }
        bad = await rpc.send_raw(json.dumps({"method": "server.info", "id": 3}))
        assert bad["error"]["code"] == -32600 and bad["id"] == 3
        bad = await rpc.send_raw(
            json.dumps({"jsonrpc": "2.0", "method": "server.info", "params": [1], "id": 4})
        )
        assert bad["error"]["code"] == -32602


async def test_unauthenticated_websocket_gets_unauthorized_and_no_notifications(
    farm: LiveFarm,
) -> None:
    async with open_rpc(farm.url, key=None) as anon:
        for method in ("server.info", "server.job_queue.status", "server.job_queue.post_job"):
            reply = await anon.request(method, {"filenames": [A]})
            assert reply["error"] == {"code": -32602, "message": "Unauthorized"}
        reply = await anon.request("server.connection.identify", {"client_name": "x"})
        assert reply["error"] == {"code": -32602, "message": "Unauthorized"}
        r = await farm.client.post("/server/job_queue/job", json={"filenames": [A]})
        assert r.status_code == 200
        assert await anon.quiet(0.3) == []
        # identify with the API key authenticates the socket
        ok = await anon.call(
            "server.connection.identify",
            {
                "client_name": "t",
                "version": "1",
                "type": "web",
                "url": "x",
                "api_key": farm.running.services.config.server.api_key,
            },
        )
        assert isinstance(ok["connection_id"], int)
        assert "queued_jobs" in await anon.call("server.job_queue.status")
    # HTTP without a key: Moonraker's 401 shape
    async with httpx.AsyncClient(base_url=farm.url) as c:
        r = await c.get("/server/job_queue/status")
        assert r.status_code == 401
        assert r.json() == {"error": {"code": 401, "message": "Unauthorized"}}


async def test_open_websockets_end_promptly_at_shutdown(tmp_path: Path) -> None:
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    with trio.fail_after(5):  # hypercorn's graceful timeout is longer: we close them ourselves
        async with live_farm(config) as farm, open_rpc(farm.url) as rpc:
            await rpc.call("server.job_queue.status")
            farm.stop.set()
            with pytest.raises(ConnectionClosed):
                while True:
                    await rpc.ws.get_message()
            assert rpc.ws.closed is not None and rpc.ws.closed.code == 1001
            # trio-websocket (client) waits for the server's TCP close and, having seen it,
            # does not close its own socket: do it, or the GC warns about it.
            await rpc.ws._stream.aclose()


async def test_download_traversal_on_the_raw_socket(farm: LiveFarm) -> None:
    for path in (b"/server/files/gcodes/../../etc/passwd", b"/server/files/gcodes/%2e%2e/x"):
        head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nX-Api-Key: " + API_KEY.encode()
        answer = await raw_http(farm.url, head + b"\r\n\r\n")
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 and b"root:" not in answer, answer[:200]


async def test_big_status_is_gzipped_for_clients_that_accept_it(farm: LiveFarm) -> None:
    r = await farm.client.post("/server/job_queue/job", json={"filenames": [A] * 300})
    assert r.status_code == 200
    gz = await farm.client.get("/server/job_queue/status")  # httpx asks for gzip
    assert gz.headers["content-encoding"] == "gzip"
    assert len(gz.json()["result"]["queued_jobs"]) == 300
    plain = await farm.client.get(
        "/server/job_queue/status", headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
    assert [j["job_id"] for j in plain.json()["result"]["queued_jobs"]] == [
        j["job_id"] for j in gz.json()["result"]["queued_jobs"]
    ]


async def test_scheduler_dispatch_shows_up_live_as_job_loaded(farm: LiveFarm) -> None:
    async with open_rpc(farm.url) as rpc:
        added = await rpc.call("server.job_queue.post_job", {"filenames": [A]})
        await rpc.wait_notification("notify_job_queue_changed")  # jobs_added
        await rpc.call("server.job_queue.start")
        seen = []
        with trio.fail_after(10):
            while "job_loaded" not in seen:
                note = await rpc.wait_notification("notify_job_queue_changed")
                seen.append(note["params"][0]["action"])
        assert note["params"][0]["updated_queue"] == []
        job = await farm.client.get(f"/api/jobs/{added['queued_jobs'][0]['job_id']}")
        assert job.json()["state"] in ("printing", "post_process", "ready")
