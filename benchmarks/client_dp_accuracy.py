"""Accuracy cost of client-level DP against sample-level DP at the same epsilon, through ``medfl simulate``.

For each site count, three arms of the same job (the CNN at 32 px, secure aggregation, the same
synthetic chest-X-ray pool split IID across the sites, the same seeds): no DP; sample-level
DP-SGD with ``target_epsilon`` (each hospital's epsilon for its own records); client-level DP
(the distributed discrete Gaussian inside SecAgg) with the noise multiplier whose worst-case
client-level epsilon over the job's rounds is that same epsilon (``ddg_accountant``). The two
epsilons protect different units (one record; one whole hospital), which is the point of the
comparison: what the stronger unit costs in AUC.

Usage::

    python benchmarks/client_dp_accuracy.py --sites 10 50 --epsilon 8 --json benchmarks/results/client_dp_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASE = """
[job]
name = "bench-client-dp"
model = "cnn"
rounds = {rounds}
min_agents = {sites}
round_deadline_s = 3600
image_size = 32
seed = 1

[training]
local_epochs = 1
batch_size = 16
lr = 0.05

[aggregation]
secure = true
neighbours = {neighbours}
clip_norm = {clip}
stage_deadline_s = 600
"""


def _client_z(epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier whose planned client-level epsilon is at most ``epsilon`` (bisection)."""
    from medfl.privacy.ddg_accountant import planned_epsilon

    lo, hi = 0.05, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if planned_epsilon(noise_multiplier=mid, rounds=rounds, delta=delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def main() -> None:
    """Run the arms and print the table."""
    import ray

    from apps.simulate import SimOptions, run_simulation

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clip", type=float, default=1.0, help="aggregation.clip_norm (the client-level clip too)")
    ap.add_argument("--train-per-site", type=int, default=64)
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args()
    delta = 1e-5
    z = _client_z(args.epsilon, args.rounds, delta)
    arms = {
        "no DP": "",
        "sample-level": f"\n[privacy]\ntarget_epsilon = {args.epsilon}\nmax_grad_norm = 1.0\ndelta = {delta}\n",
        "client-level": f"\n[privacy]\nlevel = \"client\"\nclient_noise_multiplier = {z:.6g}\ndelta = {delta}\n",
    }
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        for n in args.sites:
            for arm, privacy in arms.items():
                job = work / f"job-{n}-{arm.split()[0]}.toml"
                job.write_text(BASE.format(rounds=args.rounds, sites=n, clip=args.clip,
                                           neighbours=min(10, n - 1) if n > 11 else 0) + privacy)
                s = run_simulation(SimOptions(job=job, sites=n, out=work / f"sim-{n}-{arm.split()[0]}",
                                              train_per_site=args.train_per_site, val_per_site=32, progress=True))
                last = s["rounds"][-1] if s["rounds"] else {}
                rows.append({"sites": n, "arm": arm, "status": s["status"], "final_val_auc": s["final_val_auc"],
                             "final_val_accuracy": last.get("val_accuracy"),
                             "sample_epsilon": s["final_epsilon"], "client_epsilon": s["final_client_epsilon"],
                             "client_noise_multiplier": z if arm == "client-level" else None,
                             "rounds_per_minute": s["rounds_per_minute"]})
                print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    print(f"\n{'sites':>5} {'arm':>13} {'val_auc':>8} {'val_acc':>8} {'eps(sample)':>11} {'eps(client)':>11}")
    for r in rows:
        def f(v: float | None, w: int) -> str:
            return f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}}"
        print(f"{r['sites']:>5} {r['arm']:>13} {f(r['final_val_auc'], 8)} {f(r['final_val_accuracy'], 8)} "
              f"{f(r['sample_epsilon'], 11)} {f(r['client_epsilon'], 11)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"epsilon": args.epsilon, "delta": delta, "rounds": args.rounds,
                                         "client_noise_multiplier": z, "clip_norm": args.clip,
                                         "machine": "2 shared CPU cores, no GPU", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
