"""Client-level DP end to end: real agents noise their updates inside secure aggregation.

Three hospitals, real daemons over CurveZMQ: two accept a ``[privacy] level = "client"`` job and
train two rounds with the distributed discrete Gaussian; the third caps client-level epsilon
below the job's plan and refuses at the offer. The coordinator records each round's zCDP and
the federation's client-level epsilon, which match the accountant, and releases no sample
count or training loss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Z = 0.8


def test_client_level_dp_job_through_real_daemons(federation):
    from medfl.models.weights import load_checkpoint
    from medfl.privacy.ddg_accountant import epsilon, planned_epsilon
    from medfl.privacy.distributed_dp import ClientDP
    from medfl.secagg.vector import client_fit_length

    fed = federation
    folders = {n: fed.add_agent(n, seed=i) for i, n in enumerate(["h-a", "h-b", "strict"])}
    cfg = folders["strict"] / "agent.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace("min_parties = 2\n", "min_parties = 2\nmax_client_epsilon = 5.0\n"))
    fed.start_coordinator()
    for n in folders:
        fed.start_agent(n)
    fed.wait_online(3)
    job = fed.submit(rounds=2, min_agents=2, extra=f"""
[aggregation]
secure = true
clip_norm = 1.0

[privacy]
level = "client"
client_noise_multiplier = {Z}
delta = 1e-5
""")
    assert fed.wait_job(job).status == "done"
    rows = fed.rounds(job)
    assert [r.round for r in rows] == [1, 2]
    first = load_checkpoint(rows[0].checkpoint)[0] if rows[0].checkpoint else None
    assert first is not None
    cdp = ClientDP(clip=1.0, noise_multiplier=Z, dim=client_fit_length(first), threshold=2)
    for i, r in enumerate(rows):
        assert sorted(r.agent_names) == ["h-a", "h-b"]
        assert r.num_samples == 0 and r.train_loss is None  # not released under client-level DP
        assert r.epsilon is None and r.delta == 1e-5  # no DP-SGD in a "client" job
        assert r.client_rho == pytest.approx(cdp.round_rho(2), rel=1e-9)
        assert r.client_epsilon == pytest.approx(epsilon([cdp.round_rho(2)] * (i + 1), 1e-5), rel=1e-9)
        assert r.val_auc is not None  # the candidate is still validated under secure aggregation
    assert rows[1].client_epsilon == pytest.approx(planned_epsilon(noise_multiplier=Z, rounds=2, delta=1e-5),
                                                   rel=1e-6)
    last = load_checkpoint(rows[1].checkpoint)[0]
    assert all(np.isfinite(v).all() for v in last.values())
    assert any(not np.array_equal(first[k], last[k]) for k in first)  # the noised mean moved the model

    refusals = [e["detail"] for e in fed.status()["events"] if e["kind"] == "refused"]
    store = fed.store()
    try:
        refusals += [e["detail"] for e in store.events(job, limit=100) if e["kind"] == "refused"]
    finally:
        store.close()
    assert any("strict" in d and "max_client_epsilon=5" in d for d in refusals), refusals
    for name in ("h-a", "h-b"):
        assert "client-level DP: update norm" in fed.log(name)
    (j,) = [j for j in fed.status()["jobs"] if j["id"] == job]
    assert j["final_client_epsilon"] == pytest.approx(rows[1].client_epsilon)
    text = fed.coordinator("status")
    assert "client-level epsilon" in text
    json.dumps(j)  # the status JSON carries it as plain numbers
