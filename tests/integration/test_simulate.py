"""``medfl simulate``: virtual hospitals on Ray run the real agents' and coordinator's code.

- The same job over the same two hospitals' data gives the same global model in a simulation
  as in a federation of real daemons over CurveZMQ: bit for bit in a plain job (both train with
  one torch thread and the same seeds), within the fixed-point rounding in a secure one (the
  stochastic rounding of the masked vectors comes from the CSPRNG, so it differs run to run).
- A secure DP job over five sites survives a site missing a whole round and a straggler that
  vanishes after sharing its keys (the secure sum rebuilds its masks), with epsilon accounted.
- A 2-node Ray cluster on this machine (a second ``ray start`` with its own resources) runs a
  20-site secure job to the end, with sites on both nodes.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("ray")

REPO = pathlib.Path(__file__).resolve().parents[2]


def _job(path: pathlib.Path, *, secure: bool, rounds: int = 2, min_agents: int = 2, extra: str = "") -> pathlib.Path:
    path.write_text(f"""
[job]
name = "sim-vs-real"
model = "cnn"
rounds = {rounds}
min_agents = {min_agents}
round_deadline_s = 60
image_size = 32
seed = 3

[training]
local_epochs = 1
batch_size = 16
lr = 0.05

[aggregation]
secure = {"true" if secure else "false"}
{extra}""")
    return path


def _final(checkpoint: str | pathlib.Path) -> dict[str, np.ndarray]:
    from medfl.models.weights import load_checkpoint

    return load_checkpoint(checkpoint)[0]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_simulation_gives_the_real_federations_model(federation, tmp_path, ray_local, secure):
    from apps.simulate import SimOptions, run_simulation

    fed = federation
    names = ["h-a", "h-b"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i, n_train=32 + 16 * i, n_val=16)
        cfg = fed.root / n / "agent.toml"
        cfg.write_text(cfg.read_text().replace("require_secure_aggregation = true",
                                               "require_secure_aggregation = false"))
    # secure: one round, so the difference is the fixed-point rounding alone (later rounds of
    # training amplify it: 2.9e-4 after two rounds, measured)
    job = _job(tmp_path / "job.toml", secure=secure, rounds=1 if secure else 2)
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    fed.wait_online(2)
    job_id = fed.coordinator("jobs", "submit", str(job)).strip()
    assert fed.wait_job(job_id).status == "done"
    real = fed.rounds(job_id)

    sim = run_simulation(SimOptions(job=job, sites=2, out=tmp_path / "sim", progress=False,
                                    site_data=[fed.root / n / "data" for n in names],
                                    policy={"require_secure_aggregation": False}))
    assert sim["status"] == "done", sim["message"]
    assert [r["agents"] for r in sim["rounds"]] == [r.agents for r in real] == ([2] if secure else [2, 2])
    a, b = _final(real[-1].checkpoint), _final(sim["checkpoint"])
    assert sorted(a) == sorted(b)
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    if secure:
        # in each run, each of the 2 uploads rounds every value to 2^-24 (stochastic rounding: under one step)
        # and the sum is divided by the FedAvg weight (32 + 48 samples) / sample_cap 10000; the two runs'
        # roundings are independent, so they differ by up to twice one run's error
        bound = 2 * 2 * 2.0 ** -24 / ((32 + 48) / 10000)
        assert 0 < diff <= bound, (diff, bound)
    else:
        assert diff == 0.0  # the same code, data, seeds and thread count: the same bits
        assert [r["val_auc"] for r in sim["rounds"]] == [r.val_auc for r in real]


def test_secure_dp_simulation_survives_a_dropout_and_a_vanished_straggler(tmp_path, ray_local):
    from apps.simulate import SimOptions, run_simulation
    from medfl.data.partition import FaultPlan

    plan = FaultPlan(dropout=0.2, straggler=0.2, delay_s=120.0, seed=69)
    assert plan.round_faults(1, 5) == (frozenset(), {})
    assert plan.round_faults(2, 5) == (frozenset({1}), {2: 120.0})  # site-0001 out, site-0002 vanishes
    job = _job(tmp_path / "job.toml", secure=True, min_agents=3, extra="""
[privacy]
noise_multiplier = 1.0
max_grad_norm = 1.0
delta = 1e-5
""")
    sim = run_simulation(SimOptions(job=job, sites=5, out=tmp_path / "sim", progress=False, scheme="dirichlet",
                                    alpha=0.5, train_per_site=32, val_per_site=16, dropout=0.2, straggler=0.2,
                                    delay_s=120.0, fault_seed=69))
    assert sim["status"] == "done", sim["message"]
    r1, r2 = sim["rounds"]
    assert r1["agents"] == 5 and sorted(r1["agent_names"]) == [f"site-{i:04d}" for i in range(5)]
    assert r2["agents"] == 3 and sorted(r2["agent_names"]) == ["site-0000", "site-0003", "site-0004"]
    assert 0 < r1["epsilon"] < r2["epsilon"] < 20 and r2["delta"] == 1e-5
    assert set(r2["epsilons"]) == {"site-0000", "site-0003", "site-0004"}
    assert all(np.isfinite(v).all() for v in _final(sim["checkpoint"]).values())
    # every site kept its own privacy ledger, as a real agent does
    for i in range(5):
        assert (tmp_path / "sim" / "sites" / f"site-{i:04d}" / "state" / "privacy" / "ledger.sqlite").is_file()
    assert json.loads(pathlib.Path(sim["json"]).read_text())["rounds"][1]["agents"] == 3


def test_two_node_ray_cluster_runs_twenty_sites(tmp_path):
    import ray

    from apps.processes import free_port

    ray.shutdown()  # this module's local Ray is done with: the cluster below is the only one

    port = free_port()
    # token authentication on every node and the driver alike (Ray 2.60 refuses a mix)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", PYTHONPATH=str(REPO))
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    job = _job(tmp_path / "job.toml", secure=True, rounds=1, min_agents=20, extra="neighbours = 6\n")
    try:
        subprocess.run([*ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "1",
                        "--include-dashboard", "false", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([*ray_cli, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                        "--resources", '{"second_node": 1}', "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        out = tmp_path / "sim.json"
        proc = subprocess.run([sys.executable, "-m", "apps.cli", "simulate", str(job), "--sites", "20",
                               "--workers", "2", "--cpus-per-site", "1", "--train-per-site", "16",
                               "--val-per-site", "8", "--address", f"127.0.0.1:{port}", "--out",
                               str(tmp_path / "sim"), "--json", str(out), "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads(out.read_text())
        assert summary["status"] == "done" and summary["sites"] == 20
        assert summary["aggregation"] == "secagg+"
        assert summary["rounds"][0]["agents"] == 20
        assert len(summary["nodes"]) == 2, summary["nodes"]  # one actor (10 sites) on each Ray node
    finally:
        subprocess.run([*ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
