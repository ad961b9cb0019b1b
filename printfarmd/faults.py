"""Fault-injection points for the crash tests (F14, F15 and the kill -9 loop).

Production code calls ``point(name)`` at a few places where a crash matters (between
COMMIT and the answer, inside a watchdog requeue). Nothing happens unless the daemon was
started with ``PRINTFARMD_FAULTS`` set, e.g. ``PRINTFARMD_FAULTS=kill@job-created:3``:
SIGKILL this process the 3rd time the point ``job-created`` is reached;
``wedge@dispatch:1`` blocks the event-loop thread (a wedged daemon: no more systemd
watchdog pings) the 1st time ``dispatch`` is reached; ``raise@get-job:1`` raises an
unexpected exception (its text names this file's path) every time from the 1st on, to
show that a 500 carries only an error id (issue 9, S15); ``hang@commit:1`` makes the
async point ``hang_point("commit")`` never return (the owner stops finishing its cycles
while the event loop runs on: issue 13's systemd watchdog test). Several specs are separated by
commas. Never set it on a real farm.
"""

from __future__ import annotations

import os
import signal
import threading

_SPEC = os.environ.get("PRINTFARMD_FAULTS", "")
_PLAN: dict[str, int] = {}
#: Points whose action is ``wedge`` rather than ``kill``.
_WEDGE: set[str] = set()
#: Points whose action is ``raise``.
_RAISE: set[str] = set()
#: Points whose action is ``hang`` (``hang_point`` only).
_HANG: set[str] = set()
for _item in filter(None, (x.strip() for x in _SPEC.split(","))):
    _action, _, _rest = _item.partition("@")
    _name, _, _count = _rest.partition(":")
    if _action in ("kill", "wedge", "raise", "hang") and _name:
        _PLAN[_name] = int(_count or "1")
        if _action == "wedge":
            _WEDGE.add(_name)
        if _action == "raise":
            _RAISE.add(_name)
        if _action == "hang":
            _HANG.add(_name)
_SEEN: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """An unexpected error on purpose (``raise@point``)."""


def point(name: str) -> None:
    """A named fault point; a no-op unless ``PRINTFARMD_FAULTS`` names it."""
    if not _PLAN or name not in _PLAN:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] >= _PLAN[name]:
        if name in _RAISE:
            raise InjectedFault(f"injected fault at {name} ({__file__})")
        if name in _WEDGE:
            # Block this (the event loop's) thread for good; only SIGKILL ends it.
            threading.Event().wait()
        os.kill(os.getpid(), signal.SIGKILL)


async def hang_point(name: str) -> None:
    """An async fault point: with ``hang@name`` it never returns (a no-op otherwise)."""
    if name not in _HANG:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] >= _PLAN[name]:
        import trio

        await trio.sleep_forever()
