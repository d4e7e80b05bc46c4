"""Simulation throughput and memory: ``medfl simulate`` at several site counts.

Each arm runs the same job (the CNN at 64 px, one local epoch of two batches of 16, DP-SGD at
noise multiplier 1.0 and SecAgg+ with 10 neighbours) over N virtual hospitals and reports
rounds per minute (setup excluded), the peak RSS of the driver and of each Ray actor, and the
memory an idle site adds to its actor (actor RSS after the sites are built, minus a 1-site
actor's, over the sites it hosts).

With ``--flower-python PY`` (a Python with ``flwr[simulation]``: flwr 1.42 pins ray 2.55.1 and
medfl's sim extra is ray 2.60.0, so Flower lives in its own environment) each site count also
runs Flower's simulation engine on the same sites' data files and the same CNN, FedAvg without DP
or secure aggregation (``benchmarks/flower_sim.py``), in the same run. Both engines' rounds per
minute are taken at the median round (round 1 includes each engine's warm-up).

Usage::

    python3.11 -m venv /tmp/flwr && /tmp/flwr/bin/pip install torch==2.13.0 'flwr[simulation]==1.42.0'
    python benchmarks/simulate.py --sites 10 100 --rounds 3 --flower-python /tmp/flwr/bin/python \
        --json benchmarks/results/simulate.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

JOB = """
[job]
name = "bench-sim"
model = "cnn"
rounds = {rounds}
min_agents = {min_agents}
round_deadline_s = 3600
image_size = 64
seed = 1

[training]
local_epochs = 1
batch_size = 16
lr = 0.05

[aggregation]
secure = true
neighbours = {neighbours}
stage_deadline_s = 600

[privacy]
noise_multiplier = 1.0
max_grad_norm = 1.0
delta = 1e-5
"""


def _idle_site_mb(workdir: pathlib.Path, sites: int) -> float:
    """RSS an idle site adds to its actor: hosts of 1 and of ``sites`` sites, built and idle."""
    import ray

    from apps.simulate import SimOptions, SiteHost, _agent_toml, write_site_data

    opts = SimOptions(job=workdir / "job.toml", sites=max(2, sites), out=workdir / "idle", train_per_site=32,
                      val_per_site=16)
    (workdir / "idle").mkdir(parents=True, exist_ok=True)
    data = write_site_data(opts, 64)
    configs = {f"s{i}": str(_agent_toml(f"s{i}", workdir / "idle" / f"s{i}", data[i], gpu=False, policy={}))
               for i in range(opts.sites)}
    host = ray.remote(num_cpus=1)(SiteHost)
    one = host.remote({"s0": configs["s0"]})
    many = host.remote(configs)
    a, b = ray.get([one.info.remote(), many.info.remote()])
    for h in (one, many):
        ray.get(h.close.remote())
        ray.kill(h)
    return (b["peak_rss_kb"] - a["peak_rss_kb"]) / 1024 / max(1, opts.sites - 1)


def main() -> None:
    """Run the arms and print the table."""
    import ray

    from apps.simulate import SimOptions, run_simulation

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=pathlib.Path, default=None)
    ap.add_argument("--flower-python", default=None, help="a Python with flwr[simulation] for the peer arm")
    args = ap.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        for n in args.sites:
            job = work / f"job-{n}.toml"
            job.write_text(JOB.format(rounds=args.rounds, min_agents=max(2, int(0.8 * n)),
                                      neighbours=min(10, n - 1) if n > 11 else 0))
            t0 = time.monotonic()
            s = run_simulation(SimOptions(job=job, sites=n, out=work / f"sim-{n}", train_per_site=32,
                                          val_per_site=16, progress=True))
            idle = _idle_site_mb(work, min(n, 50))
            secs = [r["seconds"] for r in s["rounds"]]
            flower = None
            if args.flower_python:
                ray.shutdown()  # the two engines never share the machine's cores
                proc = subprocess.run([args.flower_python, str(REPO / "benchmarks" / "flower_sim.py"), "--sites-dir",
                                       str(work / f"sim-{n}" / "sites"), "--rounds", str(args.rounds),
                                       "--rss-dir", str(work / f"flower-rss-{n}")],
                                      capture_output=True, text=True, timeout=7200)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                flower = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                    "error": (proc.stdout + proc.stderr)[-2000:]}
                ray.init(include_dashboard=False, log_to_driver=False)
            rows.append({"sites": n, "status": s["status"], "rounds": len(s["rounds"]),
                         "rounds_per_minute": s["rounds_per_minute"], "setup_seconds": s["setup_seconds"],
                         "run_seconds": s["run_seconds"], "wall_seconds": round(time.monotonic() - t0, 1),
                         "workers": s["workers"], "aggregation": s["aggregation"],
                         "final_val_auc": s["final_val_auc"], "final_epsilon": s["final_epsilon"],
                         "peak_rss_mb_driver": s["peak_rss_mb"]["driver"],
                         "peak_rss_mb_actor_max": max(s["peak_rss_mb"]["actors"]),
                         "idle_site_mb": round(idle, 2),
                         "round_seconds": secs,
                         "rounds_per_minute_median_round": round(60.0 / statistics.median(secs[1:] or secs), 2)
                         if secs else None,
                         "flower": flower})
    ray.shutdown()
    print(f"{'sites':>6} {'rounds/min':>10} {'setup s':>8} {'run s':>7} {'actors':>6} {'actor MB':>8} "
          f"{'MB/idle site':>12} {'val_auc':>8} {'epsilon':>8}")
    for r in rows:
        print(f"{r['sites']:>6} {r['rounds_per_minute']:>10} {r['setup_seconds']:>8.1f} {r['run_seconds']:>7.1f} "
              f"{r['workers']:>6} {r['peak_rss_mb_actor_max']:>8.0f} {r['idle_site_mb']:>12.2f} "
              f"{(r['final_val_auc'] or float('nan')):>8.3f} {(r['final_epsilon'] or float('nan')):>8.2f}")
    if args.flower_python:
        print(f"\n{'sites':>6} {'medfl r/min*':>12} {'flower r/min*':>13} {'medfl actor MB':>14} "
              f"{'flower worker MB':>16}   (* at the median round; medfl with DP-SGD and SecAgg+, Flower without)")
        for r in rows:
            fw = r["flower"] or {}
            print(f"{r['sites']:>6} {r['rounds_per_minute_median_round']:>12} {fw.get('rounds_per_minute', '-'):>13} "
                  f"{r['peak_rss_mb_actor_max']:>14.0f} {fw.get('peak_rss_mb_worker_max', '-'):>16}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": "2 shared CPU cores, no GPU", "command": " ".join(sys.argv),
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
