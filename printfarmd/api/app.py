"""The Quart-Trio application: blueprints, the auth gate and the error handler."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from printfarmd.api import errors, jobs, openapi, orchestrator, printers
from printfarmd.api.auth import PUBLIC_ROUTES, key_matches
from printfarmd.api.context import APP_KEY, Services


def create_app(svc: Services) -> QuartTrio:
    app = QuartTrio("printfarmd")
    app.config[APP_KEY] = svc
    app.config["MAX_CONTENT_LENGTH"] = svc.config.server.max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    for bp in (jobs.bp, printers.bp, orchestrator.bp, openapi.bp):
        app.register_blueprint(bp)

    @app.before_request
    async def authenticate() -> Response | None:
        rule = request.url_rule
        if rule is not None and (request.method, rule.rule) in PUBLIC_ROUTES:
            return None
        if request.method == "HEAD" and rule is not None and ("GET", rule.rule) in PUBLIC_ROUTES:
            return None
        if key_matches(request.headers.get("X-Api-Key"), svc.config.server.api_key):
            return None
        return errors.error_response(401, "unauthorized", "missing or wrong X-Api-Key header")

    @app.after_request
    async def harden(resp: Response) -> Response:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return errors.to_response(exc)

    @app.errorhandler(Exception)
    async def any_error(exc: Exception) -> Response:
        return errors.to_response(exc)

    return app
