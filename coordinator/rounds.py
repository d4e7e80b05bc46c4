"""The federated-round state machine of one job at the coordinator.

One :class:`JobRun` drives a job through synchronous rounds: wait until ``min_agents``
accepted agents are online, send them the global weights (TRAIN), collect their trained
weights (UPDATE) until all answered or the round deadline passed, aggregate (FedAvg weighted
by sample count, or FedProx), send the new global model for validation (EVALUATE), collect the
metrics, then persist the checkpoint (safetensors) and the round row (SQLite) before moving on.
A round whose deadline passes with fewer than ``min_agents`` updates is retried, up to
``max_round_retries`` times.

With secure aggregation (the default, ``[aggregation] secure = true``) the agents never send
their weights or metrics in the clear: TRAIN and EVALUATE carry the secure-sum parameters, and
each phase runs a :class:`~coordinator.secure.SecureSum` (advertise keys -> share keys ->
masked input -> unmask) whose unmasked result is the weighted sum of the deltas, the sample
counts and the losses (fit) or of the validation metrics (evaluate), laid out as
:mod:`medfl.secagg.vector` says. A secure sum that falls below its threshold aborts and the
round is retried like a round short of ``min_agents``. The object is pure logic: it returns the messages to send and
never touches a socket, so it is tested without a network.

Stages and transitions (checked before any state changes)::

    waiting  -> fit | failed
    fit      -> evaluate | waiting (retry) | failed
    evaluate -> waiting (next round) | done | failed

Crash safety: a round's checkpoint is written atomically before its row is committed, and the
row commit is what advances ``rounds_done``; a restarted coordinator resumes from the last
committed round's checkpoint, so at most the round in flight is redone.

References
----------
.. [1] McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
   Data", AISTATS 2017.
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

from coordinator.aggregation import aggregate
from coordinator.secure import SecureSum
from coordinator.store import RoundRow, Store
from medfl.errors import NonFiniteError, OutOfOrder, Rejected, ShareError, StateError
from medfl.jobspec import JobSpec
from medfl.secagg import envelopes
from medfl.secagg.quantization import choose_spec
from medfl.secagg.vector import METRICS_LENGTH, FitSum, MetricsSum, fit_length, unpack_fit, unpack_metrics
from medfl.wire import Envelope, MessageType

__all__ = ["JobRun", "Outgoing", "Stage"]

log = logging.getLogger(__name__)

#: (agent fingerprint, message) pairs the daemon must send
Outgoing = tuple[str, Envelope]
#: how long a waiting round waits for online agents that have not answered the job offer yet
OFFER_GRACE_S = 5.0


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
    """Mutable state of a job run (owned by :class:`JobRun`)."""

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


class JobRun:
    """Drive one job through its rounds.

    Parameters
    ----------
    job_id : str
        The job's id in the store.
    spec : JobSpec
        The parsed job file.
    store : Store
        Persistent state.
    checkpoint_dir : Path
        Root folder for checkpoints (one sub-folder per job).
    eval_deadline_s : float
        How long to wait for validation metrics after aggregation.
    clock : callable
        Monotonic clock (injectable for tests).
    """

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

    def describe(self) -> str:
        """One line for ``status``."""
        s = self.state
        secure = f", secagg {s.secure.session.phase}:{s.secure.stage}" if s.secure is not None else ""
        return (f"job {self.job_id} round {s.round}/{self.spec.job.rounds} attempt {s.attempt} {s.stage}: "
                f"{len(s.accepted)} accepted, {len(s.participants)} in round, {len(s.updates)} updates{secure}")

    # ---- start / resume ----------------------------------------------------------------
    def start(self) -> None:
        """Load the last committed round's checkpoint (resume) or create the initial model."""
        from medfl.models import create_model
        from medfl.models.weights import load_checkpoint, save_checkpoint, state_arrays

        self.dir.mkdir(parents=True, exist_ok=True)
        done = self.store.rounds(self.job_id)
        if done:
            last = done[-1]
            arrays, meta = load_checkpoint(last.checkpoint)
            if meta.get("job_id") != self.job_id or int(meta.get("round", -1)) != last.round:
                raise StateError(f"checkpoint {last.checkpoint} does not belong to job {self.job_id} round "
                                 f"{last.round} (metadata {meta})")
            self.global_arrays = dict(arrays)
            self.state.round = last.round + 1
            log.info("job %s: resuming after round %d from %s", self.job_id, last.round, last.checkpoint)
            self.store.event(self.job_id, "resumed", f"resuming after round {last.round}")
        else:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.spec.job.seed)  # model init only; not a secret
                model = create_model(self.spec.job.model, **self.spec.job.model_args)
            self.global_arrays = state_arrays(model)
            save_checkpoint(self._checkpoint_path(0), self.global_arrays,
                            {"job_id": self.job_id, "round": "0", "model": self.spec.job.model,
                                            "model_args": json.dumps(self.spec.job.model_args, sort_keys=True)})
        if self.state.round > self.spec.job.rounds:
            self._goto(Stage.DONE)

    # ---- agents come and go ------------------------------------------------------------
    def offer(self, fingerprint: str) -> list[Outgoing]:
        """Offer the job to an agent that just said hello (again)."""
        if self.finished:
            return []
        self.state.refused.pop(fingerprint, None)
        return [(fingerprint, self._env(MessageType.JOB_OFFER, self.spec.to_dict()))]

    def on_accept(self, fingerprint: str, name: str) -> None:
        """An agent accepted the job under its policy."""
        self.state.accepted[fingerprint] = name

    def on_refuse(self, fingerprint: str, reason: str, *, name: str = "") -> list[Outgoing]:
        """An agent refused the job (or a round, e.g. its privacy budget is spent) under its policy.

        A refused plain round no longer waits for that agent: when every remaining participant has
        answered, the round closes now instead of at its deadline. A secure sum forgets it (its
        masks are recovered from the others' shares).
        """
        s = self.state
        s.accepted.pop(fingerprint, None)
        s.refused[fingerprint] = reason
        who = f"{name} ({fingerprint[:16]})" if name else fingerprint[:16]
        log.warning("job %s: agent %s refused: %s", self.job_id, who, reason)
        self.store.event(self.job_id, "refused", f"{who}: {reason}")
        if s.stage == Stage.FIT and s.participants.pop(fingerprint, None) is not None and s.secure is None \
                and set(s.updates) >= set(s.participants):
            return self._close_fit()
        return self._forget(fingerprint)

    def on_offline(self, fingerprint: str) -> list[Outgoing]:
        """An agent disconnected or stopped heart-beating.

        A plain round keeps it as a participant until the deadline; a secure sum stops waiting
        for it (its masks are rebuilt from the others' shares if it had shared its keys).
        """
        self.state.accepted.pop(fingerprint, None)
        return self._forget(fingerprint)

    def _forget(self, fingerprint: str) -> list[Outgoing]:
        s = self.state
        if s.secure is None or s.stage not in (Stage.FIT, Stage.EVALUATE):
            return []
        return s.secure.forget(fingerprint) + self._after_secure()

    # ---- the round ---------------------------------------------------------------------
    def tick(self, online: set[str]) -> list[Outgoing]:
        """Advance on time: start a round when enough agents are ready, close stages at deadlines."""
        s = self.state
        now = self.clock()
        if s.stage == Stage.WAITING:
            ready = [fp for fp in s.accepted if fp in online]
            undecided = [fp for fp in online if fp not in s.accepted and fp not in s.refused]
            if s.waiting_since is None:
                s.waiting_since = now
            # start once enough agents are ready and every online agent has answered the offer
            # (or OFFER_GRACE_S has passed), so a round includes every hospital that is there
            enough = len(ready) >= self._min_ready()
            if enough and (not undecided or now - s.waiting_since >= OFFER_GRACE_S):
                s.waiting_since = None
                return self._start_fit(ready)
            s.message = f"waiting for agents: {len(ready)}/{self._min_ready()} ready"
        elif s.secure is not None and s.stage in (Stage.FIT, Stage.EVALUATE):
            return s.secure.tick() + self._after_secure()
        elif s.stage == Stage.FIT and now >= s.deadline:
            return self._close_fit()
        elif s.stage == Stage.EVALUATE and now >= s.deadline:
            return self._close_evaluate()
        return []

    def _min_ready(self) -> int:
        """Agents a round needs before it starts (secure aggregation: at least 2 and the threshold)."""
        agg = self.spec.aggregation
        if not agg.secure:
            return self.spec.job.min_agents
        return max(self.spec.job.min_agents, agg.threshold, 2)

    def _secure_sum(self, phase: str, agents: list[str], length: int, collect_deadline_s: float) -> SecureSum:
        agg = self.spec.aggregation
        spec = choose_spec(n_agents=len(agents), clip_norm=agg.clip_norm, frac_bits=agg.frac_bits)
        session = envelopes.Session(job=self.job_id, round=self.state.round, attempt=self.state.attempt, phase=phase)
        return SecureSum(session=session, agents=agents, threshold=agg.threshold_for(len(agents)),
                         degree=agg.neighbours, spec=spec, length=length, stage_deadline_s=agg.stage_deadline_s,
                         collect_deadline_s=collect_deadline_s, clock=self.clock)

    def _secure_envelopes(self, mtype: MessageType, body: Mapping[str, Any],
                          tensors: Mapping[str, np.ndarray]) -> list[Outgoing]:
        """One envelope per agent of the open secure sum (each is told its own agent id)."""
        s, agg = self.state, self.spec.aggregation
        if s.secure is None:
            raise StateError("no secure sum is open")
        return [(fp, self._env(mtype, {**body, "secure": {**s.secure.params(fp), "clip_norm": agg.clip_norm,
                                                          "sample_cap": agg.sample_cap}}, tensors))
                for fp in sorted(s.secure.expected)]

    def _start_fit(self, ready: list[str]) -> list[Outgoing]:
        s = self.state
        if self.spec.job.max_agents:
            ready = sorted(ready)[: self.spec.job.max_agents]
        self._goto(Stage.FIT)
        s.participants = {fp: s.accepted[fp] for fp in ready}
        s.updates = {}
        s.epsilons = {}
        s.metrics = {}
        s.candidate = None
        s.round_started = self.clock()
        s.deadline = s.round_started + self.spec.job.round_deadline_s
        s.secure, s.fit_sum, s.survivors = None, None, []
        t = self.spec.training
        body = {"participants": len(ready), "local_epochs": t.local_epochs, "batch_size": t.batch_size,
                "optimizer": t.optimizer,
                "lr": t.lr, "momentum": t.momentum, "weight_decay": t.weight_decay,
                "fedprox_mu": self.spec.prox_mu, "attempt": s.attempt}
        log.info("job %s round %d attempt %d: training on %d agents (%s aggregation)", self.job_id, s.round,
                 s.attempt, len(ready), self.spec.aggregation.label)
        if self.spec.aggregation.secure:
            s.deadline = math.inf  # the secure sum's stages carry the deadlines
            s.secure = self._secure_sum("fit", ready, fit_length(self.global_arrays), self.spec.job.round_deadline_s)
            return self._secure_envelopes(MessageType.TRAIN, body, self.global_arrays)
        env = self._env(MessageType.TRAIN, body, self.global_arrays)
        return [(fp, env) for fp in ready]

    # ---- secure rounds -----------------------------------------------------------------
    def on_secagg(self, fingerprint: str, env: Envelope) -> list[Outgoing]:
        """A secure-aggregation message of an agent (keys, sealed shares, masked input, unmask shares)."""
        s = self.state
        session = envelopes.Session.of(env)
        if s.secure is None or s.secure.session != session:
            raise OutOfOrder(f"{env.type} for {session.phase} attempt {session.attempt} of round {session.round}, "
                             f"but job {self.job_id} is in round {s.round} attempt {s.attempt} stage {s.stage}")
        return s.secure.on_message(fingerprint, env) + self._after_secure()

    def _after_secure(self) -> list[Outgoing]:
        s = self.state
        if s.secure is None or not s.secure.done:
            return []
        if s.stage == Stage.FIT:
            return self._close_fit_secure()
        if s.stage == Stage.EVALUATE:
            return self._close_evaluate()
        return []

    def _close_fit_secure(self) -> list[Outgoing]:
        s, agg = self.state, self.spec.aggregation
        run = s.secure
        if run is None:
            raise StateError("no secure sum to close")
        if run.error is not None or run.result is None:
            return self._retry(f"round {s.round} attempt {s.attempt}: secure aggregation aborted: {run.error}")
        if len(run.survivors) < self.spec.job.min_agents:
            return self._retry(f"round {s.round} attempt {s.attempt}: {len(run.survivors)} masked update(s) in the "
                               f"sum, min_agents={self.spec.job.min_agents}")
        try:
            fit = unpack_fit(run.result, self.global_arrays, clip_norm=agg.clip_norm, sample_cap=agg.sample_cap)
        except (ShareError, NonFiniteError) as exc:
            return self._retry(f"round {s.round} attempt {s.attempt}: the unmasked sum is unusable: {exc}")
        moved = {k: (v + fit.mean_delta[k]).astype(np.float32) if k in fit.mean_delta else v
                 for k, v in self.global_arrays.items()}
        try:
            s.candidate = aggregate(agg.strategy, self.global_arrays, [(moved, 1)], server_lr=agg.server_lr)
        except ValueError as exc:
            self._goto(Stage.FAILED)
            s.message = f"aggregation failed in round {s.round}: {exc}"
            return []
        s.fit_sum, s.survivors = fit, list(run.survivors)
        s.epsilons = {fp: rep for fp, rep in run.reports.items() if fp in s.survivors}
        if self.spec.privacy.enabled and set(s.survivors) - set(s.epsilons):
            log.warning("job %s round %d: %d agent(s) sent no epsilon for a DP job", self.job_id, s.round,
                        len(set(s.survivors) - set(s.epsilons)))
        self._goto(Stage.EVALUATE)
        s.deadline = math.inf
        s.secure = self._secure_sum("evaluate", s.survivors, METRICS_LENGTH, self.eval_deadline_s)
        return self._secure_envelopes(MessageType.EVALUATE, {}, s.candidate)

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

    def _check_stage(self, env: Envelope, stage: Stage) -> None:
        if env.job != self.job_id or env.round != self.state.round or self.state.stage != stage:
            raise OutOfOrder(f"{env.type} for job {env.job} round {env.round} but job {self.job_id} is in round "
                             f"{self.state.round} stage {self.state.stage}")

    def on_update(self, fingerprint: str, env: Envelope) -> list[Outgoing]:
        """An agent's trained weights for the open round."""
        self._check_stage(env, Stage.FIT)
        s = self.state
        if self.spec.aggregation.secure:
            raise Rejected(f"plain UPDATE in round {s.round} of job {self.job_id}, which uses secure aggregation; "
                           "send a MASKED_INPUT")
        if fingerprint not in s.participants:
            raise OutOfOrder(f"agent {fingerprint[:16]} is not a participant of round {s.round}")
        arrays = {k: np.asarray(v) for k, v in env.tensors.items()}
        bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
        if bad:
            log.warning("job %s round %d: dropping update of %s with non-finite values in %s",
                        self.job_id, s.round, fingerprint[:16], bad[:3])
            s.participants.pop(fingerprint)
        else:
            n = int(env.body.get("num_samples", 0))
            s.updates[fingerprint] = (arrays, n, float(env.body.get("train_loss", math.nan)))
            if env.body.get("epsilon") is not None:
                s.epsilons[fingerprint] = (float(env.body["epsilon"]), float(env.body.get("delta", math.nan)))
            elif self.spec.privacy.enabled:
                log.warning("job %s round %d: agent %s sent no epsilon for a DP job", self.job_id, s.round,
                            fingerprint[:16])
        if set(s.updates) >= set(s.participants):
            return self._close_fit()
        return []

    def _close_fit(self) -> list[Outgoing]:
        s = self.state
        if len(s.updates) < self.spec.job.min_agents:
            missing = sorted(set(s.participants) - set(s.updates))
            return self._retry(f"round {s.round} attempt {s.attempt}: {len(s.updates)} update(s) by the deadline, "
                               f"min_agents={self.spec.job.min_agents}; missing {[m[:16] for m in missing]}")
        try:
            s.candidate = aggregate(self.spec.aggregation.strategy, self.global_arrays,
                                    [(a, n) for a, n, _ in s.updates.values()],
                                    server_lr=self.spec.aggregation.server_lr)
        except ValueError as exc:
            self._goto(Stage.FAILED)
            s.message = f"aggregation failed in round {s.round}: {exc}"
            return []
        self._goto(Stage.EVALUATE)
        s.deadline = self.clock() + self.eval_deadline_s
        targets = [fp for fp in s.updates]
        env = self._env(MessageType.EVALUATE, {}, s.candidate)
        return [(fp, env) for fp in targets]

    def on_metrics(self, fingerprint: str, env: Envelope) -> list[Outgoing]:
        """An agent's validation metrics of the new global model."""
        self._check_stage(env, Stage.EVALUATE)
        s = self.state
        if self.spec.aggregation.secure:
            raise Rejected(f"plain METRICS in round {s.round} of job {self.job_id}, which uses secure aggregation; "
                           "send a MASKED_INPUT")
        if fingerprint not in s.updates:
            raise OutOfOrder(f"agent {fingerprint[:16]} was not asked to evaluate round {s.round}")
        s.metrics[fingerprint] = {k: float(env.body.get(k, math.nan)) for k in ("n", "auc", "accuracy", "loss")}
        if set(s.metrics) >= set(s.updates):
            return self._close_evaluate()
        return []

    def _close_evaluate(self) -> list[Outgoing]:
        from medfl.models.weights import save_checkpoint

        s = self.state
        if s.candidate is None:
            raise StateError(f"job {self.job_id}: evaluate stage without an aggregated model")
        path = self._checkpoint_path(s.round)
        save_checkpoint(path, s.candidate, {"job_id": self.job_id, "round": str(s.round),
                                            "model": self.spec.job.model,
                                            "model_args": json.dumps(self.spec.job.model_args, sort_keys=True)})
        if s.secure is not None:
            row = self._secure_row(path)
        else:
            n_train = sum(n for _, n, _ in s.updates.values())
            row = RoundRow(
                job_id=self.job_id, round=s.round, attempts=s.attempt, agents=len(s.updates),
                agent_names=tuple(sorted(s.participants.get(fp, fp[:16]) for fp in s.updates)),
                num_samples=n_train,
                train_loss=_weighted([(n, loss) for _, n, loss in s.updates.values()]),
                val_auc=_weighted([(m["n"], m["auc"]) for m in s.metrics.values()]),
                val_accuracy=_weighted([(m["n"], m["accuracy"]) for m in s.metrics.values()]),
                val_loss=_weighted([(m["n"], m["loss"]) for m in s.metrics.values()]),
                val_samples=int(sum(m["n"] for m in s.metrics.values() if math.isfinite(m["n"]))),
                seconds=self.clock() - s.round_started, finished_at=time.time(), checkpoint=str(path),
                **self._privacy_columns(s.updates))
        s.secure = None
        self.store.record_round(row)
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


    def _secure_row(self, path: pathlib.Path) -> RoundRow:
        """The round's row from the two secure sums (the evaluate sum may have aborted: no metrics)."""
        s, agg = self.state, self.spec.aggregation
        fit, run = s.fit_sum, s.secure
        if fit is None or run is None:
            raise StateError(f"job {self.job_id}: secure round {s.round} closed without its fit sum")
        metrics = MetricsSum(n=0, auc=None, accuracy=None, loss=None)
        if run.result is not None:
            try:
                metrics = unpack_metrics(run.result, clip_norm=agg.clip_norm, sample_cap=agg.sample_cap)
            except ShareError as exc:
                self.store.event(self.job_id, "metrics", f"round {s.round}: validation sum unusable: {exc}")
        else:
            self.store.event(self.job_id, "metrics", f"round {s.round}: validation metrics not aggregated: "
                                                     f"{run.error}")
        return RoundRow(
            job_id=self.job_id, round=s.round, attempts=s.attempt, agents=len(s.survivors),
            agent_names=tuple(sorted(s.participants.get(fp, fp[:16]) for fp in s.survivors)),
            num_samples=fit.num_samples, train_loss=fit.train_loss, val_auc=metrics.auc,
            val_accuracy=metrics.accuracy, val_loss=metrics.loss, val_samples=metrics.n,
            seconds=self.clock() - s.round_started, finished_at=time.time(), checkpoint=str(path),
            **self._privacy_columns(s.survivors))

    def _privacy_columns(self, agents: Iterable[str]) -> dict[str, Any]:
        """Epsilon (the largest over the agents), delta and each agent's epsilon, from their reports."""
        s = self.state
        members = set(agents)
        eps = {s.participants.get(fp, fp[:16]): e for fp, (e, _) in s.epsilons.items() if fp in members}
        deltas = [d for fp, (_, d) in s.epsilons.items() if fp in members and math.isfinite(d)]
        return {"epsilon": max(eps.values()) if eps else None, "delta": max(deltas) if deltas else None,
                "epsilons": eps}


def _weighted(pairs: list[tuple[float, float]]) -> float | None:
    good = [(w, v) for w, v in pairs if math.isfinite(w) and w > 0 and math.isfinite(v)]
    total = sum(w for w, _ in good)
    return sum(w * v for w, v in good) / total if total > 0 else None
