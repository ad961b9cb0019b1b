"""The one ASGI middleware in front of the Quart app (issue 17).

Every HTTP request and websocket passes here first, once; nothing else wraps the app but
the test-only wire recorder (``wirelog``). In order, for HTTP:

1. **connection limit** (``server.max_connections``): beyond it 503 ``too_busy`` with
   ``Retry-After: 1`` (a websocket is closed with 1013); ``/api/health`` is always
   answered. Long-lived streams are what pile up: without a cap a client opening
   thousands of streams would take the Pi's memory. Idle keep-alive connections are not
   counted (hypercorn closes them after its keep-alive timeout);
2. **Host check**: a ``Host`` werkzeug cannot even bind its URL map to (not IDNA:
   ``nope..``, ``a:b:c``) gets 400 ``bad_request`` here; inside Quart it would be a bare
   500 raised outside every error handler (a websocket is closed with 1008);
3. **CORS preflight**: ``OPTIONS`` with an ``Origin``: 204 with the CORS headers for an
   origin in ``server.cors_domains``, else 403 (preflights carry no credentials);
4. **stopping**: once the daemon stops, 503 ``shutting_down`` with ``Retry-After: 1``
   (never a lost 2xx);
5. **the access decision** (``auth.Access.decide``), made once: public routes
   (``auth.PUBLIC_ROUTES`` and the config's) pass without one; otherwise a refusal is
   answered here (401, or 429 with ``Retry-After``; in Moonraker's shape on the facade's
   paths), and an allowed request carries its ``Decision`` in the scope
   (``decision_of``) to the view, which never decides again. A websocket is never refused
   for its credentials: it may authenticate later (``server.connection.identify``), so
   ``ws.serve`` reads the decision and acts on it; the facade's ``/websocket`` is then
   served straight on ASGI (``serve_websocket``, ``moonraker/asgi_socket.py``), not through
   Quart's per-frame path. A key verified on a connection is remembered for that
   connection (``Access``), so it is not hashed again per request;
6. **fast routes** (``serve_get``): a few hot, read-only ``GET`` answers built without a
   Quart request (``/server/job_queue/status``): the same bytes and headers as through
   Quart, a test compares the two. A request that declares a body (even
   ``Content-Length: 0``) always goes through Quart;
7. on the way out: ``X-Content-Type-Options: nosniff`` and (unless the view set one)
   ``Cache-Control: no-store`` on every response, the CORS headers for an allowed
   origin; the last body message is sent **shielded** (a hypercorn/quart-trio race: when
   an answer goes out before the request body arrived, hypercorn closes the connection
   from inside that send while quart-trio cancels the request's nursery; unshielded the
   socket stayed open and unread, a leaked connection per early answer); and an **event
   stream** (``text/event-stream``) is written by its own writer task, so a client that
   stops reading blocks only that task, never the request's: ``StreamControl.abort()``
   ends the request at once, hypercorn closes the connection and the blocked writer
   wakes (hypercorn writes each chunk inside a shielded scope that no cancellation
   reaches).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
import orjson
import trio

from printfarmd.api.auth import CONFIG_PUBLIC_ROUTES, PUBLIC_ROUTES, Decision, Verdict
from printfarmd.api.errors import error_body

if TYPE_CHECKING:
    from printfarmd.api.context import Services

log = logging.getLogger("printfarmd.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
R = TypeVar("R")

#: Scope keys: the access decision (None on a public route) and the client address.
DECISION_KEY = "printfarmd.decision"
CLIENT_KEY = "printfarmd.client"
#: The ASGI scope key under which a request finds its ``StreamControl``.
STREAM_KEY = "printfarmd.stream_control"
#: Whether the front can write an event stream itself (True), and the stream's source.
HANDOFF_KEY = "printfarmd.stream_handoff"
SOURCE_KEY = "printfarmd.stream_source"
#: Paths answered whatever the connection count.
ALWAYS_ANSWERED = frozenset({"/api/health"})
#: The app's websocket routes: the decision is made for these (a one-shot token is spent
#: only where it can be used).
WEBSOCKET_PATHS = frozenset({"/websocket"})
#: Path prefixes answered in Moonraker's shapes (errors included).
FACADE_PREFIXES = ("/server/", "/printer/", "/machine/", "/access/")
#: How long a finished event stream waits for its last chunk to reach the socket.
FINISH_TIMEOUT = 5.0
CORS_HEADERS = (
    "Origin, Accept, Content-Type, X-Requested-With, Authorization, X-Access-Token, X-Api-Key"
)
_JSON = b"application/json"
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")

#: A fast route's answer: content type, body and any further headers (status 200).
FastAnswer = tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]]
#: A fast route: the scope and its headers in, the answer out, or None to leave the
#: request to Quart. Runs on the event loop; must not block nor raise.
FastRoute = Callable[[Scope, "Headers"], FastAnswer | None]


def is_facade_path(path: str) -> bool:
    return path.startswith(FACADE_PREFIXES)


def decision_of(scope: Any) -> Decision | None:
    """The access decision the front made for this request (None: a public route)."""
    found = scope.get(DECISION_KEY) if isinstance(scope, dict) else None
    return found if isinstance(found, Decision) else None


def client_of(scope: Any) -> str | None:
    """The request's client address (after trusted proxies), as the front computed it."""
    found = scope.get(CLIENT_KEY) if isinstance(scope, dict) else None
    return found if isinstance(found, str) else None


# ---------------------------------------------------------------- request facts


class Headers(msgspec.Struct):
    """The request headers the front reads, each the first of its name (latin-1, as
    werkzeug decodes them), and whether the request declares a body (``Content-Length``
    or ``Transfer-Encoding``, even an empty one)."""

    host: str | None = None
    api_key: str | None = None
    forwarded_for: str | None = None
    origin: str | None = None
    accept_encoding: str = ""
    has_body: bool = False

    @classmethod
    def of(cls, raw: Any) -> Headers:
        h = cls()
        for name, value in raw:
            n = name.lower()
            if n == b"host":
                if h.host is None:
                    h.host = value.decode("latin-1")
            elif n == b"x-api-key":
                if h.api_key is None:
                    h.api_key = value.decode("latin-1")
            elif n == b"x-forwarded-for":
                if h.forwarded_for is None:
                    h.forwarded_for = value.decode("latin-1")
            elif n == b"origin":
                if h.origin is None:
                    h.origin = value.decode("latin-1")
            elif n == b"accept-encoding":
                h.accept_encoding += value.decode("latin-1")
            elif n in (b"content-length", b"transfer-encoding"):
                h.has_body = True  # declared, even if empty
        return h


def host_ok(host: str | None) -> bool:
    """Whether werkzeug will accept this ``Host`` (absent is fine)."""
    if host is None:
        return True
    try:
        # As werkzeug does: the port is not part of the IDNA name.
        host.lower().partition(":")[0].encode("idna")
    except UnicodeError:
        return False
    return True


def query_token(query: bytes) -> str | None:
    """The first ``token`` query parameter (a one-shot token), as ``request.args`` reads it."""
    if b"token" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == "token":
            return value
    return None


def _rule_pattern(rule: str) -> re.Pattern[str]:
    """A werkzeug rule as a full-match pattern: ``<path:x>`` any text, ``<x>`` one segment."""
    out = ""
    for part in re.split(r"(<[^>]+>)", rule):
        if part.startswith("<"):
            out += ".+" if part.startswith("<path:") else "[^/]+"
        else:
            out += re.escape(part)
    return re.compile(out)


class PublicRoutes:
    """``auth.PUBLIC_ROUTES`` (and the config's) matched on the request path, before
    routing: exact paths by set lookup, the few rules with placeholders by pattern."""

    def __init__(self, routes: frozenset[tuple[str, str]]) -> None:
        self.exact = {(m, r) for m, r in routes if "<" not in r}
        self.patterns = [(m, _rule_pattern(r)) for m, r in routes if "<" in r]

    def match(self, method: str, path: str) -> bool:
        method = "GET" if method == "HEAD" else method
        if (method, path) in self.exact:
            return True
        return any(m == method and p.fullmatch(path) for m, p in self.patterns)


_PUBLIC = PublicRoutes(PUBLIC_ROUTES)
_CONFIG_PUBLIC = PublicRoutes(CONFIG_PUBLIC_ROUTES)


# ---------------------------------------------------------------- event streams


class StreamControl(msgspec.Struct, eq=False):
    """Ends one HTTP response early (its connection is closed). Safe to call from any task."""

    _scope: trio.CancelScope = msgspec.field(default_factory=trio.CancelScope)

    def abort(self) -> None:
        """End the response now (not a checkpoint)."""
        self._scope.cancel()

    def abort_after(self, seconds: float) -> None:
        """End the response in ``seconds`` unless it finished by then (not a checkpoint)."""
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + seconds)

    @property
    def aborted(self) -> bool:
        return self._scope.cancelled_caught


def control_of(scope: Any) -> StreamControl | None:
    """The ``StreamControl`` of the request with ASGI ``scope`` (None outside the front)."""
    control = scope.get(STREAM_KEY) if isinstance(scope, dict) else None
    return control if isinstance(control, StreamControl) else None


def _is_event_stream(headers: Any) -> bool:
    for name, value in headers:
        if bytes(name).lower() == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == b"text/event-stream"
    return False


class _Writer(msgspec.Struct, eq=False):
    """Sends messages to hypercorn one at a time, in a task that may block for good."""

    _send: Send
    _tx: trio.MemorySendChannel[Message]
    _rx: trio.MemoryReceiveChannel[Message]
    done: trio.Event = msgspec.field(default_factory=trio.Event)

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


class _Streamer(msgspec.Struct, eq=False):
    """Writes one event stream: the response start, then each chunk ``source`` yields,
    straight to the server from this task (no per-chunk hop through the request's task),
    then the end. The request's task only waits for ``done`` (cancellable: an abort ends
    the request, hypercorn closes the connection, and a send blocked here wakes)."""

    _send: Send
    _start: Message
    _source: AsyncIterator[bytes]
    done: trio.Event = msgspec.field(default_factory=trio.Event)
    #: Cancelled when the client hangs up (``stop``): an idle stream ends at once.
    _scope: trio.CancelScope = msgspec.field(default_factory=trio.CancelScope)

    def stop(self) -> None:
        self._scope.cancel()

    async def run(self) -> None:
        source = self._source
        try:
            with self._scope:
                await self._send(self._start)
                async for chunk in source:
                    body = {"type": "http.response.body", "body": chunk, "more_body": True}
                    await self._send(body)
                await self._send({"type": "http.response.body", "body": b""})
        except Exception as exc:  # the connection failed under us: nothing left to do
            log.debug("stream writer ended", extra={"reason": repr(exc)})
        finally:
            self.done.set()
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


def stream_response(scope: Any, source: AsyncIterator[bytes], response: Callable[[Any], R]) -> R:
    """An event-stream response whose body ``source`` the front writes itself, from one
    task per stream (see ``_Streamer``): ``response(body)`` builds the view's response,
    here with an empty body. Without the front's writer nursery (no lifespan), ``source``
    is the body and Quart writes it."""
    if isinstance(scope, dict) and scope.get(HANDOFF_KEY):
        scope[SOURCE_KEY] = source
        return response(_no_body())
    return response(source)


# ---------------------------------------------------------------- the middleware


class Front:
    """The ASGI middleware; see the module docstring.

    ``nursery_of`` returns the nursery event-stream writers run in (the app's lifespan
    nursery); when it returns None (no lifespan, e.g. a test client) streams are written
    by the request's own task.
    """

    def __init__(
        self, app: ASGIApp, svc: Services, nursery_of: Callable[[], trio.Nursery | None]
    ) -> None:
        self.app = app
        self.svc = svc
        self._nursery_of = nursery_of
        self.limit = svc.config.server.max_connections
        self.active = 0
        self._warned = False
        self._fast: dict[str, FastRoute] = {}
        self._sockets: dict[str, ASGIApp] = {}

    def serve_get(self, path: str, route: FastRoute) -> None:
        """Answer body-less ``GET path`` requests with ``route`` (see ``FastRoute``)."""
        self._fast[path] = route

    def serve_websocket(self, path: str, app: ASGIApp) -> None:
        """Give the websockets of ``path`` (one of ``WEBSOCKET_PATHS``) to ``app`` instead of
        Quart, once the front admitted them and made their access decision."""
        self._sockets[path] = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # ------------------------------------------------------------ websocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.active >= self.limit:
            self._warn_limit()
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1013})  # "try again later"
            return
        self.active += 1
        try:
            h = Headers.of(scope["headers"])
            if not host_ok(h.host):
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            if scope["path"] not in WEBSOCKET_PATHS:  # no such websocket: Quart refuses it
                await self.app(scope, receive, send)
                return
            access = self.svc.access
            client = access.client(_peer(scope), h.forwarded_for)
            scope[CLIENT_KEY] = client
            scope[DECISION_KEY] = access.decide_for(
                client,
                host=h.host,
                api_key=h.api_key,
                oneshot=query_token(scope.get("query_string", b"")),
                connection=scope.get("client"),
            )
            await self._sockets.get(scope["path"], self.app)(scope, receive, send)
        finally:
            self._release()

    # ------------------------------------------------------------ HTTP

    def _warn_limit(self) -> None:
        if not self._warned:
            # Once per busy spell, not per refused request: a flood must not flood the log.
            log.warning("connection limit reached", extra={"limit": self.limit})
            self._warned = True

    def _release(self) -> None:
        self.active -= 1
        if self.active < self.limit:
            self._warned = False

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path in ALWAYS_ANSWERED:
            await self._admitted(scope, receive, send)
            return
        if self.active >= self.limit:
            self._warn_limit()
            await _send_error(
                send,
                503,
                "too_busy",
                f"more than {self.limit} requests at once: retry shortly",
                ((b"retry-after", b"1"),),
            )
            return
        self.active += 1
        try:
            await self._admitted(scope, receive, send)
        finally:
            self._release()

    async def _admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        h = Headers.of(scope["headers"])
        if not host_ok(h.host):
            await _send_error(send, 400, "bad_request", "the Host header is not a valid host name")
            return
        svc = self.svc
        access = svc.access
        origin = h.origin if h.origin and h.origin in access.cors_domains else None
        finish = _finisher(origin)
        method: str = scope["method"]
        path: str = scope["path"]
        if method == "OPTIONS" and h.origin:
            await self._preflight(send, finish, origin)
            return
        if svc.stopping.is_set():
            await _send_json(
                send,
                finish,
                503,
                error_body(
                    "shutting_down", "printfarmd is shutting down: retry shortly", retry_after=1
                ),
                ((b"retry-after", b"1"),),
            )
            return
        client = access.client(_peer(scope), h.forwarded_for)
        scope[CLIENT_KEY] = client
        if not (
            _PUBLIC.match(method, path)
            or (svc.config.server.metrics_public and _CONFIG_PUBLIC.match(method, path))
        ):
            decision = access.decide_for(
                client,
                host=h.host,
                api_key=h.api_key,
                oneshot=query_token(scope.get("query_string", b"")),
                connection=scope.get("client"),
            )
            if not decision.allowed:
                await self._refuse(send, finish, decision, is_facade_path(path))
                return
            scope[DECISION_KEY] = decision
        if method == "GET" and not h.has_body:
            route = self._fast.get(path)
            if route is not None:
                answer = route(scope, h)
                if answer is not None:
                    content_type, body, extra = answer
                    await _send_json(send, finish, 200, body, extra, content_type)
                    return
        await self._run_app(scope, receive, send, finish)

    async def _preflight(
        self, send: Send, finish: Callable[[list[Any]], None], origin: str | None
    ) -> None:
        if origin is None:
            await _send_json(
                send, finish, 403, b'{"error":{"code":403,"message":"Origin not allowed"}}'
            )
            return
        headers = _finished(finish, [(b"content-type", _JSON)])
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await _send_last(send, {"type": "http.response.body", "body": b""})

    async def _refuse(
        self,
        send: Send,
        finish: Callable[[list[Any]], None],
        decision: Decision,
        facade: bool,
    ) -> None:
        if decision.verdict is Verdict.THROTTLED:
            log.warning(
                "authentication back-off",
                extra={"client": decision.client, "retry_after": decision.retry_after},
            )
            message = (
                f"too many wrong API keys from this address: retry in {decision.retry_after} s"
            )
            body = _rpc_body(429, message) if facade else error_body("too_many_requests", message)
            retry = ((b"retry-after", str(decision.retry_after).encode()),)
            await _send_json(send, finish, 429, body, retry)
            return
        if facade:
            await _send_json(send, finish, 401, _rpc_body(401, "Unauthorized"))
            return
        await _send_json(
            send,
            finish,
            401,
            error_body("unauthorized", "missing or wrong X-Api-Key header"),
            ((b"www-authenticate", b'ApiKey header="X-Api-Key"'),),
        )

    async def _run_app(
        self, scope: Scope, receive: Receive, send: Send, finish: Callable[[list[Any]], None]
    ) -> None:
        """The app, with a ``send`` that finishes the headers, shields the last body and
        writes an event stream from its own task (``stream_response``)."""
        control = StreamControl()
        scope[STREAM_KEY] = control
        nursery = self._nursery_of()
        scope[HANDOFF_KEY] = nursery is not None
        writer: _Writer | None = None
        streamer: _Streamer | None = None

        async def outgoing(message: Message) -> None:
            nonlocal writer, streamer
            if streamer is not None:
                return  # the view's own (empty) body: the streamer writes the real one
            if writer is not None:
                if not await writer.put(message):
                    control.abort()
                    await trio.lowlevel.checkpoint()
                return
            kind = message["type"]
            if kind == "http.response.start":
                headers = list(message.get("headers", ()))
                finish(headers)
                message = {**message, "headers": headers}
                if nursery is not None and _is_event_stream(headers):
                    source = scope.pop(SOURCE_KEY, None)
                    if source is not None:
                        streamer = _Streamer(lambda m: _send_last(send, m), message, source)
                        nursery.start_soon(streamer.run)
                        return
                    writer = _Writer.around(lambda m: _send_last(send, m))
                    nursery.start_soon(writer.run)
                    if not await writer.put(message):
                        control.abort()
                        await trio.lowlevel.checkpoint()
                    return
                await send(message)
            else:
                await _send_last(send, message)

        with control._scope:
            try:
                await self.app(scope, receive, outgoing)
                if streamer is not None:
                    await _until_done_or_gone(streamer, receive)
            finally:
                if writer is not None:
                    writer.close()
        if writer is not None and not control.aborted:
            # Let the last chunk reach the client before hypercorn ends the response.
            with trio.move_on_after(FINISH_TIMEOUT):
                await writer.done.wait()


async def _until_done_or_gone(streamer: _Streamer, receive: Receive) -> None:
    """Wait for ``streamer`` to end; if the client hangs up first, stop it (a stream
    with nothing to say would otherwise hold its connection until its next heartbeat)."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            streamer.stop()

        nursery.start_soon(watch)
        await streamer.done.wait()
        nursery.cancel_scope.cancel()


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _rpc_body(code: int, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def _finisher(origin: str | None) -> Callable[[list[Any]], None]:
    """What every response gets on its way out (in place on a header list)."""
    cors = (
        [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
            (b"access-control-allow-methods", b"GET, POST, PUT, DELETE, OPTIONS"),
            (b"access-control-allow-headers", CORS_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
        ]
        if origin is not None
        else []
    )
    cors_names = {n for n, _ in cors if n != b"vary"}

    def finish(headers: list[Any]) -> None:
        has_cache = False
        for i in range(len(headers) - 1, -1, -1):
            name = bytes(headers[i][0]).lower()
            if name == b"cache-control":
                has_cache = True
            elif name == b"x-content-type-options" or name in cors_names:
                del headers[i]
        headers.append(_NOSNIFF)
        if not has_cache:
            headers.append(_NO_STORE)
        headers.extend(cors)

    return finish


def _finished(finish: Callable[[list[Any]], None], headers: list[Any]) -> list[Any]:
    finish(headers)
    return headers


async def _send_last(send: Send, message: Message) -> None:
    """Send ``message``; the last body message shielded (see the module docstring)."""
    if message.get("type") == "http.response.body" and not message.get("more_body"):
        with trio.CancelScope(shield=True):
            await send(message)
    else:
        await send(message)


async def _send_json(
    send: Send,
    finish: Callable[[list[Any]], None],
    status: int,
    body: bytes,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    content_type: bytes = _JSON,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    finish(headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await _send_last(send, {"type": "http.response.body", "body": body})


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """The canonical error body, before anything else was looked at (no CORS headers)."""
    await _send_json(send, _finisher(None), status, error_body(code, message), extra)
