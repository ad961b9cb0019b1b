"""Refuse a request whose ``Host`` header cannot be a host name, before Quart sees it.

Quart binds its URL map to the request's host while it builds the request context, and
werkzeug raises ``BadHost`` there for a name that is not valid IDNA (``nope..``,
``a:b:c``): that happens outside every error handler, so hypercorn would answer a bare
500. This middleware answers 400 with the canonical error body instead.
"""

from __future__ import annotations

from printfarmd.api.connlimit import ASGIApp, Receive, Scope, Send
from printfarmd.api.errors import send_asgi_error


def host_header_ok(scope: Scope) -> bool:
    """Whether werkzeug will accept the request's ``Host`` (absent is fine)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"host":
            try:
                # As werkzeug does: the port is not part of the IDNA name.
                value.decode("latin-1").lower().partition(":")[0].encode("idna")
            except UnicodeError:
                return False
    return True


class HostCheck:
    """ASGI middleware: 400 ``bad_request`` for a malformed ``Host``; a websocket is refused."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket") or host_header_ok(scope):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_asgi_error(
            send,
            400,
            "bad_request",
            "the Host header is not a valid host name",
        )
