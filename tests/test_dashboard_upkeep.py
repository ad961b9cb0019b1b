"""The dashboard's upkeep views (issue 16) in real headless Chromium against ``printfarmd
serve``: a bound spool with its colour and weight, a printer held by its quiet hours and
the queued job saying why, a printer due for maintenance and the work recorded from its
tile, a spool bound from a tile. Spoolman is the stand-in (``tests/spoolman_sim.py``) in a
thread of its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import msgspec
from playwright.sync_api import expect as pw_expect

from printfarmd.config import MaintenanceConfig, PowerConfig, SpoolmanConfig
from tests.conftest import sim_printer
from tests.spoolman_sim import SimSpool, SpoolmanThread
from tests.test_dashboard import Dash, browser, farm_config, open_dash, submit, wait_api

__all__ = ["browser", "open_dash"]  # the fixtures, used by name


def clock(delta_minutes: int) -> str:
    at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=delta_minutes)
    return at.strftime("%H:%M")


def test_spools_quiet_hours_and_maintenance_on_the_board(
    open_dash: Callable[..., Dash], tmp_path: Path
) -> None:
    with SpoolmanThread() as spoolman:
        assert spoolman.sim is not None
        spoolman.sim.add(SimSpool(3, material="PLA", color_hex="FF8800", initial_weight=900.0))
        quiet = sim_printer("quiet", tags=("q",), quiet_hours=(clock(-60), clock(120)))
        fast = sim_printer("fast", tags=("f",), speed=20000.0, auto_clear=True)
        config = msgspec.structs.replace(
            farm_config(tmp_path, quiet, fast),
            spoolman=SpoolmanConfig(url=spoolman.sim.url),
            maintenance=MaintenanceConfig(every_prints=1),
            power=PowerConfig(timezone="UTC"),
        )
        dash = open_dash(config)
        page = dash.page
        with dash.api() as c:
            assert c.put("/api/printers/fast/spool", json={"spool_id": 3}).status_code == 200
        held = submit(dash, required_tags=["q"])[0]
        row = page.locator(f'#job-rows tr[data-job-id="{held["id"]}"]')
        pw_expect(row).to_have_attribute("data-state", "queued")
        pw_expect(row.locator(".waiting")).to_contain_text(
            "quiet: quiet hours until", timeout=20000
        )
        tile = page.locator('[data-printer-id="quiet"]')
        pw_expect(tile.locator(".waiting")).to_contain_text("quiet hours until", timeout=20000)

        fast_tile = page.locator('[data-printer-id="fast"]')
        pw_expect(fast_tile.locator(".spool")).to_contain_text(
            "spool 3: PLA 900 g left", timeout=20000
        )
        swatch = fast_tile.locator(".swatch")
        assert swatch.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 136, 0)"
        # A print on "fast" crosses its threshold (every print): due, shown, one button.
        submit(dash, required_tags=["f"])
        wait_api(dash, "/api/printers/fast", lambda p: p["state"] == "maintenance", 30.0)
        pw_expect(fast_tile).to_have_attribute("data-state", "maintenance", timeout=20000)
        pw_expect(fast_tile.locator(".due")).to_contain_text("maintenance due: 1 print since")
        dash.shot("maintenance-due")
        dash.answers = ["alice", "nozzle swapped"]
        fast_tile.locator("button.record-maintenance").click()
        pw_expect(fast_tile).to_have_attribute("data-state", "idle", timeout=20000)
        pw_expect(fast_tile.locator(".due")).to_have_count(0)
        assert dash.dialogs[-2:] == ["Maintenance of fast: who did it?", "What was done?"]
        with dash.api() as c:
            log = c.get("/api/printers/fast/maintenance").json()["log"]
        assert [(e["by"], e["work"]) for e in log] == [("alice", "nozzle swapped")]
        # Bind from a tile: the spool moves from "fast" to "quiet" (a spool is in one place).
        dash.answers = ["3"]
        tile.locator("button.bind-spool").click()
        pw_expect(tile.locator(".spool")).to_contain_text("spool 3: PLA", timeout=20000)
        pw_expect(fast_tile.locator(".spool")).to_have_count(0, timeout=20000)
        dash.shot("upkeep")
        assert dash.errors == [], dash.errors
