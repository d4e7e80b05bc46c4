"""The secure round (the default, ``[aggregation] secure = true``): the coordinator sees sums only.

The agents never send their weights or metrics in the clear: TRAIN and EVALUATE carry the
secure-sum parameters, and each phase runs a :class:`~coordinator.rounds.secure_sum.SecureSum`
(advertise keys -> share keys -> masked input -> unmask) whose unmasked result is the weighted
sum of the deltas, the sample counts and the losses (fit) or of the validation metrics
(evaluate), laid out as :mod:`medfl.secagg.vector` says. A secure sum that falls below its
threshold aborts and the round is retried like a round short of ``min_agents``.

Client-level DP (``[privacy] level = "client"`` or ``"both"``): the fit sum's vector is the
delta alone, each agent encodes it into the ring itself (clip, conditional rounding, discrete
Gaussian noise sized for the round's threshold; :mod:`medfl.privacy.distributed_dp`) before it
masks it, so the coordinator only ever unmasks the noisy sum. The fit ring is the one
:meth:`~medfl.privacy.distributed_dp.ClientDP.ring_bits_for` picks for the round's agents, sent
with 0 fractional bits (the agents check both). The round's zCDP comes from its survivors
(:meth:`~medfl.privacy.distributed_dp.ClientDP.round_rho`) and the job's client-level epsilon
composes every completed round's (rounds.client_rho, rounds.client_epsilon).

The ``secure`` parameters repeat the job's ``aggregation.clip_norm`` and ``sample_cap``, which
the agents already hold from the job offer: agents released before the agent compared them
require the copies, so they stay on the wire (fields are never removed), and an agent refuses
a round whose copy disagrees with the job it accepted (:func:`agent.secure.open_secure`).

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from coordinator.rounds.machine import Outgoing, RoundMachine, Stage
from coordinator.rounds.secure_sum import SecureSum
from coordinator.store import RoundRow
from medfl.errors import NonFiniteError, OutOfOrder, SecAggAbort, ShareError, StateError
from medfl.privacy.distributed_dp import ClientDP
from medfl.secagg import envelopes
from medfl.secagg.quantization import QuantSpec, choose_spec
from medfl.secagg.vector import (
    MetricsSum,
    client_fit_length,
    fit_length,
    metric_names,
    metrics_length,
    unpack_client_fit,
    unpack_fit,
    unpack_metrics,
)
from medfl.wire import Envelope, MessageType

__all__ = ["SecureRounds"]

log = logging.getLogger(__name__)


class SecureRounds(RoundMachine):
    """The secure round's sums, messages and close (joined into :class:`~coordinator.rounds.job.JobRun`)."""

    def client_dp(self, n_agents: int) -> ClientDP | None:
        """The client-level DP parameters of a fit sum of ``n_agents`` (None when the job has none)."""
        p, agg = self.spec.privacy, self.spec.aggregation
        if not (p.enabled and p.level in ("client", "both")) or p.client_noise_multiplier is None:
            return None
        return ClientDP(clip=agg.clip_norm, noise_multiplier=p.client_noise_multiplier,
                        dim=client_fit_length(self.global_arrays), threshold=agg.threshold_for(n_agents))

    def _fit_length(self) -> int:
        """Length of the fit vector: the delta alone under client-level DP, else with weight and loss."""
        if self.client_dp(2) is not None:
            return client_fit_length(self.global_arrays)
        return fit_length(self.global_arrays)

    def _secure_sum(self, phase: str, agents: list[str], length: int, collect_deadline_s: float) -> SecureSum:
        agg = self.spec.aggregation
        cdp = self.client_dp(len(agents)) if phase == "fit" else None
        if cdp is not None:  # the agents encode into the ring themselves: integers, no fractional bits
            spec = QuantSpec(ring_bits=cdp.ring_bits_for(len(agents)), frac_bits=0, clip_norm=agg.clip_norm,
                             n_agents=len(agents))
        else:
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

    def on_secagg(self, fingerprint: str, env: Envelope) -> list[Outgoing]:
        """A secure-aggregation message of an agent (keys, sealed shares, masked input, unmask shares)."""
        s = self.state
        session = envelopes.Session.of(env)
        if s.secure is None or s.secure.session != session:
            raise OutOfOrder(f"{env.type} for {session.phase} attempt {session.attempt} of round {session.round}, "
                             f"but job {self.job_id} is in round {s.round} attempt {s.attempt} stage {s.stage}")
        return s.secure.on_message(fingerprint, env) + self._after_secure()

    def _forget(self, fingerprint: str) -> list[Outgoing]:
        s = self.state
        if s.secure is None or s.stage not in (Stage.FIT, Stage.EVALUATE):
            return []
        return s.secure.forget(fingerprint) + self._after_secure()

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
        cdp = self.client_dp(run.spec.n_agents)
        try:
            if cdp is not None:
                fit = unpack_client_fit(run.result, self.global_arrays, gamma=cdp.gamma,
                                        survivors=len(run.survivors))
                s.client_rho = cdp.round_rho(len(run.survivors))
            else:
                fit = unpack_fit(run.result, self.global_arrays, clip_norm=agg.clip_norm,
                                 sample_cap=agg.sample_cap)
                s.client_rho = None
        except (ShareError, NonFiniteError, SecAggAbort) as exc:
            return self._retry(f"round {s.round} attempt {s.attempt}: the unmasked sum is unusable: {exc}")
        try:
            s.candidate = self._aggregate_delta(fit.mean_delta)
        except ValueError as exc:
            self._goto(Stage.FAILED)
            s.message = f"aggregation failed in round {s.round}: {exc}"
            return []
        s.fit_sum, s.survivors = fit, list(run.survivors)
        s.epsilons = {fp: rep for fp, rep in run.reports.items() if fp in s.survivors}
        if self.spec.privacy.sample_level and set(s.survivors) - set(s.epsilons):
            log.warning("job %s round %d: %d agent(s) sent no epsilon for a DP job", self.job_id, s.round,
                        len(set(s.survivors) - set(s.epsilons)))
        self._goto(Stage.EVALUATE)
        s.deadline = math.inf
        s.secure = self._secure_sum("evaluate", s.survivors, metrics_length(self._metric_names()),
                                    self.eval_deadline_s)
        return self._secure_envelopes(MessageType.EVALUATE, {}, s.candidate)

    def _secure_row(self, path: pathlib.Path) -> RoundRow:
        """The round's row from the two secure sums (the evaluate sum may have aborted: no metrics)."""
        s, agg = self.state, self.spec.aggregation
        fit, run = s.fit_sum, s.secure
        if fit is None or run is None:
            raise StateError(f"job {self.job_id}: secure round {s.round} closed without its fit sum")
        metrics = MetricsSum(n=0, auc=None, accuracy=None, loss=None)
        if run.result is not None:
            try:
                metrics = unpack_metrics(run.result, clip_norm=agg.clip_norm, sample_cap=agg.sample_cap,
                                         names=self._metric_names())
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
            val_metrics=metrics.extra, **self._privacy_columns(s.survivors, client=self._client_columns()))

    def _client_columns(self) -> dict[str, Any]:
        """The round's client-level zCDP and the job's client-level epsilon so far (composed over its rounds)."""
        rho = self.state.client_rho
        if rho is None:
            return {}
        from medfl.privacy.ddg_accountant import epsilon  # lazy: dp_accounting loads in seconds

        earlier = [r.client_rho for r in self.store.rounds(self.job_id) if r.client_rho is not None
                   and r.round < self.state.round]
        return {"client_rho": rho, "client_epsilon": epsilon([*earlier, rho], self.spec.privacy.delta),
                "delta": self.spec.privacy.delta}

    def _metric_names(self) -> tuple[str, ...]:
        """The validation metrics the job's task sums (:func:`medfl.secagg.vector.metric_names`)."""
        task = self.spec.job.task
        return metric_names(task, self.spec.num_classes if task == "segmentation" else 2)
