"""Typed, validated options.

Every component declares its options as a dataclass whose fields carry a type hint, a default and (through
:func:`option`) an allowed range or set of choices and a help text. :func:`build_options` turns a plain
mapping -- from YAML, from ``key=value`` strings on the command line, or from Python -- into an instance,
coercing strings to the declared type and refusing unknown keys, wrong types and out-of-range values with a
:class:`ConfigError` that names the dotted key and what is allowed.

Only a small, explicit set of types is understood (bool, int, float, str, ``Literal``, ``Optional``, tuples
and lists of those); anything else is a programming error, found by the tests that walk every registry.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping, Union, get_args, get_origin
from trainlab.errors import ConfigError  # noqa: F401  (defined there; imported from here too)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with validation metadata (``ge``/``gt``/``le``/``lt`` bounds and a help text)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def type_name(tp: Any) -> str:
    """A short human description of a type hint, used in error messages and ``trainlab list``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or none" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"{len(args)} comma-separated {type_name(args[0]) if args else 'values'}s"
    if origin is list:
        return f"a list of {type_name(args[0]) if args else 'values'}"
    return getattr(tp, "__name__", str(tp))


def _split_sequence(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        return [part.strip() for part in text.split(",") if part.strip()] if text else []
    raise TypeError


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the type hint ``tp`` or raise :class:`ConfigError` naming ``key``."""
    origin, args = get_origin(tp), get_args(tp)
    bad = ConfigError(key, f"expected {type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice).lower() == value.strip().lower()):
                return choice
        raise ConfigError(key, f"expected one of {', '.join(str(a) for a in args)}; got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    raise bad from None
                if number.is_integer():
                    return int(number)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip().replace("_", ""))
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(number):  # nan, inf and 1e99999 are never a meaningful setting
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin in (tuple, list):
        try:
            items = _split_sequence(value)
        except TypeError:
            raise bad from None
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ConfigError(key, f"expected {type_name(tp)}, got {value!r}")
            out = [coerce(f"{key}[{i}]", item, arg) for i, (item, arg) in enumerate(zip(items, args))]
        else:
            elem = args[0] if args else Any
            out = [coerce(f"{key}[{i}]", item, elem) for i, item in enumerate(items)]
        return tuple(out) if origin is tuple else out
    raise TypeError(f"{key}: option type {tp!r} is not supported by trainlab.config")


def check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Apply the ``ge``/``gt``/``le``/``lt`` bounds of :func:`option` to a number (elementwise for tuples)."""
    values = value if isinstance(value, (tuple, list)) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if isinstance(v, float) and math.isnan(v):
            raise ConfigError(key, "must be a number, got nan")
        for bound, ok, word in (
            ("ge", lambda x, b: x >= b, ">="),
            ("gt", lambda x, b: x > b, ">"),
            ("le", lambda x, b: x <= b, "<="),
            ("lt", lambda x, b: x < b, "<"),
        ):
            limit = meta.get(bound)
            if limit is not None and not ok(v, limit):
                raise ConfigError(key, f"must be {word} {limit}, got {value!r}")


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]  # resolve string annotations from `from __future__ import annotations`
        out[f.name] = f
    return out


def build_options(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Instantiate the options dataclass ``cls`` from ``values``, validating every key.

    ``prefix`` (e.g. ``"optimizer"``) is prepended to keys in error messages.
    """
    fields = fields_of(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            allowed = ", ".join(fields) or "(no options)"
            raise ConfigError(dotted, f"unknown key; allowed: {allowed}")
        f = fields[key]
        if isinstance(value, Mapping):
            raise ConfigError(dotted, f"expected {type_name(f.type)}, got a mapping")
        coerced = coerce(dotted, value, f.type)
        check_range(dotted, coerced, f.metadata)
        kwargs[key] = coerced
    instance = cls(**kwargs)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as err:
            if prefix and not err.key.startswith(prefix):
                raise ConfigError(f"{prefix}.{err.key}" if err.key else prefix, err.message) from None
            raise
    return instance


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and nested containers -> YAML/JSON-friendly builtins."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def describe_options(cls: type | None) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) rows for ``trainlab list`` and ``--help`` texts."""
    if cls is None:
        return []
    rows = []
    for name, f in fields_of(cls).items():
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        rows.append((name, type_name(f.type), default, f.metadata.get("help", "")))
    return rows
