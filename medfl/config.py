"""TOML configuration parsed once into frozen dataclasses, every error reported at once.

A config class is a frozen dataclass whose fields have simple types (``str``, ``int``,
``float``, ``bool``, ``pathlib.Path``, ``tuple[str, ...]``, ``X | None``) or other config
dataclasses (TOML tables). :func:`parse` walks the mapping, collects every problem by its
dotted TOML path (unknown keys with a "did you mean", wrong types, missing required keys,
and the range checks a class declares in a ``check()`` method returning ``[(key, msg)]``,
key ``""`` for the table itself) and raises one :class:`~medfl.errors.ConfigError` listing
them all. A wrong type does not hide the other checks: the bad value is reported and replaced
by a stand-in, and the checks run on the rest (see :func:`_parse_table`).

Environment overrides are applied before parsing by :func:`apply_env_overrides`; the
variables are listed in :mod:`medfl.envvars`.

Tables both daemons' files share are defined here once (:class:`KeysSection`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from medfl.errors import ConfigError, did_you_mean

__all__ = ["KeySource", "KeysSection", "load_toml", "parse", "parse_file"]

T = TypeVar("T")

#: a public key given as 40 characters of Z85 text, or as the path of a key file; a relative
#: path resolves against the config file's folder like every ``pathlib.Path`` value
KeySource = typing.NewType("KeySource", str)
_Z85_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")  # ZeroMQ RFC 32, as medfl.wire.keys reads it


@dataclasses.dataclass(frozen=True)
class KeysSection:
    """The ``[keys]`` table of agent.toml and coordinator.toml: the daemon's own CURVE key pair.

    Attributes
    ----------
    secret_key_file : Path or None
        The secret key file ``init`` writes (its public key sits beside it). Required when
        ``transport.curve = true``; each daemon's config checks that and says how to create it.
    """

    secret_key_file: pathlib.Path | None = None


def load_toml(path: str | pathlib.Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into :class:`ConfigError`.

    Parameters
    ----------
    path : str or Path
        The file to read.
    """
    p = pathlib.Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([("", f"file not found: {p}")], source=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"not valid TOML: {exc}")], source=str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not valid TOML: byte {exc.start} is not UTF-8 ({exc.reason}); save the file "
                                "as UTF-8 text")], source=str(p)) from None


def parse_file(cls: type[T], path: str | pathlib.Path, *, base_dir: pathlib.Path | None = None) -> T:
    """Load ``path`` and parse it into ``cls``; relative paths resolve against the file's folder.

    Parameters
    ----------
    cls : type
        A frozen config dataclass.
    path : str or Path
        The TOML file.
    base_dir : Path, optional
        Folder that relative ``Path`` values resolve against (default: the file's folder).
    """
    p = pathlib.Path(path)
    data = load_toml(p)
    return parse(cls, data, source=str(p), base_dir=base_dir or p.resolve().parent)


def parse(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    base_dir: pathlib.Path | None = None,
) -> T:
    """Parse ``data`` into the config dataclass ``cls`` or raise one ConfigError with every problem.

    Parameters
    ----------
    cls : type
        A frozen config dataclass.
    data : mapping
        The parsed TOML document.
    source : str, optional
        Name of the file, for the error message.
    base_dir : Path, optional
        Folder that relative ``Path`` values resolve against.
    """
    ctx = _Context(base_dir)
    result = _parse_table(cls, data, "", ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems, source=source)
    return typing.cast(T, result)


@dataclasses.dataclass
class _Context:
    """What one :func:`parse` collects: the problems, the paths of bad values, the folder paths resolve against."""

    base_dir: pathlib.Path | None
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    bad: set[str] = dataclasses.field(default_factory=set)

    def report(self, path: str, message: str) -> None:
        """Record a problem with the value at ``path`` (its stand-in must not be checked further)."""
        self.problems.append((path, message))
        self.bad.add(path)

    def is_bad(self, path: str) -> bool:
        """True when ``path`` is a reported value or inside one (a key of a bad table, an item of a bad list)."""
        return any(path == b or path.startswith((b + ".", b + "[")) for b in self.bad)

    def has_bad_inside(self, path: str) -> bool:
        """True when the value at ``path`` or a part of it (a list item) was reported."""
        return any(b == path or b.startswith((path + ".", path + "[")) for b in self.bad)


def _join(prefix: str, key: str) -> str:
    """The TOML path of ``key`` in the table at ``prefix``; ``""`` names the table itself."""
    if not key:
        return prefix
    if not prefix:
        return key
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def _parse_table(cls: Any, data: Any, prefix: str, ctx: _Context) -> Any:
    """Parse one table; always returns an instance (stand-ins for bad values) so every check still runs.

    A value of the wrong type, or a missing required key, is reported once and replaced by a
    stand-in (the field's default, else a neutral value of its type), so this table's
    ``check()`` and the enclosing tables' checks still report the problems of every other key.
    What those checks say about a reported value (or inside it) is dropped: it would be about
    the stand-in, not about the file.
    """
    if not isinstance(data, Mapping):
        ctx.report(prefix, f"expected a table, got {type(data).__name__} {data!r}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            ctx.problems.append((_join(prefix, key), "unknown key" + did_you_mean(str(key), fields)))
    values: dict[str, Any] = {}
    for name, fld in fields.items():
        path = _join(prefix, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], path, ctx)
        elif dataclasses.is_dataclass(hints[name]) and _no_default(fld):
            values[name] = _parse_table(hints[name], {}, path, ctx)
        elif _no_default(fld):
            ctx.report(path, "required key is missing")
        if path in ctx.bad or (not _is_table(hints[name]) and ctx.has_bad_inside(path)):
            values[name] = _stand_in(hints[name], fld)
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        ctx.report(prefix, str(exc))
        return _stand_in(cls, None)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            found = check()
        except (TypeError, ValueError, AttributeError):
            if not ctx.is_bad(prefix) and not any(ctx.is_bad(_join(prefix, n)) for n in fields):
                raise  # a check that fails on good values is a programming error
            found = []  # it tripped over a stand-in, whose key is reported already
        for key, msg in found:
            path = _join(prefix, key)
            if not ctx.is_bad(path):
                ctx.problems.append((path, msg))
    return obj


def _is_table(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or any(dataclasses.is_dataclass(a) for a in typing.get_args(tp))


def _no_default(fld: dataclasses.Field[Any]) -> bool:
    return fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING


def _stand_in(tp: Any, fld: dataclasses.Field[Any] | None) -> Any:
    """The field's default, else a neutral value of type ``tp`` (checks never report it)."""
    if fld is not None and fld.default is not dataclasses.MISSING:
        return fld.default
    if fld is not None and fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return None if type(None) in args else _stand_in(args[0], None)
    if origin is typing.Literal:
        return args[0]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _stand_in(hints[f.name], f) for f in dataclasses.fields(tp) if f.init})
    if origin is tuple:
        return ()
    if origin is dict or tp is dict:
        return {}
    if tp is pathlib.Path:
        return pathlib.Path()
    return {bool: False, int: 0, float: 0.0, str: ""}.get(tp)


def _convert(tp: Any, value: Any, path: str, ctx: _Context) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, ctx)
    if dataclasses.is_dataclass(tp):
        return _parse_table(tp, value, path, ctx)
    if origin is tuple:
        if not isinstance(value, list):
            ctx.report(path, f"expected a list, got {type(value).__name__} {value!r}")
            return None
        item_tp = args[0]
        return tuple(_convert(item_tp, v, f"{path}[{i}]", ctx) for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in args:
            ctx.report(path, f"must be one of {', '.join(map(repr, args))}, got {value!r}"
                       + did_you_mean(str(value), [str(a) for a in args]))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            ctx.report(path, f"expected true or false, got {value!r}" + _unquote(value, ("true", "false"), path))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.report(path, f"expected an integer, got {value!r}" + _unquote(value, int, path))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.report(path, f"expected a number, got {value!r}" + _unquote(value, float, path))
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            ctx.report(path, f"expected a string, got {value!r}")
        return value
    if tp is KeySource:
        if not isinstance(value, str):
            ctx.report(path, f"expected a key file path or a 40-character Z85 key, got {value!r}")
            return value
        if _Z85_KEY.fullmatch(value):
            return value
        return str(_convert(pathlib.Path, value, path, ctx))
    if tp is pathlib.Path:
        if not isinstance(value, str):
            ctx.report(path, f"expected a path string, got {value!r}")
            return value
        try:
            p = pathlib.Path(value).expanduser()
        except RuntimeError:  # "~name" of a user who does not exist (or no home at all)
            ctx.report(path, f"cannot expand {value.split('/', 1)[0]!r} in {value!r}: no such user's home "
                             "directory; write the path in full")
            return value
        if ctx.base_dir is not None and not p.is_absolute():
            p = ctx.base_dir / p
        return p
    if tp is Any or tp is dict or origin is dict:
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")  # programming error


def _unquote(value: Any, kind: Any, path: str) -> str:
    """The fix for a number or boolean written as a TOML string (``rounds = "2"``), else ""."""
    if not isinstance(value, str):
        return ""
    if isinstance(kind, tuple):
        ok = value in kind
    else:
        try:
            kind(value)
            ok = True
        except ValueError:
            ok = False
    key = path.rpartition(".")[2]
    return f", a string; write {key} = {value} without quotes" if ok else ""
