"""Structured logs of a real ``printfarmd serve`` process: the key log points appear with
their named fields and levels, as text (the default) and as JSON lines
(``--log-format json``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson
import trio

from printfarmd.config import Config
from tests.conftest import API_KEY, REPO, free_port, make_config, sim_printer, write_config
from tests.sse_client import SSEClient

#: (message, level, fields that must be present).
KEY_POINTS: list[tuple[str, str, set[str]]] = [
    ("database migrations applied", "INFO", {"applied", "db"}),
    ("printer drivers started", "INFO", {"printers"}),
    ("printfarmd ready", "INFO", {"urls", "printers"}),
    ("event stream opened", "INFO", {"stream", "client"}),
    ("invalid request", "WARNING", {"status", "code", "reason"}),
    ("job created", "INFO", {"job", "file", "copies", "priority"}),
    ("job dispatched", "INFO", {"job", "printer", "file"}),
    ("job state changed", "INFO", {"job", "printer", "state", "from_state", "reason"}),
    ("event stream client dropped", "WARNING", {"stream", "reason"}),
    ("job printed", "INFO", {"job", "printer"}),
    ("shutting down", "INFO", set()),
    ("stopped", "INFO", set()),
]
HOSTILE_FILE = "evil\nline=forged.gcode"


def log_config(tmp: Path) -> Config:
    config = make_config(tmp, (sim_printer("p1", speed=20000.0),))
    return msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, port=free_port(), sse_buffer=4)
    )


def run_daemon_scenario(tmp: Path, *extra_args: str) -> str:
    """Start ``printfarmd serve``, drive it through the key log points, stop it with
    SIGTERM and return what it wrote to stderr."""
    config = log_config(tmp)
    path = write_config(config, tmp / "farm.toml")
    url = f"http://127.0.0.1:{config.server.port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "printfarmd", "serve", "--config", str(path), *extra_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        with httpx.Client(base_url=url, headers={"X-Api-Key": API_KEY}, timeout=10.0) as c:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, "daemon exited early"
                try:
                    if c.get("/api/health").json()["status"] == "ok":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                assert time.monotonic() < deadline, "daemon did not start"
                time.sleep(0.05)
            trio.run(_drive, url)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    return err.decode()


async def _drive(url: str) -> None:
    # a client that never reads: the burst below overflows its 4-message buffer
    stuck = await SSEClient.open(url, "/api/events", {"X-Api-Key": API_KEY}, read_head=False)
    async with httpx.AsyncClient(base_url=url, headers={"X-Api-Key": API_KEY}) as c:
        assert (await c.post("/api/jobs", content=b"{not json")).status_code == 400
        bad = await c.post("/api/jobs", json={"filename": HOSTILE_FILE})
        assert bad.status_code in (400, 422)
        r = await c.post("/api/jobs", json={"filename": "benchy_pla.gcode", "copies": 2})
        assert r.status_code == 201
        job = r.json()["jobs"][0]["id"]
        with trio.fail_after(20):
            while (await c.get(f"/api/jobs/{job}")).json()["state"] != "post_process":  # noqa: ASYNC110 - polling the daemon over HTTP
                await trio.sleep(0.05)
    await stuck.aclose()


def _assert_order(messages: list[str]) -> None:
    for message, _, _ in KEY_POINTS:
        assert message in messages, f"missing log point {message!r}"
    start = [messages.index(m) for m in KEY_POINTS_AT_START]
    assert start == sorted(start) and max(start) < messages.index("job created")
    assert messages[-2:] == ["shutting down", "stopped"]


KEY_POINTS_AT_START = ["database migrations applied", "printer drivers started", "printfarmd ready"]


TEXT_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (?P<level>[A-Z]+) +(?P<logger>[\w.]+): (?P<rest>.*)$"
)


def test_text_logs_have_the_key_events_with_named_fields(tmp_path: Path) -> None:
    err = run_daemon_scenario(tmp_path)
    records: list[tuple[str, str, dict[str, str]]] = []
    for line in err.splitlines():
        m = TEXT_LINE.match(line)
        assert m, f"not a log line: {line!r}"  # one record per line, nothing forged
        rest = m["rest"]
        # message, then key=value fields (values JSON-quoted when they need it)
        fields = dict(re.findall(r' (\w+)=("(?:[^"\\]|\\.)*"|\S+)', rest))
        first = re.search(r" \w+=", rest)
        message = rest[: first.start()] if first else rest
        records.append((message, m["level"], fields))
    _assert_order([r[0] for r in records])
    for message, level, required in KEY_POINTS:
        record = next(r for r in records if r[0] == message)
        assert record[1] == level, (message, record)
        assert required <= set(record[2]), (message, record)
    states = {r[2].get("state") for r in records if r[0] == "job state changed"}
    assert {"printing", "post_process"} <= states
    # the hostile file name could not forge a line: it is quoted, newline escaped
    assert "line=forged" not in {f"{k}={v}" for _, _, fs in records for k, v in fs.items()}


def test_json_logs_have_the_key_events_with_named_fields(tmp_path: Path) -> None:
    err = run_daemon_scenario(tmp_path, "--log-format", "json")
    records = [orjson.loads(line) for line in err.splitlines()]  # every line is JSON
    assert records
    for r in records:
        assert {"ts", "level", "logger", "message"} <= set(r), r
    _assert_order([r["message"] for r in records])
    for message, level, required in KEY_POINTS:
        record: dict[str, Any] = next(r for r in records if r["message"] == message)
        assert record["level"] == level.lower(), record
        assert required <= set(record), (message, record)
    changed = [r for r in records if r["message"] == "job state changed"]
    assert {"printing", "post_process"} <= {r["state"] for r in changed}
    first = next(r for r in changed if r["state"] == "printing")
    assert first["printer"] == "p1" and first["from_state"] == "queued"
    assert re.fullmatch(r"[0-9A-F]{16}", first["job"])
    invalid = [r for r in records if r["message"] == "invalid request"]
    assert {r["status"] for r in invalid} >= {400}
    dropped = next(r for r in records if r["message"] == "event stream client dropped")
    assert dropped["stream"] == "events"


HOSTILE_TEXT = "a\x9b31mb\u2028c\u202ed\x1b[2Je\nfake=line\U000e0001 Würfel"


def test_unprintable_characters_never_reach_a_log_line_raw() -> None:
    """C1 controls (``\\x9b`` is an 8-bit CSI), line separators and bidi overrides in a
    message or a field are escaped in both formats; readable text (``Würfel``) stays."""
    import logging

    from printfarmd.logs import JsonFormatter, TextFormatter

    record = logging.LogRecord("printfarmd.t", logging.WARNING, __file__, 1, HOSTILE_TEXT, (), None)
    record.file = HOSTILE_TEXT
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert line.isprintable(), repr(line)
        assert "Würfel" in line
    body = orjson.loads(JsonFormatter().format(record))
    assert body["message"] == HOSTILE_TEXT and body["file"] == HOSTILE_TEXT
    text = TextFormatter().format(record)
    assert text.count("fake=line") == 2 and "\\u009b" in text and "\\u2028" in text
