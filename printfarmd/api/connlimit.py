"""A cap on requests, event streams and websockets served at once (``server.max_connections``).

Long-lived streams are what pile up: without a cap, a client opening thousands of event
streams or websockets would take the Pi's memory. Beyond the cap a request gets HTTP 503
(``too_busy``, ``Retry-After: 1``) at once and a websocket is refused; ``/api/health``
is always answered so monitoring still sees the daemon. Idle keep-alive connections
are not counted: hypercorn closes them after its keep-alive timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from printfarmd.api.errors import send_asgi_error

log = logging.getLogger("printfarmd.api")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALWAYS_ANSWERED = frozenset({"/api/health"})


class ConnectionLimit:
    """ASGI middleware: at most ``limit`` HTTP requests and websockets in the app at once."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket") or scope.get("path") in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            if not self._warned:
                # Once per busy spell, not per refused request: a flood must not flood the log.
                log.warning("connection limit reached", extra={"limit": self.limit})
                self._warned = True
            await self._refuse(kind, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            if self.active < self.limit:
                self._warned = False

    async def _refuse(self, kind: str, receive: Receive, send: Send) -> None:
        if kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1013})  # "try again later"
            return
        await send_asgi_error(
            send,
            503,
            "too_busy",
            f"more than {self.limit} requests at once: retry shortly",
            ((b"retry-after", b"1"),),
        )
