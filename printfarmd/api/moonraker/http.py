"""The facade's HTTP side: one route per method, ``POST /server/jsonrpc``, file
download and upload, ``/access/api_key``, the webcams' signed snapshot route,
``/websocket``; plus the REST file routes ``GET/POST /api/files`` that share the upload
core, and ``GET/DELETE /api/files/{path}``.

HTTP answers are ``{"result": ...}``; errors ``{"error": {"code", "message"}}`` with
that status (``errors.rpc_response``). Authentication already happened in the app's
one auth hook; these views never see an unauthenticated request.
"""

from __future__ import annotations

import glob
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import trio
from quart import Blueprint, Response, current_app, request, send_file
from quart_trio.wrappers.request import TrioRequest

from printfarmd.api import errors, jsonin
from printfarmd.api.context import client_address, services
from printfarmd.api.moonraker import (
    console,
    file_methods,
    history_methods,
    queue_methods,
    rpc,
    server_methods,
    spoolman_methods,
    webcam_methods,
)
from printfarmd.api.moonraker.args import Args, parse_query
from printfarmd.api.moonraker.facade import Facade, http_answer
from printfarmd.api.respond import json_response
from printfarmd.drivers.base import DriverError
from printfarmd.errors import NotFound
from printfarmd.services import files, photos, thumbs

# The method modules register themselves on import.
_REGISTERED = (
    console,
    file_methods,
    history_methods,
    queue_methods,
    server_methods,
    spoolman_methods,  # issue 16
)
#: A camera that does not answer within this long gets a 504.
SNAPSHOT_TIMEOUT = 10.0

bp = Blueprint("moonraker", __name__)
FACADE_KEY = "PRINTFARMD_MOONRAKER"
UPLOAD_PATHS = frozenset({"/server/files/upload", "/api/files"})


def facade() -> Facade:
    value: Facade = current_app.config[FACADE_KEY]
    return value


class UploadAwareRequest(TrioRequest):
    """Quart's request, with the upload cap instead of the JSON cap on upload routes.

    Quart fixes a body's size cap when the request is created; the upload core also
    counts the bytes it streams and stops at ``server.max_upload_bytes``.
    """

    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        if path in UPLOAD_PATHS and current_app:
            kwargs["max_content_length"] = current_app.config["PRINTFARMD_MAX_UPLOAD"]
        super().__init__(method, scheme, path, *args, **kwargs)


async def http_args(path_args: dict[str, Any] | None = None) -> Args:
    """Query string first, then a JSON body (body wins), then path arguments."""
    values = parse_query(request.args.items(multi=True))
    if (request.content_type or "").startswith("application/json"):
        raw = await request.get_data(cache=False, as_text=False)
        if isinstance(raw, bytes) and raw.strip():
            try:
                body = jsonin.decode(raw)
            except jsonin.JsonRefused as exc:
                raise errors.RpcError(400, f"Invalid JSON body: {exc.reason}") from None
            if not isinstance(body, dict):
                raise errors.RpcError(400, "Invalid JSON body: expected an object")
            values.update(body)
    values.update(path_args or {})
    return Args(values)


def _wrap(result: Any) -> Response:
    if result is None:
        return Response(b"", status=204)
    content_type, body, extra = http_answer(
        rpc.wrap(result, b'{"result":', b"}"), request.headers.get("Accept-Encoding", "")
    )
    resp = Response(body, status=200, content_type=content_type.decode())
    for name, value in extra:
        resp.headers[name.decode()] = value.decode()
    return resp


def _make_view(by_verb: dict[str, str]) -> Any:
    async def view() -> Response:
        name = by_verb[request.method]
        try:
            caller = rpc.Caller(facade(), client_address())
            return _wrap(await rpc.call_method(caller, name, await http_args()))
        except Exception as exc:
            return errors.rpc_response(exc)

    return view


def _routes() -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for m in rpc.METHODS.values():
        if m.http is not None:
            verb, path = m.http
            table[path][verb] = m.name
    return table


for _path, _verbs in sorted(_routes().items()):
    bp.add_url_rule(
        _path,
        endpoint=_path.strip("/").replace("/", "_"),
        view_func=_make_view(_verbs),
        methods=sorted(_verbs),
    )


@bp.post("/server/jsonrpc")
async def jsonrpc() -> Response:
    if not (request.content_type or "").startswith("application/json"):
        return errors.rpc_response(errors.RpcError(415, "Content-Type must be application/json"))
    raw = await request.get_data(cache=False, as_text=False)
    caller = rpc.Caller(facade(), client_address())
    reply = await rpc.dispatch(caller, raw if isinstance(raw, bytes) else raw.encode(), _any)
    return Response(reply or b"", status=200 if reply else 204, content_type="application/json")


def _any(_name: str) -> bool:
    return True


@bp.get("/access/api_key")
async def api_key() -> Response:
    # Moonraker shows its key to an authenticated client; printfarmd keeps only the key's
    # hash (issue 9), so there is nothing to show, and no response ever carries the key.
    return errors.rpc_response(
        errors.RpcError(
            403,
            "printfarmd keeps only a hash of its API key, so it cannot show it;"
            " `printfarmd api-key rotate` makes a new one",
        )
    )


@bp.get("/server/files/<root>/<path:name>", merge_slashes=False)
async def download(root: str, name: str) -> Response:
    try:
        roots = facade().roots()
        if root not in roots:
            raise errors.RpcError(404, "Not Found")
        path: Path = await trio.to_thread.run_sync(_existing_file, roots[root], name)
        resp = await send_file(path, mimetype="application/octet-stream", as_attachment=True)
        return resp
    except Exception as exc:
        return errors.rpc_response(exc)


def _existing_file(root: Path, name: str) -> Path:
    path = file_methods.resolve(root, name)
    if not path.is_file():
        raise errors.RpcError(404, f"File {file_methods.safe_text(name)} does not exist")
    return path


@bp.delete("/server/files/<root>/<path:name>", merge_slashes=False)
async def delete(root: str, name: str) -> Response:
    """Moonraker's ``DELETE /server/files/{root}/{filename}``: ``server.files.delete_file``."""
    try:
        caller = rpc.Caller(facade(), client_address())
        args = Args({"path": f"{root}/{name}"})
        return _wrap(await rpc.call_method(caller, "server.files.delete_file", args))
    except Exception as exc:
        return errors.rpc_response(exc)


async def _receive(subdir_field: str = "path", check_fields: Any = None) -> files.UploadResult:
    svc = services()
    return await files.receive_upload(
        svc.config.gcodes_path,
        request.headers.get("Content-Type", ""),
        request.body,
        max_bytes=svc.config.server.max_upload_bytes,
        min_free_bytes=svc.config.server.upload_min_free_bytes,
        subdir_field=subdir_field,
        declared_length=request.content_length,
        check_fields=check_fields,
    )


def _gcodes_root_only(fields: Mapping[str, str]) -> None:
    # Checked before the file is placed: refusing afterwards would already have
    # replaced a gcodes file of the same name.
    if (fields.get("root") or "gcodes") != "gcodes":
        raise errors.RpcError(400, "Uploads are accepted into the gcodes root only")


@bp.post("/server/files/upload")
async def upload() -> Response:
    try:
        result = await _receive(check_fields=_gcodes_root_only)
        stored = result.stored
        queued = False
        if result.fields.get("print", "").lower() == "true":
            await queue_methods.enqueue_files(facade().svc.owner, [stored.path])
            queued = True
        item = {
            "path": stored.path,
            "root": "gcodes",
            "modified": stored.modified,
            "size": stored.size,
            "permissions": "rw",
        }
        facade().notify_filelist({"action": "create_file", "item": item})
        body = {
            "action": "create_file",
            "item": item,
            "print_started": False,
            "print_queued": queued,
        }
        resp = Response(orjson.dumps(body), status=201, content_type="application/json")
        resp.headers["Location"] = (
            f"{request.host_url.rstrip('/')}/server/files/gcodes/{stored.path}"
        )
        return resp
    except Exception as exc:
        return errors.rpc_response(exc)


# ---------------------------------------------------------------- REST: /api/files


@bp.get("/api/files")
async def rest_list_files() -> Response:
    listed = await trio.to_thread.run_sync(files.list_gcodes, services().config.gcodes_path)
    return json_response(
        {"files": [{"path": f.path, "size": f.size, "modified": f.modified} for f in listed]}
    )


@bp.post("/api/files")
async def rest_upload() -> Response:
    result = await _receive()
    s = result.stored
    facade().notify_filelist(
        {
            "action": "create_file",
            "item": {
                "path": s.path,
                "root": "gcodes",
                "modified": s.modified,
                "size": s.size,
                "permissions": "rw",
            },
        }
    )
    resp = json_response(
        {"file": {"path": s.path, "size": s.size, "sha256": s.sha256, "modified": s.modified}},
        201,
    )
    return resp


def _rest_gcode(root: Path, name: str) -> Path:
    """``name`` through the one containment check; 400 bad or escaping, 404 missing. Blocking."""
    path = files.resolve_in(root, name)
    if path.suffix.lower() not in files.GCODE_SUFFIXES or not path.is_file():
        raise NotFound(f"file {name} not found")
    return path


def _rest_delete(root: Path, name: str) -> None:
    path = _rest_gcode(root, name)
    # A (contained) symlink is removed itself, never the file it points to.
    link = root.resolve() / name
    (link if link.is_symlink() else path).unlink()
    # Escaped: a file called "*.gcode" must not take every other file's thumbnails along.
    for thumb in (path.parent / thumbs.THUMBS_DIR).glob(f"{glob.escape(path.stem)}-*x*.png"):
        thumb.unlink(missing_ok=True)


@bp.get("/api/files/<path:path>", merge_slashes=False)
async def rest_download(path: str) -> Response:
    real = await trio.to_thread.run_sync(_rest_gcode, services().config.gcodes_path, path)
    resp: Response = await send_file(real, mimetype="text/x-gcode", as_attachment=True)
    return resp


@bp.delete("/api/files/<path:path>", merge_slashes=False)
async def rest_delete(path: str) -> Response:
    await trio.to_thread.run_sync(_rest_delete, services().config.gcodes_path, path)
    item = {"path": path, "root": "gcodes", "modified": 0.0, "size": 0, "permissions": "rw"}
    facade().notify_filelist({"action": "delete_file", "item": item})
    return json_response({"deleted": path})


@bp.get("/server/webcams/snapshot/<printer_id>")
async def camera_snapshot(printer_id: str) -> Response:
    """One camera image of ``printer_id``, through its signed URL (no API key: the view
    checks the HMAC and expiry itself, 403 when either is wrong; public in
    ``auth.PUBLIC_ROUTES``). 404 for a printer without a camera, 504 when it does not
    answer, 502 when it answers an error."""
    try:
        svc = services()
        secret = await trio.to_thread.run_sync(photos.load_secret, svc.config.data_path)
        ok = photos.verify(
            secret,
            webcam_methods.signed_path(printer_id),
            request.args.get("expires", ""),
            request.args.get("sig", ""),
            photos.wall(),
        )
        if not ok:
            raise errors.RpcError(403, "Snapshot URL expired or not valid")
        driver = svc.owner.host.driver(printer_id)
        if driver is None:
            raise errors.RpcError(404, "No such camera")
        try:
            with trio.fail_after(SNAPSHOT_TIMEOUT):
                image = await driver.snapshot()
        except trio.TooSlowError:
            raise errors.RpcError(504, f"The camera of {printer_id} did not answer") from None
        except DriverError as exc:
            raise errors.RpcError(502, f"The camera of {printer_id}: {exc.message}") from None
        if not image:
            raise errors.RpcError(404, "No such camera")
        kind = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
        resp = Response(image, status=200, content_type=kind)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    except Exception as exc:
        return errors.rpc_response(exc)


@bp.websocket("/websocket")
async def websocket_route() -> Response | None:
    """Never reached in the daemon: the front gives every upgrade on this path to
    ``asgi_socket.serve`` (issue 17). The rule stays so that Quart's URL map knows the path
    (a plain HTTP request for it gets the 400 Quart gives a websocket route)."""
    return Response(b"", status=500)
