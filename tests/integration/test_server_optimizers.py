"""FedAdam in a real federation: coordinator and agent processes, SecAgg on, a coordinator SIGKILL mid-job.

The coordinator only ever sees the secure sum, so FedAdam steps on the unmasked mean delta. The
test reads back what the daemon wrote (model checkpoints and the optimizer state beside them)
and checks each round against Reddi et al.'s update: from the moments of rounds t-1 and t it
recovers the round's mean delta d_t = (m_t - beta1 m_{t-1}) / (1 - beta1), then checks
v_t = beta2 v_{t-1} + (1 - beta2) d_t^2 and x_t = x_{t-1} + eta m_t / (sqrt(v_t) + tau); the
round after the restart must continue from the state saved before it.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ETA, BETA1, BETA2, TAU = 0.02, 0.9, 0.99, 1e-3
FEDADAM = f"""
[aggregation]
strategy = "fedadam"
server_lr = {ETA}
beta1 = {BETA1}
beta2 = {BETA2}
tau = {TAU}
secure = true
clip_norm = 100.0
frac_bits = 32
"""


def test_fedadam_job_with_secagg_survives_a_coordinator_restart(federation):
    from coordinator.server_optim import state_path
    from medfl.models.weights import load_checkpoint

    fed = federation
    names = ["h-a", "h-b", "h-c"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i, n_train=96)
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    fed.wait_online(3)
    job_id = fed.submit(rounds=3, min_agents=3, extra=FEDADAM)
    fed.wait_for("round 1 to complete", lambda: len(fed.rounds(job_id)) >= 1, timeout=120, every=0.05)
    fed.kill("coordinator", signal.SIGKILL)
    assert len(fed.rounds(job_id)) < 3, "the job finished before the kill"
    fed.start_coordinator()
    job = fed.wait_job(job_id, timeout=120)
    assert job.status == "done", job.message
    rounds = fed.rounds(job_id)
    assert [r.round for r in rounds] == [1, 2, 3] and all(r.agents == 3 for r in rounds)
    assert "resuming after round" in fed.log("coordinator")

    x_prev, _ = load_checkpoint(rounds[0].checkpoint.replace("round-0001", "round-0000"))
    m_prev: dict[str, np.ndarray] = {k: np.zeros(a.shape) for k, a in x_prev.items()}
    v_prev: dict[str, np.ndarray] = {k: np.full(a.shape, TAU**2) for k, a in x_prev.items()}
    for r in rounds:
        x, _ = load_checkpoint(r.checkpoint)
        st, meta = load_checkpoint(state_path(r.checkpoint))
        assert (meta["strategy"], meta["round"], meta["steps"]) == ("fedadam", str(r.round), str(r.round))
        moved = 0.0
        for k in x_prev:
            m, v = st[f"m/{k}"], st[f"v/{k}"]
            d = (m - BETA1 * m_prev[k]) / (1 - BETA1)
            np.testing.assert_allclose(v, BETA2 * v_prev[k] + (1 - BETA2) * d * d, rtol=1e-9, atol=1e-18)
            want = x_prev[k].astype(np.float64) + ETA * m / (np.sqrt(v) + TAU)
            np.testing.assert_allclose(x[k], want, rtol=1e-6, atol=1e-7)
            moved = max(moved, float(np.abs(d).max()))
            m_prev[k], v_prev[k] = m, v
        assert moved > 0, f"round {r.round}: the agents' mean delta was zero"
        x_prev = x
