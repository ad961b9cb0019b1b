"""The command line: init/check-config/serve wiring, and the client commands' HTTP and output.

Subprocess tests run ``python -m printfarmd`` as a user would. The client commands are
also run in-process against a stub HTTP server on loopback that answers with the REST
API's documented shapes and records what it was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest

from printfarmd import __version__
from printfarmd.api.auth import hash_key
from printfarmd.cli import build_parser, main
from printfarmd.cli_client import ClientError, Endpoint, FarmClient, resolve_endpoint, url_for
from printfarmd.config import Config
from printfarmd.errors import DatabaseDamaged

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRINTFARMD_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    clean["COLUMNS"] = "200"
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "printfarmd", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_config(
    path: Path, *, port: int, api_key: str = "cfg-key", host: str = "127.0.0.1"
) -> Path:
    path.write_text(
        f'[server]\nhost = "{host}"\nport = {port}\napi_key = "{api_key}"\n'
        '[[printers]]\nid = "sim-1"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRINTFARMD_URL", "PRINTFARMD_API_KEY", "PRINTFARMD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


# -- subprocess: init, check-config, serve, errors ---------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"printfarmd {__version__}"


def shown_key(stdout: str) -> str:
    """The key ``init``/``api-key rotate`` printed (``API key: <key>``)."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("API key: ")]
    assert len(lines) == 1, stdout
    return lines[0].removeprefix("API key: ").strip()


def test_init_output_passes_check_config(tmp_path: Path) -> None:
    result = run_cli("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "printfarmd.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in result.stdout
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    key = shown_key(result.stdout)
    assert len(key) >= 43  # token_urlsafe(32)
    # issue 9: the file keeps only the key's hash; the key is shown once.
    assert "api_key" not in data["server"] and key not in text
    assert data["server"]["api_key_hash"] == hash_key(key)
    assert len(data["printers"]) == 2

    check = run_cli("check-config", "printfarmd.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "ok: 2 printers"
    # The default lookup finds ./printfarmd.toml too.
    assert run_cli("check-config", cwd=tmp_path).stdout.strip() == "ok: 2 printers"


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "farm.toml"
    assert run_cli("init", str(path), cwd=tmp_path).returncode == 0
    first = path.read_text(encoding="utf-8")

    again = run_cli("init", str(path), cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert path.read_text(encoding="utf-8") == first

    path.chmod(0o644)
    forced = run_cli("init", str(path), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    second = path.read_text(encoding="utf-8")
    key = tomllib.loads(second)["server"]["api_key_hash"]
    assert key != tomllib.loads(first)["server"]["api_key_hash"]  # a fresh key each time
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["farm.toml"]  # no temp file left


def test_check_config_bad_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        '[server]\nport = "x"\n'
        + "".join(f'[[printers]]\nid = "p{i}"\n' for i in range(2))
        + '[[printers]]\nid = "p2"\nnozzle_diameter = "0.4"\n',
        encoding="utf-8",
    )
    result = run_cli("check-config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: server.port: expected an integer, got a string",
        "error: printers[2].nozzle_diameter: expected a number, got a string",
    ]
    assert result.stdout == ""


def test_check_config_syntax_error_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "syntax.toml").write_text("[server\n", encoding="utf-8")
    result = run_cli("check-config", "syntax.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "line 1, column" in result.stderr
    assert "Traceback" not in result.stderr

    missing = run_cli("check-config", "nope.toml", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: config file not found: nope.toml"


def test_check_config_example(tmp_path: Path) -> None:
    result = run_cli("check-config", str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "ok: 4 printers"


def test_serve_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        '[server]\nport = 70000\n[[printers]]\nid = "a"\nnozzle_diameter = 0\n', encoding="utf-8"
    )
    result = run_cli("serve", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: server.port: must be between 0 and 65535" in result.stderr
    assert "error: printers[0].nozzle_diameter: must be > 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_uses_printfarmd_config_env(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, env={"PRINTFARMD_CONFIG": str(tmp_path / "x.toml")})
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: config file not found: {tmp_path / 'x.toml'}"


def test_status_against_closed_port(tmp_path: Path) -> None:
    port = closed_port()
    result = run_cli("status", "--url", f"http://127.0.0.1:{port}", "--api-key", "k", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot reach printfarmd at http://127.0.0.1:{port}"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_status_finds_daemon_through_config_in_cwd(tmp_path: Path) -> None:
    port = closed_port()
    write_config(tmp_path / "printfarmd.toml", port=port, host="0.0.0.0")
    result = run_cli("jobs", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot reach printfarmd at http://127.0.0.1:{port}"


def test_client_without_any_config(tmp_path: Path) -> None:
    result = run_cli("status", cwd=tmp_path, env={"PRINTFARMD_CONFIG": str(tmp_path / "none")})
    assert result.returncode == 2
    assert "error: config file not found" in result.stderr
    assert "--url" in result.stderr  # the hint says how else to name the daemon
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli(cwd=tmp_path).returncode == 2
    assert run_cli("jobs", cwd=tmp_path).returncode == 2
    result = run_cli("jobs", "add", "x.gcode", "--copies", "0", "--url", "http://x", cwd=tmp_path)
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr


# -- in-process: serve wiring ------------------------------------------------------------


def fake_daemon(monkeypatch: pytest.MonkeyPatch, behaviour: Any) -> list[tuple[Config, Any]]:
    calls: list[tuple[Config, Any]] = []

    def serve(config: Config, *, log_format: str | None = None, config_path: Any = None) -> int:
        calls.append((config, log_format))
        result: int = behaviour()
        return result

    module = types.ModuleType("printfarmd.daemon")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "printfarmd.daemon", module)
    return calls


def test_serve_passes_config_and_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_daemon(monkeypatch, lambda: 0)
    assert main(["serve", "--config", str(EXAMPLE), "--log-format", "json"]) == 0
    [(config, log_format)] = calls
    assert [p.id for p in config.printers] == ["sim-1", "sim-2", "sim-3", "sim-4"]
    assert config.base_dir == REPO
    assert log_format == "json"

    calls.clear()
    monkeypatch.setenv("PRINTFARMD_CONFIG", str(EXAMPLE))
    assert main(["serve"]) == 0
    assert calls[0][1] is None  # no --log-format: the config decides


def test_serve_reports_startup_errors_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def damaged() -> int:
        raise ExceptionGroup("startup", [DatabaseDamaged("integrity check failed")])

    fake_daemon(monkeypatch, damaged)
    assert main(["serve", "--config", str(EXAMPLE)]) == 1
    assert capsys.readouterr().err == "error: integrity check failed\n"


# -- in-process: client commands against a stub API --------------------------------------

PRINTERS = [
    {
        "id": "sim-1",
        "name": "Simulator 1",
        "driver": "simulator",
        "state": "printing",
        "plate_clear": False,
        "current_job": "0123456789ABCDEF",
        "progress": 42.4,
        "message": "",
        "maintenance": False,
        "materials": ["PLA"],
        "nozzle_diameter": 0.4,
        "bed_size": [220, 220, 250],
        "tags": [],
    },
    {
        "id": "sim-2",
        "name": "[bold red]Sim 2[/]",
        "driver": "simulator",
        "state": "awaiting_clear",
        "plate_clear": False,
        "current_job": None,
        "progress": 0,
        "message": "",
        "maintenance": False,
        "materials": ["PLA", "PETG"],
        "nozzle_diameter": 0.4,
        "bed_size": [220, 220, 250],
        "tags": ["large"],
    },
]
STATUS = {
    "paused": True,
    "queue_depth": 17,
    "jobs_by_state": {"queued": 17, "printing": 1, "shipped": 9},
    "printers_by_state": {"printing": 1, "awaiting_clear": 1},
}


def job(job_id: str, **fields: Any) -> dict[str, Any]:
    base = {
        "id": job_id,
        "filename": "demo/benchy.gcode",
        "name": "",
        "state": "queued",
        "priority": 0,
        "copies": 1,
        "copy_index": 1,
        "material": None,
        "printer_id": None,
        "progress": 0.0,
        "eta": None,
        "created_at": "2026-01-01T00:00:00.000Z",
    }
    return base | fields


JOBS = [
    job(
        "0123456789ABCDEF",
        state="printing",
        priority=5,
        copies=3,
        material="PLA",
        printer_id="sim-1",
        progress=42.4,
    ),
    job("FEDCBA9876543210", name="Calibration cube", filename="cube.gcode"),
]


@attrs.define
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class StubApi:
    """A loopback HTTP server: ``routes[(method, path)] = (status, body)``; records requests."""

    url: str = ""
    routes: dict[tuple[str, str], tuple[int, Any]] = attrs.Factory(dict)
    requests: list[Recorded] = attrs.Factory(list)
    delay: float = 0.0

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        path = handler.path
        self.requests.append(
            Recorded(
                handler.command, path, {k.lower(): v for k, v in handler.headers.items()}, body
            )
        )
        time.sleep(self.delay)
        status, payload = self.routes.get(
            (handler.command, path.split("?")[0]),
            (404, {"error": {"code": "not_found", "message": f"no route {path}"}}),
        )
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)


@pytest.fixture
def api() -> Iterator[StubApi]:
    stub = StubApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stub.handle(self)

        def do_POST(self) -> None:
            stub.handle(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def cli(api: StubApi, *args: str) -> int:
    return main([*args, "--url", api.url, "--api-key", "opt-key"])


def test_status_tables(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/printers")] = (200, {"printers": PRINTERS})
    api.routes[("GET", "/api/orchestrator/status")] = (200, STATUS)
    assert cli(api, "status") == 0
    out = capsys.readouterr().out
    assert "Printers" in out and "Queue" in out
    sim1 = next(line for line in out.splitlines() if "sim-1" in line)
    for cell in ("Simulator 1", "printing", "0123456789ABCDEF", "42%", "PLA"):
        assert cell in sim1
    sim2 = next(line for line in out.splitlines() if "sim-2" in line)
    assert "awaiting_clear" in sim2 and "PLA, PETG" in sim2
    assert "[bold red]Sim 2[/]" in sim2  # user text is never taken for rich markup
    assert "paused" in out
    assert any("Queue depth" in line and "17" in line for line in out.splitlines())
    assert any("shipped" in line and "9" in line for line in out.splitlines())
    assert [r.headers["x-api-key"] for r in api.requests] == ["opt-key", "opt-key"]


def test_status_json(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/printers")] = (200, {"printers": PRINTERS})
    api.routes[("GET", "/api/orchestrator/status")] = (200, STATUS)
    assert cli(api, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"printers": PRINTERS, "status": STATUS}


def test_jobs_list(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/jobs")] = (200, {"jobs": JOBS, "total": 5})
    assert cli(api, "jobs", "list", "--status", "queued, printing", "--limit", "2") == 0
    assert api.requests[0].path == "/api/jobs?status=queued%2Cprinting&limit=2"
    lines = capsys.readouterr().out.splitlines()
    first = next(line for line in lines if "0123456789ABCDEF" in line)
    for cell in ("demo/benchy.gcode (1/3)", "printing", "5", "sim-1", "42%", "PLA"):
        assert cell in first
    second = next(line for line in lines if "FEDCBA9876543210" in line)
    assert "Calibration cube" in second and "queued" in second and "%" not in second
    assert any("2 of 5 jobs shown" in line for line in lines)


def test_jobs_list_json(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/jobs")] = (200, {"jobs": JOBS, "total": 2})
    assert cli(api, "jobs", "list", "--json") == 0
    assert api.requests[0].path == "/api/jobs"
    assert json.loads(capsys.readouterr().out) == {"jobs": JOBS, "total": 2}


def test_jobs_add_sends_only_given_fields(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("POST", "/api/jobs")] = (201, {"jobs": JOBS[1:]})
    assert cli(api, "jobs", "add", "cube.gcode") == 0
    assert json.loads(api.requests[0].body) == {"filename": "cube.gcode"}
    out = capsys.readouterr().out
    assert "added 1 job" in out and "FEDCBA9876543210" in out

    api.routes[("POST", "/api/jobs")] = (201, {"jobs": JOBS})
    argv = ["jobs", "add", "demo/benchy.gcode", "--priority", "-5", "--copies", "3"]
    argv += ["--material", "petg", "--name", "Benchy", "--sku", "B-1"]
    argv += ["--nozzle-diameter", "0.6", "--tag", "large", "--tag", "enclosure"]
    assert cli(api, *argv) == 0
    assert json.loads(api.requests[1].body) == {
        "filename": "demo/benchy.gcode",
        "priority": -5,
        "copies": 3,
        "material": "petg",
        "name": "Benchy",
        "sku": "B-1",
        "nozzle_diameter": 0.6,
        "required_tags": ["large", "enclosure"],
    }
    assert api.requests[1].headers["content-type"] == "application/json"
    assert "added 2 jobs" in capsys.readouterr().out


def test_jobs_cancel(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("POST", "/api/jobs/FEDCBA9876543210/cancel")] = (
        200,
        JOBS[1] | {"state": "cancelled"},
    )
    assert cli(api, "jobs", "cancel", "FEDCBA9876543210", "--reason", "wrong colour") == 0
    assert json.loads(api.requests[0].body) == {"reason": "wrong colour"}
    assert capsys.readouterr().out.strip() == "job FEDCBA9876543210: cancelled"


def test_api_error_message_is_printed(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("POST", "/api/jobs/0123456789ABCDEF/cancel")] = (
        409,
        {"error": {"code": "invalid_transition", "message": "job X is shipped: cannot cancel"}},
    )
    assert cli(api, "jobs", "cancel", "0123456789ABCDEF") == 1
    assert api.requests[0].body == b""
    captured = capsys.readouterr()
    assert captured.err == "error: job X is shipped: cannot cancel\n"
    assert captured.out == ""


def test_printers_clear_quotes_the_id(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("POST", "/api/printers/sim-2/clear")] = (200, PRINTERS[1] | {"state": "idle"})
    assert cli(api, "printers", "clear", "sim-2") == 0
    assert capsys.readouterr().out.strip() == "printer sim-2: plate cleared, now idle"
    # An id cannot climb out of its path segment.
    assert cli(api, "printers", "clear", "../jobs") == 1
    assert api.requests[1].path == "/api/printers/..%2Fjobs/clear"


def test_non_json_error_and_non_json_success(
    api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.routes[("GET", "/api/jobs")] = (500, b"<html>oops</html>")
    assert cli(api, "jobs", "list") == 1
    assert capsys.readouterr().err == (
        f"error: printfarmd at {api.url} answered HTTP 500 Internal Server Error\n"
    )
    api.routes[("GET", "/api/jobs")] = (200, b"not json")
    assert cli(api, "jobs", "list") == 1
    assert "unexpected response from printfarmd" in capsys.readouterr().err
    api.routes[("GET", "/api/jobs")] = (200, {"items": []})
    assert cli(api, "jobs", "list") == 1
    assert "unexpected response from printfarmd" in capsys.readouterr().err


def test_unauthorized(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/jobs")] = (
        401,
        {"error": {"code": "unauthorized", "message": "missing or invalid API key"}},
    )
    assert cli(api, "jobs", "list") == 1
    assert capsys.readouterr().err == "error: missing or invalid API key\n"


def test_timeout_is_reported(api: StubApi) -> None:
    api.delay = 1.0
    api.routes[("GET", "/api/printers")] = (200, {"printers": []})
    with (
        FarmClient(Endpoint(api.url, "k"), timeout=0.2) as client,
        pytest.raises(ClientError, match=r"did not answer within 0\.2 s"),
    ):
        client.list_printers()


# -- where the daemon is -----------------------------------------------------------------


def test_endpoint_precedence(api: StubApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api.routes[("GET", "/api/jobs")] = (200, {"jobs": [], "total": 0})
    # The config alone: its host/port and key.
    port = int(api.url.rsplit(":", 1)[1])
    config = write_config(tmp_path / "farm.toml", port=port, api_key="cfg-key")
    assert main(["jobs", "list", "--config", str(config)]) == 0
    assert api.requests[-1].headers["x-api-key"] == "cfg-key"

    # The environment beats the config (whose port is now closed).
    write_config(config, port=closed_port())
    monkeypatch.setenv("PRINTFARMD_CONFIG", str(config))
    monkeypatch.setenv("PRINTFARMD_URL", api.url)
    monkeypatch.setenv("PRINTFARMD_API_KEY", "env-key")
    assert main(["jobs", "list"]) == 0
    assert api.requests[-1].headers["x-api-key"] == "env-key"

    # Options beat the environment.
    monkeypatch.setenv("PRINTFARMD_URL", f"http://127.0.0.1:{closed_port()}")
    assert main(["jobs", "list", "--url", api.url, "--api-key", "opt-key"]) == 0
    assert api.requests[-1].headers["x-api-key"] == "opt-key"

    # A URL from the environment still takes the key from the config.
    monkeypatch.setenv("PRINTFARMD_URL", api.url)
    monkeypatch.delenv("PRINTFARMD_API_KEY")
    assert main(["jobs", "list"]) == 0
    assert api.requests[-1].headers["x-api-key"] == "cfg-key"


def test_resolve_endpoint_skips_config_when_not_needed(tmp_path: Path) -> None:
    endpoint = resolve_endpoint(
        url="http://farm.local:7125/",
        api_key="k",
        config_path=tmp_path / "does-not-exist.toml",
        env={},
    )
    assert endpoint == Endpoint("http://farm.local:7125", "k")


def test_resolve_endpoint_default_config_lookup(tmp_path: Path) -> None:
    write_config(tmp_path / "printfarmd.toml", port=8000, api_key="local")
    endpoint = resolve_endpoint(url=None, api_key=None, config_path=None, env={}, cwd=tmp_path)
    assert endpoint == Endpoint("http://127.0.0.1:8000", "local")
    other = write_config(tmp_path / "other.toml", port=9000, api_key="other")
    env = {"PRINTFARMD_CONFIG": str(other)}
    endpoint = resolve_endpoint(url=None, api_key=None, config_path=None, env=env, cwd=tmp_path)
    assert endpoint == Endpoint("http://127.0.0.1:9000", "other")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:7125"),
        ("0.0.0.0", "http://127.0.0.1:7125"),
        ("::", "http://[::1]:7125"),
        ("::1", "http://[::1]:7125"),
        ("farm.local", "http://farm.local:7125"),
    ],
)
def test_url_for(host: str, url: str) -> None:
    assert url_for(host, 7125) == url


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_commands(sub, f"{prefix}{name} ")
            return
    yield prefix.strip()


def test_every_command_is_documented() -> None:
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    commands = list(_leaf_commands(build_parser()))
    assert "jobs add" in commands and "serve" in commands
    for command in commands:
        assert f"## {command}\n" in doc, f"docs/cli.md has no section for {command!r}"
        assert f"printfarmd {command}" in doc, f"docs/cli.md has no example of {command!r}"


# ------------------------------------------------- issue 17: serve's parser alone

SERVE_LINES = (
    ["serve"],
    ["serve", "--config", "farm.toml", "--log-format", "json"],
    ["serve", "--help"],
    ["serve", "--log-format", "xml"],
    ["serve", "--bogus"],
    ["serve", "extra"],
)


def _parse(parser: argparse.ArgumentParser, argv: list[str], capsys: Any) -> object:
    """What parsing ``argv`` gives: the options, or the exit code and what was printed."""
    try:
        found = vars(parser.parse_args(argv))
    except SystemExit as exc:
        out = capsys.readouterr()
        return ("exit", exc.code, out.out, out.err)
    return found


@pytest.mark.parametrize("argv", SERVE_LINES, ids=" ".join)
def test_serve_parses_helps_and_refuses_the_same_with_its_parser_alone(
    argv: list[str], capsys: Any
) -> None:
    full = _parse(build_parser(), argv, capsys)
    alone = _parse(build_parser(serve_only=True), argv, capsys)
    assert alone == full


def test_a_serve_command_line_builds_the_serve_parser_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    real_init = argparse.ArgumentParser.__init__

    def counting(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        made.append(self.prog)

    seen: list[argparse.Namespace] = []

    def fake_serve(args: argparse.Namespace, out: object) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", counting)
    monkeypatch.setattr("printfarmd.cli.cmd_serve", fake_serve)
    assert main(["serve", "--config", "farm.toml"]) == 0
    assert made == ["printfarmd", "printfarmd serve"]
    assert seen[0].config == Path("farm.toml")
    # Any other command line gets the whole tree, serve included.
    made.clear()
    assert main(["check-config", "--help"]) == 0
    assert "printfarmd serve" in made and len(made) > 10
