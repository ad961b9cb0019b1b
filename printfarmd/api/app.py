"""The Quart-Trio application: blueprints, the auth gate and the error handler."""

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
from printfarmd.api.auth import PUBLIC_ROUTES, Verdict, public_by_config
from printfarmd.api.closeshield import CloseShield
from printfarmd.api.connlimit import ConnectionLimit
from printfarmd.api.context import APP_KEY, Services
from printfarmd.api.hostcheck import HostCheck
from printfarmd.errors import ShuttingDown

log = logging.getLogger("printfarmd.api")


def create_app(svc: Services) -> QuartTrio:
    app = QuartTrio("printfarmd")
    app.config[APP_KEY] = svc
    app.config["MAX_CONTENT_LENGTH"] = svc.config.server.max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    # No automatic OPTIONS answers (an empty text/html 200 on every route): OPTIONS gets
    # the JSON 405 with Allow; CORS preflights are answered by the facade's hook.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for bp in (jobs.bp, printers.bp, orchestrator.bp, openapi.bp):
        app.register_blueprint(bp)
    app.register_blueprint(notifications.bp)
    app.register_blueprint(metrics.bp)  # issue 8: /metrics
    app.register_blueprint(photos.bp)  # issue 7: plate photos, signed URLs
    app.register_blueprint(history.bp)  # issue 14: print history (+ CSV)
    app.register_blueprint(stats.bp)  # issue 14: per printer and per file statistics
    app.register_blueprint(upkeep.bp)  # issue 16: spools, maintenance
    events.install(app)  # SSE routes and the stream guard
    app.register_blueprint(dashboard.bp)
    moonraker.install(
        app, svc, svc.access.tokens
    )  # Moonraker facade (issue 3); before the auth hook

    @app.before_request
    async def refuse_while_stopping() -> Response | None:
        if svc.stopping.is_set():
            return errors.to_response(ShuttingDown("printfarmd is shutting down: retry shortly"))
        return None

    @app.before_request
    async def authenticate() -> Response | None:
        rule = request.url_rule
        if rule is not None and (request.method, rule.rule) in PUBLIC_ROUTES:
            return None
        if rule is not None and public_by_config(request.method, rule.rule, svc.config.server):
            return None
        if request.method == "HEAD" and rule is not None and ("GET", rule.rule) in PUBLIC_ROUTES:
            return None
        decision = svc.access.decide(
            peer=request.remote_addr,
            host=request.headers.get("Host"),
            api_key=request.headers.get("X-Api-Key"),
            forwarded_for=request.headers.get("X-Forwarded-For"),
            oneshot=request.args.get("token"),
        )
        if decision.allowed:
            return None
        facade_path = moonraker.is_facade_path(request.path)
        if decision.verdict is Verdict.THROTTLED:
            log.warning(
                "authentication back-off",
                extra={"client": decision.client, "retry_after": decision.retry_after},
            )
            message = (
                f"too many wrong API keys from this address: retry in {decision.retry_after} s"
            )
            if facade_path:
                resp = errors.rpc_response(errors.RpcError(429, message))
            else:
                resp = errors.error_response(429, "too_many_requests", message)
            resp.headers["Retry-After"] = str(decision.retry_after)
            return resp
        if facade_path:
            return errors.rpc_response(errors.RpcError(401, "Unauthorized"))
        return errors.error_response(401, "unauthorized", "missing or wrong X-Api-Key header")

    @app.after_request
    async def harden(resp: Response) -> Response:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if has_request_context() and moonraker.is_facade_path(request.path):
            return errors.rpc_response(exc)
        return errors.to_response(exc)

    @app.errorhandler(Exception)
    async def any_error(exc: Exception) -> Response:
        return errors.to_response(exc)

    # Outermost: refuse beyond server.max_connections before anything else runs, and a
    # Host that Quart cannot even build a request context for.
    app.asgi_app = ConnectionLimit(  # type: ignore[method-assign, assignment]
        HostCheck(CloseShield(app.asgi_app)),  # type: ignore[arg-type]
        svc.config.server.max_connections,
    )
    return app
