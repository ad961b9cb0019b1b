"""The Quart-Trio application: blueprints, the error handler, and the one middleware in
front of it (``api/front.py``: limits, CORS, the access decision, hardened headers)."""

from __future__ import annotations

import logging

from quart import Response, has_request_context, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from printfarmd.api import (
    dashboard,
    errors,
    events,
    history,
    jobs,
    metrics,
    moonraker,
    notifications,
    openapi,
    orchestrator,
    photos,
    printers,
    stats,
    upkeep,
)
from printfarmd.api.context import APP_KEY, Services
from printfarmd.api.front import Front
from printfarmd.api.rules import FarmApp

log = logging.getLogger("printfarmd.api")


def create_app(svc: Services) -> QuartTrio:
    app = FarmApp("printfarmd")
    app.config[APP_KEY] = svc
    app.config["MAX_CONTENT_LENGTH"] = svc.config.server.max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    # No automatic OPTIONS answers (an empty text/html 200 on every route): OPTIONS gets
    # the JSON 405 with Allow; CORS preflights are answered by the front (api/front.py).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for bp in (jobs.bp, printers.bp, orchestrator.bp, openapi.bp):
        app.register_blueprint(bp)
    app.register_blueprint(notifications.bp)
    app.register_blueprint(metrics.bp)  # issue 8: /metrics
    app.register_blueprint(photos.bp)  # issue 7: plate photos, signed URLs
    app.register_blueprint(history.bp)  # issue 14: print history (+ CSV)
    app.register_blueprint(stats.bp)  # issue 14: per printer and per file statistics
    app.register_blueprint(upkeep.bp)  # issue 16: spools, maintenance
    app.register_blueprint(events.bp)  # SSE (their writers: api/front.py)
    app.register_blueprint(dashboard.bp)
    moonraker.install(app, svc, svc.access.tokens)  # Moonraker facade (issue 3)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if has_request_context() and moonraker.is_facade_path(request.path):
            return errors.rpc_response(exc)
        return errors.to_response(exc)

    @app.errorhandler(Exception)
    async def any_error(exc: Exception) -> Response:
        return errors.to_response(exc)

    # issue 17: the one middleware (connection limit, Host check, CORS, stopping, the
    # access decision, fast routes, hardened headers, shielded last body, event streams).
    front = Front(
        app.asgi_app,  # type: ignore[arg-type]
        svc,
        lambda: getattr(app, "nursery", None),
    )
    moonraker.serve_fast(front, app)
    app.asgi_app = front  # type: ignore[method-assign, assignment]
    return app
