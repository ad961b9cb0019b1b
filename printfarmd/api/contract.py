"""The REST API's one typed contract (issue 17): each request body and each response
object is declared once, here, and validation, serialization and the OpenAPI document
(``api/openapi.py``) are all made from that declaration.

- A **request body** is a frozen ``Shape`` (a msgspec Struct, registered by ``@shape``)
  whose fields carry a ``Spec`` (``field``); ``parse(Shape, body, limits)`` checks a
  decoded JSON object against it and returns the typed value, ``request_schema(Shape,
  limits)`` is its JSON Schema. Unknown fields are refused (400). A wrong type, a missing
  required field, a NUL character: 400 ``bad_request``; a value out of range: 422
  ``validation_failed`` with ``field``. A ``null`` means "not given" (documented as
  nullable) unless the field says otherwise.
- A **response object** is an ``Out`` table: per property its JSON Schema and how to
  read it from the domain value; ``Out.dump(value)`` is the JSON-able dict,
  ``Out.schema()`` the component. A property can only be sent if it is declared.

Why checks of our own (not msgspec's typed decoding or quart-schema): the request path
keeps its exact error messages and the 400/422 split the API documents, bounds that come
from the config (``scheduler.max_priority``), and no new dependency or import at start;
the cost is a few microseconds per body (``bench/bench_security.py`` measures it against
the old hand-written checks), against ~2 ms for a job creation.

Declaring a new route: a request shape here (or reuse one), ``parse`` it in the view
(``await body_of(Shape)``), and one entry in ``openapi.PATHS`` built with
``openapi.operation(summary, ok=..., body=Shape)``; ``tests/test_contract.py`` then
checks the handler against the document field by field.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from printfarmd.errors import BadRequest, ValidationFailed

T = TypeVar("T")

#: Request strings never carry NUL.
NO_NUL = "^[^\\u0000]*$"


class Limits(msgspec.Struct, frozen=True):
    """Bounds that come from the config, not from the code."""

    max_priority: int = 100


#: A bound: a number, or read from the ``Limits`` of the request.
Bound = int | float | Callable[[Limits], int | float]


def _bound(b: Bound, limits: Limits) -> Any:
    return b(limits) if callable(b) else b


# ---------------------------------------------------------------- value specs


class Spec(msgspec.Struct, frozen=True):
    """What one JSON value must be: ``check`` converts or raises, ``schema`` documents."""

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        raise NotImplementedError

    def schema(self, limits: Limits) -> dict[str, Any]:
        raise NotImplementedError

    def example(self, limits: Limits) -> Any:
        """A valid value (for the contract test)."""
        raise NotImplementedError


class Text(Spec, frozen=True):
    """A string of at most ``max_len`` characters, no NUL. ``pattern`` (with the message
    ``mismatch``) is checked (422); ``doc`` replaces the documented schema (the handler
    may judge more, e.g. file names by the containment check)."""

    max_len: int
    min_len: int = 0
    upper: bool = False
    pattern: str | None = None
    mismatch: str = ""
    doc: Mapping[str, Any] | None = None
    sample: str = "x"

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if not isinstance(value, str):
            raise BadRequest(f"{key}: expected a string")
        if len(value) > self.max_len:
            raise ValidationFailed(f"{key}: longer than {self.max_len} characters", field=key)
        if "\x00" in value:
            raise BadRequest(f"{key}: contains a NUL character")
        if self.pattern is not None and not _matches(self.pattern, value):
            raise ValidationFailed(f"{key}: {self.mismatch}", field=key)
        return value.upper() if self.upper else value

    def schema(self, limits: Limits) -> dict[str, Any]:
        if self.doc is not None:
            return dict(self.doc)
        out: dict[str, Any] = {"type": "string", "pattern": self.pattern or NO_NUL}
        if self.min_len:
            out["minLength"] = self.min_len
        out["maxLength"] = self.max_len
        return out

    def example(self, limits: Limits) -> Any:
        return self.sample


def _matches(pattern: str, value: str) -> bool:
    return re.search(pattern, value) is not None


class Integer(Spec, frozen=True):
    """An integer in ``[lo, hi]``; JSON has one number type, so ``3.0`` is the integer 3
    (as JSON Schema says) and ``3.5`` is not."""

    lo: Bound
    hi: Bound

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{key}: expected an integer")
        lo, hi = _bound(self.lo, limits), _bound(self.hi, limits)
        if not lo <= value <= hi:
            raise ValidationFailed(f"{key}: must be between {lo} and {hi}", field=key)
        return value

    def schema(self, limits: Limits) -> dict[str, Any]:
        return {
            "type": "integer",
            "minimum": _bound(self.lo, limits),
            "maximum": _bound(self.hi, limits),
        }

    def example(self, limits: Limits) -> Any:
        return _bound(self.lo, limits)


class Number(Spec, frozen=True):
    """A finite number in ``[lo, hi]``."""

    lo: float
    hi: float

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"{key}: expected a number")
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise ValidationFailed(f"{key}: must be between {self.lo:g} and {self.hi:g}", field=key)
        return float(value)

    def schema(self, limits: Limits) -> dict[str, Any]:
        return {"type": "number", "minimum": _num(self.lo), "maximum": _num(self.hi)}

    def example(self, limits: Limits) -> Any:
        return self.hi


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


class Boolean(Spec, frozen=True):
    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if not isinstance(value, bool):
            raise BadRequest(f"{key}: expected true or false")
        return value

    def schema(self, limits: Limits) -> dict[str, Any]:
        return {"type": "boolean"}

    def example(self, limits: Limits) -> Any:
        return True


#: Latest time a request may name (Unix seconds): about the year 5138.
MAX_UNIX_TIME = 1e11
_TIME_TYPE = "expected Unix seconds or an ISO-8601 time"


def iso_seconds(text: str) -> float | None:
    """ISO-8601 text (``Z`` or an offset; naive means UTC) as Unix seconds; ``None`` when
    it is not a time. Bodies (``Time``) and query filters (``api/history.py``) read times
    with it."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


class Time(Spec, frozen=True):
    """A UTC time: Unix seconds (a number) or ISO-8601 (``Z`` or an offset; naive means
    UTC), as Unix seconds. 400 for another type or an unreadable text, 422 out of range."""

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if isinstance(value, bool):
            raise BadRequest(f"{key}: {_TIME_TYPE}")
        if isinstance(value, int | float):
            stamp = float(value)
        elif isinstance(value, str):
            if len(value) > 64:
                raise ValidationFailed(f"{key}: longer than 64 characters", field=key)
            read = iso_seconds(value)
            if read is None:
                raise BadRequest(f"{key}: {_TIME_TYPE}")
            stamp = read
        else:
            raise BadRequest(f"{key}: {_TIME_TYPE}")
        if not math.isfinite(stamp) or not 0 <= stamp <= MAX_UNIX_TIME:
            raise ValidationFailed(f"{key}: must be between 1970 and the year 5138", field=key)
        return stamp

    def schema(self, limits: Limits) -> dict[str, Any]:
        # Documented as Unix seconds: an ISO-8601 text is accepted too (the description
        # says so), but no pattern states exactly what Python's ISO parser takes.
        return {
            "type": "number",
            "minimum": 0,
            "maximum": _num(MAX_UNIX_TIME),
            "description": "Unix seconds (an ISO-8601 text such as 2026-07-01T22:00:00Z "
            "is accepted too)",
        }

    def example(self, limits: Limits) -> Any:
        return 1782943200  # 2026-07-01T22:00:00Z


class TextList(Spec, frozen=True):
    """At most ``max_items`` strings of 1 to ``item_max`` characters, no NUL."""

    max_items: int
    item_max: int

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{key}: expected a list of strings")
        if len(value) > self.max_items:
            raise ValidationFailed(f"{key}: more than {self.max_items} items", field=key)
        for v in value:
            if not v or len(v) > self.item_max:
                raise ValidationFailed(
                    f"{key}: each item must be 1 to {self.item_max} characters", field=key
                )
            if "\x00" in v:
                raise BadRequest(f"{key}: contains a NUL character")
        return tuple(value)

    def schema(self, limits: Limits) -> dict[str, Any]:
        item = {"type": "string", "pattern": NO_NUL, "minLength": 1, "maxLength": self.item_max}
        return {"type": "array", "items": item, "maxItems": self.max_items}

    def example(self, limits: Limits) -> Any:
        return ["x"]


class NumberList(Spec, frozen=True):
    """Numbers in ``[lo, hi]``: exactly ``exact`` of them (a point: ``min_bed``), or 1 to
    ``max_items`` (a series: ``retry_backoff``)."""

    lo: float
    hi: float
    exact: int | None = None
    max_items: int = 0

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if self.exact is not None:
            if (
                not isinstance(value, list)
                or len(value) != self.exact
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            ):
                raise BadRequest(f"{key}: expected a list of {self.exact} numbers")
            if not all(math.isfinite(v) and self.lo <= v <= self.hi for v in value):
                raise ValidationFailed(
                    f"{key}: each value must be between {self.lo:g} and {self.hi:g}", field=key
                )
            return tuple(float(v) for v in value)
        if not isinstance(value, list) or not value or any(v is None for v in value):
            raise BadRequest(f"{key}: expected a non-empty list of seconds")
        item = Number(self.lo, self.hi)
        out = tuple(item.check(key, v, limits) for v in value[: self.max_items])
        if len(value) > self.max_items:
            raise ValidationFailed(f"{key}: at most {self.max_items} values", field=key)
        return out

    def schema(self, limits: Limits) -> dict[str, Any]:
        items = {"type": "number", "minimum": _num(self.lo), "maximum": _num(self.hi)}
        if self.exact is not None:
            return {"type": "array", "items": items, "minItems": self.exact, "maxItems": self.exact}
        return {"type": "array", "items": items, "minItems": 1, "maxItems": self.max_items}

    def example(self, limits: Limits) -> Any:
        return [self.lo] * (self.exact or 1)


# ---------------------------------------------------------------- request shapes


class Field(msgspec.Struct, frozen=True):
    name: str
    spec: Spec
    required: bool
    #: ``null`` is refused (400) instead of read as "not given".
    no_null: bool
    #: The 400 message when it is missing ("required" when empty).
    missing: str
    #: A blank string counts as missing.
    blank_is_missing: bool
    description: str
    #: ``null`` is a value (e.g. "unbind"): it is given, and satisfies ``required``.
    null_is_value: bool = False


class Shape(msgspec.Struct, frozen=True, kw_only=True):
    """The base of the request shapes: ``class X(Shape, frozen=True, kw_only=True)``
    (msgspec applies ``kw_only`` per class), decorated with ``@shape``, every field a
    ``field``."""


S = TypeVar("S", bound=type[Shape])

#: The ``Field`` rows of the class being defined, in the order its body calls ``field``
#: (``shape`` takes them; a class body runs at once, on one thread).
_PENDING: list[tuple[Any, ...]] = []


def field(
    spec: Spec,
    *,
    required: bool = False,
    default: Any = None,
    no_null: bool = False,
    missing: str = "",
    blank_is_missing: bool = False,
    description: str = "",
    null_is_value: bool = False,
) -> Any:
    """A field of a request shape, carrying its ``Spec`` (the class must be decorated
    with ``shape``)."""
    row = (spec, required, no_null, missing, blank_is_missing, description, null_is_value)
    _PENDING.append(row)
    if required:
        return msgspec.field()
    return msgspec.field(default=default)


def shape(cls: S) -> S:
    """Register request shape ``cls``: its fields' specs, in declaration order. Every
    field must be declared with ``field`` (raises ``TypeError`` otherwise)."""
    rows = tuple(_PENDING)
    _PENDING.clear()
    names = cls.__struct_fields__
    if len(rows) != len(names):
        raise TypeError(f"{cls.__name__}: every field of a request shape needs field(spec)")
    _FIELDS[cls] = tuple(Field(name, *row) for name, row in zip(names, rows, strict=True))
    return cls


def fields_of(cls: type[Any]) -> tuple[Field, ...]:
    """The declared fields of request shape ``cls``, in declaration order."""
    return _FIELDS[cls]


_FIELDS: dict[type[Any], tuple[Field, ...]] = {}


DEFAULT_LIMITS = Limits()


def parse(shape: type[T], body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> T:
    """``body`` (a decoded JSON object) as a ``shape``; raises ``BadRequest`` (400) or
    ``ValidationFailed`` (422) naming the first field that is wrong."""
    fields = fields_of(shape)
    names = [f.name for f in fields]
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field (allowed: {', '.join(names)})")
    values: dict[str, Any] = {}
    for f in fields:
        value = body.get(f.name)
        if value is None and f.null_is_value and f.name in body:
            values[f.name] = None
            continue
        if value is None and f.no_null and f.name in body:
            raise BadRequest(f"{f.name}: null is not a value (leave the field out instead)")
        if value is None or (f.blank_is_missing and value == ""):
            if f.required:
                raise BadRequest(f"{f.name}: {f.missing or 'required'}")
            continue
        values[f.name] = f.spec.check(f.name, value, limits)
    return shape(**values)


def given(value: Any, name: str) -> bool:
    """Whether field ``name`` of a parsed request shape was given (not its default)."""
    return bool(getattr(value, name) is not None)


def request_schema(shape: type[Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The JSON Schema of request shape ``shape`` (no other properties allowed)."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in fields_of(shape):
        schema = f.spec.schema(limits)
        if (not f.required and not f.no_null) or f.null_is_value:
            schema = nullable(schema)
        if f.description:
            schema["description"] = f.description
        props[f.name] = schema
        if f.required:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if required:
        out["required"] = required
    out["properties"] = props
    # A shape whose fields go together in alternatives (``Maintenance``) says so.
    out.update(getattr(shape, "SCHEMA_EXTRA", {}))
    return out


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also admits ``null`` (read as "not given")."""
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        out["type"] = [*kind, "null"]
    return out


def example_body(shape: type[Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A body that gives every field of ``shape`` a valid value."""
    return {f.name: f.spec.example(limits) for f in fields_of(shape)}


# ---------------------------------------------------------------- response objects


class Prop(msgspec.Struct, frozen=True):
    """One property of a response object: its schema, how to read it, whether it is
    always present."""

    name: str
    schema: Mapping[str, Any]
    #: ``None``: the view adds it (from more than the domain value, e.g. a job's cost):
    #: documented here, not made by ``dump``.
    read: Callable[[Any], Any] | None
    required: bool = False


class Out:
    """A response object: the properties it may have, each declared once."""

    def __init__(self, name: str, props: Sequence[Prop]) -> None:
        self.name = name
        self.props = tuple(props)
        self._pairs = tuple((p.name, p.read) for p in self.props if p.read is not None)

    def dump(self, value: Any) -> dict[str, Any]:
        """``value`` as the JSON-able dict the API sends."""
        return {name: read(value) for name, read in self._pairs}

    def schema(self) -> dict[str, Any]:
        required = [p.name for p in self.props if p.required]
        out: dict[str, Any] = {"type": "object"}
        if required:
            out["required"] = required
        out["properties"] = {p.name: dict(p.schema) for p in self.props}
        return out
