"""ASGI middleware that lets a long-lived stream be aborted even when its client stopped reading.

Why: hypercorn writes each response chunk to the socket inside a *shielded* cancel scope.
When a client stops reading, the socket buffers fill and the task that sends the next
chunk blocks there for good: no cancellation reaches it, the bus cannot end it, and
hypercorn's shutdown waits for it forever. Only closing the socket frees it, and hypercorn
closes a connection once the application task for it returns.

So for responses of type ``text/event-stream`` this middleware hands every message after
the response start to a separate writer task (in the app's long-lived nursery) through a
rendezvous channel. The application task then only ever waits on that channel, which is
cancellable: ``StreamControl.abort()`` (or a deadline set with ``abort_after``) makes the
application return at once, hypercorn closes the connection, and the closed socket wakes
the blocked writer. Other responses pass straight through, untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs
import trio

log = logging.getLogger("printfarmd.api")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

#: The ASGI scope key under which a request finds its ``StreamControl``.
SCOPE_KEY = "printfarmd.stream_control"
#: How long a finished stream waits for its last chunk to reach the socket.
FINISH_TIMEOUT = 5.0


@attrs.define(eq=False)
class StreamControl:
    """Ends one HTTP response early (its connection is closed). Safe to call from any task."""

    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def abort(self) -> None:
        """End the response now (not a checkpoint)."""
        self._scope.cancel()

    def abort_after(self, seconds: float) -> None:
        """End the response in ``seconds`` unless it finished by then (not a checkpoint)."""
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + seconds)

    @property
    def aborted(self) -> bool:
        return self._scope.cancelled_caught


def _is_event_stream(message: Message) -> bool:
    for name, value in message.get("headers", ()):
        if bytes(name).lower() == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == b"text/event-stream"
    return False


@attrs.define(eq=False)
class _Writer:
    """Sends messages to hypercorn one at a time, in a task that may block for good."""

    _send: Send
    _tx: trio.MemorySendChannel[Message]
    _rx: trio.MemoryReceiveChannel[Message]
    done: trio.Event = attrs.field(factory=trio.Event)

    @classmethod
    def around(cls, send: Send) -> _Writer:
        tx, rx = trio.open_memory_channel[Message](0)
        return cls(send, tx, rx)

    async def put(self, message: Message) -> bool:
        """Hand over ``message``; waits while the previous one is still being written.
        False if the writer is gone (the connection failed). A checkpoint."""
        try:
            await self._tx.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def close(self) -> None:
        self._tx.close()

    async def run(self) -> None:
        try:
            async with self._rx:
                async for message in self._rx:
                    await self._send(message)
        except Exception as exc:  # the connection failed under us: nothing left to do
            log.debug("stream writer ended", extra={"reason": repr(exc)})
        finally:
            self.done.set()


class StreamGuard:
    """Wraps a QuartTrio app's ``asgi_app``; see the module docstring.

    ``nursery_of`` returns the nursery writer tasks run in (the app's lifespan nursery);
    when it returns ``None`` (no lifespan, e.g. a test client) streams pass through.
    """

    def __init__(self, app: ASGIApp, nursery_of: Callable[[], trio.Nursery | None]) -> None:
        self._app = app
        self._nursery_of = nursery_of

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self._app(scope, receive, send)
            return
        control = StreamControl()
        scope[SCOPE_KEY] = control
        writer: _Writer | None = None

        async def guarded_send(message: Message) -> None:
            nonlocal writer
            if writer is None:
                nursery = self._nursery_of()
                if (
                    message.get("type") != "http.response.start"
                    or nursery is None
                    or not _is_event_stream(message)
                ):
                    await send(message)
                    return
                writer = _Writer.around(send)
                nursery.start_soon(writer.run)
            if not await writer.put(message):
                control.abort()
                await trio.lowlevel.checkpoint()

        with control._scope:
            try:
                await self._app(scope, receive, guarded_send)
            finally:
                if writer is not None:
                    writer.close()
        if writer is not None and not control.aborted:
            # Let the last chunk reach the client before hypercorn ends the response.
            with trio.move_on_after(FINISH_TIMEOUT):
                await writer.done.wait()


def control_of(scope: Any) -> StreamControl | None:
    """The ``StreamControl`` of the request with ASGI ``scope`` (None outside the guard)."""
    control = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return control if isinstance(control, StreamControl) else None
