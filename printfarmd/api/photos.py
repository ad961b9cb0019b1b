"""REST: the plate-photo gallery (``/api/photos``) and its pre-signed image URLs.

``GET /api/photos`` needs the API key; ``GET /api/photos/low/<key>`` is public (listed in
``auth.PUBLIC_ROUTES``) and checks its own HMAC signature and expiry instead: 403 when
either is wrong, whatever else the request carries.
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response, request, send_file

from printfarmd.api.context import services
from printfarmd.api.respond import json_response
from printfarmd.errors import BadRequest, FarmError
from printfarmd.services import photos

bp = Blueprint("photos", __name__)


class Forbidden(FarmError):
    status = 403
    code = "forbidden"


def _int_arg(name: str, default: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > hi:
        raise BadRequest(f"{name}: expected an integer 0..{hi}")
    return int(raw)


@bp.get("/api/photos")
async def list_photos() -> Response:
    offset = _int_arg("offset", 0, 10**9)
    limit = _int_arg("limit", 50, photos.MAX_PAGE)
    root = services().config.data_path / "photos"
    secret = await trio.to_thread.run_sync(photos.load_secret, services().config.data_path)
    keys = await trio.to_thread.run_sync(photos.list_low, root)
    p = photos.page(secret, keys, offset, limit, photos.wall())
    return json_response(
        {"photos": p.items, "total": p.total, "offset": p.offset, "limit": p.limit}
    )


@bp.get("/api/photos/low/<path:key>", merge_slashes=False)
async def signed_photo(key: str) -> Response:
    data_path = services().config.data_path
    secret = await trio.to_thread.run_sync(photos.load_secret, data_path)
    ok = photos.verify(
        secret,
        f"low/{key}",
        request.args.get("expires", ""),
        request.args.get("sig", ""),
        photos.wall(),
    )
    if not ok:
        raise Forbidden("photo URL expired or not valid")
    path = await trio.to_thread.run_sync(photos.resolve_low, data_path / "photos", key)
    resp: Response = await send_file(path, mimetype="image/png")
    return resp
