"""Request-body checks with messages that name the field. Raise ``BadRequest`` for a
wrong type or unknown field and ``ValidationFailed`` (422) for a value out of range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from printfarmd.api import jsonin
from printfarmd.errors import BadRequest, ValidationFailed


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (empty body = ``{}``), through the
    one client-JSON decoder and its limits (``jsonin``); 400 naming what was wrong."""
    if not raw.strip():
        return {}
    try:
        value = jsonin.decode(raw)
    except jsonin.JsonRefused as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.reason}") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def only_fields(body: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field (allowed: {', '.join(allowed)})")


def opt_str(
    body: Mapping[str, Any], key: str, max_len: int, *, required: bool = False
) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key}: required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key}: expected a string")
    if len(value) > max_len:
        raise ValidationFailed(f"{key}: longer than {max_len} characters", field=key)
    if "\x00" in value:
        raise BadRequest(f"{key}: contains a NUL character")
    return value


def opt_int(body: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # JSON has one number type: 3.0 is the integer 3 (as JSON Schema says); 3.5 is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key}: expected an integer")
    if not lo <= value <= hi:
        raise ValidationFailed(f"{key}: must be between {lo} and {hi}", field=key)
    return value


def opt_num(body: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key}: expected a number")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValidationFailed(f"{key}: must be between {lo:g} and {hi:g}", field=key)
    return float(value)


def opt_bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRequest(f"{key}: expected true or false")
    return value


def str_list(body: Mapping[str, Any], key: str, max_items: int, max_len: int) -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key}: expected a list of strings")
    if len(value) > max_items:
        raise ValidationFailed(f"{key}: more than {max_items} items", field=key)
    for v in value:
        if not v or len(v) > max_len:
            raise ValidationFailed(f"{key}: each item must be 1 to {max_len} characters", field=key)
    return tuple(value)


def num_list(
    body: Mapping[str, Any], key: str, length: int, lo: float, hi: float
) -> tuple[float, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise BadRequest(f"{key}: expected a list of {length} numbers")
    if not all(math.isfinite(v) and lo <= v <= hi for v in value):
        raise ValidationFailed(f"{key}: each value must be between {lo:g} and {hi:g}", field=key)
    return tuple(float(v) for v in value)
