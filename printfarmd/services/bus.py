"""In-process publish/subscribe for committed events.

Publishers call ``publish`` only after the change is committed (persist first, then
publish). Each subscriber has a bounded buffer; a subscriber that falls behind by a
full buffer is dropped (its channel closed) rather than slowing the farm or the other
subscribers. Publishing never blocks and is not a checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import attrs
import trio

from printfarmd.models import Event, PrinterState


@attrs.frozen
class ProgressUpdate:
    """An ephemeral progress report (not in the event log; newer ones supersede it)."""

    printer_id: str
    printer_state: PrinterState
    job_id: str | None
    progress: float
    eta: float | None


Message = Event | ProgressUpdate


@attrs.frozen
class BusStatistics:
    subscribers: int
    published: int
    dropped_subscribers: int


@attrs.define(eq=False)
class Subscription:
    """One subscriber: iterate ``receive_channel``; it ends if the subscriber is dropped."""

    receive_channel: trio.MemoryReceiveChannel[Message]
    _send: trio.MemorySendChannel[Message]
    accepts: Callable[[Message], bool]
    dropped: bool = False


class Bus:
    def __init__(self, buffer_size: int = 256) -> None:
        self._buffer_size = buffer_size
        self._subs: set[Subscription] = set()
        self._published = 0
        self._dropped = 0

    def statistics(self) -> BusStatistics:
        return BusStatistics(len(self._subs), self._published, self._dropped)

    def subscribe(
        self, accepts: Callable[[Message], bool] = lambda _m: True, buffer_size: int | None = None
    ) -> Subscription:
        """A new subscription receiving every later message ``accepts`` lets through."""
        send, recv = trio.open_memory_channel[Message](buffer_size or self._buffer_size)
        sub = Subscription(recv, send, accepts)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub._send.close()

    @contextlib.contextmanager
    def subscribed(
        self, accepts: Callable[[Message], bool] = lambda _m: True, buffer_size: int | None = None
    ) -> Iterator[Subscription]:
        sub = self.subscribe(accepts, buffer_size)
        try:
            yield sub
        finally:
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
                self.unsubscribe(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The subscriber went away without unsubscribing.
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every subscription (used at shutdown so streams finish promptly)."""
        for sub in list(self._subs):
            self.unsubscribe(sub)
