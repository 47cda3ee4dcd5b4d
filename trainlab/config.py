"""Typed, validated options.

Every component declares its options as a dataclass whose fields carry a type hint, a default and (through
:func:`option`) an allowed range or set of choices and a help text. :func:`build_options` turns a plain
mapping -- from YAML, from ``key=value`` strings on the command line, or from Python -- into an instance,
coercing strings to the declared type and refusing unknown keys, wrong types and out-of-range values with a
:class:`ConfigError` that names the dotted key and what is allowed.

Only a small, explicit set of types is understood (bool, int, float, str, ``Literal``, ``Optional``, tuples
and lists of those); anything else is a programming error, found by the tests that walk every registry.
Integers are 64-bit, seeds (:func:`seed_option`) 32-bit, floats finite.

The files a user names -- a YAML config or submission, a text file -- are read here too, within bounds
(:func:`load_yaml_file`, :func:`read_user_bytes`): regular files only, a size limit, and YAML without tags,
alias bombs or deep nesting; every refusal is one line naming the file and the limit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import types
import typing
from typing import IO, Any, Callable, Literal, Mapping, Union, get_args, get_origin

import yaml

from trainlab.errors import ConfigError, UserError, quote_path, shorten

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}
_DECIMAL = re.compile(r"[+-]?[0-9]+")

#: Integer options are 64-bit: torch and NumPy hold them so, and a larger one fails inside them with a traceback.
INT_LIMIT = 2**63
#: Seeds are 32-bit: NumPy's generators take no more, and the trainer derives per-epoch seeds from its seed
#: (``seed * 1_000_003 + epoch``) that must still fit the 64 bits ``torch.Generator.manual_seed`` takes.
SEED_MAX = 2**32 - 1


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


def seed_option(default: int = 0, *, help: str) -> Any:
    """A seed option: an integer from 0 to :data:`SEED_MAX`."""
    return option(default, ge=0, le=SEED_MAX, help=help)


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


class _Unrepresentable(ConfigError):
    """A value of the option's type that no option holds (past 64 bits, not finite): said as such even where the
    option also takes another type (``steps``: an int or none)."""


def _expected(key: str, tp: Any, value: Any) -> ConfigError:
    """The error for ``value`` that is not a ``tp``; ``value`` is shown shortened (it can be huge)."""
    return ConfigError(key, f"expected {type_name(tp)}, got {shorten(value)}")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the type hint ``tp`` or raise :class:`ConfigError` naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(key, value, tp)
    if origin is Literal:
        return _coerce_literal(key, value, get_args(tp))
    if origin in (tuple, list):
        return _coerce_sequence(key, value, tp)
    if tp not in _SCALARS:
        raise TypeError(f"{key}: option type {tp!r} is not supported by trainlab.config")
    return _SCALARS[tp](key, value)


def _coerce_union(key: str, value: Any, tp: Any) -> Any:
    args = get_args(tp)
    if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    specific: ConfigError | None = None  # why the value fits none of the types, when one says more than "expected"
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(key, value, arg)
        except _Unrepresentable as err:
            specific = err
        except ConfigError:
            continue
    raise specific or _expected(key, tp, value)


def _coerce_literal(key: str, value: Any, choices: tuple[Any, ...]) -> Any:
    for choice in choices:
        if value == choice or (isinstance(value, str) and str(choice).lower() == value.strip().lower()):
            return choice
    raise ConfigError(key, f"expected one of {', '.join(str(a) for a in choices)}; got {shorten(value)}")


def _coerce_sequence(key: str, value: Any, tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    try:
        items = _split_sequence(value)
    except TypeError:
        raise _expected(key, tp, value) from None
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _expected(key, tp, value)
        out = [coerce(f"{key}[{i}]", item, arg) for i, (item, arg) in enumerate(zip(items, args))]
    else:
        elem = args[0] if args else Any
        out = [coerce(f"{key}[{i}]", item, elem) for i, item in enumerate(items)]
    return tuple(out) if origin is tuple else out


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _expected(key, bool, value)


def _to_int(key: str, value: Any) -> int:
    number = _parse_int(key, value)
    if not -INT_LIMIT <= number < INT_LIMIT:
        raise _too_large(key, value)
    return number


def _parse_int(key: str, value: Any) -> int:
    """``value`` as an integer: an int, an integral float, or a string of either (``1_000``, ``1e6``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        raise _expected(key, int, value)
    text = value.strip().replace("_", "")
    if _DECIMAL.fullmatch(text) and len(text.lstrip("+-")) > 19:  # int() refuses > 4300 digits, and is slow
        raise _too_large(key, value)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise _expected(key, int, value) from None
    if not number.is_integer():  # also nan and inf
        raise _expected(key, int, value)
    return int(number)


def _too_large(key: str, value: Any) -> ConfigError:
    return _Unrepresentable(key, f"must be between -2**63 and 2**63 - 1 (64-bit integers), got {shorten(value)}")


def _not_finite(key: str, value: Any) -> ConfigError:
    return _Unrepresentable(key, f"expected a finite number, got {shorten(value)}")


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _expected(key, float, value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond 1.8e308
            raise _not_finite(key, value) from None
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace("_", ""))
        except ValueError:
            raise _expected(key, float, value) from None
    else:
        raise _expected(key, float, value)
    if not math.isfinite(number):  # nan, inf and 1e99999 are never a meaningful setting
        raise _not_finite(key, value)
    return number


def _to_str(key: str, value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _expected(key, str, value)


_SCALARS: dict[Any, Callable[[str, Any], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


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
                raise ConfigError(key, f"must be {word} {limit}, got {shorten(value)}")


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


# ---------------------------------------------------------------------------------------------------------
# Files the user names, read within bounds. A config is a few hundred bytes and a few levels deep, yet a
# 400-byte YAML file of aliases expands to a billion values, a FIFO blocks the reader forever and /dev/zero
# never ends: every file is checked to be a regular file, read up to a limit, and parsed within limits.

#: The largest YAML file read (a config is a few hundred bytes: this bounds the time parsing may take).
MAX_YAML_BYTES = 1_000_000
#: The deepest nesting read, aliases expanded (a config has three levels; Python's recursion ends near 300).
MAX_YAML_DEPTH = 20
#: The most values (scalars, lists, mappings) a YAML file may hold once its aliases are expanded (a config
#: holds about a hundred; parsing takes about 50 µs a value).
MAX_YAML_VALUES = 10_000
#: The longest integer literal read (a 64-bit integer has 19 digits; Python's ``int()`` refuses 4300).
MAX_INT_DIGITS = 100

#: Makes the error a caller wants from a one-line message: ``lambda m: ConfigError("", m)``, ``DataError``, ...
ErrorFactory = Callable[[str], UserError]


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words, from its ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


def open_user_file(path: str | os.PathLike[str], what: str, error: ErrorFactory) -> IO[bytes]:
    """Open the regular file ``path`` (a ``what``, e.g. ``"config file"``) for binary reading.

    Anything else is refused with ``error(message)``, one line that names the file: a FIFO would block the
    open and every read, a device such as ``/dev/zero`` never ends. The open does not block either, so a file
    replaced by a FIFO after the check cannot hang it.
    """
    shown = f"{what} {quote_path(path)}"
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{shown} is {_file_kind(mode)}, not a regular file")
        return os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
    except FileNotFoundError:
        raise error(f"{shown} not found") from None
    except OSError as err:
        raise error(f"{shown} cannot be read ({err.strerror or err})") from None


def read_user_bytes(path: str | os.PathLike[str], what: str, error: ErrorFactory, at_most: int | None) -> bytes:
    """The first ``at_most`` bytes (``None``: all) of the regular file ``path``; see :func:`open_user_file`."""
    with open_user_file(path, what, error) as f:
        try:
            return f.read(-1 if at_most is None else at_most)
        except OSError as err:
            raise error(f"{what} {quote_path(path)} cannot be read ({err.strerror or err})") from None


def load_yaml_file(path: str | os.PathLike[str], what: str, error: ErrorFactory) -> Any:
    """The data of the YAML file ``path`` (a ``what``), read and parsed within the limits above.

    Every problem -- missing, not a regular file, over :data:`MAX_YAML_BYTES`, not UTF-8, not YAML, a tag,
    too deep, too many values -- is ``error(message)`` with a one-line message that names the file.
    """
    shown = f"{what} {quote_path(path)}"
    raw = read_user_bytes(path, what, error, MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{shown} is larger than {MAX_YAML_BYTES:,} bytes, the most a YAML file may have here")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{shown} is not UTF-8 text (invalid byte at offset {err.start})") from None
    return parse_yaml(text, shown, error)


def parse_yaml(text: str, source: str, error: ErrorFactory) -> Any:
    """The data of the YAML ``text`` (``source`` names it in messages), parsed within the limits above."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as err:
        raise error(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{source}: not valid YAML{where}") from None
    finally:
        loader.dispose()


class _Refused(Exception):
    """YAML that :class:`_BoundedLoader` does not read; the message says where and why."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on what a small text may ask for.

    PyYAML composes an alias as the very node it names, so a file of aliases is small in memory; whoever
    walks the data afterwards (a check, a ``repr``, a copy) visits every expansion. Each node's expanded
    size and depth are counted as it is composed (once per node: aliases reuse the counts), and the file is
    refused past :data:`MAX_YAML_VALUES` or :data:`MAX_YAML_DEPTH`, before anything walks it. Explicit tags
    are refused (a config holds plain values; ``!!python/...`` is no value, ``!!int abc`` fails to
    construct), and dates are read as plain text (no option is a date; ``2024-02-30`` would fail).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0  # nodes composed so far: stops a long flat file early, before its end is parsed
        self._counts: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!", 1)
            raise _Refused(f"line {line}: the tag {shorten(shown, 60)} is not allowed; write plain values "
                           "(numbers, text, true/false, lists, mappings)")
        if self._depth >= MAX_YAML_DEPTH:  # checked before descending: composing recurses
            raise _Refused(f"line {line}: nested deeper than {MAX_YAML_DEPTH} levels")
        self._composed += 1
        if self._composed > MAX_YAML_VALUES:
            raise _Refused(f"line {line}: more than {MAX_YAML_VALUES:,} values")
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        assert node is not None  # (a node event always composes a node; the stubs allow None)
        if isinstance(event, yaml.AliasEvent):
            if id(node) not in self._counts:  # the anchored node is still being composed: it contains itself
                raise _Refused(f"line {line}: the alias *{str(event.anchor)[:40]} is inside its own anchor")
        else:
            self._counts[id(node)] = self._count(node, line)
        return node

    def _count(self, node: yaml.Node, line: int) -> tuple[int, int]:
        """(values, depth) of ``node`` with aliases expanded, from its children's counts."""
        children = [self._counts[id(child)] for child in _children(node)]
        values = 1 + sum(n for n, _ in children)
        depth = 1 + max((d for _, d in children), default=0)
        if values > MAX_YAML_VALUES:
            raise _Refused(f"line {line}: more than {MAX_YAML_VALUES:,} values once aliases are expanded")
        if depth > MAX_YAML_DEPTH:
            raise _Refused(f"line {line}: nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded")
        return values, depth

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        """An integer scalar; one too long for a 64-bit integer is refused before ``int()`` (slow, or raising)."""
        if len(node.value) > MAX_INT_DIGITS:
            raise _Refused(f"line {node.start_mark.line + 1}: an integer of {len(node.value):,} digits; "
                           "integers here are 64-bit (at most 19 digits)")
        return self.construct_yaml_int(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes directly inside ``node``: a list's items, a mapping's keys and values."""
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_bounded_int)
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
