"""The facade's ``/websocket`` on ASGI (issue 17, ``api/moonraker/asgi_socket.py``): frames go
between hypercorn and the facade without Quart's per-frame machinery, Quart's websocket
context is still there for the methods that read it, and a failing handler closes its
connection with 1011 while the daemon goes on."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from quart import has_websocket_context, signals, websocket
from trio_websocket import ConnectionClosed

from printfarmd.api.moonraker import rpc, ws
from tests.conftest import LiveFarm
from tests.moonraker_client import open_rpc


async def test_frames_bypass_quarts_per_frame_machinery(
    farm: LiveFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def heard(sender: Any, **extra: Any) -> None:
        seen.append(sender)

    async def where(caller: rpc.Caller, args: Any) -> dict[str, Any]:
        # What the methods that read Quart's websocket context see.
        return {"context": has_websocket_context(), "host": websocket.headers.get("Host")}

    monkeypatch.setitem(rpc.METHODS, "test.where", rpc.Method("test.where", where, None))
    # Quart fires these for every frame it reads or writes itself.
    signals.websocket_received.connect(heard, weak=False)
    signals.websocket_sent.connect(heard, weak=False)
    try:
        async with open_rpc(farm.url) as client:
            for _ in range(3):
                status = await client.call("server.job_queue.status")
                assert status["queued_jobs"] == [] and "queue_state" in status
            got = await client.call("test.where")
    finally:
        signals.websocket_received.disconnect(heard)
        signals.websocket_sent.disconnect(heard)
    assert seen == []
    assert got == {"context": True, "host": farm.url.removeprefix("http://")}


async def test_a_failing_handler_closes_with_1011_and_the_daemon_goes_on(
    farm: LiveFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = trio.Event()

    async def broken_tick(*args: Any) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a bug in a connection's task")
        await trio.sleep_forever()

    monkeypatch.setattr(ws, "_tick", broken_tick)
    async with open_rpc(farm.url) as rpc:
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            while True:
                await rpc.ws.get_message()
        assert closed.value.reason.code == 1011
        # trio-websocket (client) does not close its own socket after the server's close.
        await rpc.ws._stream.aclose()
    assert failed.is_set()
    async with open_rpc(farm.url) as rpc:
        assert (await rpc.call("server.job_queue.status"))["queued_jobs"] == []
    r = await farm.client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
