"""``server.*`` (info, config, identify, gcode store, database), ``machine.*``,
``access.*`` and the ``printer.*`` objects of the farm's virtual printer (see
docs/moonraker-compat.md).

The farm presents itself as one Klipper printer that is always ``ready`` and in
``standby``: the real printing happens on the farm's printers, which this API does not
expose one by one. That keeps Mainsail's dashboard queue visible and its Start enabled.
Its objects are ``webhooks``, ``print_stats``, ``virtual_sdcard``, ``display_status``
and ``system_stats`` (the host's load, pushed once a second to subscribers); there is no
``toolhead``, ``gcode_move``, ``extruder`` or ``configfile``, so the UIs offer no
temperature, extruder or bed-mesh controls. ``gcode.commands`` lists the farm console's
commands (``console.py``).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from typing import Any

from quart import has_request_context, has_websocket_context, request, websocket

from printfarmd import __version__, faults
from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker import console
from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.facade import MOONRAKER_VERSION
from printfarmd.api.moonraker.rpc import Caller, method

#: Components we implement (and only those: clients call more APIs per component).
COMPONENTS = (
    "database",
    "file_manager",
    "history",
    "job_queue",
    "machine",
    "webcam",
    "data_store",
    "klippy_apis",
)
MAX_NAMESPACE = 64
MAX_DB_VALUE_BYTES = 256 * 1024
#: Most parts in a database key ("a.b.c" is 3). Values are at most 32 levels deep (the
#: JSON decoder's limit), so a namespace stays under 16 + 32 levels: far below the 255 at
#: which orjson refuses to encode it (found by fuzzing: a 300-part key was a 500).
MAX_KEY_PARTS = 16


@method("server.info", ("GET", "/server/info"))
async def server_info(caller: Caller, args: Args) -> dict[str, Any]:
    faults.point("server-info")  # S15: a forced 500 (tests only)
    return {
        "klippy_connected": True,
        "klippy_state": "ready",
        # issue 16: the spool panels appear when Spoolman is configured
        "components": [*COMPONENTS, *(["spoolman"] if caller.facade.svc.spoolman else [])],
        "failed_components": [],
        "registered_directories": list(caller.facade.roots()),
        "warnings": [],
        "websocket_count": len(caller.facade.connections),
        "moonraker_version": MOONRAKER_VERSION,
        "missing_klippy_requirements": [],
        "api_version": [1, 5, 0],
        "api_version_string": "1.5.0",
    }


@method("server.config", ("GET", "/server/config"))
async def server_config(caller: Caller, args: Args) -> dict[str, Any]:
    server = caller.facade.svc.config.server
    cfg = {
        "server": {
            "host": server.host,
            "port": server.port,
            "ssl_port": 7130,
            "max_upload_size": server.max_upload_bytes // (1024 * 1024),
        },
        "file_manager": {"queue_gcode_uploads": True, "enable_object_processing": False},
        "job_queue": {
            "load_on_startup": not caller.facade.svc.config.scheduler.dispatch_paused,
            "automatic_transition": True,
            "job_transition_delay": 0.0,
            "job_transition_gcode": "",
        },
    }
    return {"config": cfg, "orig": cfg, "files": []}


@method("server.connection.identify", public=True)
async def identify(caller: Caller, args: Args) -> dict[str, Any]:
    conn = caller.connection
    if conn is None:
        raise RpcError(400, "identify is only available over the websocket")
    for key in ("client_name", "version", "type", "url"):
        value = args.get(key, "")
        if not isinstance(value, str) or len(value) > 256:
            raise RpcError(400, f"Invalid Type for argument: {key}, expected str")
    if not conn.authenticated:
        api_key = args.get("api_key", None)
        token = args.get("access_token", None)
        access = caller.facade.svc.access
        if access.throttle.wait_for(caller.peer) > 0 and not access.throttle.exempt(caller.peer):
            raise RpcError(429, "Too many wrong API keys from this address")
        # Moonraker clients send the key as api_key, or as access_token (a key or a token).
        presented = api_key if isinstance(api_key, str) else None
        if presented is None and isinstance(token, str) and access.key_matches(token):
            presented = token
        oneshot = token if isinstance(token, str) and presented is not token else None
        if access.check_credential(caller.peer, key=presented, token=oneshot):
            conn.authenticated = True
        else:
            raise RpcError(401, "Unauthorized")
    conn.client_name = str(args.get("client_name", ""))
    conn.identified = True  # from now on it gets notify_proc_stat_update every second
    return {"connection_id": conn.id}


@method("server.websocket.id")
@method("server.connection.id")
async def connection_id(caller: Caller, args: Args) -> dict[str, Any]:
    conn = caller.connection
    return {"websocket_id": conn.id if conn else None}


@method("server.gcode_store", ("GET", "/server/gcode_store"))
async def gcode_store(caller: Caller, args: Args) -> dict[str, Any]:
    """The farm console's recent lines (commands and responses), oldest first."""
    count = args.get_int("count", len(caller.facade.gcode_store))
    lines = list(caller.facade.gcode_store)
    return {"gcode_store": lines[-count:] if count > 0 else []}


@method("server.temperature_store", ("GET", "/server/temperature_store"))
async def temperature_store(caller: Caller, args: Args) -> dict[str, Any]:
    return {}


# ---------------------------------------------------------------- machine


@method("machine.system_info", ("GET", "/machine/system_info"))
async def system_info(caller: Caller, args: Args) -> dict[str, Any]:
    return {
        "system_info": {
            "python": {"version": list(sys.version_info[:5]), "version_string": sys.version},
            "cpu_info": {
                "cpu_count": os.cpu_count(),
                "bits": platform.architecture()[0],
                "processor": platform.machine(),
                "cpu_desc": "",
                "serial_number": "",
                "hardware_desc": "",
                "model": "",
                "total_memory": None,
                "memory_units": "kB",
            },
            "sd_info": {},
            "distribution": {"name": platform.system(), "id": "", "version": platform.release()},
            "available_services": [],
            "instance_ids": {"moonraker": "printfarmd", "klipper": "printfarmd"},
            "service_state": {},
            "virtualization": {"virt_type": "none", "virt_identifier": "none"},
            "network": {},
            "canbus": {},
        }
    }


@method("machine.proc_stats", ("GET", "/machine/proc_stats"))
async def proc_stats(caller: Caller, args: Args) -> dict[str, Any]:
    facade = caller.facade
    await facade.procstats.sample()
    return facade.procstats.response(len(facade.connections), facade.started)


# ---------------------------------------------------------------- access


@method("access.oneshot_token", ("GET", "/access/oneshot_token"))
async def oneshot_token(caller: Caller, args: Args) -> str:
    return caller.facade.tokens.issue(caller.peer or "")


def _request_host() -> str | None:
    """The ``Host`` the current HTTP request or websocket was sent to."""
    if has_request_context():
        return request.headers.get("Host")
    if has_websocket_context():
        return websocket.headers.get("Host")
    return None


@method("access.info", ("GET", "/access/info"), public=True)
async def access_info(caller: Caller, args: Args) -> dict[str, Any]:
    return {
        "default_source": "moonraker",
        "available_sources": ["moonraker"],
        "login_required": False,
        "trusted": caller.facade.svc.access.trusted(caller.peer, _request_host()),
    }


# ---------------------------------------------------------------- virtual printer


def _printer_status(caller: Caller) -> dict[str, dict[str, Any]]:
    return {
        "webhooks": {"state": "ready", "state_message": "printfarmd farm queue"},
        "print_stats": {
            "filename": "",
            "total_duration": 0.0,
            "print_duration": 0.0,
            "filament_used": 0.0,
            "state": "standby",
            "message": "",
            "info": {"total_layer": None, "current_layer": None},
        },
        "virtual_sdcard": {
            "file_path": None,
            "progress": 0.0,
            "is_active": False,
            "file_position": 0,
            "file_size": 0,
        },
        "display_status": {"progress": 0.0, "message": None},
        "system_stats": caller.facade.procstats.system_stats(),
        "gcode": {"commands": console.gcode_commands()},
    }


@method("printer.info", ("GET", "/printer/info"))
async def printer_info(caller: Caller, args: Args) -> dict[str, Any]:
    return {
        "state": "ready",
        "state_message": "printfarmd farm queue (virtual printer)",
        "hostname": socket.gethostname(),
        "software_version": f"printfarmd-{__version__}",
        "cpu_info": "",
        "app": "printfarmd",
        "klipper_path": "",
        "python_path": "",
        "log_file": "",
        "config_file": "",
    }


@method("printer.objects.list", ("GET", "/printer/objects/list"))
async def objects_list(caller: Caller, args: Args) -> dict[str, Any]:
    return {"objects": [k for k in _printer_status(caller) if k != "gcode"]}


def _select(caller: Caller, args: Args) -> dict[str, Any]:
    wanted = args.get("objects", {})
    if not isinstance(wanted, dict):
        raise RpcError(400, "Invalid Type for argument: objects, expected dict")
    status = _printer_status(caller)
    out: dict[str, Any] = {}
    for name, fields in wanted.items():
        if name not in status:
            continue
        obj = status[name]
        if isinstance(fields, list):
            obj = {k: v for k, v in obj.items() if k in fields}
        out[name] = obj
    return {"eventtime": time.monotonic(), "status": out}


@method("printer.objects.query", ("POST", "/printer/objects/query"))
async def objects_query(caller: Caller, args: Args) -> dict[str, Any]:
    return _select(caller, args)


@method("printer.objects.subscribe", ("POST", "/printer/objects/subscribe"))
async def objects_subscribe(caller: Caller, args: Args) -> dict[str, Any]:
    # Only ``system_stats`` changes (once a second): it is pushed to this websocket
    # while it is subscribed. A new subscription replaces the old one, as in Moonraker.
    result = _select(caller, args)
    if caller.connection is not None:
        caller.connection.subscribed = set(result["status"])
    return result


# ---------------------------------------------------------------- database


def _namespace(args: Args) -> str:
    ns = args.get_str("namespace")
    if not ns or len(ns) > MAX_NAMESPACE or not ns.isprintable():
        raise RpcError(400, "Invalid namespace")
    return str(ns)


def _key_path(args: Args, required: bool) -> list[str] | None:
    key = args.get("key", None)
    if key is None:
        if required:
            raise RpcError(400, "No data for argument: key")
        return None
    if isinstance(key, list) and all(isinstance(k, str) and k for k in key):
        parts = list(key)
    elif isinstance(key, str) and key and all(key.split(".")):
        parts = key.split(".")
    else:
        raise RpcError(400, f"Invalid key: {str(key)[:100]}")
    if len(parts) > MAX_KEY_PARTS:
        raise RpcError(400, f"Invalid key: more than {MAX_KEY_PARTS} parts")
    return parts


def _dig(value: Any, path: list[str], ns: str) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise RpcError(404, f"Key '{'.'.join(path)}' in namespace '{ns}' not found")
        value = value[part]
    return value


@method("server.database.list", ("GET", "/server/database/list"))
async def db_list(caller: Caller, args: Args) -> dict[str, Any]:
    return {"namespaces": sorted(await caller.facade.database()), "backups": []}


@method("server.database.get_item", ("GET", "/server/database/item"))
async def db_get(caller: Caller, args: Args) -> dict[str, Any]:
    ns = _namespace(args)
    path = _key_path(args, required=False)
    db = await caller.facade.database()
    if ns not in db:
        raise RpcError(404, f"Namespace {ns} not found")
    value = db[ns] if path is None else _dig(db[ns], path, ns)
    return {"namespace": ns, "key": args.get("key", None), "value": value}


@method("server.database.post_item", ("POST", "/server/database/item"))
async def db_post(caller: Caller, args: Args) -> dict[str, Any]:
    import copy

    import orjson

    ns = _namespace(args)
    path = _key_path(args, required=True)
    assert path is not None
    value = args.get("value")
    if len(orjson.dumps(value)) > MAX_DB_VALUE_BYTES:
        raise RpcError(413, "Value too large")
    async with caller.facade.db_lock:
        db = await caller.facade.database()
        data = copy.deepcopy(db.get(ns, {}))
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        await caller.facade.save_namespace(ns, data)
    return {"namespace": ns, "key": args.get("key"), "value": value}


@method("server.database.delete_item", ("DELETE", "/server/database/item"))
async def db_delete(caller: Caller, args: Args) -> dict[str, Any]:
    import copy

    ns = _namespace(args)
    path = _key_path(args, required=True)
    assert path is not None
    async with caller.facade.db_lock:
        db = await caller.facade.database()
        if ns not in db:
            raise RpcError(404, f"Namespace {ns} not found")
        data = copy.deepcopy(db[ns])
        parent = _dig(data, path[:-1], ns)
        if not isinstance(parent, dict) or path[-1] not in parent:
            raise RpcError(404, f"Key '{'.'.join(path)}' in namespace '{ns}' not found")
        value = parent.pop(path[-1])
        await caller.facade.save_namespace(ns, data)
    return {"namespace": ns, "key": args.get("key"), "value": value}
