"""DP budgets enforced by real agent processes: a round refused per job, a job refused per dataset total."""

from __future__ import annotations

import pytest

from medfl.privacy.accountant import SgdRun, epsilon
from medfl.privacy.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PRIVACY = """
[privacy]
noise_multiplier = 1.0
max_grad_norm = 1.0
delta = 1e-5
"""
# what Federation.add_agent and Federation.submit set up: 48 training images, batch 16, 1 local epoch
Q, STEPS = 16 / 48, 3


def _eps(rounds: int) -> float:
    return epsilon([SgdRun(Q, 1.0, STEPS * rounds)], delta=1e-5)


def _limit(folder, line: str) -> None:
    cfg = folder / "agent.toml"
    text = cfg.read_text()
    assert "min_parties = 2\n" in text
    cfg.write_text(text.replace("min_parties = 2\n", f"min_parties = 2\n{line}\n"))


def _ledger_rounds(folder, job_id):
    led = Ledger(folder / "state" / "privacy" / "ledger.sqlite")
    try:
        return [(e.round, e.run) for e in led.entries(job_id=job_id)]
    finally:
        led.close()


def test_budget_refusals_end_to_end(federation):
    fed = federation
    folders = {n: fed.add_agent(n, seed=i) for i, n in enumerate(["h-a", "h-b", "tight", "h-c"])}
    # tight: one round of the job fits its per-job limit, two do not
    _limit(folders["tight"], f"max_epsilon_per_job = {(_eps(1) + _eps(2)) / 2}")
    # h-c: the two rounds of job 1 fit its dataset total, a third round (job 2's first) does not
    _limit(folders["h-c"], f"max_total_epsilon = {(_eps(2) + _eps(3)) / 2}")
    fed.start_coordinator()
    for n in folders:
        fed.start_agent(n)
    fed.wait_online(4)
    job1 = fed.submit(rounds=2, min_agents=2, extra=PRIVACY)
    assert fed.wait_job(job1).status == "done"
    store = fed.store()
    try:
        r1, r2 = store.rounds(job1)
        assert sorted(r1.agent_names) == ["h-a", "h-b", "h-c", "tight"]
        assert sorted(r2.agent_names) == ["h-a", "h-b", "h-c"]
        # the coordinator records the epsilon the agents reached, at the job's delta
        assert r1.delta == 1e-5 and r1.epsilon == pytest.approx(_eps(1), rel=1e-9)
        assert r2.epsilon == pytest.approx(_eps(2), rel=1e-9)
        assert set(r2.epsilons) == {"h-a", "h-b", "h-c"}
        refusals = [e["detail"] for e in store.events(job1, limit=100) if e["kind"] == "refused"]
        assert any("tight" in d and "privacy budget" in d and "max_epsilon_per_job" in d for d in refusals), refusals
    finally:
        store.close()
    status = fed.coordinator("status")
    assert "epsilon" in status and "max_epsilon_per_job" in status
    assert "refusing job" in fed.log("tight")
    # each agent's ledger holds exactly what it released
    assert _ledger_rounds(folders["tight"], job1) == [(1, SgdRun(Q, 1.0, STEPS))]
    assert _ledger_rounds(folders["h-a"], job1) == [(1, SgdRun(Q, 1.0, STEPS)), (2, SgdRun(Q, 1.0, STEPS))]

    # job 2 on the same data: h-c's dataset total is spent, tight's per-job budget starts afresh
    job2 = fed.submit(rounds=1, min_agents=2, extra=PRIVACY)
    assert fed.wait_job(job2).status == "done"
    store = fed.store()
    try:
        (r,) = store.rounds(job2)
        assert sorted(r.agent_names) == ["h-a", "h-b", "tight"]
        refusals = [e["detail"] for e in store.events(job2, limit=100) if e["kind"] == "refused"]
        assert any("h-c" in d and "total epsilon over all jobs" in d for d in refusals), refusals
    finally:
        store.close()
    assert _ledger_rounds(folders["h-c"], job2) == []
    # the data owner's view of the ledger
    out = fed.run_cli("agent.cli", "privacy", "--config", str(folders["h-c"] / "agent.toml")).stdout
    assert f"job {job1}: 2 round(s), {2 * STEPS} steps, epsilon {_eps(2):.3f}" in out
    assert "max_total_epsilon=" in out
