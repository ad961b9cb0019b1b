"""What the HTTP printer drivers (OctoPrint, PrusaLink) share: one request helper with a
deadline and the link accounting (failures in a row, offline after N, backoff).

No protocol knowledge here; each driver's parsing lives in its own ``*_status`` module.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import msgspec
import orjson
import trio

from printfarmd.drivers.base import DriverError, PrinterUnreachable


class LinkDown(Exception):
    """The link to the printer failed; ``str(exc)`` says why (safe to log and show)."""


class AuthRefused(DriverError):
    """The printer refused our credentials (HTTP 401/403)."""


def backoff_delays(initial: float, cap: float) -> Iterator[float]:
    """Reconnect delays: ``initial``, doubling, never above ``cap``. Pure (a generator)."""
    delay = initial
    while True:
        yield min(delay, cap)
        delay = min(delay * 2, cap)


async def keep_up(
    session: Callable[[trio.Event], Awaitable[str]],
    failed: Callable[[str], Awaitable[None]],
    initial: float,
    cap: float,
    task_status: trio.TaskStatus[None],
) -> None:
    """Run ``session`` again and again, until cancelled: it sets the event it is given
    once its first status was reported and returns why it ended; ``failed(reason)``
    reports the printer offline; then a backoff (reset by every session that got that
    far). ``task_status.started()`` comes after the first attempt: once its first status
    was reported, or it failed and ``failed`` reported OFFLINE."""
    started = False
    delays = backoff_delays(initial, cap)
    while True:
        ready = trio.Event()
        async with trio.open_nursery() as nursery:
            if not started:
                nursery.start_soon(_started_when, ready, task_status)
            reason = await session(ready)
            nursery.cancel_scope.cancel()
        if ready.is_set():
            delays = backoff_delays(initial, cap)
        await failed(reason)
        if not started and not ready.is_set():
            task_status.started()  # the first attempt failed: OFFLINE was sent
        started = True
        await trio.sleep(next(delays))


async def _started_when(ready: trio.Event, task_status: trio.TaskStatus[None]) -> None:
    await ready.wait()
    task_status.started()


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed call (the first leaf of a group)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, LinkDown | DriverError):
        return str(exc)
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def link_failure(
    exc: BaseException, expected: tuple[type[BaseException], ...], log: logging.Logger, pid: str
) -> str:
    """Why a session failed, for an ``Exception`` (or a group of them); re-raises
    anything else (``Cancelled``). An error not in ``expected`` is a bug: it is logged with
    its traceback and handled like a dropped link, so the driver task never dies."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(Exception)
        if rest is not None:
            # Only the Cancelled part goes on: an error beside it would outlive the
            # cancel scope that absorbs the Cancelled and crash the caller.
            raise rest
    elif not isinstance(exc, Exception):
        raise exc
    if not all(isinstance(e, expected) for e in leaves(exc)):
        log.error("printer driver error", exc_info=exc, extra={"printer": pid})
    return describe(exc)


def error_message(response: httpx.Response) -> str:
    """The printer's own words for an error answer (JSON ``error``/``message``/``text``
    or a short plain text), else the reason phrase."""
    text = response.content[:500]
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        plain = text.decode("utf-8", "replace").strip()
        return plain if plain and "<" not in plain else (response.reason_phrase or "error")
    if isinstance(body, dict):
        for field in ("error", "message", "text", "title"):
            value = body.get(field)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])
    return response.reason_phrase or "error"


async def request(
    http: httpx.AsyncClient | None,
    pid: str,
    method: str,
    path: str,
    *,
    limit: float,
    ok: tuple[int, ...] = (),
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP call within ``limit`` seconds. Checkpoint.

    Returns the response when its status is below 400 or listed in ``ok``. Raises
    ``PrinterUnreachable`` (timeout, transport error, driver not running),
    ``AuthRefused`` (401/403) or ``DriverError`` (another error status, with the
    printer's message).
    """
    if http is None:
        raise PrinterUnreachable(f"the driver for {pid} is not running")
    try:
        with trio.fail_after(limit):
            response = await http.request(method, path, timeout=httpx.Timeout(limit), **kwargs)
    except (httpx.TransportError, trio.TooSlowError) as exc:
        raise PrinterUnreachable(f"printer {pid} did not answer {path}: {describe(exc)}") from None
    if response.status_code < 400 or response.status_code in ok:
        return response
    message = error_message(response)
    if response.status_code in (401, 403):
        raise AuthRefused(f"{path}: credentials refused: {message} (HTTP {response.status_code})")
    raise DriverError(f"{path}: {message} (HTTP {response.status_code})")


def json_body(response: httpx.Response, path: str) -> Any:
    """The JSON body of ``response``; ``DriverError`` when it is not JSON."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise DriverError(f"{path}: the answer is not JSON") from None


class LinkHealth(msgspec.Struct):
    """Failures in a row and whether the printer is shown offline.

    Before the first good answer any failure means offline; afterwards only
    ``offline_after`` failures in a row do. The first good answer resets the count.
    """

    offline_after: int
    failures: int = 0
    offline: bool = True

    def failed(self) -> bool:
        """Count one failure; ``True`` when the printer is (now) to be shown offline."""
        self.failures += 1
        if self.offline or self.failures >= self.offline_after:
            self.offline = True
        return self.offline

    def answered(self) -> bool:
        """A good answer; ``True`` when the printer was offline until now."""
        was = self.offline
        self.failures = 0
        self.offline = False
        return was
