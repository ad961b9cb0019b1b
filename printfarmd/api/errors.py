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

from printfarmd.errors import FarmError, StorageBusy

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


def to_response(exc: BaseException) -> Response:
    """Map any exception raised while handling a request to a JSON error response."""
    if isinstance(exc, FarmError):
        extra: dict[str, object] = {}
        if isinstance(exc, StorageBusy):
            extra["retry_after"] = 1
        field = getattr(exc, "field", None)
        if field:
            extra["field"] = field
        return error_response(exc.status, exc.code, exc.message, **extra)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = {
            404: "no such endpoint",
            405: "method not allowed on this endpoint",
            413: "request body too large",
        }.get(status, exc.name)
        return error_response(status, code, message)
    error_id = secrets.token_hex(6)
    log.error("unexpected error", exc_info=exc, extra={"error_id": error_id})
    return error_response(
        500, "internal_error", f"internal error (id {error_id})", error_id=error_id
    )
