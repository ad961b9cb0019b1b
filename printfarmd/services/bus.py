"""In-process publish/subscribe for committed events.

Publishers call ``publish`` only after the change is committed (persist first, then
publish). Each subscriber has a bounded buffer; a subscriber that falls behind by a
full buffer is dropped (its channel closed) rather than slowing the farm or the other
subscribers. Publishing never blocks and is not a checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import msgspec
import trio

from printfarmd.models import Event, PrinterState


class ProgressUpdate(msgspec.Struct, frozen=True):
    """An ephemeral progress report (not in the event log; newer ones supersede it)."""

    printer_id: str
    printer_state: PrinterState
    job_id: str | None
    progress: float
    eta: float | None


Message = Event | ProgressUpdate


class BusStatistics(msgspec.Struct, frozen=True):
    subscribers: int
    published: int
    dropped_subscribers: int


class Subscription(msgspec.Struct, eq=False):
    """One subscriber: iterate ``receive_channel``; it ends if the subscriber is dropped.

    ``on_end`` (optional) is called, synchronously and at most once, when the *bus*
    ends the subscription: ``on_end(True)`` when it drops a subscriber that fell a full
    buffer behind, ``on_end(False)`` at ``close()`` (shutdown). It is not called when the
    subscriber unsubscribes itself. A stream whose writer may be blocked uses it to
    abort the connection instead of waiting for a reader that is not reading.
    """

    receive_channel: trio.MemoryReceiveChannel[Message]
    _send: trio.MemorySendChannel[Message]
    accepts: Callable[[Message], bool]
    on_end: Callable[[bool], None] | None = None
    dropped: bool = False


class Bus:
    def __init__(self, buffer_size: int = 256) -> None:
        self._buffer_size = buffer_size
        self._subs: set[Subscription] = set()
        self._published = 0
        self._dropped = 0
        self._closed = False

    def statistics(self) -> BusStatistics:
        return BusStatistics(len(self._subs), self._published, self._dropped)

    def subscribe(
        self,
        accepts: Callable[[Message], bool] = lambda _m: True,
        buffer_size: int | None = None,
        on_end: Callable[[bool], None] | None = None,
    ) -> Subscription:
        """A new subscription receiving every later message ``accepts`` lets through.

        After ``close()`` the subscription is born ended (its channel is already closed),
        so a stream opened during shutdown finishes at once.
        """
        send, recv = trio.open_memory_channel[Message](buffer_size or self._buffer_size)
        sub = Subscription(recv, send, accepts, on_end)
        if self._closed:
            send.close()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub._send.close()

    def _end(self, sub: Subscription, dropped: bool) -> None:
        self.unsubscribe(sub)
        callback, sub.on_end = sub.on_end, None
        if callback is not None:
            callback(dropped)

    @contextlib.contextmanager
    def subscribed(
        self,
        accepts: Callable[[Message], bool] = lambda _m: True,
        buffer_size: int | None = None,
        on_end: Callable[[bool], None] | None = None,
    ) -> Iterator[Subscription]:
        sub = self.subscribe(accepts, buffer_size, on_end)
        try:
            yield sub
        finally:
            sub.on_end = None
            self.unsubscribe(sub)

    def publish(self, message: Message) -> None:
        """Deliver ``message`` to every subscriber that wants it; drop the ones that are full."""
        self._published += 1
        for sub in list(self._subs):
            if not sub.accepts(message):
                continue
            try:
                sub._send.send_nowait(message)
            except trio.WouldBlock:
                sub.dropped = True
                self._dropped += 1
                self._end(sub, dropped=True)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The subscriber went away without unsubscribing.
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every subscription (used at shutdown so streams finish promptly); later
        subscriptions are born ended."""
        self._closed = True
        for sub in list(self._subs):
            self._end(sub, dropped=False)
