"""The plain round (``[aggregation] secure = false``): weights and metrics travel in the clear.

The coordinator collects each participant's trained weights (UPDATE) until all answered or the
round deadline passed, aggregates them (FedAvg weighted by sample count, FedProx, or a server optimizer), sends the
new global model for validation (EVALUATE) and collects the metrics (METRICS). Fewer than
``min_agents`` updates by the deadline retries the round. A secure job refuses both messages.

References
----------
.. [1] McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
   Data", AISTATS 2017.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time

import numpy as np

from coordinator.rounds.machine import Outgoing, RoundMachine, Stage
from coordinator.store import RoundRow
from medfl.errors import OutOfOrder, Rejected
from medfl.wire import Envelope, MessageType
from medfl.wire.bodies import parse_metrics, parse_update

__all__ = ["PlainRounds"]

log = logging.getLogger(__name__)


class PlainRounds(RoundMachine):
    """The plain round's messages and its close (joined into :class:`~coordinator.rounds.job.JobRun`)."""

    def on_update(self, fingerprint: str, env: Envelope) -> list[Outgoing]:
        """An agent's trained weights for the open round."""
        self._check_stage(env, Stage.FIT)
        s = self.state
        if self.spec.aggregation.secure:
            raise Rejected(f"plain UPDATE in round {s.round} of job {self.job_id}, which uses secure aggregation; "
                           "send a MASKED_INPUT")
        if fingerprint not in s.participants:
            raise OutOfOrder(f"agent {fingerprint[:16]} is not a participant of round {s.round}")
        body = parse_update(env.body)
        arrays = {k: np.asarray(v) for k, v in env.tensors.items()}
        bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
        if bad:
            log.warning("job %s round %d: dropping update of %s with non-finite values in %s",
                        self.job_id, s.round, fingerprint[:16], bad[:3])
            s.participants.pop(fingerprint)
        else:
            s.updates[fingerprint] = (arrays, body.num_samples, body.train_loss)
            if body.epsilon is not None:
                s.epsilons[fingerprint] = (body.epsilon, math.nan if body.delta is None else body.delta)
            elif self.spec.privacy.sample_level:
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
            s.candidate = self._aggregate_updates([(a, n) for a, n, _ in s.updates.values()])
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
        s.metrics[fingerprint] = parse_metrics(env.body).as_dict()
        if set(s.metrics) >= set(s.updates):
            return self._close_evaluate()
        return []

    def _plain_row(self, path: pathlib.Path) -> RoundRow:
        """The round's row from the clear updates and metrics (sample-weighted means)."""
        s = self.state
        n_train = sum(n for _, n, _ in s.updates.values())
        return RoundRow(
            job_id=self.job_id, round=s.round, attempts=s.attempt, agents=len(s.updates),
            agent_names=tuple(sorted(s.participants.get(fp, fp[:16]) for fp in s.updates)),
            num_samples=n_train,
            train_loss=_weighted([(n, loss) for _, n, loss in s.updates.values()]),
            val_auc=_weighted([(m["n"], m["auc"]) for m in s.metrics.values()]),
            val_accuracy=_weighted([(m["n"], m["accuracy"]) for m in s.metrics.values()]),
            val_loss=_weighted([(m["n"], m["loss"]) for m in s.metrics.values()]),
            val_samples=int(sum(m["n"] for m in s.metrics.values() if math.isfinite(m["n"]))),
            seconds=self.clock() - s.round_started, finished_at=time.time(), checkpoint=str(path),
            val_metrics={k: _weighted([(m["n"], m[k]) for m in s.metrics.values() if k in m])
                         for k in sorted({k for m in s.metrics.values() for k in m} - _CORE_METRICS)},
            **self._privacy_columns(s.updates))


#: the metrics with columns of their own (the rest go to ``val_metrics``)
_CORE_METRICS = {"n", "auc", "accuracy", "loss"}


def _weighted(pairs: list[tuple[float, float]]) -> float | None:
    good = [(w, v) for w, v in pairs if math.isfinite(w) and w > 0 and math.isfinite(v)]
    total = sum(w for w, _ in good)
    return sum(w * v for w, v in good) / total if total > 0 else None
