"""The ONE place where exceptions become HTTP error bodies.

Canonical REST body: ``{"error": {"code": <stable string>, "message": <text>}}`` with
the exception's HTTP status. Unexpected exceptions are logged with their traceback
next to a short error id, and the client gets only that id: never a traceback, a
file path or a secret.
"""

from __future__ import annotations

import logging
import secrets

import orjson
from quart import Response
from werkzeug.exceptions import HTTPException

from printfarmd.errors import FarmError, ShuttingDown, StorageBusy

log = logging.getLogger("printfarmd.api")

JSON = "application/json"


def error_body(code: str, message: str, **extra: object) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, **extra}})


def error_response(status: int, code: str, message: str, **extra: object) -> Response:
    resp = Response(error_body(code, message, **extra), status=status, content_type=JSON)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'ApiKey header="X-Api-Key"'
    if isinstance(extra.get("retry_after"), int):
        resp.headers["Retry-After"] = str(extra["retry_after"])
    return resp


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


#: Statuses that mean "the request itself was invalid": logged as warnings.
_INVALID = frozenset({400, 413, 415, 422})


def _log_invalid(status: int, code: str, message: str) -> None:
    if status in _INVALID:
        log.warning("invalid request", extra={"status": status, "code": code, "reason": message})


def to_response(exc: BaseException) -> Response:
    """Map any exception raised while handling a request to a JSON error response."""
    if isinstance(exc, FarmError):
        extra: dict[str, object] = {}
        if isinstance(exc, StorageBusy | ShuttingDown):
            extra["retry_after"] = 1
        field = getattr(exc, "field", None)
        if field:
            extra["field"] = field
        _log_invalid(exc.status, exc.code, exc.message)
        return error_response(exc.status, exc.code, exc.message, **extra)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = {
            404: "no such endpoint",
            405: "method not allowed on this endpoint",
            413: "request body too large",
        }.get(status, exc.name)
        _log_invalid(status, code, message)
        resp = error_response(status, code, message)
        # RFC 9110: a 405 must list the methods the resource allows (werkzeug knows them).
        for name, value in exc.get_headers():
            if name.lower() == "allow":
                resp.headers["Allow"] = value
        return resp
    error_id = secrets.token_hex(6)
    log.error("unexpected error", exc_info=exc, extra={"error_id": error_id})
    return error_response(
        500, "internal_error", f"internal error (id {error_id})", error_id=error_id
    )


# ---------------------------------------------------------------- Moonraker facade
# (issue 3) The facade speaks Moonraker's shapes: {"error": {"code": <int>, "message"}}
# over HTTP (status = code) and JSON-RPC error codes over the websocket.


class RpcError(Exception):
    """A facade error with Moonraker's numeric ``code`` (an HTTP status) and text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_RPC_HTTP_TEXT = {404: "Not Found", 405: "Method Not Allowed", 413: "Request Entity Too Large"}


def rpc_error(exc: BaseException, *, websocket: bool) -> tuple[int, str]:
    """(code, message) for ``exc`` as the facade reports it.

    Over JSON-RPC Moonraker turns 404 into -32601 and 401 into -32602; other codes pass
    through. Unexpected exceptions are logged with an error id, the client gets the id.
    """
    if isinstance(exc, RpcError):
        code, message = exc.code, exc.message
    elif isinstance(exc, FarmError):
        code = 400 if exc.status == 422 else exc.status
        message = exc.message
        _log_invalid(exc.status, exc.code, exc.message)
    elif isinstance(exc, HTTPException):
        code = exc.code or 500
        message = _RPC_HTTP_TEXT.get(code, exc.name)
    else:
        error_id = secrets.token_hex(6)
        log.error("unexpected error", exc_info=exc, extra={"error_id": error_id})
        code, message = 500, f"Internal error (id {error_id})"
    if websocket:
        code = {404: -32601, 401: -32602}.get(code, code)
    return code, message


def rpc_response(exc: BaseException) -> Response:
    """The facade's HTTP error response for ``exc`` (never a traceback)."""
    code, message = rpc_error(exc, websocket=False)
    status = code if 400 <= code <= 599 else 500
    return Response(
        orjson.dumps({"error": {"code": code, "message": message}}),
        status=status,
        content_type=JSON,
    )
