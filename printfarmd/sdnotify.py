"""systemd's notify protocol (``Type=notify``), in a few lines and no dependency.

systemd passes ``NOTIFY_SOCKET`` (a datagram socket path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Outside
systemd none is set and every call here is a no-op, so the daemon runs the same in a
terminal, in tests and under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

import trio

log = logging.getLogger("printfarmd.sdnotify")


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to ``NOTIFY_SOCKET``; not a checkpoint.

    Returns False (never raises) when there is no socket or sending fails: systemd
    notifications must never take the daemon down.
    """
    env = os.environ if env is None else env
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed", extra={"reason": str(exc)})
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), or None if not asked.

    ``WATCHDOG_PID``, when set, must be this process (systemd sets it for the main PID).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


async def ping_watchdog(interval: float, alive: Callable[[], Awaitable[object]]) -> None:
    """Send WATCHDOG=1 every ``interval`` seconds while ``alive()`` answers within
    ``interval``; runs until cancelled.

    ``alive`` is a round trip through the farm's owner task (a ``Ping`` input), so both a
    wedged event loop and an owner that stopped finishing its cycles stop the pings, and
    systemd restarts the service after ``WatchdogSec`` (``interval`` is half of it).
    """
    while True:
        started = trio.current_time()
        with trio.move_on_after(interval) as scope:
            await alive()
        if not scope.cancelled_caught:
            notify("WATCHDOG=1")
        await trio.sleep_until(started + interval)
