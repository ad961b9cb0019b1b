"""The operator dashboard at ``/dashboard``: one server-rendered page plus a small script.

The page and its two assets carry no farm data, so they are public (``PUBLIC_ROUTES``);
the script asks for the API key once (kept in the browser's ``localStorage``) and sends
it as ``X-Api-Key`` on every data call and on the event stream, which it reads with
``fetch()`` (``EventSource`` cannot send headers). No build step, no CDN: everything is
in this package, so it works offline on the Pi.
"""

from __future__ import annotations

from importlib import resources

from quart import Blueprint, Response, render_template

from printfarmd import __version__

bp = Blueprint("dashboard", __name__, template_folder="templates")

_STATIC = resources.files(__package__) / "static"
#: Asset name -> content type. Explicit routes (no path placeholder): nothing else on
#: disk can be reached through them.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def _asset(name: str) -> Response:
    resp = Response((_STATIC / name).read_bytes(), status=200, content_type=ASSETS[name])
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/dashboard")
async def page() -> Response:
    """The dashboard shell (no farm data: it is loaded by the script, with the key)."""
    html = await render_template("dashboard.html", version=__version__)
    resp = Response(html, status=200, content_type="text/html; charset=utf-8")
    # The page runs only its own script and talks only to this server.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


@bp.get("/dashboard/dashboard.js")
async def script() -> Response:
    return _asset("dashboard.js")


@bp.get("/dashboard/dashboard.css")
async def stylesheet() -> Response:
    return _asset("dashboard.css")
