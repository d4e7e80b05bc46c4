"""One secure sum at the coordinator: a SecAgg run over the network, with per-stage deadlines.

:class:`SecureSum` wraps :class:`~medfl.secagg.server.SecAggServer` for one phase of one round
attempt (``fit``: the weighted model deltas; ``evaluate``: the weighted validation metrics). It
takes the agents' envelopes, returns the envelopes to send, and closes each stage as soon as
every agent still expected has answered, or at the stage's deadline:

    advertise (stage deadline) -> share (stage deadline) -> collect (the phase's deadline:
    training or validation time) -> unmask (stage deadline) -> done | aborted

An agent that goes offline is no longer waited for. Fewer than the threshold of agents at any
stage aborts the run (``error`` says why) and the job's round is retried. Like
:class:`~coordinator.rounds.job.JobRun` it never touches a socket.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017, figure 4 (the server's rounds and their timeouts).
.. [2] Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from medfl.buffers import default_pool
from medfl.errors import MalformedMessage, MedflError, OutOfOrder, Rejected, SecAggAbort
from medfl.secagg import envelopes
from medfl.secagg.messages import AdvertiseKeys, MaskedInput, ShareKeys, UnmaskResponse
from medfl.secagg.quantization import QuantSpec
from medfl.secagg.server import SecAggServer, ServerStage
from medfl.wire import Envelope, MessageType
from medfl.wire.bodies import parse_report

__all__ = ["SecureSum"]

log = logging.getLogger(__name__)

Outgoing = tuple[str, Envelope]

_EXPECTED: dict[ServerStage, MessageType] = {
    ServerStage.ADVERTISE: MessageType.SECAGG_KEYS,
    ServerStage.SHARE: MessageType.SECAGG_SHARES,
    ServerStage.COLLECT: MessageType.MASKED_INPUT,
    ServerStage.UNMASK: MessageType.SECAGG_UNMASK,
}


class SecureSum:
    """The coordinator's side of one secure sum.

    Parameters
    ----------
    session : envelopes.Session
        Job, round, attempt and phase.
    agents : list of str
        Agent ids (session fingerprints) invited.
    threshold : int
        Agents that must survive every stage.
    degree : int
        SecAgg+ neighbourhood size (0: complete graph).
    spec : QuantSpec
        Ring and fixed-point parameters.
    length : int
        Length of the summed vector.
    stage_deadline_s : float
        Deadline of the advertise, share and unmask stages.
    collect_deadline_s : float
        Deadline of the masked-input stage (the agents train or validate meanwhile).
    clock : callable
        Monotonic clock.
    """

    def __init__(self, *, session: envelopes.Session, agents: list[str], threshold: int, degree: int,
                 spec: QuantSpec, length: int, stage_deadline_s: float, collect_deadline_s: float,
                 clock: Callable[[], float]) -> None:
        self.session = session
        self.server = SecAggServer(agents=agents, threshold=threshold, degree=degree, spec=spec,
                                   scope=session.scope(), pool=default_pool())
        self.spec, self.length, self.threshold, self.degree = spec, length, threshold, degree
        self.stage_deadline_s, self.collect_deadline_s = stage_deadline_s, collect_deadline_s
        self.clock = clock
        self.expected: set[str] = set(agents)
        self.answered: set[str] = set()
        self.deadline = clock() + stage_deadline_s
        self.result: np.ndarray | None = None
        self.error: str | None = None
        self.survivors: list[str] = []
        self.started = clock()
        #: seconds from the start of the sum to the close of each stage (for status and benchmarks)
        self.stage_seconds: dict[str, float] = {}
        #: public facts each agent sent in the clear beside its masked input: (epsilon, delta)
        self.reports: dict[str, tuple[float, float]] = {}

    def _take_report(self, agent: str, report: Any) -> None:
        """Keep an agent's clear privacy report (epsilon, delta) if it is well formed."""
        try:
            parsed = parse_report(report)
        except MalformedMessage as exc:
            log.warning("job %s: agent %s sent a malformed privacy report beside its masked input (%s); ignored",
                        self.session.job, agent[:16], exc)
            return
        if parsed.epsilon is not None:
            self.reports[agent] = (parsed.epsilon, math.nan if parsed.delta is None else parsed.delta)

    # ---- what the agents are told ------------------------------------------------------
    def params(self, agent: str) -> dict[str, Any]:
        """The ``secure`` body field of the TRAIN / EVALUATE message to ``agent``."""
        return {"agent_id": agent, "phase": self.session.phase, "attempt": self.session.attempt,
                "threshold": self.threshold, "degree": self.degree, "spec": self.spec.to_dict(),
                "length": self.length, "layout": "medfl-secagg-vector-v1"}

    @property
    def done(self) -> bool:
        """True once the sum is known or the run aborted."""
        return self.result is not None or self.error is not None

    @property
    def stage(self) -> ServerStage:
        """The server's stage."""
        return self.server.stage

    # ---- inputs ------------------------------------------------------------------------
    def on_message(self, agent: str, env: Envelope) -> list[Outgoing]:
        """Take one agent's secagg envelope; return what to send (a stage may close)."""
        if self.done:
            raise OutOfOrder(f"{env.type} for a secure sum that is already {'aborted' if self.error else 'done'}")
        want = _EXPECTED.get(self.server.stage)
        if env.type != want:
            raise OutOfOrder(f"{env.type} while the secure sum ({self.session.phase}) is at stage "
                             f"{self.server.stage}, expecting {want}")
        msg = envelopes.decode(env, agent=agent)
        try:
            if isinstance(msg, AdvertiseKeys):
                self.server.receive_keys(msg)
            elif isinstance(msg, ShareKeys):
                self.server.receive_shares(msg)
            elif isinstance(msg, MaskedInput):
                if msg.masked.shape != (self.length,) or msg.masked.dtype != self.spec.dtype:
                    raise Rejected(f"masked input of dtype {msg.masked.dtype} shape {msg.masked.shape}; this sum is "
                                   f"{self.length} elements of {np.dtype(self.spec.dtype)}")
                # wire frames carry a '<u4'/'<u8' dtype object; the native ring adder wants the canonical
                # dtype (it compares dtype identity): a view with it, no copy
                masked = np.ascontiguousarray(msg.masked).view(np.dtype(self.spec.dtype))
                self.server.receive_masked(MaskedInput(agent=msg.agent, masked=masked))
                self._take_report(agent, env.body.get("report"))
            elif isinstance(msg, UnmaskResponse):
                self.server.receive_unmask(msg)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, MedflError):
                raise
            raise Rejected(f"{env.type} from {agent[:16]}: {exc}") from exc
        self.answered.add(agent)
        if self.expected <= self.answered:
            return self._close()
        return []

    def forget(self, agent: str) -> list[Outgoing]:
        """Stop waiting for an agent that went offline."""
        self.expected.discard(agent)
        if not self.done and self.expected <= self.answered:
            return self._close()
        return []

    def tick(self) -> list[Outgoing]:
        """Close the open stage if its deadline passed."""
        if not self.done and self.clock() >= self.deadline:
            log.info("job %s round %d %s: secagg stage %s deadline passed with %d/%d answers", self.session.job,
                     self.session.round, self.session.phase, self.server.stage, len(self.answered),
                     len(self.expected | self.answered))
            return self._close()
        return []

    # ---- stage changes -----------------------------------------------------------------
    def _next_stage(self, answered: set[str], deadline_s: float) -> None:
        self.expected = set(answered)
        self.answered = set()
        self.deadline = self.clock() + deadline_s

    def _close(self) -> list[Outgoing]:
        stage = self.server.stage
        self.stage_seconds[str(stage)] = self.clock() - self.started
        try:
            if stage == ServerStage.ADVERTISE:
                roster = self.server.close_advertise()
                env = envelopes.encode(roster, self.session)
                got = set(roster.keys)
                self._next_stage(got, self.stage_deadline_s)
                return [(a, env) for a in sorted(got)]
            if stage == ServerStage.SHARE:
                deliveries = self.server.close_sharing()
                self._next_stage(set(deliveries), self.collect_deadline_s)
                return [(a, envelopes.encode(d, self.session)) for a, d in sorted(deliveries.items())]
            if stage == ServerStage.COLLECT:
                request = self.server.close_collection()
                env = envelopes.encode(request, self.session)
                self.survivors = list(request.survivors)
                self._next_stage(set(request.survivors), self.stage_deadline_s)
                if request.dropped:
                    log.info("job %s round %d %s: %d agent(s) dropped after sharing keys; their masks are rebuilt "
                             "from the survivors' shares", self.session.job, self.session.round,
                             self.session.phase, len(request.dropped))
                return [(a, env) for a in request.survivors]
            if stage == ServerStage.UNMASK:
                self.result = self.server.finish()
                self.stage_seconds["finish"] = self.clock() - self.started
                log.info("job %s round %d %s: secure sum of %d agents unmasked", self.session.job,
                         self.session.round, self.session.phase, len(self.survivors))
                return []
        except SecAggAbort as exc:
            self.error = str(exc)
            log.warning("job %s round %d %s: secure aggregation aborted: %s", self.session.job, self.session.round,
                        self.session.phase, exc)
            return []
        raise OutOfOrder(f"secure sum cannot close stage {stage}")

