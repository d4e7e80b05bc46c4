"""TOML configuration parsed once into frozen dataclasses, every error reported at once.

A config class is a frozen dataclass whose fields have simple types (``str``, ``int``,
``float``, ``bool``, ``pathlib.Path``, ``tuple[str, ...]``, ``X | None``) or other config
dataclasses (TOML tables). :func:`parse` walks the mapping, collects every problem by its
dotted TOML path (unknown keys with a "did you mean", wrong types, missing required keys,
and the range checks a class declares in a ``check()`` method returning ``[(key, msg)]``)
and raises one :class:`~medfl.errors.ConfigError` listing them all.

Environment overrides are applied before parsing by :func:`apply_env_overrides`; the
variables are listed in :mod:`medfl.envvars`.

Tables both daemons' files share are defined here once (:class:`KeysSection`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from medfl.errors import ConfigError, did_you_mean

__all__ = ["KeysSection", "load_toml", "parse", "parse_file"]

T = TypeVar("T")


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
    problems: list[tuple[str, str]] = []
    result = _parse_table(cls, data, "", problems, base_dir)
    if problems:
        raise ConfigError(problems, source=source)
    return typing.cast(T, result)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _parse_table(cls: Any, data: Any, prefix: str, problems: list[tuple[str, str]],
                 base_dir: pathlib.Path | None) -> Any:
    if not isinstance(data, Mapping):
        problems.append((prefix, f"expected a table, got {type(data).__name__} {data!r}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            problems.append((_join(prefix, key), "unknown key" + did_you_mean(key, fields)))
    values: dict[str, Any] = {}
    n_before = len(problems)
    for name, field in fields.items():
        path = _join(prefix, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], path, problems, base_dir)
        elif dataclasses.is_dataclass(hints[name]) and field.default is dataclasses.MISSING \
                and field.default_factory is dataclasses.MISSING:
            values[name] = _parse_table(hints[name], {}, path, problems, base_dir)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append((path, "required key is missing"))
    if len(problems) != n_before:
        return None
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        problems.append((prefix, str(exc)))
        return None
    check = getattr(obj, "check", None)
    if callable(check):
        for key, msg in check():
            problems.append((_join(prefix, key), msg))
    return obj


def _convert(tp: Any, value: Any, path: str, problems: list[tuple[str, str]],
             base_dir: pathlib.Path | None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, problems, base_dir)
    if dataclasses.is_dataclass(tp):
        return _parse_table(tp, value, path, problems, base_dir)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append((path, f"expected a list, got {type(value).__name__} {value!r}"))
            return None
        item_tp = args[0]
        return tuple(_convert(item_tp, v, f"{path}[{i}]", problems, base_dir) for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in args:
            problems.append((path, f"must be one of {', '.join(map(repr, args))}, got {value!r}"
                             + did_you_mean(str(value), [str(a) for a in args])))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append((path, f"expected true or false, got {value!r}"))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((path, f"expected an integer, got {value!r}"))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append((path, f"expected a number, got {value!r}"))
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append((path, f"expected a string, got {value!r}"))
        return value
    if tp is pathlib.Path:
        if not isinstance(value, str):
            problems.append((path, f"expected a path string, got {value!r}"))
            return value
        p = pathlib.Path(value).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        return p
    if tp is Any or tp is dict or origin is dict:
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")  # programming error
