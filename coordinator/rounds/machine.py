"""The round state machine of one job: stages, the transition table, the run's state and the shared steps.

Stages and transitions (checked before any state changes)::

    waiting  -> fit | failed
    fit      -> evaluate | waiting (retry) | failed
    evaluate -> waiting (next round) | done | failed

:class:`RoundMachine` holds what every round shares, plain or secure: the checked transition,
the retry of a round short of agents, the stage check of an incoming message, and the close of
a round (checkpoint, then the round's row, then the next round). The plain round
(:mod:`coordinator.rounds.plain`) and the secure round (:mod:`coordinator.rounds.secure`) build
on it; :class:`~coordinator.rounds.job.JobRun` joins them.

Crash safety: a round's checkpoint is written atomically before its row is committed, and the
row commit is what advances ``rounds_done``; a restarted coordinator resumes from the last
committed round's checkpoint, so at most the round in flight is redone.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordinator.aggregation import Update, aggregate, mean_delta
from coordinator.rounds.secure_sum import SecureSum
from coordinator.server_optim import ServerOptimizer, ServerOptState, state_path
from coordinator.store import RoundRow, Store
from medfl.errors import OutOfOrder, StateError
from medfl.jobspec import JobSpec
from medfl.secagg.vector import FitSum
from medfl.wire import Envelope, MessageType

__all__ = ["TRANSITIONS", "Outgoing", "RoundMachine", "RunState", "Stage"]

log = logging.getLogger(__name__)

#: (agent fingerprint, message) pairs the daemon must send
Outgoing = tuple[str, Envelope]


class Stage(enum.StrEnum):
    """Where a job's current round stands."""

    WAITING = "waiting"
    FIT = "fit"
    EVALUATE = "evaluate"
    DONE = "done"
    FAILED = "failed"


TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.WAITING: frozenset({Stage.FIT, Stage.FAILED}),
    Stage.FIT: frozenset({Stage.EVALUATE, Stage.WAITING, Stage.FAILED}),
    Stage.EVALUATE: frozenset({Stage.WAITING, Stage.DONE, Stage.FAILED}),
    Stage.DONE: frozenset(),
    Stage.FAILED: frozenset(),
}


@dataclass
class RunState:
    """Mutable state of a job run (owned by :class:`~coordinator.rounds.job.JobRun`)."""

    stage: Stage = Stage.WAITING
    round: int = 1
    attempt: int = 1
    accepted: dict[str, str] = field(default_factory=dict)       # fingerprint -> agent name
    refused: dict[str, str] = field(default_factory=dict)        # fingerprint -> reason
    participants: dict[str, str] = field(default_factory=dict)
    updates: dict[str, tuple[dict[str, np.ndarray], int, float]] = field(default_factory=dict)
    epsilons: dict[str, tuple[float, float]] = field(default_factory=dict)  # fingerprint -> (epsilon, delta)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    deadline: float = math.inf
    round_started: float = 0.0
    candidate: dict[str, np.ndarray] | None = None
    message: str = ""
    waiting_since: float | None = None
    secure: SecureSum | None = None              # the open secure sum (fit or evaluate phase)
    fit_sum: FitSum | None = None                # what the unmasked fit sum revealed
    survivors: list[str] = field(default_factory=list)  # agents whose masked update is in the sum
    opt_pending: ServerOptState | None = None    # the server optimizer's state after the candidate's step
    client_rho: float | None = None              # client-level DP: the zCDP of the round's fit sum


class RoundMachine:
    """The steps every round of a job shares; see :class:`~coordinator.rounds.job.JobRun` for the parameters."""

    def __init__(self, *, job_id: str, spec: JobSpec, store: Store, checkpoint_dir: pathlib.Path,
                 eval_deadline_s: float = 120.0, clock: Callable[[], float] = time.monotonic):
        self.job_id = job_id
        self.spec = spec
        self.store = store
        self.dir = checkpoint_dir / job_id
        self.eval_deadline_s = eval_deadline_s
        self.clock = clock
        self.state = RunState()
        self.global_arrays: dict[str, np.ndarray] = {}
        self.server_opt = ServerOptimizer.from_spec(spec.aggregation)  # None: a stateless strategy

    # ---- helpers -----------------------------------------------------------------------
    def _goto(self, stage: Stage) -> None:
        if stage not in TRANSITIONS[self.state.stage]:
            raise StateError(f"job {self.job_id}: illegal transition {self.state.stage} -> {stage}")
        log.debug("job %s round %d: %s -> %s", self.job_id, self.state.round, self.state.stage, stage)
        self.state.stage = stage

    def _checkpoint_path(self, rnd: int) -> pathlib.Path:
        return self.dir / f"round-{rnd:04d}.safetensors"

    def _env(self, mtype: MessageType, body: Mapping[str, Any] | None = None,
             tensors: Mapping[str, np.ndarray] | None = None) -> Envelope:
        return Envelope(type=mtype, job=self.job_id, round=self.state.round, body=dict(body or {}),
                        tensors=dict(tensors or {}))

    @property
    def finished(self) -> bool:
        """True once the job is done or failed."""
        return self.state.stage in (Stage.DONE, Stage.FAILED)

    def _check_stage(self, env: Envelope, stage: Stage) -> None:
        if env.job != self.job_id or env.round != self.state.round or self.state.stage != stage:
            raise OutOfOrder(f"{env.type} for job {env.job} round {env.round} but job {self.job_id} is in round "
                             f"{self.state.round} stage {self.state.stage}")

    # ---- shared transitions ------------------------------------------------------------
    def _retry(self, msg: str) -> list[Outgoing]:
        s = self.state
        log.warning("job %s: %s", self.job_id, msg)
        self.store.event(self.job_id, "retry", msg)
        s.secure = None
        if s.attempt > self.spec.job.max_round_retries:
            self._goto(Stage.FAILED)
            s.message = msg + "; out of retries"
            return []
        self._goto(Stage.WAITING)
        s.attempt += 1
        s.participants = {}
        return []

    def _row(self, path: pathlib.Path) -> RoundRow:
        """The closing round's row (the plain or the secure round says how)."""
        raise NotImplementedError

    def _aggregate_updates(self, updates: list[Update]) -> dict[str, np.ndarray]:
        """The candidate model from clear updates (raises ValueError when they cannot be combined)."""
        agg = self.spec.aggregation
        if self.server_opt is None:
            return aggregate(agg.strategy, self.global_arrays, updates, server_lr=agg.server_lr)
        return self._aggregate_delta(mean_delta(self.global_arrays, updates))

    def _aggregate_delta(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The candidate model from the round's mean delta (all a secure sum reveals)."""
        agg = self.spec.aggregation
        if self.server_opt is None:
            moved = {k: (v + delta[k]).astype(np.float32) if k in delta else v for k, v in self.global_arrays.items()}
            return aggregate(agg.strategy, self.global_arrays, [(moved, 1)], server_lr=agg.server_lr)
        candidate, self.state.opt_pending = self.server_opt.propose(self.global_arrays, delta)
        return candidate

    def _close_evaluate(self) -> list[Outgoing]:
        from medfl.models.weights import save_checkpoint

        s = self.state
        if s.candidate is None:
            raise StateError(f"job {self.job_id}: evaluate stage without an aggregated model")
        path = self._checkpoint_path(s.round)
        save_checkpoint(path, s.candidate, {"job_id": self.job_id, "round": str(s.round),
                                            "model": self.spec.job.model,
                                            "model_args": json.dumps(self.spec.job.model_args, sort_keys=True)})
        if self.server_opt is not None:
            if s.opt_pending is None:
                raise StateError(f"job {self.job_id}: round {s.round} closes without its server optimizer step")
            self.server_opt.save(state_path(path), s.opt_pending, job_id=self.job_id, rnd=s.round)
        row = self._row(path)
        s.secure = None
        self.store.record_round(row)
        if self.server_opt is not None and s.opt_pending is not None:
            self.server_opt.commit(s.opt_pending)
            s.opt_pending = None
        log.info("job %s round %d done: %d agents, val_auc=%s%s", self.job_id, s.round, row.agents,
                 f"{row.val_auc:.4f}" if row.val_auc is not None else "n/a",
                 f", epsilon={row.epsilon:.3f} at delta={row.delta:g}" if row.epsilon is not None else "")
        self.global_arrays = s.candidate
        s.candidate = None
        if s.round >= self.spec.job.rounds:
            self._goto(Stage.DONE)
            return []
        self._goto(Stage.WAITING)
        s.round += 1
        s.attempt = 1
        s.participants = {}
        return []

    def _privacy_columns(self, agents: Iterable[str], client: dict[str, Any] | None = None) -> dict[str, Any]:
        """Epsilon (the largest over the agents), delta and each agent's epsilon, from their reports.

        ``client`` holds the client-level DP columns (with the job's delta, used when no agent
        reported a DP-SGD delta).
        """
        s = self.state
        members = set(agents)
        eps = {s.participants.get(fp, fp[:16]): e for fp, (e, _) in s.epsilons.items() if fp in members}
        deltas = [d for fp, (_, d) in s.epsilons.items() if fp in members and math.isfinite(d)]
        client = dict(client or {})
        delta = max(deltas) if deltas else client.get("delta")
        client.pop("delta", None)
        return {"epsilon": max(eps.values()) if eps else None, "delta": delta, "epsilons": eps, **client}
