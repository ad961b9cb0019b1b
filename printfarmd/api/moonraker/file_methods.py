"""``server.files.*``: the gcodes root (the farm's G-code folder) and a ``config`` root.

Every path goes through ``services.files`` (``check_relative_name`` / ``resolve_in`` /
``resolve_gcode``): one containment check for every entry point.
"""

from __future__ import annotations

import collections
import copy
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import trio

from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.rpc import Caller, method
from printfarmd.errors import BadRequest, NotFound, ValidationFailed
from printfarmd.services import files, thumbs

PERMS = "rw"
#: Files whose metadata ``MetaCache`` keeps (an extended listing of a big folder reads each).
META_CACHE_SIZE = 2048


class MetaCache:
    """Parsed metadata by (real path, size, modification time): a file is read again only
    when it changed. Thread-safe (used from worker threads); bounded, oldest dropped."""

    def __init__(self, size: int = META_CACHE_SIZE) -> None:
        self._size = size
        self._items: collections.OrderedDict[tuple[str, int, int], dict[str, Any]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> dict[str, Any] | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return copy.deepcopy(found)

    def put(self, key: tuple[str, int, int], value: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = copy.deepcopy(value)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def split_root(caller: Caller, path: str) -> tuple[str, Path, str]:
    """``"gcodes/sub/a.gcode"`` -> ("gcodes", root folder, "sub/a.gcode"). 400 if unknown."""
    if not isinstance(path, str):
        raise RpcError(400, "Invalid path")
    root_name, _, rest = path.strip("/").partition("/")
    roots = caller.facade.roots()
    if root_name not in roots:
        raise RpcError(400, f"Invalid root path ({_safe(root_name)})")
    return root_name, roots[root_name], rest


def safe_text(text: str) -> str:
    """``text`` safe to echo in an error: non-ASCII and control characters escaped, capped."""
    return text.encode("unicode_escape").decode("ascii")[:200]


_safe = safe_text


def resolve(root: Path, rel: str, *, must_exist: bool = True) -> Path:
    """``rel`` under ``root``, contained; facade errors (400 bad name, 404 missing). Blocking."""
    try:
        return files.resolve_in(root, rel, must_exist=must_exist)
    except NotFound:
        raise RpcError(404, f"File {_safe(rel)} does not exist") from None
    except BadRequest as exc:
        raise RpcError(400, f"Invalid path {_safe(rel)}: {exc.message}") from None


def _walk(root: Path, gcodes_only: bool) -> list[dict[str, Any]]:
    if gcodes_only:
        return [
            {"path": f.path, "modified": f.modified, "size": f.size, "permissions": PERMS}
            for f in files.list_gcodes(root)
        ]
    out: list[dict[str, Any]] = []
    real = root.resolve()
    if not real.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(real):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            full = Path(dirpath) / name
            try:
                if not full.resolve().is_relative_to(real):
                    continue
                st = full.stat()
            except (OSError, RuntimeError):
                continue
            rel = full.relative_to(real).as_posix()
            out.append(
                {"path": rel, "modified": st.st_mtime, "size": st.st_size, "permissions": PERMS}
            )
    return sorted(out, key=lambda f: str(f["path"]))


@method("server.files.roots", ("GET", "/server/files/roots"))
async def roots(caller: Caller, args: Args) -> list[dict[str, Any]]:
    return [
        {"name": name, "path": str(path), "permissions": PERMS}
        for name, path in caller.facade.roots().items()
    ]


@method("server.files.list", ("GET", "/server/files/list"))
async def file_list(caller: Caller, args: Args) -> list[dict[str, Any]]:
    root_name = args.get_str("root", "gcodes")
    roots_ = caller.facade.roots()
    if root_name not in roots_:
        raise RpcError(400, f"Invalid root path ({_safe(root_name)})")
    await trio.to_thread.run_sync(_mkdir, roots_[root_name])
    return await trio.to_thread.run_sync(_walk, roots_[root_name], root_name == "gcodes")


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _directory(
    root_name: str, root: Path, rel: str, extended: bool, cache: MetaCache | None = None
) -> dict[str, Any]:
    _mkdir(root)
    folder = resolve(root, rel) if rel else root.resolve()
    if not folder.is_dir():
        raise RpcError(400, f"Directory {_safe(rel)} does not exist")
    real_root = root.resolve()
    dirs: list[dict[str, Any]] = []
    out_files: list[dict[str, Any]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        try:
            real = Path(entry.path).resolve()
            st = real.stat()
        except (OSError, RuntimeError):
            continue
        if not real.is_relative_to(real_root):
            continue
        if real.is_dir():
            dirs.append(
                {"dirname": entry.name, "modified": st.st_mtime, "size": 0, "permissions": PERMS}
            )
        elif root_name != "gcodes" or Path(entry.name).suffix.lower() in files.GCODE_SUFFIXES:
            item: dict[str, Any] = {
                "filename": entry.name,
                "modified": st.st_mtime,
                "size": st.st_size,
                "permissions": PERMS,
            }
            if extended and root_name == "gcodes":
                # Moonraker merges the file's metadata into its entry (the name stays the
                # entry's own: the file name, not the path).
                name = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    meta = file_metadata(root, name, cache)
                except RpcError:
                    meta = {}
                meta.pop("filename", None)
                item.update(meta)
            out_files.append(item)
    usage = shutil.disk_usage(real_root)
    return {
        "dirs": dirs,
        "files": out_files,
        "disk_usage": {"total": usage.total, "used": usage.used, "free": usage.free},
        "root_info": {"name": root_name, "permissions": PERMS},
    }


@method("server.files.get_directory", ("GET", "/server/files/directory"))
async def get_directory(caller: Caller, args: Args) -> dict[str, Any]:
    path = args.get_str("path", "gcodes")
    extended = args.get_bool("extended", False)
    root_name, root, rel = split_root(caller, path)
    facade = caller.facade
    listing = await trio.to_thread.run_sync(
        _directory, root_name, root, rel, extended, facade.meta_cache
    )
    if extended and root_name == "gcodes":
        # The last print of each file, as Moonraker's history records it in the metadata.
        names = {
            f["filename"]: (f"{rel}/{f['filename']}" if rel else f["filename"])
            for f in listing["files"]
        }
        last = await facade.history.last_prints(list(names.values()))
        for item in listing["files"]:
            if "print_start_time" in item:
                item.update(last.get(names[item["filename"]], {}))
    return listing


def file_metadata(root: Path, name: str, cache: MetaCache | None = None) -> dict[str, Any]:
    """Moonraker's metadata of the G-code file ``name`` under ``root``. Blocking.

    Raises ``RpcError`` 404 (``Metadata not available``) for a file that is missing or
    not G-code, 400 for an illegal or escaping name.
    """
    try:
        path = files.resolve_gcode(root, name)
    except ValidationFailed:
        raise RpcError(404, f"Metadata not available for <{_safe(name)}>") from None
    except BadRequest as exc:
        raise RpcError(400, f"Invalid filename {_safe(name)}: {exc.message}") from None
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    found = cache.get(key) if cache is not None else None
    if found is not None:
        found["filename"] = name
        return found
    # The one parsed-metadata cache (services.files), warmed after start (daemon.py).
    meta = files.meta_of(path)
    out: dict[str, Any] = {
        "filename": name,
        "size": st.st_size,
        "modified": st.st_mtime,
        "print_start_time": None,
        "job_id": None,
        "thumbnails": thumbs.write_thumbnails(path, meta),
    }
    # Moonraker's names; a field the file does not state is omitted, as Moonraker does.
    for field in _META_FIELDS:
        if (value := getattr(meta, field)) is not None:
            out[field] = value
    if meta.filament_colors:
        out["filament_colors"] = list(meta.filament_colors)
    if cache is not None:
        cache.put(key, out)
    return out


_META_FIELDS = (
    "slicer",
    "slicer_version",
    "estimated_time",
    "filament_type",
    "filament_name",
    "filament_total",
    "filament_weight_total",
    "nozzle_diameter",
    "layer_height",
    "first_layer_height",
    "first_layer_extr_temp",
    "first_layer_bed_temp",
    "object_height",
)


@method("server.files.metadata", ("GET", "/server/files/metadata"))
async def metadata(caller: Caller, args: Args) -> dict[str, Any]:
    name = args.get_str("filename")
    facade = caller.facade
    meta = await trio.to_thread.run_sync(file_metadata, facade.gcodes_root, name, facade.meta_cache)
    meta.update((await facade.history.last_prints([name])).get(name, {}))
    return meta


@method("server.files.metascan", ("POST", "/server/files/metascan"))
async def metascan(caller: Caller, args: Args) -> dict[str, Any]:
    """Fluidd's "refresh metadata": the file read again (the cache keys on its size and
    modification time, so a changed file is never stale), then as ``metadata``."""
    result: dict[str, Any] = await metadata(caller, args)
    return result


def _delete(root: Path, rel: str) -> Path:
    if not rel:
        raise RpcError(400, "Invalid path")
    # The full path must resolve inside the root (a symlink out of it is refused), and
    # what is removed is the entry itself: a (contained) symlink is unlinked, not followed.
    resolve(root, rel, must_exist=False)
    parent_rel, _, leaf = rel.rpartition("/")
    parent = resolve(root, parent_rel) if parent_rel else root.resolve()
    target = parent / leaf
    if not os.path.lexists(target):
        raise RpcError(404, f"File {_safe(rel)} does not exist")
    if target.is_dir() and not target.is_symlink():
        raise RpcError(400, f"{_safe(rel)} is a directory")
    target.unlink()
    return target


@method("server.files.delete_file", ("DELETE", "/server/files/delete_file"))
async def delete_file(caller: Caller, args: Args) -> dict[str, Any]:
    path = args.get_str("path")
    root_name, root, rel = split_root(caller, path)
    try:
        await trio.to_thread.run_sync(_delete, root, rel)
    except BadRequest as exc:
        raise RpcError(400, f"Invalid path {_safe(rel)}: {exc.message}") from None
    item = {"path": rel, "root": root_name, "size": 0, "modified": 0.0, "permissions": ""}
    result = {"item": item, "action": "delete_file"}
    caller.facade.notify_filelist(result)
    return result
