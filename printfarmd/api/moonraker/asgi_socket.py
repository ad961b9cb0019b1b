"""The facade's ``/websocket`` served straight on ASGI (issue 17).

Through Quart every frame took a detour: hypercorn hands it to quart-trio's reader task,
which fires a signal and passes it through a memory channel to the handler's task, and
every ``receive`` and ``send`` builds an empty ``Headers`` on its way (``accept`` is
re-checked per call). The front (``api/front.py``) therefore gives this path's upgrades
to ``serve``: frames go between hypercorn and ``ws.serve`` with one ``await`` each way.

What Quart still provides is its websocket *context*, pushed once per connection, so that
code reading ``quart.websocket`` (the ``Host`` a method answers with, the scheme of a
webcam URL) sees the connection as before. What Quart did at the edges is done here in
its way: a handler's refusal before the upgrade goes out as an HTTP response (ASGI's
``websocket.http.response``), a handler that returns closes with 1000, one that fails
with 1011 (logged), and a client's close ends the handler (``Disconnected``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from quart import Response
from werkzeug.datastructures import Headers

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from printfarmd.api.front import Receive, Scope, Send

log = logging.getLogger("printfarmd.api.moonraker")


class Disconnected(Exception):
    """The client closed the websocket (or the connection went away)."""


class Socket:
    """One websocket on ASGI: ``receive`` a frame, ``send`` one, ``accept``, ``close``."""

    __slots__ = ("_receive", "_send", "accepted", "closed", "scope")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.accepted = False
        #: Closed by either side: nothing more is sent.
        self.closed = False

    async def receive(self) -> str | bytes:
        """The next frame's text (or bytes); raises ``Disconnected`` once the client left."""
        while True:
            event = await self._receive()
            kind = event["type"]
            if kind == "websocket.receive":
                text = event.get("text")
                return text if text is not None else (event.get("bytes") or b"")
            if kind == "websocket.disconnect":
                self.closed = True
                raise Disconnected

    async def send(self, data: str | bytes) -> None:
        """One frame: text for a ``str``, binary for ``bytes``."""
        if isinstance(data, str):
            await self._send({"type": "websocket.send", "text": data})
        else:
            await self._send({"type": "websocket.send", "bytes": data})

    async def accept(self, *_: Any) -> None:
        if not self.accepted:
            self.accepted = True
            await self._send({"type": "websocket.accept", "subprotocol": None, "headers": []})

    async def close(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def refuse(self, response: Response) -> None:
        """Answer the upgrade with ``response`` instead (a server without ASGI's
        ``websocket.http.response`` turns the close into a bare 403)."""
        if "websocket.http.response" not in (self.scope.get("extensions") or {}):
            await self.close(1000)
            return
        start = {
            "type": "websocket.http.response.start",
            "status": response.status_code,
            "headers": [(k.lower().encode(), v.encode()) for k, v in response.headers.items()],
        }
        await self._send(start)
        body = await response.get_data()
        await self._send({"type": "websocket.http.response.body", "body": body, "more_body": False})
        self.closed = True


Handler = Callable[[Socket], Awaitable[Response | None]]


def quart_websocket(app: QuartTrio, sock: Socket) -> Any:
    """Quart's websocket object for ``sock`` (for its context; frames go through ``sock``)."""
    scope = sock.scope
    headers = Headers()
    headers["Remote-Addr"] = (scope.get("client") or ["<local>"])[0]
    for name, value in scope["headers"]:
        headers.add(name.decode("latin1").title(), value.decode("latin1"))
    return app.websocket_class(
        scope["path"],
        scope["query_string"],
        scope["scheme"],
        headers,
        scope.get("root_path", ""),
        scope.get("http_version", "1.1"),
        list(scope.get("subprotocols", [])),
        sock.receive,
        sock.send,
        sock.accept,
        sock.close,
        scope=cast(Any, scope),  # an ASGI websocket scope, as the front got it
    )


async def serve(
    app: QuartTrio, handler: Handler, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run ``handler`` on the websocket of ``scope`` inside Quart's websocket context."""
    sock = Socket(scope, receive, send)
    if (await receive())["type"] != "websocket.connect":
        return
    async with app.websocket_context(quart_websocket(app, sock)):
        try:
            response = await handler(sock)
        except Disconnected:
            return
        except Exception as exc:  # a bug ends this connection, never the daemon
            log.error("websocket handler failed", exc_info=exc)
            if sock.accepted:
                await sock.close(1011)  # internal error
            else:
                await sock.refuse(Response(b"", status=500))
            return
    if response is not None and not sock.accepted:
        await sock.refuse(response)
    elif sock.accepted:
        await sock.close(1000)
