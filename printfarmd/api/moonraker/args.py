"""Moonraker's argument conventions, pure.

HTTP arguments come from the query string first (``key:type`` hints: int, float,
bool, json), then the JSON body, which wins. Lists may be JSON arrays or
comma-separated strings; booleans JSON booleans or ``"true"``/``"false"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from printfarmd.api import jsonin
from printfarmd.api.errors import RpcError

#: Query keys that carry auth or cache-busting, never method arguments.
EXCLUDED_QUERY_KEYS = frozenset({"_", "token", "access_token", "connection_id"})


def parse_query(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Query-string pairs to arguments, applying ``key:type`` hints. Raises RpcError(400).

    ``json`` values go through the one client-JSON decoder (``jsonin``) and its limits.
    """
    out: dict[str, Any] = {}
    for key, value in pairs:
        name, _, hint = key.partition(":")
        if name in EXCLUDED_QUERY_KEYS:
            continue
        try:
            if hint == "int":
                out[name] = _int64(int(value), name)
            elif hint == "float":
                out[name] = _finite(float(value), name)
            elif hint == "bool":
                out[name] = _bool(value, name)
            elif hint == "json":
                out[name] = jsonin.decode(value)
            else:
                out[name] = value
        except jsonin.JsonRefused as exc:
            raise RpcError(400, f"Unable to convert argument: {name}: {exc.reason}") from None
        except ValueError:
            raise RpcError(400, f"Unable to convert argument: {name}") from None
    return out


def _int64(value: int, name: str) -> int:
    """``value`` if it fits a signed 64-bit integer (the JSON decoder's limit too)."""
    if not jsonin.INT_MIN <= value <= jsonin.INT_MAX:
        raise RpcError(400, f"Invalid argument: {name}, integer outside the signed 64-bit range")
    return value


def _finite(value: float, name: str) -> float:
    """``value`` unless it is inf or NaN (which ``float()`` accepts and JSON cannot hold)."""
    if not math.isfinite(value):
        raise RpcError(400, f"Invalid argument: {name}, expected a finite number")
    return value


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
            number = int(value)
        except ValueError:  # also a string of more than 4300 digits
            raise RpcError(400, f"Invalid Type for argument: {key}, expected int") from None
        return _int64(number, key)

    def get_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and key not in self.values:
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise RpcError(400, f"Invalid Type for argument: {key}, expected list")
