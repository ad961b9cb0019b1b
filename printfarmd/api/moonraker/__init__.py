"""The Moonraker-compatible facade: Mainsail, Fluidd and Moonraker scripts manage the
farm queue (see docs/moonraker-compat.md)."""

from __future__ import annotations

import functools

from quart_trio import QuartTrio

from printfarmd.api.auth import OneshotTokens
from printfarmd.api.context import Services
from printfarmd.api.front import Front, is_facade_path
from printfarmd.api.history import BOOK_KEY
from printfarmd.api.moonraker import asgi_socket, ws
from printfarmd.api.moonraker.facade import Facade
from printfarmd.api.moonraker.http import FACADE_KEY, UploadAwareRequest, bp

__all__ = ["install", "is_facade_path", "serve_fast"]


def install(app: QuartTrio, svc: Services, tokens: OneshotTokens) -> None:
    """Register the facade on ``app``: routes, websocket, upload cap. (CORS preflights
    and headers for ``server.cors_domains`` are the front's: ``api/front.py``.)"""
    facade = app.config[FACADE_KEY] = Facade(svc, tokens)
    app.config[BOOK_KEY] = facade.history  # the REST history and stats read the same book
    if svc.spoolman is not None:  # issue 16: the spool panels hear Spoolman come and go
        svc.spoolman.on_status = facade.spoolman_status
    app.config["PRINTFARMD_MAX_UPLOAD"] = svc.config.server.max_upload_bytes + 64 * 1024
    app.request_class = UploadAwareRequest
    app.register_blueprint(bp)


def serve_fast(front: Front, app: QuartTrio) -> None:
    """The facade's hot read answers, given by the front without a Quart request, and
    its websocket, served without Quart's per-frame machinery (``moonraker/asgi_socket.py``)."""
    facade: Facade = app.config[FACADE_KEY]
    front.serve_get("/server/job_queue/status", facade.fast_status)
    # issue 17: the websocket's frames go between hypercorn and the facade directly.
    front.serve_websocket(
        "/websocket", functools.partial(asgi_socket.serve, app, functools.partial(ws.serve, facade))
    )
