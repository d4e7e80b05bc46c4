"""The HELLO body, decoded into a typed value before the coordinator believes any of it.

An agent's HELLO carries what an operator later reads (its name) and what the coordinator
counts on (the models it allows, the smallest aggregate it accepts, its sample counts). The
peer is authenticated but its body is not trusted: :func:`parse_hello` checks every field's
type and range and refuses the whole message with :class:`~medfl.errors.MalformedMessage`
naming each bad field, so nothing half-checked reaches a session, a log line or the store.

Compatibility: fields are optional unless marked; unknown fields are ignored (newer agents may
send more); ``name`` is required and follows :func:`medfl.safetext.check_name`.

References
----------
.. [1] The HELLO row of the message table in :mod:`medfl.wire.messages`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from medfl.errors import MalformedMessage
from medfl.safetext import check_name, escape

__all__ = ["MAX_COUNT", "Hello", "parse_hello"]

#: the largest sample count or party count believed (far above any hospital's data set)
MAX_COUNT = 10**9
_VERSION = re.compile(r"[0-9A-Za-z.+_-]{1,32}")
_MAX_MODELS = 64


@dataclass(frozen=True)
class Hello:
    """A checked HELLO body.

    Attributes
    ----------
    name : str
        NFKC-normalised printable name, 1-64 characters.
    version : str
        The agent's software version ("" when not sent).
    models : tuple[str, ...]
        Registry names the agent's policy allows.
    min_parties : int
        The smallest aggregate the agent accepts (1 when not sent).
    train_samples, val_samples : int
        Sizes of the agent's splits (0 when not sent).
    """

    name: str
    version: str = ""
    models: tuple[str, ...] = ()
    min_parties: int = 1
    train_samples: int = 0
    val_samples: int = 0


def _count(body: Mapping[str, Any], key: str, default: int, low: int, errors: list[str]) -> int:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        errors.append(f"{key} must be an integer, got {type(v).__name__} {escape(v, limit=40)!r}")
        return default
    if not low <= v <= MAX_COUNT:
        errors.append(f"{key} must be between {low} and {MAX_COUNT}, got {v}")
        return default
    return v


def _models(body: Mapping[str, Any], known: Collection[str] | None, errors: list[str]) -> tuple[str, ...]:
    v = body.get("models", [])
    if not isinstance(v, list | tuple) or len(v) > _MAX_MODELS:
        errors.append(f"models must be a list of at most {_MAX_MODELS} model names, got {type(v).__name__}")
        return ()
    bad = [m for m in v if not isinstance(m, str) or (known is not None and m not in known)]
    if bad:
        shown = ", ".join(escape(m, limit=40) for m in bad[:5])
        hint = f"; known: {', '.join(sorted(known))}" if known is not None else ""
        errors.append(f"models has unknown or non-string entries ({shown}){hint}")
        return ()
    return tuple(v)


def parse_hello(body: Mapping[str, Any], *, known_models: Collection[str] | None = None) -> Hello:
    """Check a HELLO body and return it typed.

    Parameters
    ----------
    body : Mapping[str, Any]
        The envelope body as decoded from msgpack.
    known_models : Collection[str] or None
        Registry names the coordinator knows; ``None`` accepts any string.

    Returns
    -------
    Hello
        The checked body.

    Raises
    ------
    MalformedMessage
        Naming every bad field at once, values escaped.
    """
    errors: list[str] = []
    name, why = check_name(body.get("name", ""))
    if why:
        errors.append(f"name {why}; set [agent] name in agent.toml")
    version = body.get("version", "")
    if not isinstance(version, str) or (version and not _VERSION.fullmatch(version)):
        errors.append(f"version must be a short version string, got {escape(version, limit=40)!r}")
        version = ""
    hello = Hello(name=name, version=version, models=_models(body, known_models, errors),
                  min_parties=_count(body, "min_parties", 1, 1, errors),
                  train_samples=_count(body, "train_samples", 0, 0, errors),
                  val_samples=_count(body, "val_samples", 0, 0, errors))
    if errors:
        raise MalformedMessage("hello refused: " + "; ".join(errors))
    return hello
