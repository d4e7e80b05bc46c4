"""The agent's differential-privacy budget: plan each round's DP-SGD, check it, record it.

Before a round the agent plans the DP-SGD it would run (Poisson rate ``q = batch_size / n``,
``local_epochs * round(1/q)`` steps, the job's noise multiplier or the one that meets its
``target_epsilon`` over all its rounds), computes what the job and the dataset would have spent
with this round added (from the ledger, which holds every earlier round and job), and refuses
the round under agent.toml's policy. After training, the run is written to the ledger before
the update leaves the agent. Totals over a dataset always use the RDP accountant at
``policy.total_delta``; a job's own epsilon uses the job's accountant and delta.

References
----------
.. [1] M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
.. [2] I. Mironov, "Renyi differential privacy", CSF 2017 (composition across jobs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent import policy as policy_checks
from agent.config import PolicySection
from medfl.errors import PolicyViolation
from medfl.jobspec import JobSpec
from medfl.privacy.accountant import SgdRun, epsilon, noise_multiplier_for
from medfl.privacy.ledger import Ledger, LedgerEntry
from medfl.privacy.trainer import steps_per_epoch

__all__ = ["Budget", "RoundPlan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundPlan:
    """The DP-SGD one round runs at this agent (sent to the coordinator with the update)."""

    sample_rate: float
    noise_multiplier: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    max_physical_batch: int

    @property
    def run(self) -> SgdRun:
        """The round as an accountant run."""
        return SgdRun(self.sample_rate, self.noise_multiplier, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the UPDATE message."""
        return dict(self.__dict__)


class Budget:
    """Plans, checks and records the DP-SGD of one agent's dataset.

    Parameters
    ----------
    ledger : Ledger
        The agent's persistent ledger.
    dataset : str
        The dataset's ledger key (:func:`medfl.privacy.ledger.dataset_key`).
    policy : PolicySection
        agent.toml's ``[policy]``.
    """

    def __init__(self, *, ledger: Ledger, dataset: str, policy: PolicySection):
        self.ledger, self.dataset, self.policy = ledger, dataset, policy
        self._sigmas: dict[tuple[Any, ...], float] = {}

    def plan(self, spec: JobSpec, *, n_train: int) -> RoundPlan:
        """The round's DP-SGD for ``spec`` on ``n_train`` records (the job must have DP enabled)."""
        dp, t = spec.privacy, spec.training
        q = min(1.0, t.batch_size / n_train)
        steps = t.local_epochs * steps_per_epoch(q)
        sigma = dp.noise_multiplier
        if sigma is None:
            key = (dp.target_epsilon, dp.delta, q, steps, spec.job.rounds, dp.accountant)
            if key not in self._sigmas:
                # the whole job (every round) within target_epsilon; deterministic, so a restarted
                # agent finds the same sigma
                self._sigmas[key] = noise_multiplier_for(
                    target_epsilon=float(dp.target_epsilon or 0), delta=dp.delta, sample_rate=q,
                    steps=steps * spec.job.rounds, accountant=dp.accountant)
                log.info("job %s: noise multiplier %.4f for epsilon %s over %d rounds", spec.job.name,
                         self._sigmas[key], dp.target_epsilon, spec.job.rounds)
            sigma = self._sigmas[key]
        return RoundPlan(sample_rate=q, noise_multiplier=float(sigma), steps=steps, max_grad_norm=dp.max_grad_norm,
                         delta=dp.delta, accountant=dp.accountant, max_physical_batch=dp.max_physical_batch)

    def spent(self, job_id: str, plan: RoundPlan, *, extra: tuple[SgdRun, ...] = ()) -> tuple[float, float]:
        """(job epsilon, dataset total epsilon) with ``extra`` runs added to what the ledger holds."""
        job_runs = [*self.ledger.runs(dataset=self.dataset, job_id=job_id), *extra]
        all_runs = [*self.ledger.runs(dataset=self.dataset), *extra]
        return (epsilon(job_runs, delta=plan.delta, accountant=plan.accountant),
                epsilon(all_runs, delta=self.policy.total_delta, accountant="rdp"))

    def check(self, job_id: str, spec: JobSpec, plan: RoundPlan, *, round: int) -> tuple[float, float]:
        """Raise PolicyViolation if the round would overspend; else return the spend it would leave."""
        job_eps, total_eps = self.spent(job_id, plan, extra=(plan.run,))
        target = spec.privacy.target_epsilon
        if target is not None and job_eps > target * (1 + 1e-9):
            raise PolicyViolation(
                f"privacy budget: round {round} of job {spec.job.name!r} would bring its epsilon to {job_eps:.3f} "
                f"but the job's own target_epsilon={target:g} (retried rounds spend budget too); "
                "this agent stops training for the job")
        policy_checks.check_budget(self.policy, job_name=spec.job.name, round=round, job_epsilon=job_eps,
                                   job_delta=plan.delta, total_epsilon=total_eps)
        return job_eps, total_eps

    def record(self, job_id: str, plan: RoundPlan, *, round: int, attempt: int) -> float:
        """Write the released round to the ledger (durably) and return the job's epsilon after it."""
        job_eps, _ = self.spent(job_id, plan, extra=(plan.run,))
        self.ledger.record(LedgerEntry(dataset=self.dataset, job_id=job_id, round=round, attempt=attempt,
                                       run=plan.run, max_grad_norm=plan.max_grad_norm, delta=plan.delta,
                                       accountant=plan.accountant, epsilon=job_eps))
        return job_eps
