"""The operator dashboard in real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package) against ``printfarmd serve`` running as a subprocess.

Screenshots land in ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import msgspec
import pytest

from printfarmd.config import Config
from tests.conftest import API_KEY, REPO, DaemonProcess, make_config, sim_printer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"
#: The board's state order (most urgent first), as the dashboard sorts it.
STATE_RANK = ["printing", "post_process", "queued", "sliced", "validated", "created", "failed"]

try:
    from playwright.sync_api import Browser, Page, sync_playwright
    from playwright.sync_api import expect as pw_expect
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.fail("the dashboard tests need Playwright: pip install -e '.[test]'")
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(
            f"the dashboard tests need Debian's Chromium at {CHROMIUM}: "
            "apt-get update && apt-get install -y chromium (.ci/run does it)"
        )
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def farm_config(tmp: Path, *printers: Any, **sched: Any) -> Config:
    config = make_config(tmp, printers or (sim_printer("p1"),), **sched)
    return msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, sse_heartbeat=1.0)
    )


@attrs.define
class Dash:
    """A page on the dashboard of a running daemon, with browser-side errors recorded."""

    page: Page
    daemon: DaemonProcess
    errors: list[str]
    dialogs: list[str]
    #: What the next confirm()/prompt() dialogs answer (empty: dismissed).
    answers: list[str] = attrs.field(factory=list)

    def api(self) -> httpx.Client:
        return self.daemon.client()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)

    def rows(self) -> Any:
        return self.page.locator("#job-rows tr")

    def column(self, col: str, attr: str | None = None) -> list[str]:
        cells = self.page.locator(f'#job-rows td[data-col="{col}"]')
        if attr:
            return [cells.nth(i).get_attribute(attr) or "" for i in range(cells.count())]
        return [t.strip() for t in cells.all_text_contents()]


@pytest.fixture
def open_dash(browser: Browser, daemon_factory: Any) -> Iterator[Callable[..., Dash]]:
    contexts: list[Any] = []

    def opener(config: Config, viewport: dict[str, int] | None = None, key: bool = True) -> Dash:
        daemon = daemon_factory(config)
        daemon.start()
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        dialogs: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        dash = Dash(page, daemon, errors, dialogs)

        def on_dialog(d: Any) -> None:
            dialogs.append(d.message)
            if dash.answers:
                d.accept(dash.answers.pop(0))
            else:
                d.dismiss()

        page.on("dialog", on_dialog)
        page.goto(daemon.url + "/dashboard")
        if key:  # asked for the key once
            page.locator("#key-input").fill(API_KEY)
            page.locator("#key-form button[type=submit]").click()
        pw_expect(page.locator("#main")).to_be_visible()
        pw_expect(page.locator("#conn")).to_have_text("live")
        # the keyless probe (is this a trusted network?) was answered 401: expected
        assert all("401" in e for e in errors), errors
        errors.clear()
        return dash

    yield opener
    for context in contexts:
        context.close()


def submit(dash: Dash, **body: Any) -> list[dict[str, Any]]:
    with dash.api() as c:
        r = c.post("/api/jobs", json={"filename": "benchy_pla.gcode", **body})
        assert r.status_code == 201, r.text
        jobs: list[dict[str, Any]] = r.json()["jobs"]
        return jobs


def wait_api(dash: Dash, path: str, pred: Callable[[Any], bool], within: float = 15.0) -> Any:
    deadline = time.monotonic() + within
    with dash.api() as c:
        while True:
            body = c.get(path).json()
            if pred(body):
                return body
            assert time.monotonic() < deadline, f"timed out waiting on {path}: {body}"
            time.sleep(0.05)


# ------------------------------------------------------------------ tests


def test_key_is_asked_once_and_data_calls_need_it(
    open_dash: Callable[..., Dash], tmp_path: Path
) -> None:
    dash = open_dash(farm_config(tmp_path, dispatch_paused=True))
    page = dash.page
    assert page.evaluate("localStorage.getItem('printfarmd.apiKey')") == API_KEY
    page.reload()
    pw_expect(page.locator("#main")).to_be_visible()
    assert page.locator("#key-form").is_hidden()  # not asked again
    pw_expect(page.locator("#printers [data-printer-id]")).to_have_count(1)
    # the page itself is public and carries no farm data; the data calls are not
    with httpx.Client(base_url=dash.daemon.url) as anon:
        html = anon.get("/dashboard")
        assert html.status_code == 200 and "p1" not in html.text
        assert anon.get("/api/printers").status_code == 401
        assert anon.get("/api/events").status_code == 401
    # a wrong key is refused and asked for again
    page.evaluate("localStorage.setItem('printfarmd.apiKey', 'wrong')")
    page.reload()
    pw_expect(page.locator("#key-form")).to_be_visible()
    assert dash.errors == [] or all("401" in e for e in dash.errors)


def test_a_trusted_network_is_not_asked_for_the_key(
    open_dash: Callable[..., Dash], tmp_path: Path
) -> None:
    config = farm_config(tmp_path, dispatch_paused=True)
    config = msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, trusted_clients=("127.0.0.0/8",))
    )
    dash = open_dash(config, key=False)  # no key typed: the page went straight in
    assert dash.page.locator("#key-form").is_hidden()
    assert dash.page.evaluate("localStorage.getItem('printfarmd.apiKey')") is None
    job = submit(dash, name="from a trusted client")[0]
    pw_expect(dash.page.locator(f'tr[data-job-id="{job["id"]}"]')).to_have_count(1)  # live
    assert dash.errors == [], dash.errors


def test_board_sorts_by_each_column(open_dash: Callable[..., Dash], tmp_path: Path) -> None:
    printers = (
        sim_printer("p1", ("PLA",), speed=1.0),
        sim_printer("p2", ("PLA", "PETG"), speed=1.0),
        sim_printer("p3", ("PETG",), speed=1.0),
    )
    dash = open_dash(farm_config(tmp_path, *printers, dispatch_paused=True))
    files = ["benchy_pla.gcode", "calibration_cube_pla.gcode", "phone_stand_petg.gcode"]
    for i, (sku, filename) in enumerate(
        [("C-3", files[0]), ("A-1", files[1]), ("B-2", files[2]), (None, files[0])]
    ):
        submit(dash, filename=filename, sku=sku, priority=i)
    with dash.api() as c:
        c.post("/api/orchestrator/resume")
    wait_api(dash, "/api/jobs?status=printing", lambda b: b["total"] == 3)
    with dash.api() as c:
        c.post("/api/orchestrator/pause")
    submit(dash, filename=files[2], sku="D-4")  # stays queued
    pw_expect(dash.rows()).to_have_count(5)
    pw_expect(dash.page.locator('#job-rows tr[data-state="printing"]')).to_have_count(3)

    def check(col: str, key: Callable[[str], Any], attr: str | None = None) -> None:
        button = dash.page.locator(f'th button[data-sort="{col}"]')
        for direction in ("ascending", "descending"):
            button.click()  # the first click on a column sorts ascending, the next flips
            if button.get_attribute("aria-sort") != direction:  # it was the default sort
                button.click()
            pw_expect(button).to_have_attribute("aria-sort", direction)
            values = (
                [r.get_attribute("data-state") or "" for r in dash.rows().all()]
                if col == "state"
                else dash.column(col, attr)
            )
            filled = [v for v in values if v]
            # empty cells go last either way
            assert values == filled + [""] * (len(values) - len(filled)), (col, values)
            keys = [key(v) for v in filled]
            expected = sorted(keys, reverse=direction == "descending")
            assert keys == expected, (col, direction, values)
            assert len(set(keys)) > 1, (col, values)  # the column really had an order
        dash.shot(f"sorted-by-{col}")

    check("state", STATE_RANK.index)
    check("printer", str)
    check("sku", str)
    check("eta", str, attr="data-eta")  # ISO-8601 UTC strings sort as times
    assert dash.errors == [], dash.errors


def test_plate_cleared_tap_frees_the_printer(
    open_dash: Callable[..., Dash], tmp_path: Path
) -> None:
    dash = open_dash(farm_config(tmp_path, sim_printer("p1", speed=20000.0)))
    job = submit(dash, name="quick one")[0]
    tile = dash.page.locator('[data-printer-id="p1"]')
    pw_expect(tile).to_have_attribute("data-state", "awaiting_clear", timeout=20000)
    button = tile.locator("button.clear-plate")
    pw_expect(button).to_be_visible()
    dash.shot("awaiting-clear")
    button.click()
    pw_expect(tile).to_have_attribute("data-state", "idle")
    pw_expect(tile.locator("button.clear-plate")).to_have_count(0)
    printer = wait_api(dash, "/api/printers/p1", lambda p: p["state"] == "idle")
    assert printer["plate_clear"] is True
    row = dash.page.locator(f'#job-rows tr[data-job-id="{job["id"]}"]')
    pw_expect(row).to_have_attribute("data-state", "ready")
    dash.shot("plate-cleared")
    assert dash.errors == [], dash.errors


def test_a_job_started_by_the_scheduler_appears_without_a_reload(
    open_dash: Callable[..., Dash], tmp_path: Path
) -> None:
    dash = open_dash(farm_config(tmp_path, sim_printer("p1", speed=1.0), dispatch_paused=True))
    page = dash.page
    page.evaluate("window.__same_page = 'yes'")
    pw_expect(dash.rows()).to_have_count(0)
    job = submit(dash, name="appears live", sku="LIVE-1")[0]
    row = page.locator(f'#job-rows tr[data-job-id="{job["id"]}"]')
    pw_expect(row).to_have_attribute("data-state", "queued")
    with dash.api() as c:
        c.post("/api/orchestrator/resume")  # the scheduler starts it on p1
    pw_expect(row).to_have_attribute("data-state", "printing")
    pw_expect(row.locator('td[data-col="printer"]')).to_have_text("p1")
    tile = page.locator('[data-printer-id="p1"]')
    pw_expect(tile).to_have_attribute("data-state", "printing")
    pw_expect(tile.locator(".job")).to_have_text("appears live")
    pw_expect(tile.locator(".thumb")).to_have_text("no preview")  # thumbnail slot
    assert page.evaluate("window.__same_page") == "yes"  # no reload happened
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    dash.shot("live")
    assert dash.errors == [], dash.errors


def test_hostile_names_render_as_text(open_dash: Callable[..., Dash], tmp_path: Path) -> None:
    printer = sim_printer("p1", speed=1.0, name="<b>bold</b> printer")
    dash = open_dash(farm_config(tmp_path, printer, dispatch_paused=True))
    job = submit(dash, name=HOSTILE, sku='"><script>alert(2)</script>')[0]
    row = dash.page.locator(f'#job-rows tr[data-job-id="{job["id"]}"]')
    pw_expect(row.locator(".name")).to_have_text(HOSTILE)
    pw_expect(row.locator('td[data-col="sku"]')).to_have_text('"><script>alert(2)</script>')
    with dash.api() as c:
        c.post("/api/orchestrator/resume")
    tile = dash.page.locator('[data-printer-id="p1"]')
    pw_expect(tile.locator(".job")).to_have_text(HOSTILE)
    pw_expect(tile.locator(".tile-name")).to_have_text("<b>bold</b> printer")
    assert dash.page.locator("main img, main script, main b").count() == 0
    dash.shot("hostile-names")
    assert dash.dialogs == []  # alert() never ran
    assert dash.errors == [], dash.errors


def test_actions_cancel_reprioritize_send_to_printer_and_pause_all(
    open_dash: Callable[..., Dash], tmp_path: Path
) -> None:
    printers = (sim_printer("p1", speed=1.0), sim_printer("p2", speed=1.0))
    dash = open_dash(farm_config(tmp_path, *printers, dispatch_paused=True))
    page = dash.page
    a, b, c = (submit(dash, name=n)[0] for n in ("alpha", "bravo", "charlie"))
    pw_expect(dash.rows()).to_have_count(3)

    # send bravo to p2, though it is not first in the queue
    row_b = page.locator(f'tr[data-job-id="{b["id"]}"]')
    row_b.locator("select.release-printer").select_option("p2")
    pw_expect(row_b).to_have_attribute("data-state", "printing")
    assert wait_api(dash, f"/api/jobs/{b['id']}", lambda j: j["printer_id"] == "p2")

    # reprioritize charlie (the prompt answers 42)
    dash.answers.append("42")
    row_c = page.locator(f'tr[data-job-id="{c["id"]}"]')
    row_c.locator("button.reprioritize").click()
    pw_expect(row_c.locator('td[data-col="priority"]')).to_have_text("42")
    wait_api(dash, f"/api/jobs/{c['id']}", lambda j: j["priority"] == 42)

    # cancel alpha (confirm)
    row_a = page.locator(f'tr[data-job-id="{a["id"]}"]')
    dash.answers.append("")
    row_a.locator("button.cancel").click()
    pw_expect(row_a).to_have_count(0)  # cancelled jobs leave the open board
    wait_api(dash, f"/api/jobs/{a['id']}", lambda j: j["state"] == "cancelled")

    # pause / resume everything
    toggle = page.locator("#pause-toggle")
    pw_expect(toggle).to_have_text("Resume all")
    toggle.click()
    pw_expect(toggle).to_have_text("Pause all")
    wait_api(dash, "/api/orchestrator/status", lambda s: s["paused"] is False)
    pw_expect(row_c).to_have_attribute("data-state", "printing")  # charlie went to p1
    toggle.click()
    pw_expect(toggle).to_have_text("Resume all")
    wait_api(dash, "/api/orchestrator/status", lambda s: s["paused"] is True)
    dash.shot("actions")


def test_pause_and_resume_a_printing_job(open_dash: Callable[..., Dash], tmp_path: Path) -> None:
    dash = open_dash(farm_config(tmp_path, sim_printer("p1", speed=1.0)))
    page = dash.page
    (job,) = submit(dash)
    # (the printer confirms the job first: its progress shows)
    wait_api(
        dash, f"/api/jobs/{job['id']}", lambda j: j["state"] == "printing" and j["progress"] > 0
    )
    row = page.locator(f'tr[data-job-id="{job["id"]}"]')
    row.locator("button.pause").click()
    wait_api(dash, "/api/printers/p1", lambda p: p["state"] == "paused")
    pw_expect(row.locator("button.resume")).to_have_count(1)
    row.locator("button.resume").click()
    wait_api(dash, "/api/printers/p1", lambda p: p["state"] == "printing")
    pw_expect(row.locator("button.pause")).to_have_count(1)
    dash.shot("pause-resume")
    assert dash.errors == [], dash.errors


def test_add_a_job_from_an_uploaded_file(open_dash: Callable[..., Dash], tmp_path: Path) -> None:
    dash = open_dash(farm_config(tmp_path, dispatch_paused=True))
    gcode = (REPO / "demo" / "gcodes" / "benchy_pla.gcode").read_bytes()
    dash.page.locator("#upload-file").set_input_files(
        files=[{"name": "uploaded_part.gcode", "mimeType": "text/x-gcode", "buffer": gcode}]
    )
    row = dash.page.locator('#job-rows tr[data-state="queued"]')
    pw_expect(row).to_have_count(1)
    pw_expect(row.locator(".name")).to_have_text("uploaded_part.gcode")
    pw_expect(dash.page.locator("#notice")).to_have_text("Added uploaded_part.gcode")
    jobs = wait_api(dash, "/api/jobs", lambda b: b["total"] == 1)["jobs"]
    assert jobs[0]["filename"] == "uploaded_part.gcode" and jobs[0]["state"] == "queued"
    dash.shot("uploaded")
    assert dash.errors == [], dash.errors


def test_usable_on_a_phone(open_dash: Callable[..., Dash], tmp_path: Path) -> None:
    printers = (sim_printer("p1", speed=1.0), sim_printer("p2", speed=1.0))
    dash = open_dash(
        farm_config(tmp_path, *printers, dispatch_paused=True),
        viewport={"width": 390, "height": 844},
    )
    for n in range(4):
        submit(dash, name=f"phone job {n} with a rather long name", sku=f"SKU-{n}")
    pw_expect(dash.rows()).to_have_count(4)
    # nothing wider than the screen: no sideways scrolling
    assert page_width(dash.page) <= 390
    button = dash.page.locator("#pause-toggle")
    box = button.bounding_box()
    assert box is not None and box["height"] >= 40  # big enough to tap
    dash.shot("phone")
    assert dash.errors == [], dash.errors


def page_width(page: Page) -> int:
    width: int = page.evaluate("document.documentElement.scrollWidth")
    return width


# ------------------------------------------------------------ issue 14: history, summary, e-stop


def test_history_view_and_printer_summary(open_dash: Callable[..., Dash], tmp_path: Path) -> None:
    printers = (
        sim_printer("p1", speed=20000.0, auto_clear=True),
        sim_printer("p2", speed=20000.0, failure_rate=1.0, auto_clear=True, name="flaky"),
    )
    dash = open_dash(
        farm_config(tmp_path, *printers, dispatch_paused=True, retry_backoff=(3600.0,))
    )
    page = dash.page
    pw_expect(page.locator("#history-empty")).to_be_visible()  # nothing printed yet
    ok = submit(dash, name="good", sku="SKU-OK")[0]
    bad = submit(dash, name="bad")[0]
    with dash.api() as c:
        c.post(f"/api/jobs/{ok['id']}/release", json={"printerId": "p1"})
        c.post(f"/api/jobs/{bad['id']}/release", json={"printerId": "p2"})
    body = wait_api(
        dash,
        "/api/history",
        lambda b: {e["status"] for e in b["entries"]} == {"completed", "error"},
    )
    # the history view fills in live: one row per attempt, with its outcome
    rows = page.locator("#history-rows tr")
    pw_expect(rows).to_have_count(2)
    pw_expect(page.locator('#history-rows tr[data-status="completed"] .badge')).to_have_text(
        "completed"
    )
    failed = page.locator('#history-rows tr[data-status="error"]')
    pw_expect(failed.locator(".badge")).to_have_text("failed")
    pw_expect(failed.locator('td[data-col="printer"]')).to_have_text("flaky")
    reason = next(e["reason"] for e in body["entries"] if e["status"] == "error")
    pw_expect(failed).to_contain_text(reason)
    # the summary: success rate, hours, last failure, and a bar of outcomes per day
    flaky = page.locator('#summary-rows tr[data-summary-printer="p2"]')
    pw_expect(flaky.locator(".success")).to_have_text("0 %")
    pw_expect(flaky.locator(".last-failure")).to_contain_text(reason)
    good = page.locator('#summary-rows tr[data-summary-printer="p1"]')
    pw_expect(good.locator(".success")).to_have_text("100 %")
    assert good.locator("svg.outcomes rect.day").count() == 30
    pw_expect(good.locator('svg.outcomes rect[data-outcome="completed"]')).to_have_count(1)
    pw_expect(flaky.locator('svg.outcomes rect[data-outcome="error"]')).to_have_count(1)
    assert "1 completed" in (good.locator("svg.outcomes").get_attribute("aria-label") or "")
    # filter by printer, then by outcome
    page.locator("#history-printer").select_option("p2")
    pw_expect(rows).to_have_count(1)
    pw_expect(rows.first).to_have_attribute("data-printer", "p2")
    page.locator("#history-printer").select_option("")
    page.locator("#history-status").select_option("completed")
    pw_expect(rows).to_have_count(1)
    pw_expect(rows.first).to_have_attribute("data-status", "completed")
    page.locator("#history-status").select_option("")
    pw_expect(rows).to_have_count(2)
    # CSV, as the API gives it
    with page.expect_download() as download:
        page.locator("#history-csv").click()
    saved = Path(download.value.path())
    parsed = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert sorted(r["status"] for r in parsed) == ["completed", "error"]
    assert {r["sku"] for r in parsed} == {"SKU-OK", ""}
    dash.shot("history")
    # no external script or stylesheet: everything is the farm's own
    sources = page.evaluate(
        "[...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href)"
    )
    assert all(s.startswith(dash.daemon.url) or s.startswith("data:") for s in sources), sources
    assert dash.errors == [], dash.errors


def test_emergency_stop_button_asks_then_stops_the_farm(
    open_dash: Callable[..., Dash], tmp_path: Path
) -> None:
    config = farm_config(
        tmp_path,
        sim_printer("p1", speed=1.0),
        sim_printer("p2", speed=1.0),
        retry_backoff=(3600.0,),
    )
    dash = open_dash(config)
    jobs = [submit(dash, name=f"part {n}")[0] for n in range(2)]
    wait_api(dash, "/api/jobs?status=printing", lambda b: b["total"] == 2)
    button = dash.page.locator("#estop")
    pw_expect(button).to_be_enabled()
    # dismissed: nothing happens
    button.click()
    assert dash.dialogs and "Emergency stop" in dash.dialogs[-1]
    assert wait_api(dash, "/api/jobs?status=printing", lambda b: b["total"] == 2)
    # confirmed: the farm stops
    dash.answers.append("")
    button.click()
    wait_api(dash, "/api/orchestrator/status", lambda s: s["paused"] is True)
    for job in jobs:
        stopped = wait_api(dash, f"/api/jobs/{job['id']}", lambda j: j["state"] == "failed")
        assert stopped["last_error"] == "emergency stop by dashboard (127.0.0.1)"
    events = wait_api(
        dash, "/api/events/history?type=farm.emergency_stop", lambda b: len(b["events"]) == 1
    )["events"]
    assert events[0]["data"]["printers"] == ["p1", "p2"]
    pw_expect(dash.page.locator("#notice")).to_contain_text("Emergency stop by dashboard")
    pw_expect(dash.page.locator("#pause-toggle")).to_have_text("Resume all")
    pw_expect(dash.page.locator('#history-rows tr[data-status="error"]')).to_have_count(2)
    dash.shot("emergency-stop")
    assert dash.errors == [], dash.errors
