"""One secure sum at the agent: drives :class:`~medfl.secagg.client.SecAggClient` over the wire.

A TRAIN or EVALUATE message of a secure job carries ``secure``: this agent's id in the round,
the phase and attempt, the threshold, the SecAgg+ degree, the quantization spec and the vector
length. :class:`SecureRound` checks them against the local policy (the threshold is the fewest
agents whose sum the coordinator could ever unmask, so it must reach ``policy.min_parties``),
advertises its keys at once (key exchange overlaps local training), answers the roster with
sealed shares, masks the vector when both the share delivery and the training result are there,
and answers the unmask request. It never touches a socket: each method returns the envelopes
to send.

:func:`open_secure` opens the secure sum of a TRAIN / EVALUATE and checks it against the job
this agent accepted. The job offer is the source of truth for ``aggregation.clip_norm`` and
``sample_cap``: the ``secure`` parameters repeat them (``clip_norm``, ``sample_cap``, and
``spec.clip_norm`` inside the quantization spec), because agents released before this check
require the copies and wire fields are never removed. A copy that disagrees with the accepted
job is refused (:class:`~medfl.errors.MalformedMessage`, answered with JOB_REFUSE), so a
coordinator cannot make the agent clip or weight its update by another bound than the one it
accepted.

The masks depend on the keys only. When the share delivery comes before the local result (the
usual case: the key exchange takes milliseconds, training takes minutes), a background thread
builds the sum of this agent's masks at once (:meth:`SecAggClient.premask`; the native
keystream releases the GIL), so that once training ends the upload costs one quantize and one
ring add instead of a keystream per peer. A result that comes first is quantized and masked in
one fused pass as before.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017, figure 4 (the user's side).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.config import PolicySection
from medfl.buffers import VectorPool, default_pool
from medfl.errors import MalformedMessage, OutOfOrder, PolicyViolation, Rejected
from medfl.jobspec import JobSpec
from medfl.privacy.distributed_dp import ClientDP
from medfl.secagg import envelopes
from medfl.secagg.client import SecAggClient
from medfl.secagg.messages import KeyRoster, ShareDelivery, UnmaskRequest
from medfl.secagg.quantization import QuantSpec
from medfl.wire import Envelope

__all__ = ["SecureRound", "open_secure"]

log = logging.getLogger(__name__)

#: shortest vector whose masks are built ahead of the local result (metrics vectors are masked in one pass)
PREMASK_MIN_LENGTH = 1 << 16


def _int(params: Mapping[str, Any], key: str) -> int:
    v = params.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise MalformedMessage(f"secure.{key} must be an integer, got {v!r}")
    return v


def _float(params: Mapping[str, Any], key: str) -> float:
    v = params.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise MalformedMessage(f"secure.{key} must be a number, got {v!r}")
    return float(v)


class SecureRound:
    """The agent's side of one secure sum (one phase of one round attempt).

    Parameters
    ----------
    job : str
        Job id.
    round : int
        Round number.
    params : mapping
        The ``secure`` field of TRAIN / EVALUATE.
    policy : PolicySection
        The local policy (``min_parties``).
    pool : VectorPool, optional
        Where the premask and the upload come from (default: the process's
        :func:`medfl.buffers.default_pool`, reused from round to round).

    Raises
    ------
    PolicyViolation
        The threshold is below ``policy.min_parties``.
    MalformedMessage
        A parameter is missing or of the wrong type.
    """

    def __init__(self, *, job: str, round: int, params: Mapping[str, Any], policy: PolicySection,
                 pool: VectorPool | None = None) -> None:
        if not isinstance(params, Mapping):
            raise MalformedMessage(f"'secure' must be a map, got {type(params).__name__}")
        agent = params.get("agent_id")
        phase = params.get("phase")
        if not isinstance(agent, str) or not agent or phase not in envelopes.PHASES:
            raise MalformedMessage(f"secure.agent_id must be a string and secure.phase one of {envelopes.PHASES}")
        spec = params.get("spec")
        if not isinstance(spec, Mapping):
            raise MalformedMessage("secure.spec must be a map")
        try:
            self.spec = QuantSpec.from_dict(dict(spec))
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage(f"secure.spec is not a usable quantization spec: {exc}") from exc
        self.threshold = _int(params, "threshold")
        self.degree = _int(params, "degree")
        self.length = _int(params, "length")
        self.clip_norm = _float(params, "clip_norm")
        self.sample_cap = _int(params, "sample_cap")
        if self.sample_cap < 1 or self.length < 1 or self.clip_norm <= 0:
            raise MalformedMessage(f"secure parameters out of range: sample_cap={self.sample_cap} "
                                   f"length={self.length} clip_norm={self.clip_norm}")
        self.min_parties = max(2, policy.min_parties)
        if self.threshold < self.min_parties:
            raise PolicyViolation(
                f"secure aggregation threshold t={self.threshold} lets the coordinator unmask a sum of "
                f"{self.threshold} agent(s), but agent.toml policy.min_parties={policy.min_parties}; raise the job's "
                "aggregation.threshold or lower the local minimum")
        self.session = envelopes.Session(job=job, round=round, attempt=_int(params, "attempt"), phase=str(phase))
        self.agent = agent
        self.client = SecAggClient(agent=agent, scope=self.session.scope(),
                                   pool=default_pool() if pool is None else pool)
        self._delivery: ShareDelivery | None = None
        self._vector: np.ndarray | None = None
        self._report: dict[str, Any] = {}
        self._premask: np.ndarray | None = None
        self._premask_thread: threading.Thread | None = None
        #: True once the masks are being built ahead of the local result (the delivery came first)
        self.masks_ahead = False
        self.masked_sent = False
        #: client-level DP parameters of a fit sum (set by :func:`open_secure`): the vector is then a
        #: ring vector the agent encoded and noised itself, masked as it is
        self.client_dp: ClientDP | None = None

    def start(self) -> Envelope:
        """Round 0: the agent's public keys."""
        return envelopes.encode(self.client.advertise(), self.session)

    def on_message(self, env: Envelope) -> list[Envelope]:
        """Take the coordinator's roster, share delivery or unmask request; return the replies."""
        if envelopes.Session.of(env) != self.session:
            raise OutOfOrder(f"{env.type} for {envelopes.Session.of(env)}, this secure sum is {self.session}")
        msg = envelopes.decode(env)
        if isinstance(msg, KeyRoster):
            if msg.threshold != self.threshold or msg.degree != self.degree:
                raise Rejected(f"roster says threshold {msg.threshold} degree {msg.degree}; the round was announced "
                               f"with threshold {self.threshold} degree {self.degree}")
            return [envelopes.encode(self.client.share(msg), self.session)]
        if isinstance(msg, ShareDelivery):
            if self._delivery is not None:
                raise OutOfOrder(f"a second share delivery for {self.session}; the first one stands")
            self._delivery = msg
            if self._vector is None and self.length >= PREMASK_MIN_LENGTH and self._premask_thread is None:
                self._premask_thread = threading.Thread(target=self._build_premask, args=(msg,), daemon=True,
                                                        name=f"premask-{self.session.phase}-{self.session.round}")
                self._premask_thread.start()
                self.masks_ahead = True
                return []
            return self._maybe_mask()
        if isinstance(msg, UnmaskRequest):
            if len(msg.survivors) < self.min_parties:
                raise PolicyViolation(f"unmask request for a sum of {len(msg.survivors)} agent(s), below agent.toml "
                                      f"policy.min_parties={self.min_parties}; not revealing any share")
            return [envelopes.encode(self.client.unmask(msg), self.session)]
        raise OutOfOrder(f"agents do not expect {env.type}")

    def set_vector(self, vector: np.ndarray, *, report: Mapping[str, Any] | None = None) -> list[Envelope]:
        """The local result (see :mod:`medfl.secagg.vector`); masked and sent once the shares arrived.

        ``report`` holds public facts (the job's epsilon and delta at this agent) sent in the
        clear beside the masked input.
        """
        if vector.shape != (self.length,):
            raise Rejected(f"local vector has shape {vector.shape}, the round expects ({self.length},)")
        self._vector = vector
        self._report = dict(report or {})
        return self._maybe_mask()

    def _build_premask(self, delivery: ShareDelivery) -> None:
        """Background thread: this agent's masks summed over a zero vector (see the module docstring)."""
        try:
            self._premask = self.client.premask(delivery, length=self.length, spec=self.spec)
        except Exception as exc:  # noqa: BLE001 - the fused path below raises it again, in the caller's thread
            log.debug("secure %s of round %d: masks not built ahead: %s", self.session.phase, self.session.round, exc)

    def _maybe_mask(self) -> list[Envelope]:
        if self._delivery is None or self._vector is None or self.masked_sent:
            return []
        if self._premask_thread is not None:
            self._premask_thread.join()  # at most the rest of one mask build
        masked = self.client.mask(self._delivery, update=self._vector, spec=self.spec, premask=self._premask)
        self._premask = None
        self._vector = None
        self.masked_sent = True
        env = envelopes.encode(masked, self.session)
        if self._report:
            env = dataclasses.replace(env, body={**env.body, "report": self._report})
        return [env]


def open_secure(*, spec: JobSpec, env: Envelope, policy: PolicySection) -> SecureRound | None:
    """The secure sum a TRAIN / EVALUATE asks for, checked against the accepted job; None for a plain round.

    Parameters
    ----------
    spec : JobSpec
        The job this agent accepted (from its JOB_OFFER).
    env : Envelope
        The TRAIN or EVALUATE message.
    policy : PolicySection
        The local policy.

    Returns
    -------
    SecureRound or None
        The open secure sum (its keys are not sent yet: :meth:`SecureRound.start`).

    Raises
    ------
    PolicyViolation
        The message carries no ``secure`` parameters but the job or the local policy requires
        secure aggregation, or the threshold is below ``policy.min_parties``.
    MalformedMessage
        A parameter is missing or of the wrong type, or a copy of the job's ``clip_norm`` or
        ``sample_cap`` disagrees with the accepted job.
    """
    params = env.body.get("secure")
    if params is None:
        if spec.aggregation.secure or policy.require_secure_aggregation:
            raise PolicyViolation(
                f"{env.type} of round {env.round} carries no secure-aggregation parameters, but "
                + ("the job asks for secure aggregation" if spec.aggregation.secure else
                   "agent.toml policy.require_secure_aggregation = true")
                + "; this agent will not send its update in the clear")
        return None
    run = SecureRound(job=str(env.job), round=int(env.round or 0), params=params, policy=policy)
    agg = spec.aggregation
    for key, sent, accepted in (("clip_norm", run.clip_norm, agg.clip_norm),
                                ("spec.clip_norm", run.spec.clip_norm, agg.clip_norm),
                                ("sample_cap", run.sample_cap, agg.sample_cap)):
        if sent != accepted:
            raise MalformedMessage(f"{env.type} of round {env.round} says secure.{key}={sent!r}, but job {env.job} was "
                                   f"accepted with aggregation.{key.removeprefix('spec.')}={accepted!r}; "
                                   "this agent keeps the accepted job's bound and refuses the round")
    if spec.privacy.client_level and run.session.phase == "fit":
        run.client_dp = _client_dp(spec, env, run)
    return run


def _client_dp(spec: JobSpec, env: Envelope, run: SecureRound) -> ClientDP:
    """The client-level DP of a fit sum, from the accepted job and the round; the announced ring is checked.

    The noise multiplier and the clip come from the job this agent accepted, the dimension from
    the global model in the TRAIN message and the threshold from the round (each share is sized
    so that a sum of ``t`` survivors carries the whole noise; SecAgg cannot unmask fewer). The
    coordinator's ring must be the one that cannot wrap for the round's agents, with no
    fractional bits (the vector is already integers).
    """
    from medfl.secagg.vector import client_fit_length

    dp = spec.privacy
    if dp.client_noise_multiplier is None:
        raise MalformedMessage(f"job {env.job} asks client-level DP without client_noise_multiplier")
    cdp = ClientDP(clip=spec.aggregation.clip_norm, noise_multiplier=dp.client_noise_multiplier,
                   dim=client_fit_length(env.tensors), threshold=run.threshold)
    try:
        bits = cdp.ring_bits_for(run.spec.n_agents)
    except ValueError as exc:
        raise MalformedMessage(f"{env.type} of round {env.round}: {exc}") from exc
    if run.length != cdp.dim or run.spec.frac_bits != 0 or run.spec.ring_bits != bits:
        raise MalformedMessage(
            f"{env.type} of round {env.round} announces a {run.spec.ring_bits}-bit ring with {run.spec.frac_bits} "
            f"fractional bits and {run.length} values, but client-level DP of job {env.job} needs the {bits}-bit "
            f"ring of {run.spec.n_agents} agents, 0 fractional bits and the model's {cdp.dim} values; refusing")
    return cdp
