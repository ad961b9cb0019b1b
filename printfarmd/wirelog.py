"""Wire recorder: a test hook that writes down everything the daemon sends to its clients.

Off unless ``PRINTFARMD_WIRE_LOG`` names a directory. When it does, ``wrap`` puts an ASGI
wrapper around the app hypercorn serves, and every message the app hands to the server is
appended to ``<dir>/wire-<pid>-<n>.log`` before it is sent: HTTP response starts (status
and headers), body chunks (event streams included), websocket accepts, frames and closes,
and refused-upgrade responses. ``record_logs`` also copies every log record, formatted as
on stderr, to ``<dir>/log-<pid>.log``. The test suite switches it on for the whole run and
searches the files for the API key and for unsafe responses (docs/security.md).

File format: one JSON object per line. The first line describes the daemon: ``daemon``
(its pid) and ``key_sha256``, the SHA-256 of its API key (the form ``api_key_hash``
stores; never the key), so a scanner can tell whether it knows every key in use. Every
later line is ``{"conn": n, "scope": "http"|"websocket", "method", "path", "message":
{...}}`` where ``message`` is the ASGI message with each ``bytes`` value
replaced by ``{"b64": "..."}`` (binary-safe). ``path`` has no query string: what the
client sent is not the daemon's output. Each line is one ``write`` on an ``O_APPEND``
descriptor, so a daemon killed with SIGKILL leaves only whole lines.

Responses hypercorn writes itself (a 400 for a malformed request, a 503 while stopping
before the app runs) never reach the app and are not recorded. Never set it on a real farm.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import orjson

ENV = "PRINTFARMD_WIRE_LOG"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
App = TypeVar("App")

#: Numbers the recorders of one process (in-process test daemons share a pid).
_RECORDERS = itertools.count(1)


def directory() -> Path | None:
    """The directory named by ``PRINTFARMD_WIRE_LOG``, or None when recording is off.

    Read at each call rather than at import: a test session sets it after importing us.
    """
    value = os.environ.get(ENV, "")
    return Path(value) if value else None


class KeyHolder(Protocol):
    """The ``[server]`` settings naming the API key."""

    @property
    def api_key(self) -> str: ...


def key_sha256(server: KeyHolder) -> str | None:
    """Hex SHA-256 of the configured API key, from ``api_key`` or ``api_key_hash``; None
    when no key is configured."""
    if server.api_key:
        return hashlib.sha256(server.api_key.encode("utf-8")).hexdigest()
    # getattr: the hashed form is newer than this hook and may be absent from old configs.
    stored = str(getattr(server, "api_key_hash", "") or "")
    return stored.removeprefix("sha256:") or None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


class WireRecorder:
    """ASGI middleware: passes everything through, appending each outgoing message to a file."""

    def __init__(self, app: AsgiApp, path: Path, server: KeyHolder) -> None:
        self.app = app
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # Closed when the recorder goes away: a test session runs hundreds of daemons.
        weakref.finalize(self, os.close, self._fd)
        self._conns = itertools.count(1)
        self._line({"daemon": os.getpid(), "key_sha256": key_sha256(server)})

    def _line(self, obj: dict[str, Any]) -> None:
        # One write per line on an O_APPEND descriptor: a SIGKILL never leaves half a line.
        os.write(self._fd, orjson.dumps(obj) + b"\n")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = next(self._conns)
        head = {"conn": conn, "scope": kind, "method": scope.get("method"), "path": scope["path"]}

        async def recording_send(message: Message) -> None:
            self._line({**head, "message": _jsonable(dict(message))})
            await send(message)

        await self.app(scope, receive, recording_send)


def wrap(app: App, server: KeyHolder) -> App:
    """``app`` itself when recording is off (no cost); else ``app`` inside a recorder.

    Of ``server`` only the key's digest is written (see ``key_sha256``).
    """
    where = directory()
    if where is None:
        return app
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"wire-{os.getpid()}-{next(_RECORDERS)}.log"
    # Typed as the app it wraps: hypercorn serves any ASGI callable alike.
    return cast(App, WireRecorder(cast(AsgiApp, app), path, server))


def record_logs() -> None:
    """When recording is on, also write every record the root logger handles to
    ``<dir>/log-<pid>.log`` in the root handler's format (call after ``setup_logging``)."""
    where = directory()
    if where is None:
        return
    where.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(where / f"log-{os.getpid()}.log", encoding="utf-8")
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
