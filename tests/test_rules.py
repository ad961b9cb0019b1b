"""Issue 17: URL builders are compiled on first use, not for every rule at start."""

from __future__ import annotations

from typing import Any

import pytest
from quart_trio import QuartTrio
from werkzeug.routing import Rule

from printfarmd.api.app import create_app
from printfarmd.api.rules import FarmApp
from tests.conftest import LiveFarm


def _app(app_class: type[QuartTrio]) -> QuartTrio:
    app = app_class("t")

    @app.get("/api/jobs/<job_id>/events")
    async def job_events(job_id: str) -> str:
        return job_id

    @app.get("/server/files/<root>/<path:filename>")
    async def file(root: str, filename: str) -> str:
        return filename

    return app


def _count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    real = Rule._compile_builder

    def counting(self: Rule, append_unknown: bool = True) -> Any:
        calls.append(append_unknown)
        return real(self, append_unknown)

    monkeypatch.setattr(Rule, "_compile_builder", counting)
    return calls


def test_werkzeug_compiles_two_builders_per_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # The oracle for the next test: without the lazy rule, adding a rule compiles both.
    calls = _count_compiles(monkeypatch)
    _app(QuartTrio)
    assert len(calls) >= 4


def test_lazy_rules_compile_nothing_until_a_url_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_compiles(monkeypatch)
    app = _app(FarmApp)
    assert calls == []
    urls = app.url_map.bind("farm.local")
    assert urls.build("job_events", {"job_id": "j 1"}) == "/api/jobs/j%201/events"
    assert urls.build("job_events", {"job_id": "j1", "x": "2"}) == "/api/jobs/j1/events?x=2"
    assert urls.build("file", {"root": "gcodes", "filename": "a/b.gcode"}) == (
        "/server/files/gcodes/a/b.gcode"
    )
    # Compiled once per rule built (two here), then reused.
    urls.build("job_events", {"job_id": "j2"})
    urls.build("job_events", {"job_id": "j3", "y": "1"})
    assert len(calls) == 2


async def test_the_daemon_app_compiles_no_builder(
    farm: LiveFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_compiles(monkeypatch)
    app = create_app(farm.running.services)
    assert len(list(app.url_map.iter_rules())) > 50  # the whole API and the facade
    assert calls == []
