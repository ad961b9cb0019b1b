"""Issue 8: ``printfarmd doctor`` finds each planted problem and exits non-zero."""

from __future__ import annotations

from pathlib import Path

import msgspec
import psycopg
import pytest

from printfarmd.cli import main
from printfarmd.config import MoonrakerOptions, MqttConfig, ServerConfig, StorageBackend
from printfarmd.doctor import (
    EARLIEST_PLAUSIBLE,
    MIN_FREE_BYTES,
    clock_finding,
    disk_finding,
    key_finding,
)
from printfarmd.store.database import open_database
from tests.conftest import free_port, make_config, sim_printer, write_config
from tests.pg_server import PgServer


def _doctor(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["doctor", "--config", str(path)])
    return code, capsys.readouterr().out


def test_healthy_farm_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    conn, _ = open_database(config.data_path / "printfarmd.db")
    conn.close()
    code, out = _doctor(write_config(config, tmp_path / "farm.toml"), capsys)
    assert code == 0, out
    assert "integrity ok" in out
    assert "no problems found" in out


def test_postgresql_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_server: PgServer
) -> None:
    """issue 18: with the PostgreSQL backend doctor asks the server, and writes nothing."""
    dsn = pg_server.fresh_dsn()
    config = make_config(tmp_path)
    storage = msgspec.structs.replace(config.storage, backend=StorageBackend.POSTGRESQL, dsn=dsn)
    path = write_config(msgspec.structs.replace(config, storage=storage), tmp_path / "farm.toml")
    code, out = _doctor(path, capsys)
    assert code == 0, out
    assert "reachable," in out and "schema version 0" in out
    with psycopg.connect(dsn) as conn:  # a new database stays empty
        assert conn.execute("SELECT to_regclass('printfarmd_schema')").fetchone() == (None,)
    dead = msgspec.structs.replace(
        storage, dsn=f"postgresql://u:pw@127.0.0.1:{pg_server.port + 1}/x"
    )
    path = write_config(msgspec.structs.replace(config, storage=dead), tmp_path / "dead.toml")
    code, out = _doctor(path, capsys)
    assert code == 1
    assert "cannot connect" in out and "PROBLEM" in out


def test_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "farm.toml"
    path.write_text('[server]\nport = "not a number"\n')
    code, out = _doctor(path, capsys)
    assert code == 1
    assert "config" in out
    assert "PROBLEM" in out


def test_damaged_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    config.data_path.mkdir(parents=True)
    (config.data_path / "printfarmd.db").write_bytes(b"this is not SQLite" * 100)
    code, out = _doctor(write_config(config, tmp_path / "farm.toml"), capsys)
    assert code == 1
    assert "database" in out
    assert "PROBLEM" in out
    # Doctor never touches the file.
    assert (config.data_path / "printfarmd.db").read_bytes() == b"this is not SQLite" * 100


def test_unreachable_printer_and_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    printers = (
        sim_printer("ok-sim"),
        msgspec.structs.replace(
            sim_printer("voron"), driver="moonraker", moonraker=MoonrakerOptions(url=dead)
        ),
    )
    config = msgspec.structs.replace(
        make_config(tmp_path, printers), mqtt=MqttConfig(host="127.0.0.1", port=free_port())
    )
    code, out = _doctor(write_config(config, tmp_path / "farm.toml"), capsys)
    assert code == 1
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert "PROBLEM" in lines["printer voron"]
    assert "PROBLEM" not in lines["printer ok-sim"]
    assert "PROBLEM" in lines["mqtt broker"]


def test_disk_and_clock_judgements() -> None:
    assert not disk_finding(MIN_FREE_BYTES - 1, 10 * MIN_FREE_BYTES).ok
    assert disk_finding(MIN_FREE_BYTES, 10 * MIN_FREE_BYTES).ok
    assert not clock_finding(0.0, None).ok  # a Pi booted without NTP: 1970
    now = EARLIEST_PLAUSIBLE + 1e6
    assert clock_finding(now, now - 10).ok
    assert not clock_finding(now, now + 3600).ok  # the clock went back behind our data


@pytest.mark.parametrize(
    ("server", "ok", "detail"),
    [
        (ServerConfig(api_key_hash="sha256:" + "0" * 64), True, "stored as its hash"),
        (ServerConfig(api_key="demo-key-change-me"), False, "the public demo key"),
        (ServerConfig(api_key="short"), False, "only 5 characters"),
        (ServerConfig(api_key="x" * 43), True, "in plain text"),
        (ServerConfig(trusted_clients=("10.0.0.0/8",)), True, "only server.trusted_clients"),
        (ServerConfig(), False, "nobody gets in"),
    ],
)
def test_api_key_judgement(server: ServerConfig, ok: bool, detail: str) -> None:
    finding = key_finding(server)
    assert finding.ok is ok and detail in finding.detail


def test_demo_key_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    config = msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, api_key="demo-key-change-me")
    )
    code, out = _doctor(write_config(config, tmp_path / "farm.toml"), capsys)
    assert code == 1 and "the public demo key" in out
