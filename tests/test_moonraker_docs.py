"""Every facade method and HTTP route is in docs/moonraker-compat.md's table; pure units
of the argument parser and the notification actions."""

from __future__ import annotations

import pytest

from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker.args import Args, parse_query
from printfarmd.api.moonraker.rpc import METHODS
from printfarmd.api.moonraker.ws import queue_actions
from printfarmd.models import Event
from tests.conftest import REPO


def test_every_method_and_route_is_in_the_compat_table() -> None:
    text = (REPO / "docs" / "moonraker-compat.md").read_text()
    missing = [f"`{name}`" for name in METHODS if f"`{name}`" not in text]
    assert not missing, missing
    for m in METHODS.values():
        if m.http:
            assert f"`{m.http[0]} {m.http[1]}`" in text, m.http
    for path in ("/server/jsonrpc", "/server/files/upload", "/access/api_key"):
        assert path in text


def test_query_hints_and_lists() -> None:
    args = parse_query(
        [("a:int", "3"), ("b:bool", "true"), ("c:json", "[1]"), ("token", "x"), ("d", "p,q")]
    )
    assert args == {"a": 3, "b": True, "c": [1], "d": "p,q"}
    assert Args(args).get_list("d") == ["p", "q"]
    with pytest.raises(RpcError) as err:
        parse_query([("a:int", "x")])
    assert err.value.code == 400
    with pytest.raises(RpcError) as err:
        Args({}).get_list("filenames")
    assert err.value.message == "No data for argument: filenames"
    assert Args({"reset": "false"}).get_bool("reset") is False


def ev(type_: str, from_: str | None = None, to: str | None = None) -> Event:
    return Event(seq=1, type=type_, at=0.0, from_state=from_, to_state=to)


@pytest.mark.parametrize(
    ("events", "actions"),
    [
        ([ev("job.transition", "sliced", "queued")], ["jobs_added"]),
        ([ev("job.transition", "queued", "printing")], ["job_loaded"]),
        ([ev("job.transition", "queued", "cancelled")], ["jobs_removed"]),
        ([ev("job.transition", "printing", "post_process")], []),
        ([ev("orchestrator.paused")], ["state_changed"]),
        (
            [ev("job.jumped"), ev("job.transition", "queued", "cancelled"), ev("job.jumped")],
            ["jobs_added", "jobs_removed"],
        ),
    ],
)
def test_queue_actions(events: list[Event], actions: list[str]) -> None:
    assert queue_actions(events) == actions
