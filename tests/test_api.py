"""The REST API against the real daemon (in-process) over real loopback sockets."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import trio

from printfarmd.api.app import create_app
from printfarmd.api.auth import PUBLIC_ROUTES
from printfarmd.api.moonraker import is_facade_path
from printfarmd.api.openapi import DOCUMENT
from tests.conftest import API_KEY, LiveFarm, raw_http

PLACEHOLDER = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def app_routes(farm: LiveFarm) -> list[tuple[str, str]]:
    """Every (method, rule) the served app answers, straight from its URL map."""
    app = create_app(farm.running.services)
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        if rule.websocket or is_facade_path(rule.rule):
            continue  # the Moonraker facade: its own shapes, tested in test_moonraker_*.py
        for method in sorted(rule.methods or ()):
            if method not in ("HEAD", "OPTIONS"):
                out.append((method, rule.rule))
    return out


async def test_every_route_but_public_ones_refuses_without_a_valid_key(farm: LiveFarm) -> None:
    routes = app_routes(farm)
    assert len(routes) >= 18  # the enumeration really found the API
    checked = 0
    async with httpx.AsyncClient(base_url=farm.url) as anon:
        for method, rule in routes:
            path = PLACEHOLDER.sub("0123456789ABCDEF", rule)
            if (method, rule) in PUBLIC_ROUTES:
                r = await anon.request(method, path)
                # a signed-URL route answers 403 to an unsigned request, never 401
                signed = rule.startswith("/api/photos/low/")
                assert r.status_code == (403 if signed else 200), (method, rule)
                continue
            bodies = set()
            for headers in (
                {},
                {"X-Api-Key": "wrong"},
                {"X-Api-Key": ""},
                {"X-Api-Key": API_KEY[:-1]},
            ):
                r = await anon.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (method, rule, headers, r.text)
                assert r.headers["content-type"] == "application/json"
                bodies.add(r.content)
                checked += 1
            assert len(bodies) == 1, "the 401 body must not depend on what was sent"
            assert r.json() == {
                "error": {"code": "unauthorized", "message": "missing or wrong X-Api-Key header"}
            }
    assert checked >= 17 * 4
    # and nothing was created by all those unauthenticated POSTs
    assert (await farm.client.get("/api/jobs")).json()["total"] == 0


async def test_openapi_document_matches_the_routes_both_ways(farm: LiveFarm) -> None:
    served = (await farm.client.get("/api/openapi.json")).json()
    assert served == DOCUMENT
    documented = {
        (m.upper(), path) for path, ops in served["paths"].items() for m in ops if m != "parameters"
    }
    actual = {(m, PLACEHOLDER.sub(r"{\1}", rule)) for m, rule in app_routes(farm)}
    assert documented == actual
    for path, ops in served["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            assert "200" in op["responses"] or "201" in op["responses"], (method, path)


async def test_health_is_public_and_reveals_no_farm_data(farm: LiveFarm) -> None:
    async with httpx.AsyncClient(base_url=farm.url) as anon:
        r = await anon.get("/api/health")
    assert r.status_code == 200
    assert set(r.json()) == {"status", "version"}
    assert r.headers["X-Content-Type-Options"] == "nosniff"


BAD_CREATES: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'"just a string"', 400, "must be a JSON object"),
    (b"{" * 5000, 400, "not valid JSON"),
    (b'{"filename": "benchy_pla.gcode", "priority": NaN}', 400, "not valid JSON"),
    ({"filename": 42}, 400, "filename: expected a string"),
    ({}, 400, "filename: required"),
    ({"filename": "benchy_pla.gcode", "priority": "high"}, 400, "priority: expected an integer"),
    ({"filename": "benchy_pla.gcode", "priority": True}, 400, "priority: expected an integer"),
    ({"filename": "benchy_pla.gcode", "priority": 1.5}, 400, "priority: expected an integer"),
    (
        {"filename": "benchy_pla.gcode", "priority": 101},
        422,
        "priority: must be between -100 and 100",
    ),
    ({"filename": "benchy_pla.gcode", "priority": -1000}, 422, "priority"),
    ({"filename": "benchy_pla.gcode", "priority": 10**30}, 400, "outside the signed 64-bit range"),
    ({"filename": "benchy_pla.gcode", "copies": 0}, 422, "copies: must be between 1 and 100"),
    ({"filename": "benchy_pla.gcode", "copies": 1000}, 422, "copies"),
    ({"filename": "benchy_pla.gcode", "bogus": 1}, 400, "bogus: unknown field"),
    (
        {"filename": "benchy_pla.gcode", "required_tags": "large"},
        400,
        "required_tags: expected a list",
    ),
    ({"filename": "benchy_pla.gcode", "nozzle_diameter": -1}, 422, "nozzle_diameter"),
    ({"filename": "benchy_pla.gcode", "name": "x" * 201}, 422, "name: longer than 200"),
    ({"filename": "benchy_pla.gcode", "min_bed": [1, 2]}, 400, "min_bed"),
    ({"filename": "../../etc/passwd"}, 400, "filename"),
    ({"filename": "/etc/passwd"}, 400, "filename: must be relative"),
    ({"filename": "//etc/passwd"}, 400, "filename"),
    ({"filename": "gcodes/../../x.gcode"}, 400, "filename"),
    ({"filename": "a/./../../x.gcode"}, 400, "filename"),
    ({"filename": "\uff0e\uff0e\uff0fx.gcode"}, 400, "filename"),  # fullwidth ../ (NFKC)
    ({"filename": "..\\..\\x.gcode"}, 400, "backslash"),
    ({"filename": "a\x00.gcode"}, 400, "filename"),
    ({"filename": "a\n.gcode"}, 400, "control characters"),
    ({"filename": "\x1b[31m.gcode"}, 400, "control characters"),
    ({"filename": "trailing.gcode."}, 400, "filename"),
    ({"filename": "x" * 4096 + ".gcode"}, 400, "longer than"),
    ({"filename": "../gcodes2/x.gcode"}, 400, "filename"),
    ({"filename": "..%2f..%2fetc%2fpasswd"}, 422, "not a G-code file"),
    ({"filename": "missing.gcode"}, 422, "does not exist"),
    ({"filename": "notes.txt"}, 422, "not a G-code file"),
    ({"filename": "benchy_pla.gcode", "material": "ABS"}, 422, "no configured printer can print"),
    ({"filename": "benchy_pla.gcode", "required_tags": ["enclosure"]}, 422, "tag"),
    ({"filename": "vase_large_petg.gcode", "nozzle_diameter": 0.8}, 422, "nozzle"),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD_CREATES)
async def test_bad_job_submissions_get_a_clear_4xx_and_store_nothing(
    farm: LiveFarm, body: Any, status: int, needle: str
) -> None:
    before = (await farm.client.get("/api/orchestrator/status")).json()["last_event_seq"]
    if isinstance(body, bytes):
        r = await farm.client.post(
            "/api/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        r = await farm.client.post("/api/jobs", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) <= {"code", "message", "field"}
    assert needle.lower() in err["message"].lower()
    assert "Traceback" not in r.text and "/work/" not in r.text and str(farm.url) not in r.text
    assert (await farm.client.get("/api/jobs")).json()["total"] == 0
    after = (await farm.client.get("/api/orchestrator/status")).json()["last_event_seq"]
    assert after == before


async def test_symlink_escaping_the_gcodes_folder_is_refused(farm: LiveFarm, tmp_path: Any) -> None:
    gcodes = farm.running.services.config.gcodes_path
    secret = tmp_path / "outside.gcode"
    secret.write_text("; secret\n")
    (gcodes / "evil.gcode").symlink_to(secret)
    (gcodes / "dir").symlink_to(tmp_path)
    for name in ("evil.gcode", "dir/outside.gcode"):
        r = await farm.client.post("/api/jobs", json={"filename": name})
        assert r.status_code == 400, r.text
        assert "inside the gcodes folder" in r.json()["error"]["message"]
    assert (await farm.client.get("/api/jobs")).json()["total"] == 0


async def test_body_over_the_size_cap_is_413_before_parsing(farm: LiveFarm) -> None:
    # Declared size over the cap: refused from the headers alone, before any body arrives.
    head = (
        b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Api-Key: " + API_KEY.encode() + b"\r\nContent-Length: 2000000\r\n\r\n"
    )
    answer = await raw_http(farm.url, head, b'{"filename": "')
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer
    assert (await farm.client.get("/api/jobs")).json()["total"] == 0


async def test_unknown_ids_are_404_with_the_canonical_body(farm: LiveFarm) -> None:
    for method, path in [
        ("GET", "/api/jobs/0123456789ABCDEF"),
        ("GET", "/api/jobs/not-an-id"),
        ("POST", "/api/jobs/0123456789ABCDEF/cancel"),
        ("POST", "/api/jobs/0123456789ABCDEF/ship"),
        ("GET", "/api/printers/nope"),
        ("POST", "/api/printers/nope/clear"),
        ("GET", "/api/no/such/route"),
    ]:
        body = {"tracking": "T"} if path.endswith("/ship") else None
        r = await farm.client.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"


async def test_wrong_method_is_405_json(farm: LiveFarm) -> None:
    r = await farm.client.delete("/api/jobs")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


async def create(farm: LiveFarm, **body: Any) -> dict[str, Any]:
    body.setdefault("filename", "benchy_pla.gcode")
    r = await farm.client.post("/api/jobs", json=body)
    assert r.status_code == 201, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs[0]


async def test_create_get_list_and_copies(farm: LiveFarm) -> None:
    r = await farm.client.post(
        "/api/jobs",
        json={"filename": "phone_stand_petg.gcode", "copies": 3, "priority": 5, "sku": "STAND-1"},
    )
    assert r.status_code == 201
    jobs = r.json()["jobs"]
    assert [j["copy_index"] for j in jobs] == [1, 2, 3]
    assert {j["group_id"] for j in jobs} == {jobs[0]["id"]}
    assert r.headers["Location"] == f"/api/jobs/{jobs[0]['id']}"
    for j in jobs:
        assert j["state"] == "queued"
        assert re.fullmatch(r"[0-9A-F]{16}", j["id"])
        assert j["material"] == "PETG"  # from the file's slicer comments
        assert j["estimated_time"] == 3900.0  # "1h 5m 0s"
    got = (await farm.client.get(f"/api/jobs/{jobs[1]['id']}")).json()
    assert got["sku"] == "STAND-1" and got["priority"] == 5
    listing = (
        await farm.client.get("/api/jobs", params={"status": "queued", "sku": "STAND-1"})
    ).json()
    assert listing["total"] == 3
    assert (await farm.client.get("/api/jobs", params={"status": "printing"})).json()["total"] == 0
    r = await farm.client.get("/api/jobs", params={"status": "bogus"})
    assert r.status_code == 400 and "unknown state" in r.json()["error"]["message"]
    r = await farm.client.get("/api/jobs", params={"sort": "bogus"})
    assert r.status_code == 400


async def test_list_sorting_by_each_key(farm: LiveFarm) -> None:
    await create(farm, sku="B", priority=1)
    await create(farm, sku="A", priority=3)
    await create(farm, sku="C", priority=2)
    skus = [
        j["sku"]
        for j in (await farm.client.get("/api/jobs", params={"sort": "sku"})).json()["jobs"]
    ]
    assert skus == ["A", "B", "C"]
    prios = [
        j["priority"]
        for j in (
            await farm.client.get("/api/jobs", params={"sort": "priority", "order": "desc"})
        ).json()["jobs"]
    ]
    assert prios == [3, 2, 1]
    for key in ("state", "printer", "eta", "created", "name"):
        r = await farm.client.get("/api/jobs", params={"sort": key, "limit": 2, "offset": 1})
        assert r.status_code == 200 and len(r.json()["jobs"]) == 2 and r.json()["total"] == 3


async def test_idempotency_key_returns_the_same_jobs(farm: LiveFarm) -> None:
    headers = {"Idempotency-Key": "order-42-line-1"}
    body = {"filename": "benchy_pla.gcode", "copies": 2}
    first = await farm.client.post("/api/jobs", json=body, headers=headers)
    again = await farm.client.post("/api/jobs", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert [j["id"] for j in first.json()["jobs"]] == [j["id"] for j in again.json()["jobs"]]
    assert (await farm.client.get("/api/jobs")).json()["total"] == 2
    other = await farm.client.post(
        "/api/jobs", json={"filename": "keychain_any.gcode"}, headers=headers
    )
    assert other.status_code == 409
    assert (await farm.client.get("/api/jobs")).json()["total"] == 2


async def test_concurrent_retries_with_one_idempotency_key_make_one_job(farm: LiveFarm) -> None:
    results: list[int] = []

    async def post() -> None:
        r = await farm.client.post(
            "/api/jobs", json={"filename": "benchy_pla.gcode"}, headers={"Idempotency-Key": "k1"}
        )
        results.append(r.status_code)

    async with trio.open_nursery() as n:
        for _ in range(10):
            n.start_soon(post)
    assert sorted(results) == [200] * 9 + [201]
    assert (await farm.client.get("/api/jobs")).json()["total"] == 1


async def test_actions_not_allowed_in_the_current_state_are_409(farm: LiveFarm) -> None:
    job = await create(farm)
    jid = job["id"]
    # queued: cannot ship
    r = await farm.client.post(f"/api/jobs/{jid}/ship", json={"tracking": "T1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    # cancel works once, then every action on the cancelled job is 409
    assert (await farm.client.post(f"/api/jobs/{jid}/cancel")).json()["state"] == "cancelled"
    for path, body in [
        (f"/api/jobs/{jid}/cancel", {}),
        (f"/api/jobs/{jid}/ship", {"tracking": "T"}),
        (f"/api/jobs/{jid}/release", {"printerId": "p1"}),
        (f"/api/jobs/{jid}/jump", {}),
        ("/api/orchestrator/reprioritize", {"jobId": jid, "priority": 3}),
    ]:
        r = await farm.client.post(path, json=body)
        assert r.status_code == 409, (path, r.text)
    assert (await farm.client.get(f"/api/jobs/{jid}")).json()["state"] == "cancelled"


async def test_release_to_a_chosen_printer_then_clear_and_ship(farm: LiveFarm) -> None:
    job = await create(farm, filename="phone_stand_petg.gcode")
    jid = job["id"]
    r = await farm.client.post(f"/api/jobs/{jid}/release", json={"printerId": "p1"})
    assert r.status_code == 422 and "PETG" in r.json()["error"]["message"]  # p1 has only PLA
    r = await farm.client.post(f"/api/jobs/{jid}/release", json={"printerId": "p2"})
    assert (
        r.status_code == 200 and r.json()["state"] == "printing" and r.json()["printer_id"] == "p2"
    )

    async def in_post_process() -> bool:
        return (await farm.client.get(f"/api/jobs/{jid}")).json()["state"] == "post_process"

    await farm.wait_for(in_post_process)
    p2 = (await farm.client.get("/api/printers/p2")).json()
    assert p2["state"] == "awaiting_clear" and not p2["plate_clear"]
    r = await farm.client.post(f"/api/jobs/{jid}/ship", json={"tracking": "X"})
    assert r.status_code == 409  # not ready yet
    p2 = (await farm.client.post("/api/printers/p2/clear")).json()
    assert p2["plate_clear"] and p2["state"] == "idle"
    assert (await farm.client.get(f"/api/jobs/{jid}")).json()["state"] == "ready"
    shipped = (await farm.client.post(f"/api/jobs/{jid}/ship", json={"tracking": "1Z999"})).json()
    assert shipped["state"] == "shipped" and shipped["tracking"] == "1Z999"
    states = [
        e["to_state"]
        for e in (await farm.client.get("/api/events/history", params={"job": jid})).json()[
            "events"
        ]
        if e["type"] == "job.transition"
    ]
    assert states == [
        "created",
        "validated",
        "sliced",
        "queued",
        "printing",
        "post_process",
        "ready",
        "shipped",
    ]


async def test_release_to_a_busy_printer_is_409(farm: LiveFarm) -> None:
    a = await create(farm, estimated_time=36000)
    b = await create(farm)
    assert (
        await farm.client.post(f"/api/jobs/{a['id']}/release", json={"printerId": "p1"})
    ).status_code == 200
    r = await farm.client.post(f"/api/jobs/{b['id']}/release", json={"printerId": "p1"})
    assert r.status_code == 409 and "p1" in r.json()["error"]["message"]


async def test_reprioritize_jump_pause_resume_and_config(farm: LiveFarm) -> None:
    a = await create(farm)
    b = await create(farm)
    r = await farm.client.post(
        "/api/orchestrator/reprioritize", json={"jobId": b["id"], "priority": 9}
    )
    assert r.status_code == 200 and r.json()["priority"] == 9
    r = await farm.client.post(
        "/api/orchestrator/reprioritize", json={"jobId": b["id"], "priority": 999}
    )
    assert r.status_code == 422
    r = await farm.client.post(f"/api/jobs/{a['id']}/jump")
    assert r.json()["jumped"] is True
    order = [j.id for j in farm.owner.queue.ordered()]
    assert order == [a["id"], b["id"]]
    status = (await farm.client.post("/api/orchestrator/resume")).json()
    assert status["paused"] is False
    status = (await farm.client.post("/api/orchestrator/pause")).json()
    assert status["paused"] is True
    cfg = (await farm.client.get("/api/orchestrator/config")).json()
    assert cfg == {
        "max_retries": 3,
        "retry_backoff": [60.0, 300.0, 1500.0],
        "cooldown_seconds": 0.0,
    }
    r = await farm.client.put(
        "/api/orchestrator/config", json={"max_retries": 5, "retry_backoff": [1, 2]}
    )
    assert (
        r.status_code == 200
        and r.json()["max_retries"] == 5
        and r.json()["retry_backoff"] == [1.0, 2.0]
    )
    for bad in ({"max_retries": -1}, {"retry_backoff": []}, {"retry_backoff": ["x"]}, {"nope": 1}):
        r = await farm.client.put("/api/orchestrator/config", json=bad)
        assert 400 <= r.status_code < 500, bad
    assert (await farm.client.get("/api/orchestrator/config")).json()["max_retries"] == 5


async def test_maintenance_keeps_a_printer_out_of_dispatch(farm: LiveFarm) -> None:
    for pid in ("p2", "p3"):
        r = await farm.client.post(f"/api/printers/{pid}/maintenance", json={"enabled": True})
        assert r.json()["state"] == "maintenance"
    r = await farm.client.post("/api/printers/p1/maintenance", json={"enabled": "yes"})
    assert r.status_code == 400
    job = await create(farm, filename="phone_stand_petg.gcode")  # PETG: only p2/p3 can
    await farm.client.post("/api/orchestrator/resume")
    await trio.sleep(0.3)
    assert (await farm.client.get(f"/api/jobs/{job['id']}")).json()["state"] == "queued"
    await farm.client.post("/api/printers/p2/maintenance", json={"enabled": False})

    async def started() -> bool:
        j = (await farm.client.get(f"/api/jobs/{job['id']}")).json()
        return bool(j["state"] != "queued" and j["printer_id"] == "p2")

    await farm.wait_for(started)
