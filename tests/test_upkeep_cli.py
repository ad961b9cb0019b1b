"""The command line's upkeep commands (issue 16) against the real daemon over HTTP: spools
bound and listed with the Spoolman stand-in, maintenance recorded and listed, a job queued
with a colour and a schedule."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import trio

from printfarmd.cli import main
from printfarmd.config import MaintenanceConfig, SpoolmanConfig
from tests.conftest import API_KEY, live_farm, make_config, sim_printer
from tests.spoolman_sim import SimSpool, open_spoolman_sim


async def run(url: str, *args: str) -> int:
    """``printfarmd ARGS`` in a worker thread (it blocks on HTTP to this daemon)."""
    return await trio.to_thread.run_sync(lambda: main([*args, "--url", url, "--api-key", API_KEY]))


async def test_spools_and_maintenance_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(12, material="PETG", color_hex="00AAFF", initial_weight=750.0))
        config = msgspec.structs.replace(
            make_config(tmp_path, (sim_printer("p1"), sim_printer("p2")), dispatch_paused=True),
            spoolman=SpoolmanConfig(url=sim.url),
            maintenance=MaintenanceConfig(every_prints=50),
        )
        async with live_farm(config) as farm:
            assert await run(farm.url, "spools", "bind", "p1", "12") == 0
            assert "printer p1 tool 0: spool 12 (PETG, 750 g left)" in capsys.readouterr().out
            assert await run(farm.url, "spools", "list") == 0
            out = capsys.readouterr().out
            row = next(line for line in out.splitlines() if "PETG" in line)
            assert "p1" in row and "12" in row and "#00AAFF" in row and "750" in row
            assert "Spoolman connected" in out
            assert await run(farm.url, "spools", "bind", "p2", "99") == 1  # not in Spoolman
            assert "spool 99 not found in Spoolman" in capsys.readouterr().err
            assert await run(farm.url, "spools", "unbind", "p1") == 0
            assert "printer p1 tool 0: no spool" in capsys.readouterr().out
            printer = (await farm.client.get("/api/printers/p1")).json()
            assert printer["spools"] == [{"tool": 0, "spool_id": None}]

            assert (
                await run(
                    farm.url, "maintenance", "record", "p2", "--by", "bob", "--work", "oiled rods"
                )
                == 0
            )
            assert "printer p2: maintenance recorded" in capsys.readouterr().out
            assert await run(farm.url, "maintenance", "list", "p2", "--json") == 0
            body = json.loads(capsys.readouterr().out)
            assert body["total"] == 1 and body["log"][0]["work"] == "oiled rods"
            assert body["thresholds"]["every_prints"] == 50
            assert await run(farm.url, "maintenance", "list") == 0
            out = capsys.readouterr().out
            assert "Maintenance log" in out and "bob" in out

            assert await run(
                farm.url, "jobs", "add", "benchy_pla.gcode", "--colour", "ff0000",
                "--not-before", "2031-01-01T00:00:00Z",
            ) == 0  # fmt: skip
            capsys.readouterr()
            jobs = (await farm.client.get("/api/jobs")).json()["jobs"]
            assert jobs[0]["colour"] == "#FF0000"
            assert jobs[0]["not_before"] == "2031-01-01T00:00:00.000Z"
