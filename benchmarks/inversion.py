"""Gradient inversion on one agent's plain update vs on what the coordinator sees under secagg.

    python benchmarks/inversion.py [--batch 2] [--iters 400] [--json benchmarks/results/inversion.json]
                                   [--png benchmarks/results/inversion.png]

The attack is "Inverting Gradients" (Geiping et al. 2020): dummy images, labels known, optimised
with Adam so that the gradient they produce matches the observed one in cosine similarity, with a
total-variation prior. It is run twice on the small CNN (registry ``cnn``) and a batch of
synthetic chest-X-ray-like images (:mod:`medfl.data.synthetic`):

- ``plain``: the agent's update in the clear (what plain FedAvg sends);
- ``masked``: the agent's masked upload (quantize + pairwise and self masks, as sent under secure
  aggregation), decoded by the coordinator as if it were an update.

Reconstruction quality is SSIM (Gaussian window, Wang et al. 2004) and PSNR against the originals,
best over the batch order; an image grid (originals / plain / masked) is saved as PNG.

References
----------
.. [1] Geiping, Bauermeister, Droege and Moeller, "Inverting Gradients - How easy is it to break
   privacy in federated learning?", NeurIPS 2020.
.. [2] Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from error visibility to
   structural similarity", IEEE TIP 2004.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from medfl import csprng
from medfl.data.synthetic import generate
from medfl.models import create_model
from medfl.secagg.masking import MaskSeed, dequantize_sum, quantize_and_mask
from medfl.secagg.quantization import choose_spec, clip_to_norm


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two images in [0, 1] (Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03)."""
    x = torch.from_numpy(np.asarray(a, np.float64))[None, None]
    y = torch.from_numpy(np.asarray(b, np.float64))[None, None]
    w = _gaussian_window()
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx**2
    syy = F.conv2d(y * y, w) - my**2
    sxy = F.conv2d(x * y, w) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
    loss = F.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph))


def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(model: torch.nn.Module, target: list[torch.Tensor], labels: torch.Tensor, shape: tuple[int, ...], *,
           iters: int, tv: float, seed: int) -> np.ndarray:
    """Reconstruct images whose gradient matches ``target`` in cosine similarity (Geiping et al.)."""
    gen = torch.Generator().manual_seed(seed)  # attack initialisation, not secret randomness
    dummy = torch.rand(shape, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([dummy], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(iters * 0.5), int(iters * 0.8)], gamma=0.1)
    tnorm = torch.sqrt(sum((t * t).sum() for t in target))
    for _ in range(iters):
        opt.zero_grad()
        g = _grads(model, dummy, labels, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(g, target, strict=True))
        gnorm = torch.sqrt(sum((a * a).sum() for a in g))
        loss = 1 - dot / (gnorm * tnorm + 1e-12) + tv * _tv(dummy)
        loss.backward()
        dummy.grad.sign_()  # signed gradients, as in the paper
        opt.step()
        sched.step()
        with torch.no_grad():
            dummy.clamp_(0, 1)
    return dummy.detach().numpy()


def masked_view(flat: np.ndarray, *, n_agents: int, clip_norm: float) -> np.ndarray:
    """The agent's masked upload (pairwise masks with n_agents - 1 peers + a self mask), decoded as an update."""
    spec = choose_spec(n_agents=n_agents, clip_norm=clip_norm)
    masks = [MaskSeed(csprng.token_bytes(32), 1 if i % 2 else -1) for i in range(n_agents - 1)]
    masks.append(MaskSeed(csprng.token_bytes(32), 1))
    clipped, _ = clip_to_norm(flat, clip_norm)
    upload = quantize_and_mask(clipped, spec=spec, masks=masks, nonce=csprng.token_bytes(12),
                               rounding_seed=csprng.seed64())
    return dequantize_sum(upload, spec=spec)


def _scores(orig: np.ndarray, rec: np.ndarray) -> dict[str, float]:
    """SSIM and PSNR per image (best matching order of the reconstructions, as the labels may repeat)."""
    b = orig.shape[0]
    best: dict[str, float] = {"ssim": -1.0, "psnr": 0.0}
    for perm in [list(range(b)), list(reversed(range(b)))]:
        s = float(np.mean([ssim(orig[i, 0], rec[p, 0]) for i, p in enumerate(perm)]))
        if s > best["ssim"]:
            best = {"ssim": s, "psnr": float(np.mean([psnr(orig[i, 0], rec[p, 0]) for i, p in enumerate(perm)]))}
    return best


def main(argv: list[str] | None = None) -> int:
    """Run both attacks, print SSIM / PSNR, save the JSON and the PNG grid."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--tv", type=float, default=1e-2)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="benchmarks/results/inversion.json")
    ap.add_argument("--png", default="benchmarks/results/inversion.png")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)  # model initialisation of the experiment, not secret randomness
    torch.set_num_threads(2)
    images, labels_np = generate(args.batch, seed=args.seed, image_size=64)
    x = torch.from_numpy(images)
    labels = torch.from_numpy(labels_np.astype(np.int64))
    model = create_model("cnn")
    model.eval()
    true = _grads(model, x, labels, create_graph=False)
    flat = torch.cat([g.reshape(-1) for g in true]).numpy().astype(np.float32)
    clip = float(np.linalg.norm(flat)) * 1.0001
    seen = masked_view(flat, n_agents=args.agents, clip_norm=clip)
    shapes = [g.shape for g in true]
    masked_target = list(torch.from_numpy(seen.astype(np.float32)).split([int(np.prod(s)) for s in shapes]))
    masked_target = [t.reshape(s) for t, s in zip(masked_target, shapes, strict=True)]
    out: dict[str, Any] = {"command": "python benchmarks/inversion.py " + " ".join(argv or sys.argv[1:]),
                           "batch": args.batch, "iters": args.iters, "image_size": 64, "model": "cnn",
                           "agents": args.agents}
    recs = {}
    for name, target in (("plain", true), ("masked", masked_target)):
        t0 = time.perf_counter()
        recs[name] = invert(model, [t.detach() for t in target], labels, tuple(x.shape), iters=args.iters,
                            tv=args.tv, seed=args.seed + 1)
        out[name] = {**_scores(images, recs[name]), "seconds": time.perf_counter() - t0}
        print(f"{name:>6}: SSIM {out[name]['ssim']:.3f}  PSNR {out[name]['psnr']:.2f} dB  "
              f"({out[name]['seconds']:.0f} s)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, args.batch, figsize=(2.2 * args.batch, 6.6), squeeze=False)
    for row, (title, imgs) in enumerate((("original", images), ("plain update", recs["plain"]),
                                         ("masked upload", recs["masked"]))):
        for i in range(args.batch):
            axes[row][i].imshow(imgs[i, 0], cmap="gray", vmin=0, vmax=1)
            axes[row][i].set_xticks([])
            axes[row][i].set_yticks([])
        axes[row][0].set_ylabel(title)
    fig.suptitle(f"Inverting gradients: plain SSIM {out['plain']['ssim']:.2f}, masked SSIM {out['masked']['ssim']:.2f}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    fig.savefig(args.png, dpi=100)
    out["png"] = args.png
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
