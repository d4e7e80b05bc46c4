"""One DP-SGD step, side by side: non-private, medfl, Opacus (hooks, ghost clipping), torch.func.

Usage::

    python benchmarks/dp_step.py --model cnn --batch 32 --image 128 --json benchmarks/results/dp_step_cnn.json
    python benchmarks/dp_step.py --model resnet18 --batch 16 --image 224
    python benchmarks/dp_step.py --model unet3d --batch 4 --image 32

Every mode runs in a fresh Python process (``--mode X`` re-invokes this file) on the same
model (same initial weights), the same random batch and the same number of threads, and times
``--steps`` steps after ``--warmup`` untimed ones; each mode runs in ``--repeats`` processes,
interleaved with the other modes so that a change of machine load hits every mode alike, and
its figure is the median over those processes of their median step time. One step is: forward, backward, per-sample
clipping to C=1, the clipped sum, and an optimiser step (SGD); the private modes add Gaussian
noise (sigma=1) once per step. Noise comes from torch's generator in every private mode,
medfl's included (``MEDFL_INSECURE_RNG=1``), so that the table compares the clipping engines,
not the random number generators (medfl's default CSPRNG noise is measured as its own row,
``medfl_csprng``).

The models are medfl's (``cnn``: 4 conv blocks with GroupNorm; ``resnet18``: GroupNorm), with
ReLUs made out-of-place for every mode (Opacus' hooks cannot handle in-place ones), in train
mode (dropout on).

Peak memory on CPU is ``ru_maxrss`` (the process's high-water mark of resident memory) after
the timed steps minus ``ru_maxrss`` after the model, data and optimiser were created and
before the first step, i.e. the growth the training steps cause above the set-up; on CUDA it is
``torch.cuda.max_memory_allocated`` over the same span. Ratios are to the non-private step of
the same run. Opacus is optional (``pip install .[bench]``): its rows say why when it is
missing or fails.

The modes:

- ``nonprivate``: plain ``loss.backward()`` and ``opt.step()``.
- ``medfl``: :class:`medfl.privacy.GradSampleClipper` (ghost norms / direct per-layer, one
  backward, book-keeping), noise, step: what :class:`medfl.privacy.trainer.DPTrainer` runs.
- ``medfl_csprng``: the same with medfl's default ChaCha20 noise.
- ``opacus_hooks``: ``PrivacyEngine.make_private`` (grad_sample hooks).
- ``opacus_ghost``: ``make_private(..., grad_sample_mode="ghost")`` (DPLossFastGradientClipping).
- ``torchfunc``: per-sample gradients by ``vmap(grad(...))``, naive clipping, sum, noise.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

MODES = ["nonprivate", "medfl", "medfl_csprng", "opacus_hooks", "opacus_ghost", "torchfunc"]
REPO = pathlib.Path(__file__).resolve().parents[1]


def _model(name: str, image: int):
    import torch

    from medfl.models import create_model

    torch.manual_seed(0)
    model = create_model(name)
    # Opacus' backward hooks cannot follow an in-place ReLU; every mode gets the same, out-of-place model
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    return model


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _setup(args: argparse.Namespace):
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = _model(args.model, args.image).to(device)
    g = torch.Generator().manual_seed(1)
    if args.model == "unet3d":  # four MR sequences in, four classes per voxel out, an image^3 patch
        x = torch.randn(args.batch, 4, args.image, args.image, args.image, generator=g).to(device)
        y = torch.randint(0, 4, (args.batch, args.image, args.image, args.image), generator=g).to(device)
    else:
        x = torch.randn(args.batch, 1, args.image, args.image, generator=g).to(device)
        y = torch.randint(0, 2, (args.batch,), generator=g).to(device)
    return torch, model, x, y, device


def _step_fn(mode: str, torch: Any, model: Any, x: Any, y: Any, args: argparse.Namespace):
    import torch.nn.functional as F

    clip, sigma, b = 1.0, 1.0, args.batch
    if mode == "nonprivate":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return step
    if mode in ("medfl", "medfl_csprng"):
        from medfl.privacy import GradSampleClipper, gaussian_for

        os.environ["MEDFL_INSECURE_RNG"] = "1" if mode == "medfl" else "0"
        import logging

        logging.disable(logging.WARNING)  # the insecure-RNG warning on every call
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        clipper = GradSampleClipper(model, max_grad_norm=clip, loss_reduction="sum")
        params = [p for p in model.parameters() if p.requires_grad]

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, reduction="sum").backward()
            clipper.clip_and_accumulate()
            for p, z in zip(params, gaussian_for(params, std=sigma * clip), strict=True):
                p.grad.add_(z).div_(b)  # as DPTrainer.step: one draw for all parameters, in place
            opt.step()
        return step
    if mode == "torchfunc":
        from torch.func import functional_call, grad, vmap

        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        names = [k for k, p in model.named_parameters() if p.requires_grad]

        def loss_one(params: dict, xi: Any, yi: Any) -> Any:
            out = functional_call(model, params, (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0), reduction="sum")

        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")  # dropout per sample

        def step() -> None:
            params = {k: p.detach() for k, p in model.named_parameters() if k in names}
            gs = per_sample(params, x, y)
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in gs.values()))
            c = (clip / (norms + 1e-6)).clamp(max=1.0)
            for k, p in model.named_parameters():
                s = torch.einsum("b...,b->...", gs[k], c)
                p.grad = (s + torch.randn_like(s) * sigma * clip) / b
            opt.step()
        return step
    return _opacus_step(mode, torch, model, x, y, args)


def _opacus_step(mode: str, torch: Any, model: Any, x: Any, y: Any, args: argparse.Namespace):
    import warnings

    import torch.nn as nn
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=args.batch)
    engine = PrivacyEngine(accountant="rdp")
    crit = nn.CrossEntropyLoss()
    if mode == "opacus_hooks":
        pmodel, popt, _ = engine.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                                              max_grad_norm=1.0, poisson_sampling=False)

        def step() -> None:
            popt.zero_grad(set_to_none=True)
            crit(pmodel(x), y).backward()
            popt.step()
        return step
    pmodel, popt, pcrit, _ = engine.make_private(module=model, optimizer=opt, data_loader=loader, criterion=crit,
                                                 noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                                                 grad_sample_mode="ghost")

    def step_ghost() -> None:
        popt.zero_grad(set_to_none=True)
        pcrit(pmodel(x), y).backward()
        popt.step()
    return step_ghost


def _child(args: argparse.Namespace) -> dict[str, Any]:
    torch, model, x, y, device = _setup(args)
    cuda = device.type == "cuda"
    try:
        step = _step_fn(args.mode, torch, model, x, y, args)
    except Exception as exc:  # e.g. Opacus not installed: the row says why
        return {"mode": args.mode, "error": f"{type(exc).__name__}: {exc}"[:300]}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = _rss_mb()
    times = []
    try:
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    except Exception as exc:
        return {"mode": args.mode, "error": f"{type(exc).__name__}: {exc}"[:300]}
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _rss_mb() - rss0
    med = statistics.median(times)
    return {"mode": args.mode, "median_s": med, "samples_per_s": args.batch / med,
            "p10_s": sorted(times)[len(times) // 10], "p90_s": sorted(times)[(9 * len(times)) // 10],
            "peak_mem_growth_mb": peak, "steps": len(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["cnn", "resnet18", "unet3d"], default="cnn",
                   help="unet3d: the 3-D U-Net on 4-channel image^3 patches, voxel cross-entropy")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per mode, interleaved (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--json", type=pathlib.Path, default=None,
                   help="write results here (default benchmarks/results/dp_step_<model>.json)")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(_child(args)))
        return
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rep in range(args.repeats):  # interleaved (A B C A B C ...): load drift hits every mode alike
        for mode in modes:
            cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--batch", str(args.batch),
                   "--image", str(args.image), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--threads", str(args.threads), "--device", args.device]
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"mode": mode, "error": (proc.stderr or proc.stdout)[-300:]}
            runs[mode].append(row)
            print(f"[{rep + 1}/{args.repeats}] " + _fmt(row, row), flush=True)
    rows = [_combine(mode, runs[mode]) for mode in modes]
    base = rows[0] if rows and "median_s" in rows[0] and rows[0]["mode"] == "nonprivate" else None
    for r in rows:
        if base is not None and "median_s" in r:
            r["time_ratio"] = r["median_s"] / base["median_s"]
            r["mem_ratio"] = (r["peak_mem_growth_mb"] / base["peak_mem_growth_mb"]
                              if base["peak_mem_growth_mb"] > 0 else None)
    import torch

    out = {"repeats": args.repeats, "steps_per_process": args.steps,
           "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "model": args.model,
           "batch": args.batch, "image": args.image, "threads": args.threads, "device": args.device,
           "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
           "memory": "CUDA max_memory_allocated growth" if args.device.startswith("cuda") else
           "ru_maxrss growth over the timed steps (MiB)", "rows": rows}
    path = args.json or REPO / "benchmarks" / "results" / f"dp_step_{args.model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print()
    print(f"{'mode':14s} {'median ms':>10s} {'samples/s':>10s} {'x nonpriv':>10s} {'mem MiB':>9s} {'x mem':>7s}")
    for r in rows:
        if "median_s" not in r:
            print(f"{r['mode']:14s} unavailable: {r['error']}")
            continue
        ratio = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "-"
        mem = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") is not None else "-"
        print(f"{r['mode']:14s} {1e3 * r['median_s']:10.1f} {r['samples_per_s']:10.1f} {ratio:>10s} "
              f"{r['peak_mem_growth_mb']:9.1f} {mem:>7s}")
    print(f"wrote {path}")


def _combine(mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per mode: the median over the repeated processes of their median step times."""
    good = [r for r in runs if "median_s" in r]
    if not good:
        return runs[-1]
    med = statistics.median(r["median_s"] for r in good)
    return {"mode": mode, "median_s": med, "samples_per_s": good[0]["samples_per_s"] * good[0]["median_s"] / med,
            "peak_mem_growth_mb": statistics.median(r["peak_mem_growth_mb"] for r in good),
            "per_process_median_s": [r["median_s"] for r in good], "steps": sum(r["steps"] for r in good)}


def _fmt(row: dict[str, Any], first: dict[str, Any]) -> str:
    if "median_s" not in row:
        return f"{row['mode']}: unavailable ({row['error']})"
    return f"{row['mode']}: {1e3 * row['median_s']:.1f} ms/step, {row['samples_per_s']:.1f} samples/s"


if __name__ == "__main__":
    main()
