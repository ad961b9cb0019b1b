"""Nothing leaks (issue 9: S12, S14, S16).

The session-wide scan lives in ``tests/keyleak.py``; these tests show that it finds what it
must (a key in a body, a header, a split chunk, URL-encoded or base64; a cookie; an HTML
response) and nothing in clean files, and drive a live daemon through its REST, SSE,
websocket, dashboard and error paths to check the recording and what it contains.
"""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from printfarmd import wirelog
from printfarmd.logs import REDACTED, JsonFormatter, TextFormatter, redact
from tests import keyleak
from tests.conftest import API_KEY, REPO, LiveFarm, live_farm, make_config, sim_printer
from tests.keyleak import Finding, Scanner
from tests.moonraker_client import open_rpc
from tests.sse_client import SSEClient

KEY = "leak-test-key-9f8e7d6c5b4a"
XSS = "<img src=x onerror=alert(1)>"


# ---------------------------------------------------------------- synthetic recordings


def b64(data: bytes | str) -> dict[str, str]:
    raw = data.encode() if isinstance(data, str) else data
    return {"b64": base64.b64encode(raw).decode()}


def response(
    path: str,
    body: bytes | list[bytes],
    *,
    ctype: str = "application/json",
    status: int = 200,
    extra: tuple[tuple[str, str], ...] = (),
    nosniff: bool = True,
    conn: int = 1,
) -> list[dict[str, Any]]:
    """The recorded messages of one HTTP response (body given whole or in chunks)."""
    headers = [("content-type", ctype), *extra]
    if nosniff:
        headers.append(("x-content-type-options", "nosniff"))
    head = {"conn": conn, "scope": "http", "method": "GET", "path": path}
    chunks = body if isinstance(body, list) else [body]
    out = [
        {
            **head,
            "message": {
                "type": "http.response.start",
                "status": status,
                "headers": [[b64(k), b64(v)] for k, v in headers],
            },
        }
    ]
    for i, chunk in enumerate(chunks):
        more = i < len(chunks) - 1
        out.append(
            {
                **head,
                "message": {"type": "http.response.body", "body": b64(chunk), "more_body": more},
            }
        )
    return out


def wire_file(tmp: Path, *records: dict[str, Any], key: str | None = KEY) -> Path:
    path = tmp / "wire-1-1.log"
    digest = keyleak._sha256(key) if key else None
    lines = [{"daemon": 1, "key_sha256": digest}, *records]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    return path


def scan(path: Path, keys: tuple[str, ...] = (KEY,)) -> list[Finding]:
    scanner = Scanner(keys)
    return scanner.scan_wire(path) + scanner.shell_findings()


def test_the_scanner_finds_a_key_in_a_body(tmp_path: Path) -> None:
    path = wire_file(tmp_path, *response("/api/jobs", b'{"note":"' + KEY.encode() + b'"}'))
    [finding] = scan(path)
    assert "(plain)" in finding.what and "line 2" in finding.where
    assert "/api/jobs" in finding.where


def test_the_scanner_finds_a_key_split_across_chunks(tmp_path: Path) -> None:
    raw = KEY.encode()
    chunks = [b"data: " + raw[:7], raw[7:] + b"\n\n"]
    path = wire_file(tmp_path, *response("/api/events", chunks, ctype="text/event-stream"))
    assert [f.what.split(" (")[1].split(")")[0] for f in scan(path)] == ["plain"]


def test_the_scanner_finds_a_key_in_a_header(tmp_path: Path) -> None:
    path = wire_file(tmp_path, *response("/api/jobs", b"{}", extra=(("x-echo", KEY),)))
    [finding] = scan(path)
    assert "http.response.start" in finding.where


@pytest.mark.parametrize(
    "encoded",
    [
        quote(KEY, safe="").encode(),
        base64.b64encode(b"prefix:" + KEY.encode() + b":suffix"),
        base64.urlsafe_b64encode(b"xy" + KEY.encode()),
        base64.b64encode(b"a" + KEY.encode()),
        KEY.encode().hex().encode(),
    ],
    ids=["url-encoded", "base64-0", "base64url-2", "base64-1", "hex"],
)
def test_the_scanner_finds_an_encoded_key(tmp_path: Path, encoded: bytes) -> None:
    path = wire_file(tmp_path, *response("/api/x", b'{"v":"' + encoded + b'"}'))
    assert len(scan(path)) >= 1


def test_url_encoding_matters_for_keys_with_reserved_characters() -> None:
    forms = keyleak.key_forms("key+with/slash=and space")
    assert forms["url-encoded"] == b"key%2Bwith%2Fslash%3Dand%20space"
    assert forms["form-encoded"] == b"key%2Bwith%2Fslash%3Dand+space"


def test_the_scanner_finds_a_key_in_websocket_frames_and_closes(tmp_path: Path) -> None:
    head = {"conn": 2, "scope": "websocket", "method": None, "path": "/websocket"}
    path = wire_file(
        tmp_path,
        {**head, "message": {"type": "websocket.accept", "subprotocol": None, "headers": []}},
        {**head, "message": {"type": "websocket.send", "text": f'{{"result":"{KEY}"}}'}},
        {**head, "message": {"type": "websocket.send", "bytes": b64(KEY)}},
        {**head, "message": {"type": "websocket.close", "code": 1000, "reason": KEY}},
    )
    assert sorted(f.where.split(", ")[1] for f in scan(path)) == [
        "websocket.close)",
        "websocket.send)",
        "websocket.send)",
    ]


def test_the_scanner_finds_a_key_in_a_log_line(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(f"line one\n2025 INFO printfarmd: ready key={KEY}\n")
    [finding] = Scanner((KEY,)).scan_log(log)
    assert finding.where.startswith("line 2,")
    clean = tmp_path / "clean.log"
    clean.write_text(f"key={REDACTED}\n{KEY[:8]} is only a prefix\n")
    assert Scanner((KEY,)).scan_log(clean) == []


def test_clean_recordings_have_no_findings(tmp_path: Path) -> None:
    path = wire_file(
        tmp_path,
        *response("/api/jobs", [b'{"jobs":', b"[]}"]),
        *response("/api/events", b": hi\n\n", ctype="text/event-stream; charset=utf-8", conn=2),
        *response("/dashboard", b"<html>shell</html>", ctype="text/html", conn=3),
        *response("/dashboard", b"<html>shell</html>", ctype="text/html", conn=4),
        *response("/metrics", b"jobs 1\n", ctype="text/plain; version=0.0.4", conn=5),
        *response("/api/photos/low/a.png", b"\x89PNG", ctype="image/png", conn=6),
        *response(
            "/server/files/gcodes/a.gcode",
            b"G28\n",
            ctype="text/x-gcode",
            extra=(("content-disposition", "attachment; filename=a.gcode"),),
            conn=7,
        ),
        *response("/api/jobs", b"", ctype="", status=204, conn=8),
    )
    assert scan(path) == []


def test_the_scanner_flags_cookies_sniffing_and_html(tmp_path: Path) -> None:
    path = wire_file(
        tmp_path,
        *response("/api/jobs", b"{}", extra=(("set-cookie", "session=1"),)),
        *response("/api/jobs", b"{}", nosniff=False, conn=2),
        *response("/api/jobs/x", f"<p>{XSS}</p>".encode(), ctype="text/html", conn=3),
        *response(
            "/api/files/a",
            b"x",
            ctype="text/html",
            conn=4,
            extra=(("content-disposition", "attachment"),),
        ),
        *response("/dashboard", b"<html>one</html>", ctype="text/html", conn=5),
        *response("/dashboard", b"<html>two</html>", ctype="text/html", conn=6),
        *response("/api/x", b"{}", ctype="application/xml", conn=7),
    )
    whats = [f.what for f in scan(path)]
    assert whats[:5] == [
        "S16: Set-Cookie sent",
        "S14: no X-Content-Type-Options: nosniff",
        "S14: text/html from /api/jobs/x (not allowed there)",
        "S14: text/html from /api/files/a (not allowed there)",
        "S14: unexpected Content-Type 'application/xml'",
    ]
    assert whats[5:] == ["S14: the dashboard shell differs between responses"] * 2


def test_a_daemon_with_an_unknown_or_short_key_is_a_finding(tmp_path: Path) -> None:
    path = wire_file(tmp_path, key="some-key-nobody-registered")
    [unknown] = scan(path)
    assert "does not know" in unknown.what
    path = wire_file(tmp_path, key="short")
    [short] = scan(path, keys=("short",))
    assert "too short" in short.what


def test_recording_is_off_and_free_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(wirelog.ENV, raising=False)
    config = make_config(Path("/nonexistent"), gcodes=Path("/nonexistent"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    assert wirelog.wrap(app, config.server) is app


def test_the_session_plugin_is_active(request: pytest.FixtureRequest) -> None:
    """The scan runs in every session: registered, recording on, the main key known."""
    assert request.config.pluginmanager.has_plugin("tests.keyleak")
    directory = keyleak.session_directory()
    assert directory is not None and directory.is_dir()
    assert wirelog.directory() == directory
    assert API_KEY in keyleak._KEYS and len(API_KEY) >= keyleak.MIN_KEY_LEN


# ---------------------------------------------------------------- log redaction (S12)


@pytest.mark.parametrize(
    "text",
    [
        f"GET /server/info?token={KEY}&x=1 HTTP/1.1",
        f"/websocket?api_key={KEY}",
        f"token={KEY}&a=b",
        f"X-Api-Key: {KEY}",
        f'{{"x-api-key": "{KEY}"}}',
        f"[(b'host', b'h'), (b'x-api-key', b'{KEY}')]",
        f"Authorization: Bearer {KEY}",
        f"/api/photos/low/a.png?exp=1&sig={KEY}",
    ],
)
def test_credentials_are_redacted_from_log_text(text: str) -> None:
    out = redact(text)
    assert KEY not in out and REDACTED in out


def test_other_text_is_left_alone() -> None:
    for text in ("job created job=ABC file=a.gcode", "tokens=5 at 12:30, ok", "keyed=1"):
        assert redact(text) == text


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_both_formatters_redact_messages_fields_and_tracebacks(
    formatter: logging.Formatter,
) -> None:
    """As hypercorn's access log would log a request line, plus fields and a traceback."""
    try:
        raise ValueError(f"bad url /x?token={KEY}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "hypercorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s"',
        ("1.2.3.4", "GET", f"/server/info?token={KEY}"),
        exc_info,
    )
    record.__dict__.update(
        {"url": f"http://h/websocket?api_key={KEY}", "token": KEY, "headers": f"X-Api-Key: {KEY}"}
    )
    out = formatter.format(record)
    assert KEY not in out
    assert out.count(REDACTED) >= 4


# ---------------------------------------------------------------- live daemons


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Path]:
    """This test's own recording directory (also part of the session scan)."""
    with keyleak.recording(tmp_path / "wire") as directory:
        yield directory


def recorded(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("wire-*.log")):
        out += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [r for r in out if "message" in r]


def http_starts(records: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, str]]]:
    out = []
    for r in records:
        m = r["message"]
        if m["type"] in ("http.response.start", "websocket.http.response.start"):
            headers = {
                keyleak._bytes(k).decode().lower(): keyleak._bytes(v).decode()
                for k, v in m["headers"]
            }
            out.append((r["path"], m["status"], headers))
    return out


async def exercise(farm: LiveFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of answer: REST 2xx/4xx/5xx, SSE, websocket, the dashboard, metrics."""
    c = farm.client
    r = await c.post("/api/jobs", json={"filename": "benchy_pla.gcode", "name": "leak"})
    assert r.status_code == 201, r.text
    job = r.json()["jobs"][0]["id"]
    for path in ("/api/jobs", f"/api/jobs/{job}", "/api/printers", "/api/orchestrator/config"):
        assert (await c.get(path)).status_code == 200
    for path in ("/metrics", "/api/openapi.json", "/api/events/history", "/api/health"):
        assert (await c.get(path)).status_code == 200, path
    assert (await c.get("/api/jobs/0000000000000000")).status_code == 404
    assert (await c.get("/no/such/route")).status_code == 404
    # The key in a query string (a client that got it wrong) and in wrong places.
    anon = {"X-Api-Key": ""}
    for query in (f"?token={API_KEY}", f"?api_key={API_KEY}", f"?api_key={quote(API_KEY)}"):
        assert (await c.get("/api/jobs" + query, headers=anon)).status_code == 401
    assert (await c.get("/api/jobs", headers={"X-Api-Key": API_KEY + "x"})).status_code == 401
    assert (
        await c.get("/api/jobs", headers={"Cookie": f"api_key={API_KEY}", **anon})
    ).status_code == 401
    for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"):
        assert (await c.get(path)).status_code == 200
    # A forced 500: its body is an error id; the traceback goes to the log.
    store_type = type(farm.running.services.store)

    async def broken(*_: Any) -> Any:
        raise RuntimeError("store exploded")

    monkeypatch.setattr(store_type, "count_jobs_by_state", broken)
    r = await c.get("/api/orchestrator/status")
    assert r.status_code == 500
    monkeypatch.undo()
    # SSE: the job stream's snapshot and the farm stream.
    for path in (f"/api/jobs/{job}/stream", "/api/events?replay=1"):
        stream = await SSEClient.open(farm.url, path, {"X-Api-Key": API_KEY})
        assert stream.status == 200
        if "stream" in path:
            await stream.next_message()
        await stream.aclose()
    # Moonraker facade over HTTP and the websocket.
    assert (await c.get("/server/info")).status_code == 200
    assert (await c.get("/access/api_key")).status_code in (200, 403)
    async with open_rpc(farm.url) as rpc:
        await rpc.call("server.info")
        await rpc.call("server.job_queue.status")
        await rpc.call(
            "server.connection.identify",
            {"client_name": "t", "version": "1", "type": "web", "url": "x", "api_key": API_KEY},
        )
    async with open_rpc(farm.url, key=None) as rpc:
        await rpc.request("server.job_queue.status")


async def test_a_live_daemon_sends_and_logs_no_key(
    tmp_path: Path, wire: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    async with live_farm(config) as farm:
        await exercise(farm, monkeypatch)
    records = recorded(wire)
    starts = http_starts(records)
    statuses = {s for _, s, _ in starts}
    assert {200, 201, 401, 404, 500} <= statuses
    types = {h.get("content-type", "").split(";")[0] for _, _, h in starts}
    assert {"application/json", "text/event-stream", "text/html"} <= types
    kinds = {r["message"]["type"] for r in records}
    assert {"websocket.accept", "websocket.send", "http.response.body"} <= kinds
    log = (wire / keyleak.IN_PROCESS_LOG).read_text()
    assert "unexpected error" in log and "store exploded" in log  # the 500's traceback
    scanner = Scanner((API_KEY,))
    assert keyleak.scan_directory(scanner, wire) + scanner.shell_findings() == []
    assert scanner.daemons == 1 and scanner.responses == len(starts)


async def test_stored_markup_is_kept_verbatim_and_never_served_as_html(
    tmp_path: Path, wire: Path
) -> None:
    """S14: a job name and a file name that are an XSS payload come back byte for byte, as
    JSON or an event stream with nosniff, over REST, SSE and the websocket."""
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    filename = f"{XSS}.gcode"
    async with live_farm(config) as farm:
        c = farm.client
        gcode = (REPO / "demo" / "gcodes" / "benchy_pla.gcode").read_bytes()
        up = await c.post("/api/files", files={"file": (filename, gcode)})
        assert up.status_code == 201, up.text
        r = await c.post("/api/jobs", json={"filename": filename, "name": XSS})
        assert r.status_code == 201, r.text
        job = r.json()["jobs"][0]
        assert (job["name"], job["filename"]) == (XSS, filename)
        got = (await c.get(f"/api/jobs/{job['id']}")).json()
        assert (got["name"], got["filename"]) == (XSS, filename)
        listing = (await c.get("/api/jobs")).text
        assert XSS in listing  # raw in the JSON text: JSON needs no escaping of < >
        path = f"/api/jobs/{job['id']}/stream"
        stream = await SSEClient.open(farm.url, path, {"X-Api-Key": API_KEY})
        try:
            snapshot = (await stream.next_message()).json()
        finally:
            await stream.aclose()
        assert (snapshot["name"], snapshot["filename"]) == (XSS, filename)
        async with open_rpc(farm.url) as rpc:
            queued = (await rpc.call("server.job_queue.status"))["queued_jobs"]
            assert [j["filename"] for j in queued] == [filename]
    for path, _status, headers in http_starts(recorded(wire)):
        ctype = headers.get("content-type", "").split(";")[0]
        assert headers.get("x-content-type-options") == "nosniff", path
        assert ctype in ("application/json", "text/event-stream", ""), (path, ctype)


async def test_no_cookie_is_ever_set_and_cookies_never_authenticate(
    tmp_path: Path, wire: Path
) -> None:
    """S16: with header-only keys a cross-site form cannot authenticate; no route sets a
    cookie (the session scan checks every response of the run too)."""
    source = "\n".join(p.read_text() for p in (REPO / "printfarmd").rglob("*.py"))
    assert "set_cookie" not in source and "set-cookie" not in source.lower()
    assert "request.cookies" not in source and "websocket.cookies" not in source
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    async with live_farm(config) as farm:
        anon = {"X-Api-Key": ""}
        for cookie in (f"X-Api-Key={API_KEY}", f"api_key={API_KEY}", f"session={API_KEY}"):
            r = await farm.client.get("/api/jobs", headers={"Cookie": cookie, **anon})
            assert r.status_code == 401
        r = await farm.client.post(
            "/api/jobs",
            content=b"filename=benchy_pla.gcode",
            headers={"Content-Type": "application/x-www-form-urlencoded", **anon},
        )
        assert r.status_code == 401
        assert (await farm.client.get("/dashboard")).status_code == 200
    starts = http_starts(recorded(wire))
    assert starts and all("set-cookie" not in h for _, _, h in starts)
