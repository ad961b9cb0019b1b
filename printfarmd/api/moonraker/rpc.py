"""The facade's method table and its JSON-RPC 2.0 dispatcher (pure of transport).

A method is registered once with its JSON-RPC name and its HTTP route; the HTTP
routes, ``POST /server/jsonrpc`` and the websocket all call ``call_method``, so the
three give the same results. Handlers return plain JSON-able values or ``Raw``
(pre-encoded JSON, spliced in unchanged so hot results are not re-encoded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from printfarmd.api import errors, jsonin
from printfarmd.api.moonraker.args import Args

if TYPE_CHECKING:
    from printfarmd.api.moonraker.facade import Facade


class Raw(msgspec.Struct, frozen=True):
    """An already-encoded JSON value, whole or in ``pieces`` (joined only once, into the
    message that carries it)."""

    data: bytes = b""
    pieces: list[bytes] | None = None

    def join(self, before: bytes, after: bytes) -> bytes:
        if self.pieces is None:
            return before + self.data + after
        return b"".join([before, *self.pieces, after])


class Caller(msgspec.Struct):
    """Who is calling: the facade, the peer address, and the websocket connection (if any)."""

    facade: Facade
    peer: str | None
    connection: Any = None


Handler = Callable[[Caller, Args], Awaitable[Any]]


class Method(msgspec.Struct, frozen=True):
    name: str
    handler: Handler
    #: (verb, path) of the HTTP route, or None for websocket/JSON-RPC only methods.
    http: tuple[str, str] | None
    #: Allowed on a websocket that has not authenticated yet.
    public: bool = False


METHODS: dict[str, Method] = {}

#: Most requests in one JSON-RPC batch. Each answer is ~60 bytes even for ``[1,1,...]``,
#: so an unbounded batch turns a 1 MiB frame into tens of MiB of replies.
MAX_BATCH = 100


def method(
    name: str, http: tuple[str, str] | None = None, *, public: bool = False
) -> Callable[[Handler], Handler]:
    """Register ``handler`` as JSON-RPC method ``name`` (and HTTP route ``http``)."""

    def register(handler: Handler) -> Handler:
        METHODS[name] = Method(name, handler, http, public)
        return handler

    return register


def encode(value: Any) -> bytes:
    if isinstance(value, Raw):
        return value.join(b"", b"")
    return orjson.dumps(value)


def wrap(value: Any, before: bytes, after: bytes) -> bytes:
    """``before`` + ``value`` as JSON + ``after``, with one copy of a pre-encoded value."""
    if isinstance(value, Raw):
        return value.join(before, after)
    return before + orjson.dumps(value) + after


async def call_method(caller: Caller, name: str, args: Args) -> Any:
    """Run method ``name``; raises ``RpcError``/``FarmError`` like the handler does."""
    m = METHODS.get(name)
    if m is None:
        raise errors.RpcError(404, "Method not found")
    return await m.handler(caller, args)


def _error(code: int, message: str, rid: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": rid}


async def _one(caller: Caller, req: Any, authorized: Callable[[str], bool]) -> bytes | None:
    if not isinstance(req, dict):
        return orjson.dumps(_error(-32600, "Invalid Request", None))
    rid = req.get("id")
    has_id = "id" in req and rid is not None
    if req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
        return orjson.dumps(_error(-32600, "Invalid Request", rid))
    name: str = req["method"]
    params = req.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return orjson.dumps(_error(-32602, "Invalid params:", rid)) if has_id else None
    try:
        if not authorized(name):
            raise errors.RpcError(401, "Unauthorized")
        result = await call_method(caller, name, Args(params))
    except Exception as exc:
        code, message = errors.rpc_error(exc, websocket=True)
        return orjson.dumps(_error(code, message, rid)) if has_id else None
    if not has_id:
        return None
    return wrap(result, b'{"jsonrpc":"2.0","result":', b',"id":' + orjson.dumps(rid) + b"}")


async def dispatch(
    caller: Caller, raw: bytes | str, authorized: Callable[[str], bool]
) -> bytes | None:
    """Answer one JSON-RPC frame (a request or a batch); None if nothing to send back.

    Never raises: JSON the one decoder refuses is -32700 (not JSON; the message says
    why) or -32600 (JSON beyond a limit), so is a batch of more than ``MAX_BATCH``; a
    handler's error is its code; anything unexpected is code 500 with an error id (logged).
    """
    try:
        req = jsonin.decode(raw)
    except jsonin.JsonRefused as exc:
        if exc.syntax:
            # Plain syntax errors get Moonraker's exact text; the rest say what was wrong.
            message = "Parse error" if exc.malformed else f"Parse error: {exc.reason}"
            return orjson.dumps(_error(-32700, message, None))
        return orjson.dumps(_error(-32600, f"Invalid Request: {exc.reason}", None))
    if isinstance(req, list):
        if not req:
            return orjson.dumps(_error(-32600, "Invalid Request", None))
        if len(req) > MAX_BATCH:
            message = f"Invalid Request: a batch of more than {MAX_BATCH} requests"
            return orjson.dumps(_error(-32600, message, None))
        out = [r for r in [await _one(caller, item, authorized) for item in req] if r]
        return b"[" + b",".join(out) + b"]" if out else None
    return await _one(caller, req, authorized)
