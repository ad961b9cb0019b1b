"""A small JSON-RPC websocket client for the Moonraker facade tests (trio-websocket)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.conftest import API_KEY


class RpcClient:
    """Sends requests, returns their responses; keeps notifications (no ``id``) in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.next_id = 1
        self.notifications: list[dict[str, Any]] = []
        #: Every frame received, in order (to check response-before-notification).
        self.frames: list[dict[str, Any]] = []

    async def send_raw(self, text: str) -> Any:
        await self.ws.send_message(text)
        return await self._receive_reply()

    async def _receive_reply(self) -> Any:
        with trio.fail_after(10):
            while True:
                msg = json.loads(await self.ws.get_message())
                if isinstance(msg, dict) and "id" not in msg:
                    self.notifications.append(msg)
                    self.frames.append(msg)
                    continue
                if isinstance(msg, dict):
                    self.frames.append(msg)
                return msg

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole response message for ``method``."""
        rid = self.next_id
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            msg["params"] = params
        reply = await self.send_raw(json.dumps(msg))
        assert reply["id"] == rid, reply
        return dict(reply)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """The ``result`` of ``method``; fails the test on an error."""
        reply = await self.request(method, params)
        assert "result" in reply, reply
        return reply["result"]

    async def wait_notification(self, name: str, within: float = 5.0) -> dict[str, Any]:
        """The next unread notification called ``name`` (waits for it)."""
        with trio.fail_after(within):
            while True:
                for i, n in enumerate(self.notifications):
                    if n.get("method") == name:
                        return self.notifications.pop(i)
                msg = json.loads(await self.ws.get_message())
                assert "id" not in msg, msg
                self.notifications.append(msg)
                self.frames.append(msg)

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Notifications that arrive within ``seconds`` (polling with a deadline)."""
        with trio.move_on_after(seconds):
            while True:
                msg = json.loads(await self.ws.get_message())
                self.notifications.append(msg)
                self.frames.append(msg)
        return self.notifications


def ws_url(http_url: str, query: str = "") -> str:
    return http_url.replace("http://", "ws://") + "/websocket" + query


@contextlib.asynccontextmanager
async def open_rpc(
    http_url: str, *, key: str | None = API_KEY, query: str = ""
) -> AsyncIterator[RpcClient]:
    headers = [(b"X-Api-Key", key.encode())] if key else []
    async with open_websocket_url(
        ws_url(http_url, query), extra_headers=headers, max_message_size=1 << 24
    ) as ws:
        yield RpcClient(ws)
