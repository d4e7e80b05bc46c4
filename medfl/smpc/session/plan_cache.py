"""The served model's plan cache: one JSON file next to the checkpoint, holding traced plans by announcement.

Tracing a model's plan costs a whole plaintext run of the protocol, so the model server keeps
it in ``<checkpoint>.smpc-plan.json``. Every writer of that file (``medfl-coordinator serve``
hosting a model server, ``medfl-coordinator model-server``, and ``medfl infer --encrypted``,
which starts the latter) goes through this module, so there is one format::

    {"format": "medfl-smpc-plan/2",
     "plans": {"<sha256 of the announcement>": {"plan": [...], "prep": 12, "rounds": 40}, ...}}

``plan`` is the whole plan of a one-image session in the wire form (checked by
:func:`~medfl.smpc.dealer.plan_from_wire` as the dealer checks it), ``prep`` the number of its
leading weight masks, ``rounds`` the openings per image. Several announcements (other
calibration ranges, another image size) share the file; the newest :data:`MAX_PLANS` are kept.
A file that cannot be used (another format, damaged, unreadable) is not an error: the plan is
traced again, the file rewritten, and one INFO line says why. Writes go through a temporary
file and a rename, so two processes writing at once leave one of the two whole files.

Compatibility: fields are only added; a new ``format`` value is read as "trace again".
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

from medfl.errors import MalformedMessage
from medfl.smpc.dealer import PlanEntry, plan_from_wire, plan_to_wire

__all__ = ["FORMAT", "MAX_PLANS", "read_plan", "write_plan"]

log = logging.getLogger(__name__)

FORMAT = "medfl-smpc-plan/2"
MAX_PLANS = 4

Cached = tuple[list[PlanEntry], int, int]


def _load(cache: pathlib.Path) -> dict[str, Any]:
    """The file's ``plans`` table; ValueError (with the reason) when the file is not of this format."""
    doc = json.loads(cache.read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        seen = doc.get("format", "none") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"format {seen!r}, not {FORMAT!r} (written by another medfl version)")
    plans = doc.get("plans")
    if not isinstance(plans, dict):
        raise ValueError("no 'plans' table")
    return plans


def read_plan(cache: pathlib.Path | None, key: str) -> Cached | None:
    """The cached (plan, weight masks, rounds per image) for announcement ``key``, or None (logged at INFO).

    Parameters
    ----------
    cache : Path or None
        The cache file (None: no cache).
    key : str
        The digest of the announcement.
    """
    if cache is None:
        return None
    if not cache.is_file():
        log.info("no plan cache at %s yet: tracing the model's plan once", cache)
        return None
    try:
        entry = _load(cache).get(key)
        if entry is None:
            log.info("plan cache %s has no plan for this announcement (another model, image size or calibration); "
                     "tracing it and adding it", cache)
            return None
        plan = plan_from_wire(entry["plan"])
        prep, rounds = int(entry["prep"]), int(entry["rounds"])
        if not (0 <= prep <= len(plan) and all(e.kind == "weight_mask" for e in plan[:prep])
                and not any(e.kind == "weight_mask" for e in plan[prep:]) and rounds >= 0):
            raise ValueError(f"'prep' = {prep} does not split the plan into weight masks and one image's items")
    except (OSError, ValueError, KeyError, TypeError, MalformedMessage) as exc:
        log.info("plan cache %s not usable (%s); tracing the plan again and rewriting the cache", cache, exc)
        return None
    log.info("plan read from cache %s (%d items, %d weight masks)", cache, len(plan), prep)
    return plan, prep, rounds


def write_plan(cache: pathlib.Path | None, key: str, plan: list[PlanEntry], prep: int, rounds: int) -> None:
    """Add (or refresh) the plan of announcement ``key``; keep the newest :data:`MAX_PLANS`; never raises.

    Parameters
    ----------
    cache : Path or None
        The cache file (None: no cache).
    key : str
        The digest of the announcement.
    plan : list of PlanEntry
        The whole plan of a one-image session.
    prep : int
        Its leading weight masks.
    rounds : int
        Openings per image.
    """
    if cache is None:
        return
    try:
        plans = _load(cache) if cache.is_file() else {}
    except (OSError, ValueError, TypeError):
        plans = {}
    plans.pop(key, None)
    plans[key] = {"plan": plan_to_wire(plan), "prep": prep, "rounds": rounds}
    plans = dict(list(plans.items())[-MAX_PLANS:])
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"format": FORMAT, "plans": plans}))
        os.replace(tmp, cache)
    except OSError as exc:
        log.info("plan not cached at %s: %s", cache, exc)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
