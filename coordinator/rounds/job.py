"""One job driven through its federated rounds at the coordinator: :class:`JobRun`.

One :class:`JobRun` drives a job through synchronous rounds: wait until ``min_agents``
accepted agents are online, send them the global weights (TRAIN), collect their trained
weights or their secure sum, aggregate, send the new global model for validation (EVALUATE),
collect the metrics, then persist the checkpoint (safetensors) and the round row (SQLite)
before moving on. A round whose deadline passes with fewer than ``min_agents`` updates is
retried, up to ``max_round_retries`` times.

The stages and the steps every round shares are :mod:`coordinator.rounds.machine`; the plain
round is :mod:`coordinator.rounds.plain`, the secure round :mod:`coordinator.rounds.secure`.
This module holds what picks between them: the start (or resume), the agents coming and
going, and the clock. The object is pure logic: it returns the messages to send and never
touches a socket, so it is tested without a network.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib

from coordinator.rounds.machine import Outgoing, Stage
from coordinator.rounds.plain import PlainRounds
from coordinator.rounds.secure import SecureRounds
from coordinator.store import RoundRow
from medfl.errors import OutOfOrder, StateError
from medfl.safetext import escape
from medfl.secagg.envelopes import SECAGG_FROM_AGENT
from medfl.wire import Envelope, MessageType
from medfl.wire.bodies import MAX_REASON, parse_refuse

__all__ = ["JOB_FROM_AGENT", "JobRun"]

log = logging.getLogger(__name__)

#: the agents' messages about a running job
JOB_FROM_AGENT = frozenset({MessageType.JOB_ACCEPT, MessageType.JOB_REFUSE, MessageType.UPDATE,
                            MessageType.METRICS, *SECAGG_FROM_AGENT})

#: how long a waiting round waits for online agents that have not answered the job offer yet
OFFER_GRACE_S = 5.0


class JobRun(PlainRounds, SecureRounds):
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
            if self.server_opt is not None:
                from coordinator.server_optim import state_path

                self.server_opt.load(state_path(last.checkpoint), job_id=self.job_id, rnd=last.round)
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

    def on_agent_message(self, fingerprint: str, name: str, env: Envelope) -> list[Outgoing]:
        """An agent's message about this job (:data:`JOB_FROM_AGENT`); the messages to send in reply.

        The daemon (:mod:`coordinator.service`) calls this for what arrives over CurveZMQ and the
        simulation (:mod:`apps.simulate`) for what its Ray actors return: both run this code.
        """
        mtype = env.type
        if env.job != self.job_id:
            raise OutOfOrder(f"{mtype} for job {env.job!r} but this run is job {self.job_id}")
        if mtype in SECAGG_FROM_AGENT:
            return self.on_secagg(fingerprint, env)
        if mtype == MessageType.JOB_ACCEPT:
            self.on_accept(fingerprint, name)
            return []
        if mtype == MessageType.JOB_REFUSE:
            return self.on_refuse(fingerprint, escape(parse_refuse(env.body).reason, limit=MAX_REASON), name=name)
        if mtype == MessageType.UPDATE:
            return self.on_update(fingerprint, env)
        if mtype == MessageType.METRICS:
            return self.on_metrics(fingerprint, env)
        raise OutOfOrder(f"agents do not send {mtype} about a job")

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
        s.opt_pending = None
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
            s.secure = self._secure_sum("fit", ready, self._fit_length(), self.spec.job.round_deadline_s)
            return self._secure_envelopes(MessageType.TRAIN, body, self.global_arrays)
        env = self._env(MessageType.TRAIN, body, self.global_arrays)
        return [(fp, env) for fp in ready]

    def _row(self, path: pathlib.Path) -> RoundRow:
        """The closing round's row: from the secure sums when one is open, else from the clear updates."""
        return self._secure_row(path) if self.state.secure is not None else self._plain_row(path)
