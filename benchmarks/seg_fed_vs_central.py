"""Federated vs centralised Dice on synthetic BraTS-like volumes with non-IID sites.

The sites are the segmentation demo's: ``write_brats`` cases per hospital, each hospital with its
own contrast and noise (``hospital_shifts``). Arms, on the same cases and the same held-out
validation cases (each site's 15%, as its agent splits them):

- centralised: the 3-D U-Net trained on every site's training cases pooled, for as many
  epochs as a site trains over the federated job (rounds x local epochs), Adam as in the demo;
- federated: ``medfl simulate`` over the sites' BraTS folders with secure aggregation (the
  agents' own loaders, trainer and SecAgg client), no DP;
- federated + DP-SGD at each ``--noise`` multiplier (epsilon reported by the agents' accountant).

Every arm is scored on the pooled validation cases with MONAI's Dice (mean over the three
tumour sub-regions), with the same code the agents validate with.

Usage::

    python benchmarks/seg_fed_vs_central.py --sites 3 --cases 40 --rounds 12 --noise 1.2 \\
        --json benchmarks/results/seg_fed_vs_central.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _job(rounds: int, sites: int, noise: float | None) -> str:
    from apps.demo_seg import SEG_BATCH, SEG_LOCAL_EPOCHS, SEG_LR, SEG_MODEL, SEG_SIZE

    privacy = f"\n[privacy]\nnoise_multiplier = {noise}\nmax_grad_norm = 1.0\ndelta = 1e-5\n" if noise else ""
    return f"""
[job]
name = "bench-seg"
model = "{SEG_MODEL}"
task = "segmentation"
rounds = {rounds}
min_agents = {sites}
round_deadline_s = 3600
image_size = {SEG_SIZE}
seed = 1

[training]
local_epochs = {SEG_LOCAL_EPOCHS}
batch_size = {SEG_BATCH}
optimizer = "adam"
lr = {SEG_LR}

[aggregation]
secure = true
stage_deadline_s = 600
""" + privacy


def main() -> None:
    """Run the arms and print the table."""
    import ray
    import torch
    from torch.utils.data import TensorDataset

    from agent.trainer import evaluate_segmentation, train_local
    from apps.demo_seg import SEG_BATCH, SEG_LOCAL_EPOCHS, SEG_LR, SEG_MODEL, SEG_SIZE, write_data
    from apps.simulate import SimOptions, run_simulation
    from medfl.data.segmentation import load_segmentation_splits
    from medfl.models import create_model
    from medfl.models.weights import load_checkpoint, load_state_arrays

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--cases", type=int, default=40, help="cases per site (15%% held out)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--noise", type=float, nargs="*", default=[1.2], help="DP-SGD noise multipliers (arms)")
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        names = [f"hospital-{chr(97 + i)}" for i in range(args.sites)]
        write_data(work, names, cases=args.cases, seed=0, progress=False)
        splits = [load_segmentation_splits("brats", work / n / "data", patch=(SEG_SIZE,) * 3)[0] for n in names]
        xs, ys = zip(*[s["val"].tensors for s in splits], strict=True)
        val = TensorDataset(torch.cat(xs), torch.cat(ys))

        def score(model: torch.nn.Module) -> dict[str, float]:
            m = evaluate_segmentation(model, val, num_classes=4)
            return {k: round(float(v), 4) for k, v in m.items() if k.startswith("dice") or k == "hd95"}

        t0 = time.monotonic()
        torch.manual_seed(1)
        central = create_model(SEG_MODEL)
        tx, ty = zip(*[s["train"].tensors for s in splits], strict=True)
        pooled = TensorDataset(torch.cat(tx), torch.cat(ty))
        train_local(central, pooled, epochs=args.rounds * SEG_LOCAL_EPOCHS, batch_size=SEG_BATCH, lr=SEG_LR,
                    optimizer="adam", seed=1, task="segmentation")
        rows.append({"arm": "centralised", "epsilon": None, **score(central),
                     "seconds": round(time.monotonic() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)

        ray.init(include_dashboard=False, log_to_driver=False)
        for noise in [None, *args.noise]:
            tag = "none" if noise is None else f"{noise:g}"
            job = work / f"job-{tag}.toml"
            job.write_text(_job(args.rounds, args.sites, noise))
            t0 = time.monotonic()
            s = run_simulation(SimOptions(job=job, sites=args.sites, out=work / f"sim-{tag}", progress=True,
                                          site_data=[work / n / "data" for n in names]))
            model = create_model(SEG_MODEL)
            load_state_arrays(model, load_checkpoint(s["checkpoint"])[0])
            rows.append({"arm": "federated+SecAgg" + ("" if noise is None else f"+DP(sigma={noise:g})"),
                         "epsilon": s["final_epsilon"], **score(model),
                         "federated_val_dice": s["rounds"][-1]["val_metrics"].get("dice"),
                         "seconds": round(time.monotonic() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
        ray.shutdown()
    base = rows[0]["dice"]
    print(f"\n{'arm':>32} {'epsilon':>8} {'dice':>7} {'gap':>7} {'necrosis':>8} {'oedema':>7} {'enhancing':>9}")
    for r in rows:
        eps = f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "-"
        print(f"{r['arm']:>32} {eps:>8} {r['dice']:>7.4f} {r['dice'] - base:>+7.4f} {r['dice_1']:>8.4f} "
              f"{r['dice_2']:>7.4f} {r['dice_3']:>9.4f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sites": args.sites, "cases_per_site": args.cases, "rounds": args.rounds,
                                         "command": " ".join(sys.argv), "machine": "2 shared CPU cores, no GPU",
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
