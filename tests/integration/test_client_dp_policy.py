"""A hospital that requires client-level DP refuses, from its real agent process, a job without it."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_agent_requiring_client_dp_refuses_a_sample_level_job(federation):
    fed = federation
    folders = {n: fed.add_agent(n, seed=i) for i, n in enumerate(["h-a", "h-b", "strict"])}
    cfg = folders["strict"] / "agent.toml"
    text = cfg.read_text()
    assert "min_parties = 2\n" in text
    cfg.write_text(text.replace("min_parties = 2\n", "min_parties = 2\nrequire_client_dp = true\n"
                                                     "max_client_epsilon = 10.0\n"))
    fed.start_coordinator()
    for n in folders:
        fed.start_agent(n)
    fed.wait_online(3)
    job = fed.submit(rounds=1, min_agents=2)
    assert fed.wait_job(job).status == "done"
    store = fed.store()
    try:
        (r1,) = store.rounds(job)
        assert sorted(r1.agent_names) == ["h-a", "h-b"]
        refusals = [e["detail"] for e in store.events(job, limit=100) if e["kind"] == "refused"]
        assert any("strict" in d and "no client-level DP" in d and "require_client_dp = true" in d
                   for d in refusals), refusals
    finally:
        store.close()
    assert "refusing job" in fed.log("strict")
