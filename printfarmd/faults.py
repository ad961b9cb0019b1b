"""Fault-injection points for the crash tests (F14, F15 and the kill -9 loop).

Production code calls ``point(name)`` at a few places where a crash matters (between
COMMIT and the answer, inside a watchdog requeue). Nothing happens unless the daemon was
started with ``PRINTFARMD_FAULTS`` set, e.g. ``PRINTFARMD_FAULTS=kill@job-created:3``:
SIGKILL this process the 3rd time the point ``job-created`` is reached. Several specs
are separated by commas. Never set it on a real farm.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("PRINTFARMD_FAULTS", "")
_PLAN: dict[str, int] = {}
for _item in filter(None, (x.strip() for x in _SPEC.split(","))):
    _action, _, _rest = _item.partition("@")
    _name, _, _count = _rest.partition(":")
    if _action == "kill" and _name:
        _PLAN[_name] = int(_count or "1")
_SEEN: dict[str, int] = {}


def point(name: str) -> None:
    """A named fault point; a no-op unless ``PRINTFARMD_FAULTS`` names it."""
    if not _PLAN or name not in _PLAN:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] >= _PLAN[name]:
        os.kill(os.getpid(), signal.SIGKILL)
