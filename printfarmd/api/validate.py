"""Request-body checks with messages that name the field. Raise ``BadRequest`` for a
wrong type or unknown field and ``ValidationFailed`` (422) for a value out of range.

The REST API's bodies are declared once as shapes (``api/shapes.py``) and parsed by
``api/contract.py``; these helpers are the same checks one field at a time (each is the
contract's ``Spec``), for code that has not moved to a shape yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from printfarmd.api import jsonin
from printfarmd.api.contract import Boolean, Integer, Limits, Number, NumberList, Text, TextList
from printfarmd.errors import BadRequest

_LIMITS = Limits()


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
    checked: str = Text(max_len).check(key, value, _LIMITS)
    return checked


def opt_int(body: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    checked: int = Integer(lo, hi).check(key, value, _LIMITS)
    return checked


def opt_num(body: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    checked: float = Number(lo, hi).check(key, value, _LIMITS)
    return checked


def opt_bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    checked: bool = Boolean().check(key, value, _LIMITS)
    return checked


def str_list(body: Mapping[str, Any], key: str, max_items: int, max_len: int) -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    checked: tuple[str, ...] = TextList(max_items, max_len).check(key, value, _LIMITS)
    return checked


def num_list(
    body: Mapping[str, Any], key: str, length: int, lo: float, hi: float
) -> tuple[float, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    checked: tuple[float, ...] = NumberList(lo, hi, exact=length).check(key, value, _LIMITS)
    return checked
