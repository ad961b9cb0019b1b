"""The config's full converter (cattrs): the errors of a config that is wrong.

``config.config_from_dict`` reads a valid config without this module (its quick reader,
issue 17: cattrs' import and its generated structuring code took ~45 ms of every start).
This converter is the authority: when the quick reader is not sure, cattrs reads the data
again and every problem is reported, one ``dotted.key: message`` per line.

The config classes are msgspec Structs (built without generated code, ~25 ms of every
start, issue 17), which cattrs does not structure. So cattrs reads the data into attrs
twins of them, made here from their fields (same names, types, defaults and order), and
the result is turned back into the config classes. The twins exist only on this path.
"""

from __future__ import annotations

import difflib
import enum
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import cattrs
import msgspec
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from printfarmd.config import (
    _PLURAL_NAMES,
    Config,
    _expected,
    _Invalid,
    _is_tuple,
    _join,
    _structure_bool,
    _structure_enum,
    _structure_float,
    _structure_int,
    _structure_str,
    is_config_class,
)
from printfarmd.errors import ConfigError


def structure(data: Mapping[str, Any]) -> Config:
    """``data`` as a ``Config``; ``ConfigError`` naming every problem cattrs finds, one
    ``dotted.key: message`` per line."""
    try:
        twin: object = CONVERTER.structure(dict(data), twin_of(Config))
    except (ClassValidationError, _Invalid) as exc:
        raise ConfigError("\n".join(_error_lines(exc, ""))) from exc
    return typing.cast(Config, _from_twin(twin))


_TWINS: dict[type, type] = {}


def twin_of(cls: type) -> type:
    """The attrs class cattrs reads in place of config class ``cls``: its fields in order,
    with the same types (config classes in them replaced by their twins) and defaults; its
    ``internal_keys`` marked ``internal`` (never read from TOML)."""
    twin = _TWINS.get(cls)
    if twin is None:
        internal: frozenset[str] = getattr(cls, "internal_keys", frozenset())
        these = {}
        for f in msgspec.structs.fields(cls):
            default: Any = attrs.NOTHING
            if f.default is not msgspec.NODEFAULT:
                default = f.default
            elif f.default_factory is not msgspec.NODEFAULT:
                default = attrs.Factory(f.default_factory)
            these[f.name] = attrs.field(
                type=_twin_type(f.type),
                default=default,
                metadata={"internal": True} if f.name in internal else {},
            )
        twin = _TWINS[cls] = attrs.make_class(cls.__name__, these, frozen=True, kw_only=True)
        twin.__qualname__ = f"twin of {cls.__qualname__}"
        _ORIGINALS[twin] = cls
    return twin


_ORIGINALS: dict[type, type] = {}


def _twin_type(tp: Any) -> Any:
    if is_config_class(tp):
        return twin_of(tp)
    if _is_tuple(tp):
        return tuple[tuple(_twin_type(arg) for arg in typing.get_args(tp))]  # type: ignore[misc]
    return tp


def _from_twin(value: Any) -> Any:
    """A value cattrs read, with every twin turned into its config class."""
    original = _ORIGINALS.get(type(value))
    if original is not None:
        return original(
            **{f.name: _from_twin(getattr(value, f.name)) for f in attrs.fields(type(value))}
        )
    if isinstance(value, tuple):
        return tuple(_from_twin(item) for item in value)
    return value


def _tuple_hook(tp: Any, converter: cattrs.Converter) -> Callable[[object, type], tuple[Any, ...]]:
    """Structure a TOML array into ``tuple[X, ...]`` or a fixed ``tuple[X, Y, Z]``.

    Only real arrays are accepted: cattrs would otherwise happily turn the string
    ``"PLA"`` into ``("P", "L", "A")``. Element errors carry the index as a note, so
    they read ``printers[0].bed_size[1]: ...``.
    """
    args = typing.get_args(tp)
    fixed: int | None
    if len(args) == 2 and args[1] is Ellipsis:
        fixed, element_types = None, [args[0]]
    else:
        fixed, element_types = len(args), list(args)
    plural = _PLURAL_NAMES.get(element_types[0], "values")

    def structure(value: object, _: type) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _expected("an array", value)
        if fixed is not None and len(value) != fixed:
            raise _Invalid(f"expected an array of {fixed} {plural}, got {len(value)} items")
        result: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            element_type = element_types[index] if fixed is not None else element_types[0]
            try:
                result.append(converter.structure(item, element_type))
            except Exception as exc:
                exc.add_note(IterableValidationNote(f"index {index}", index, element_type))
                errors.append(exc)
        if errors:
            raise IterableValidationError("invalid array", errors, tp)
        return tuple(result)

    return structure


def _internal_overrides(cls: type) -> dict[str, Any]:
    """Fields marked ``metadata={"internal": True}`` are never read from or written to TOML."""
    return {
        field.name: override(omit=True)
        for field in attrs.fields(cls)
        if field.metadata.get("internal")
    }


def _attrs_structure_hook(cls: type, converter: cattrs.Converter) -> Callable[[object, type], Any]:
    inner: Callable[[Mapping[str, Any], Any], Any] = make_dict_structure_fn(
        cls, converter, **_internal_overrides(cls)
    )

    def structure(value: object, _: type) -> Any:
        if not isinstance(value, dict):
            raise _expected("a table", value)
        return inner(value, cls)

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    # Registered on the StrEnum base, which singledispatch prefers to ``str`` for
    # subclasses: a StrEnum field must not fall through to the plain string hook.
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_structure_hook_factory(_is_tuple, _tuple_hook)
    converter.register_structure_hook_factory(attrs.has, _attrs_structure_hook)
    return converter


#: The one converter from TOML data to the config classes' twins.
CONVERTER = _make_converter()


def _settable_names(cls: type) -> list[str]:
    return [field.name for field in attrs.fields(cls) if not field.metadata.get("internal")]


def _error_lines(exc: BaseException, path: str) -> Iterator[str]:
    """Walk cattrs' exception groups and their notes into ``dotted.key: message`` lines."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, attribute_note in with_notes:
            yield from _error_lines(sub, _join(path, attribute_note.name))
        for sub in without:
            yield from _error_lines(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_index, without = exc.group_exceptions()
        for sub, index_note in with_index:
            yield from _error_lines(sub, f"{path}[{index_note.index}]")
        for sub in without:
            yield from _error_lines(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        allowed = _settable_names(exc.cl)
        for key in sorted(exc.extra_fields):
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield f"{_join(path, key)}: unknown key{hint}"
    elif isinstance(exc, KeyError):
        yield f"{path}: required"
    elif isinstance(exc, _Invalid):
        yield f"{path or '(top level)'}: {exc.message}"
    else:
        yield f"{path or '(top level)'}: invalid value ({exc})"
