"""S7 (docs/security.md): JSON bombs over real sockets against a live daemon.

Every input goes through REST (``POST /api/jobs``), the facade's HTTP route
(``POST /server/job_queue/job``), ``POST /server/jsonrpc`` and the websocket. Each must get
a 400/413 (JSON-RPC: -32700/-32600), never a 500; afterwards the daemon still answers
``/api/health`` and no job was stored.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from printfarmd.api import jsonin
from printfarmd.api.moonraker import rpc, ws
from tests.conftest import API_KEY, LiveFarm, raw_http
from tests.moonraker_client import RpcClient, open_rpc

GOOD = b"benchy_pla.gcode"

#: (name, a JSON document that must be refused, words the refusal names). Each is also
#: embedded as a field value below, so it is refused there too (not only at the top).
BOMBS: list[tuple[str, bytes, str]] = [
    ("deep_arrays", b"[" * 100_000, "nested deeper than 32 levels"),
    ("deep_objects", b'{"a":' * 50_000, "nested deeper than 32 levels"),
    ("closed_deep_arrays", b"[" * 33 + b"]" * 33, "nested deeper than 32 levels"),
    ("digits_5000", b"9" * 5000, "number"),
    ("digits_5000_negative", b"-" + b"9" * 5000, "number"),
    ("long_fraction", b"0." + b"1" * 100, "number longer than 32 characters"),
    ("int_over_64_bits", str(2**64).encode(), "64-bit"),
    ("int_over_63_bits", str(2**63).encode(), "64-bit"),
    ("float_overflow", b"1e400", "number out of range"),
    ("nan", b"NaN", "NaN and Infinity"),
    ("infinity", b"Infinity", "NaN and Infinity"),
    ("minus_infinity", b"-Infinity", "NaN and Infinity"),
    ("not_utf8", b'"\xff\xfe"', "UTF-8"),
    ("lone_surrogate", b'"\\ud800"', "UTF-8"),
    ("byte_order_mark", b"\xef\xbb\xbf{}", "byte-order mark"),
]


def as_value(bomb: bytes) -> bytes:
    """A job submission whose ``priority`` is ``bomb`` (the bomb inside a real request)."""
    return b'{"filename": "' + GOOD + b'", "priority": ' + bomb + b"}"


def as_filenames(bomb: bytes) -> bytes:
    return b'{"filenames": ' + bomb + b"}"


def as_rpc(bomb: bytes, rid: int = 7) -> bytes:
    return (
        b'{"jsonrpc": "2.0", "method": "server.job_queue.post_job", "params": {"filenames": '
        + bomb
        + b'}, "id": '
        + str(rid).encode()
        + b"}"
    )


#: Duplicate keys: the second value is what a last-wins parser would have used.
DUPLICATES: list[tuple[str, bytes]] = [
    ("rest", b'{"filename": "' + GOOD + b'", "filename": "../../etc/passwd"}'),
    ("escaped", b'{"filename": "' + GOOD + b'", "\\u0066ilename": "nope.gcode"}'),
    ("nested", b'{"filename": "' + GOOD + b'", "min_bed": [1, 2], "x": {"a": 1, "a": 2}}'),
]


async def job_total(farm: LiveFarm) -> int:
    r = await farm.client.get("/api/jobs")
    assert r.status_code == 200
    return int(r.json()["total"])


async def still_fine(farm: LiveFarm, jobs_before: int) -> None:
    r = await farm.client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert await job_total(farm) == jobs_before


def rest_refused(r: httpx.Response, words: str, status: int = 400) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == ("bad_request" if status == 400 else "payload_too_large")
    assert words.lower() in err["message"].lower(), err


def facade_refused(r: httpx.Response, words: str, status: int = 400) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status
    assert words.lower() in err["message"].lower(), err


def rpc_refused(reply: Any, words: str, rid: int | None = None) -> None:
    assert reply["jsonrpc"] == "2.0" and "result" not in reply, reply
    assert reply["error"]["code"] in (-32700, -32600), reply
    assert reply["id"] == rid
    if words:
        assert words.lower() in reply["error"]["message"].lower(), reply


JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.mark.parametrize(("name", "bomb", "words"), BOMBS, ids=[b[0] for b in BOMBS])
async def test_bombs_over_rest_and_facade_http(
    farm: LiveFarm, name: str, bomb: bytes, words: str
) -> None:
    before = await job_total(farm)
    c = farm.client
    # A byte-order mark is only one at the start; inside a document it is just malformed.
    inner = "" if name == "byte_order_mark" else words
    # REST: the bomb as the whole body, then inside a real submission.
    rest_refused(await c.post("/api/jobs", content=bomb, headers=JSON_HEADERS), words)
    rest_refused(await c.post("/api/jobs", content=as_value(bomb), headers=JSON_HEADERS), inner)
    # Facade route: as the body, inside the body, and as a ``key:json`` query argument.
    for body, want in ((bomb, words), (as_filenames(bomb), inner)):
        r = await c.post("/server/job_queue/job", content=body, headers=JSON_HEADERS)
        facade_refused(r, want)
    if len(bomb) < 4000:  # a URL is capped far below the body cap (h11: 16 KiB of head)
        r = await c.post("/server/job_queue/job", params={"filenames:json": bomb.decode("latin-1")})
        assert r.status_code == 400 and r.json()["error"]["code"] == 400, r.text
    # POST /server/jsonrpc: the frame itself, and the bomb inside a well-formed request.
    r = await c.post("/server/jsonrpc", content=bomb, headers=JSON_HEADERS)
    assert r.status_code == 200
    rpc_refused(r.json(), words)
    r = await c.post("/server/jsonrpc", content=as_rpc(bomb), headers=JSON_HEADERS)
    assert r.status_code == 200
    rpc_refused(r.json(), inner)
    await still_fine(farm, before)


async def test_bombs_over_the_websocket(farm: LiveFarm) -> None:
    before = await job_total(farm)
    async with open_rpc(farm.url) as client:
        for name, bomb, words in BOMBS:
            # Binary frames carry raw bytes (a text frame could not hold invalid UTF-8).
            await client.ws.send_message(bomb)
            rpc_refused(await client._receive_reply(), words)
            await client.ws.send_message(as_rpc(bomb))
            rpc_refused(await client._receive_reply(), "" if name == "byte_order_mark" else words)
            if bomb.isascii():  # the same as text frames
                rpc_refused(await client.send_raw(bomb.decode("latin-1")), words)
            for _, dup in DUPLICATES:
                rpc_refused(await client.send_raw(as_rpc(dup).decode()), "duplicate key")
            # The connection is still good for real work after each refusal.
            assert "queued_jobs" in await client.call("server.job_queue.status"), name
    await still_fine(farm, before)


@pytest.mark.parametrize(("name", "body"), DUPLICATES, ids=[d[0] for d in DUPLICATES])
async def test_duplicate_keys_are_refused_everywhere(
    farm: LiveFarm, name: str, body: bytes
) -> None:
    before = await job_total(farm)
    c = farm.client
    rest_refused(await c.post("/api/jobs", content=body, headers=JSON_HEADERS), "duplicate key")
    dup = b'{"filenames": ["' + GOOD + b'"], "filenames": ["../x.gcode"]}'
    r = await c.post("/server/job_queue/job", content=dup, headers=JSON_HEADERS)
    facade_refused(r, "duplicate key")
    r = await c.post("/server/jsonrpc", content=as_rpc(body), headers=JSON_HEADERS)
    rpc_refused(r.json(), "duplicate key")
    # The top-level request object itself with a repeated "method".
    frame = b'{"jsonrpc":"2.0","method":"server.info","method":"server.job_queue.start","id":1}'
    r = await c.post("/server/jsonrpc", content=frame, headers=JSON_HEADERS)
    rpc_refused(r.json(), "duplicate key")
    await still_fine(farm, before)


async def closed_by_server(client: RpcClient, frame: str | bytes) -> int:
    """Send ``frame``, wait for the server to close; the close code."""
    with pytest.raises(ConnectionClosed):
        await client.ws.send_message(frame)
        await client.ws.get_message()
    assert client.ws.closed is not None
    # trio-websocket (client) waits for the server's TCP close and, having seen it, does
    # not close its own socket: do it, or the GC warns about it.
    await client.ws._stream.aclose()
    return int(client.ws.closed.code)


def post_head(path: str, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"X-Api-Key: {API_KEY}"]
    lines += ["Content-Type: application/json", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw.split(b" ", 2)[1])


TEN_MB = b'{"filename": "' + b"a" * (10 << 20) + b'.gcode"}'


@pytest.mark.parametrize("path", ["/api/jobs", "/server/job_queue/job", "/server/jsonrpc"])
async def test_ten_megabyte_string_is_413_before_parsing(farm: LiveFarm, path: str) -> None:
    before = await job_total(farm)
    # The length is declared, the first 64 KiB sent: the 413 comes without the rest.
    head = post_head(path, f"Content-Length: {len(TEN_MB)}")
    reply = await raw_http(farm.url, head, TEN_MB[: 64 * 1024])
    assert status_of(reply) == 413, reply[:300]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    if path == "/api/jobs":
        assert body["error"]["code"] == "payload_too_large"
    else:
        assert body["error"]["code"] == 413  # the facade's Moonraker shape
    await still_fine(farm, before)


async def test_ten_megabyte_string_over_the_websocket(farm: LiveFarm) -> None:
    before = await job_total(farm)
    # A frame over the cap is refused by hypercorn before it buffers more: close 1009.
    async with open_rpc(farm.url) as client:
        assert await closed_by_server(client, as_rpc(TEN_MB).decode()) == 1009
    await still_fine(farm, before)


async def test_websocket_frame_caps(farm: LiveFarm) -> None:
    # Just over the authenticated cap: hypercorn closes with 1009 (message too big).
    async with open_rpc(farm.url) as client:
        assert await closed_by_server(client, " " * (ws.MAX_FRAME + 1)) == 1009
    # Just under it is read and parsed (valid JSON padded with spaces: answered).
    async with open_rpc(farm.url) as client:
        frame = json.dumps({"jsonrpc": "2.0", "method": "server.info", "id": 1})
        reply = await client.send_raw(frame + " " * (ws.MAX_FRAME - len(frame)))
        assert reply["result"]["klippy_state"] == "ready"
    # Before authenticating, a peer gets a much smaller cap: an error, the connection stays.
    async with open_rpc(farm.url, key=None) as anon:
        reply = await anon.send_raw(" " * (ws.MAX_ANONYMOUS_FRAME + 1))
        assert reply["error"] == {
            "code": -32600,
            "message": f"Invalid Request: frame larger than {ws.MAX_ANONYMOUS_FRAME} bytes",
        }
        ident = {"client_name": "t", "version": "1", "type": "web", "url": "", "api_key": API_KEY}
        assert "connection_id" in await anon.call("server.connection.identify", ident)
    r = await farm.client.get("/api/health")
    assert r.status_code == 200


async def test_oversized_batch_is_one_error(farm: LiveFarm) -> None:
    frame = json.dumps([1] * (rpc.MAX_BATCH + 1))
    r = await farm.client.post("/server/jsonrpc", content=frame, headers=JSON_HEADERS)
    reply = r.json()
    assert reply["error"]["code"] == -32600 and "batch of more than" in reply["error"]["message"]
    ok = json.dumps([{"jsonrpc": "2.0", "method": "server.info", "id": i} for i in range(5)])
    r = await farm.client.post("/server/jsonrpc", content=ok, headers=JSON_HEADERS)
    assert [m["id"] for m in r.json()] == list(range(5))


def _chunked(total: int, chunk: int = 64 * 1024) -> bytes:
    out = bytearray()
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        out += f"{n:x}\r\n".encode() + b"[" * n + b"\r\n"
        sent += n
    return bytes(out + b"0\r\n\r\n")


@pytest.mark.parametrize("path", ["/api/jobs", "/server/job_queue/job", "/server/jsonrpc"])
async def test_body_cap_applies_before_the_body_is_read(farm: LiveFarm, path: str) -> None:
    before = await job_total(farm)
    cap = farm.running.services.config.server.max_body_bytes
    # A declared length over the cap: 413 at once, with only a few bytes of body sent.
    reply = await raw_http(farm.url, post_head(path, f"Content-Length: {cap + 1}"), b"[[[")
    assert status_of(reply) == 413, reply[:300]
    assert b'"code"' in reply and b"too large" in reply.lower()
    # Chunked, no length: 413 once the bytes received pass the cap.
    reply = await raw_http(
        farm.url, post_head(path, "Transfer-Encoding: chunked"), _chunked(cap + 64 * 1024)
    )
    assert status_of(reply) == 413, reply[:300]
    # Exactly at the cap is read and parsed: then the JSON limits answer (400 / -32600).
    reply = await raw_http(
        farm.url, post_head(path, "Transfer-Encoding: chunked"), _chunked(cap, 4096)
    )
    assert status_of(reply) in (200, 400), reply[:300]
    assert b"nested deeper than 32 levels" in reply
    await still_fine(farm, before)


async def test_server_stays_up_under_a_burst_of_bombs(farm: LiveFarm) -> None:
    """Many bombs at once on separate connections: all refused, the daemon answers."""
    before = await job_total(farm)
    statuses: list[int] = []

    async def one(bomb: bytes) -> None:
        r = await farm.client.post("/api/jobs", content=bomb, headers=JSON_HEADERS)
        statuses.append(r.status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            for _, bomb, _ in BOMBS:
                nursery.start_soon(one, bomb)
    assert set(statuses) == {400}
    await still_fine(farm, before)


def test_limits_are_the_documented_ones() -> None:
    assert jsonin.MAX_DEPTH == 32 and jsonin.MAX_NUMBER_CHARS == 32
    assert (jsonin.INT_MIN, jsonin.INT_MAX) == (-(2**63), 2**63 - 1)
    assert ws.MAX_FRAME == 1 << 20 and ws.MAX_ANONYMOUS_FRAME == 16 * 1024
