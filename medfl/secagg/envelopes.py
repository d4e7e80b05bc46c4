"""Secure-aggregation messages on the wire: envelopes to and from :mod:`medfl.secagg.messages`.

Every secagg envelope carries the job and round in its header and, in its body, the ``phase``
(``"fit"`` for the model update, ``"evaluate"`` for the validation metrics) and the round's
``attempt``, which together name one run of the protocol. Decoding never trusts the peer: each
field's type and size is checked and a bad one raises
:class:`~medfl.errors.MalformedMessage`. The sender's agent id is never read from the body:
the coordinator takes it from the authenticated session.

Compatibility: fields are never removed, new fields are optional, meanings never change.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017, figure 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfl.errors import MalformedMessage
from medfl.secagg.keys import Scope
from medfl.secagg.messages import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from medfl.wire import Envelope, MessageType

__all__ = ["PHASES", "SECAGG_FROM_AGENT", "SECAGG_TO_AGENT", "Session", "decode", "encode"]

PHASES = ("fit", "evaluate")
SECAGG_FROM_AGENT = frozenset({MessageType.SECAGG_KEYS, MessageType.SECAGG_SHARES, MessageType.MASKED_INPUT,
                               MessageType.SECAGG_UNMASK})
SECAGG_TO_AGENT = frozenset({MessageType.SECAGG_ROSTER, MessageType.SECAGG_DELIVERY,
                             MessageType.SECAGG_UNMASK_REQUEST})
_MAX_ID = 256
_MAX_SEALED = 4096

Message = AdvertiseKeys | KeyRoster | ShareKeys | ShareDelivery | MaskedInput | UnmaskRequest | UnmaskResponse


@dataclass(frozen=True)
class Session:
    """One run of the protocol: job, round, attempt and phase.

    Its :meth:`scope` binds every derived key and sealed share to this run, so nothing carries
    over between the fit and evaluate runs of a round or between attempts.
    """

    job: str
    round: int
    attempt: int
    phase: str

    def scope(self) -> Scope:
        """The key-derivation scope of this run."""
        return Scope(job=f"{self.job}/{self.phase}/{self.attempt}", round=self.round)

    @classmethod
    def of(cls, env: Envelope) -> Session:
        """The session an envelope belongs to (checked)."""
        phase = env.body.get("phase")
        attempt = env.body.get("attempt")
        if phase not in PHASES or not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise MalformedMessage(f"{env.type}: body needs phase in {PHASES} and attempt >= 1, got phase={phase!r} "
                                   f"attempt={attempt!r}")
        if env.job is None or env.round is None:
            raise MalformedMessage(f"{env.type}: header needs job and round")
        return cls(job=str(env.job), round=int(env.round), attempt=attempt, phase=str(phase))


def _bytes(body: Mapping[str, Any], key: str, size: int | None = None, *, limit: int = _MAX_SEALED) -> bytes:
    v = body.get(key)
    if not isinstance(v, bytes) or (size is not None and len(v) != size) or len(v) > limit:
        want = f"{size} bytes" if size is not None else f"at most {limit} bytes"
        raise MalformedMessage(f"field {key!r} must be {want}, got {type(v).__name__}"
                               f"{f' of {len(v)} bytes' if isinstance(v, bytes) else ''}")
    return v


def _id(v: Any, what: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= _MAX_ID:
        raise MalformedMessage(f"{what} must be a non-empty string of at most {_MAX_ID} characters, got {v!r}")
    return v


def _bytes_map(body: Mapping[str, Any], key: str, size: int | None = None) -> dict[str, bytes]:
    v = body.get(key)
    if not isinstance(v, Mapping) or len(v) > 10_000:
        raise MalformedMessage(f"field {key!r} must be a map of agent id to bytes")
    return {_id(k, f"{key} key"): _bytes(v, k, size) for k in v}


def _id_list(body: Mapping[str, Any], key: str) -> list[str]:
    v = body.get(key)
    if not isinstance(v, list | tuple) or len(v) > 10_000:
        raise MalformedMessage(f"field {key!r} must be a list of agent ids")
    return [_id(x, key) for x in v]


def _int(body: Mapping[str, Any], key: str) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise MalformedMessage(f"field {key!r} must be an integer, got {v!r}")
    return v


def encode(msg: Message, session: Session) -> Envelope:
    """The envelope carrying ``msg`` in ``session``."""
    body: dict[str, Any] = {"phase": session.phase, "attempt": session.attempt}
    tensors: dict[str, np.ndarray] = {}
    if isinstance(msg, AdvertiseKeys):
        mtype, body = MessageType.SECAGG_KEYS, {**body, "c_public": msg.c_public, "s_public": msg.s_public}
    elif isinstance(msg, KeyRoster):
        mtype = MessageType.SECAGG_ROSTER
        body.update(keys={a: [c, s] for a, (c, s) in msg.keys.items()}, graph_seed=msg.graph_seed,
                    degree=msg.degree, threshold=msg.threshold, nonce=msg.nonce)
    elif isinstance(msg, ShareKeys):
        mtype, body = MessageType.SECAGG_SHARES, {**body, "sealed": dict(msg.sealed)}
    elif isinstance(msg, ShareDelivery):
        mtype, body = MessageType.SECAGG_DELIVERY, {**body, "sealed": dict(msg.sealed)}
    elif isinstance(msg, MaskedInput):
        mtype, tensors = MessageType.MASKED_INPUT, {"masked": msg.masked}
    elif isinstance(msg, UnmaskRequest):
        mtype = MessageType.SECAGG_UNMASK_REQUEST
        body.update(survivors=list(msg.survivors), dropped=list(msg.dropped))
    elif isinstance(msg, UnmaskResponse):
        mtype = MessageType.SECAGG_UNMASK
        body.update(self_mask_shares=dict(msg.self_mask_shares), key_shares=dict(msg.key_shares))
    else:
        raise TypeError(f"not a secure-aggregation message: {type(msg).__name__}")
    return Envelope(type=mtype, job=session.job, round=session.round, body=body, tensors=tensors)


def decode(env: Envelope, *, agent: str = "") -> Message:
    """The secagg message in ``env``; ``agent`` is the authenticated sender (agent -> coordinator).

    Raises
    ------
    MalformedMessage
        A field is missing or of the wrong type or size.
    """
    b = env.body
    t = env.type
    if t == MessageType.SECAGG_KEYS:
        return AdvertiseKeys(agent=agent, c_public=_bytes(b, "c_public", 32), s_public=_bytes(b, "s_public", 32))
    if t == MessageType.SECAGG_ROSTER:
        raw = b.get("keys")
        if not isinstance(raw, Mapping) or len(raw) > 10_000:
            raise MalformedMessage("roster field 'keys' must be a map of agent id to [c_public, s_public]")
        keys = {}
        for a, pair in raw.items():
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise MalformedMessage(f"roster keys of {a!r} must be [c_public, s_public]")
            keys[_id(a, "roster agent")] = (_bytes({"c": pair[0]}, "c", 32), _bytes({"s": pair[1]}, "s", 32))
        return KeyRoster(keys=keys, graph_seed=_bytes(b, "graph_seed", 32), degree=_int(b, "degree"),
                         threshold=_int(b, "threshold"), nonce=_bytes(b, "nonce", 12))
    if t == MessageType.SECAGG_SHARES:
        return ShareKeys(agent=agent, sealed=_bytes_map(b, "sealed"))
    if t == MessageType.SECAGG_DELIVERY:
        return ShareDelivery(sealed=_bytes_map(b, "sealed"))
    if t == MessageType.MASKED_INPUT:
        masked = env.tensors.get("masked")
        if masked is None or len(env.tensors) != 1:
            raise MalformedMessage("masked input must carry exactly one tensor, 'masked'")
        return MaskedInput(agent=agent, masked=np.asarray(masked))
    if t == MessageType.SECAGG_UNMASK_REQUEST:
        return UnmaskRequest(survivors=_id_list(b, "survivors"), dropped=_id_list(b, "dropped"))
    if t == MessageType.SECAGG_UNMASK:
        return UnmaskResponse(agent=agent, self_mask_shares=_bytes_map(b, "self_mask_shares"),
                              key_shares=_bytes_map(b, "key_shares"))
    raise MalformedMessage(f"{t} is not a secure-aggregation message")
