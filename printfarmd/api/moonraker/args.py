"""Moonraker's argument conventions, pure.

HTTP arguments come from the query string first (``key:type`` hints: int, float,
bool, json), then the JSON body, which wins. Lists may be JSON arrays or
comma-separated strings; booleans JSON booleans or ``"true"``/``"false"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from printfarmd.api.errors import RpcError

#: Query keys that carry auth or cache-busting, never method arguments.
EXCLUDED_QUERY_KEYS = frozenset({"_", "token", "access_token", "connection_id"})


def parse_query(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Query-string pairs to arguments, applying ``key:type`` hints. Raises RpcError(400)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        name, _, hint = key.partition(":")
        if name in EXCLUDED_QUERY_KEYS:
            continue
        try:
            if hint == "int":
                out[name] = int(value)
            elif hint == "float":
                out[name] = float(value)
            elif hint == "bool":
                out[name] = _bool(value, name)
            elif hint == "json":
                out[name] = orjson.loads(value)
            else:
                out[name] = value
        except (ValueError, orjson.JSONDecodeError):
            raise RpcError(400, f"Unable to convert argument: {name}") from None
    return out


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise RpcError(400, f"Invalid Type for argument: {name}, expected bool")


class Args:
    """A method's arguments with Moonraker's typed getters."""

    _MISSING: Any = object()

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def _get(self, key: str, default: Any) -> Any:
        if key in self.values:
            return self.values[key]
        if default is Args._MISSING:
            raise RpcError(400, f"No data for argument: {key}")
        return default

    def get(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default)

    def get_str(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.values:
            return value
        if not isinstance(value, str):
            raise RpcError(400, f"Invalid Type for argument: {key}, expected str")
        return value

    def get_bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.values:
            return value
        return _bool(value, key)

    def get_int(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.values:
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise RpcError(400, f"Invalid Type for argument: {key}, expected int")
        try:
            return int(value)
        except ValueError:
            raise RpcError(400, f"Invalid Type for argument: {key}, expected int") from None

    def get_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.values:
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise RpcError(400, f"Invalid Type for argument: {key}, expected list")
