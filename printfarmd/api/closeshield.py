"""Let hypercorn close a connection after an early answer (a hypercorn/quart-trio race).

When the application answers before the request body has arrived (a 401, 404, 405 or 413
to a POST whose body comes in a later packet), hypercorn cannot reuse the connection and
closes it from inside the application's final ``send``. That same moment makes quart-trio
cancel the request's nursery, and the cancellation lands inside hypercorn's close: the
socket stays open, nothing reads it any more, and the client's next request on it waits
forever (a leaked connection per early answer). Shielding the final send lets the close
finish. It cannot hang: hypercorn already shields its socket writes, and closing a socket
does not block.
"""

from __future__ import annotations

import trio

from printfarmd.api.connlimit import ASGIApp, Receive, Scope, Send


class CloseShield:
    """ASGI middleware: the last ``http.response.body`` message is sent shielded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_last_shielded(message: dict[str, object]) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body"):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, send_last_shielded)  # type: ignore[arg-type]
