"""The Moonraker-compatible facade: Mainsail, Fluidd and Moonraker scripts manage the
farm queue (see docs/moonraker-compat.md)."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from printfarmd.api.auth import OneshotTokens
from printfarmd.api.context import Services
from printfarmd.api.history import BOOK_KEY
from printfarmd.api.moonraker.facade import Facade
from printfarmd.api.moonraker.http import (
    FACADE_KEY,
    UploadAwareRequest,
    bp,
    is_facade_path,
)

__all__ = ["install", "is_facade_path"]

CORS_HEADERS = (
    "Origin, Accept, Content-Type, X-Requested-With, Authorization, X-Access-Token, X-Api-Key"
)


def install(app: QuartTrio, svc: Services, tokens: OneshotTokens) -> None:
    """Register the facade on ``app``: routes, websocket, upload cap, CORS allow-list.

    Call before the app's auth hook is registered: CORS preflights (which carry no
    credentials by design) are answered here, for allowed origins only.
    """
    facade = app.config[FACADE_KEY] = Facade(svc, tokens)
    app.config[BOOK_KEY] = facade.history  # the REST history and stats read the same book
    if svc.spoolman is not None:  # issue 16: the spool panels hear Spoolman come and go
        svc.spoolman.on_status = facade.spoolman_status
    app.config["PRINTFARMD_MAX_UPLOAD"] = svc.config.server.max_upload_bytes + 64 * 1024
    app.request_class = UploadAwareRequest
    app.register_blueprint(bp)

    @app.before_request
    async def cors_preflight() -> Response | None:
        origin = request.headers.get("Origin")
        if request.method != "OPTIONS" or not origin:
            return None
        if origin not in svc.access.cors_domains:
            return Response(
                b'{"error":{"code":403,"message":"Origin not allowed"}}',
                status=403,
                content_type="application/json",
            )
        resp = Response(b"", status=204, content_type="application/json")
        _cors(resp, origin)
        return resp

    @app.after_request
    async def cors(resp: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and origin in svc.access.cors_domains:
            _cors(resp, origin)
        return resp


def _cors(resp: Response, origin: str) -> None:
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers.add("Vary", "Origin")
    resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
    resp.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
    resp.headers["Access-Control-Max-Age"] = "600"
