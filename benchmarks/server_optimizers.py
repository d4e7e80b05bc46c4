"""Server optimizers on a fixed synthetic non-IID problem: FedAvg vs FedAvgM vs FedAdam vs FedYogi vs FedAdagrad.

    python benchmarks/server_optimizers.py [--sites 10] [--rounds 30] [--alpha 0.3] [--seed 0]
                                           [--json benchmarks/results/server_optimizers.json]

The problem: logistic regression on 32 features; each site draws its label mix from a
Dirichlet(alpha) (label skew) and its features with a site-specific shift (acquisition shift),
so the sites' local optima disagree. Each round every site runs 2 local epochs of mini-batch SGD
(lr 0.05, batch 16) from the global weights in NumPy (a stand-in for the agent's trainer, which
this benchmark is not about); the coordinator's own code then combines the sites' weights:
:func:`coordinator.aggregation.aggregate` for FedAvg and, for the others,
:func:`coordinator.aggregation.mean_delta` and :class:`coordinator.server_optim.ServerOptimizer`,
exactly what a round does after the secure sum is unmasked.

Each server optimizer runs over a small grid of server_lr (Reddi et al. tune it per task too);
the first table shows every setting's final pooled training loss and pooled AUC, the second the
loss per round of each optimizer's best setting (by final loss). Seeded: the same command prints
the same figures.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from coordinator.aggregation import aggregate, mean_delta
from coordinator.server_optim import ServerOptimizer

GRID = {"fedavg": [1.0], "fedavgm": [0.1, 0.3, 1.0], "fedadam": [0.003, 0.01, 0.03, 0.1, 0.3],
        "fedyogi": [0.003, 0.01, 0.03, 0.1, 0.3], "fedadagrad": [0.003, 0.01, 0.03, 0.1, 0.3]}
DIM = 32


def make_sites(n_sites: int, alpha: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(DIM) / np.sqrt(DIM) * 3
    sites = []
    for _ in range(n_sites):
        n = int(rng.integers(60, 400))                      # quantity skew
        p_pos = rng.dirichlet([alpha, alpha])[1]            # label skew
        y = (rng.random(n) < p_pos).astype(np.float64)
        shift = rng.standard_normal(DIM) * 0.7              # acquisition shift
        x = rng.standard_normal((n, DIM)) + shift + np.outer(2 * y - 1, w_true) * 0.6
        sites.append((x, y))
    return sites


def _loss(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    z = x @ w + b
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def local_train(arrays: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                epochs: int = 2, lr: float = 0.05, batch: int = 16) -> dict[str, np.ndarray]:
    w, b = arrays["w"].astype(np.float64), float(arrays["b"][0])
    for _ in range(epochs):
        perm = rng.permutation(len(y))
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            p = 1 / (1 + np.exp(-(x[idx] @ w + b)))
            g = p - y[idx]
            w -= lr * x[idx].T @ g / len(idx)
            b -= lr * float(g.mean())
    return {"w": w.astype(np.float32), "b": np.array([b], np.float32)}


def run(strategy: str, server_lr: float, sites, rounds: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed + 1)
    arrays = {"w": np.zeros(DIM, np.float32), "b": np.zeros(1, np.float32)}
    opt = None if strategy == "fedavg" else ServerOptimizer(strategy, server_lr=server_lr)
    x_all = np.concatenate([x for x, _ in sites])
    y_all = np.concatenate([y for _, y in sites])
    curve = []
    for _ in range(rounds):
        updates = [(local_train(arrays, x, y, rng), len(y)) for x, y in sites]
        if opt is None:
            arrays = aggregate("fedavg", arrays, updates, server_lr=server_lr)
        else:
            arrays, state = opt.propose(arrays, mean_delta(arrays, updates))
            opt.commit(state)
        w, b = arrays["w"].astype(np.float64), float(arrays["b"][0])
        curve.append((_loss(w, b, x_all, y_all), _auc(x_all @ w + b, y_all)))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--alpha", type=float, default=0.3, help="Dirichlet label-skew concentration (small = skewed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    sites = make_sites(args.sites, args.alpha, args.seed)
    pos = [float(y.mean()) for _, y in sites]
    print(f"{args.sites} sites, {sum(len(y) for _, y in sites)} samples, positive fraction per site "
          f"{min(pos):.2f}-{max(pos):.2f} (alpha {args.alpha}), {args.rounds} rounds")
    results = {}
    print(f"\n{'strategy':<11} {'server_lr':>9} {'final loss':>10} {'final AUC':>9}")
    for strategy, lrs in GRID.items():
        for lr in lrs:
            curve = run(strategy, lr, sites, args.rounds, args.seed)
            results[(strategy, lr)] = curve
            print(f"{strategy:<11} {lr:>9g} {curve[-1][0]:>10.4f} {curve[-1][1]:>9.4f}")
    best = {s: min((k for k in results if k[0] == s), key=lambda k: results[k][-1][0]) for s in GRID}
    marks = sorted({1, 2, 5, 10, 20, args.rounds} & set(range(1, args.rounds + 1)))
    print("\npooled training loss per round (each optimizer at its best server_lr)")
    print(f"{'round':>5} " + " ".join(f"{s + '@' + format(k[1], 'g'):>16}" for s, k in best.items()))
    for r in marks:
        print(f"{r:>5} " + " ".join(f"{results[k][r - 1][0]:>16.4f}" for k in best.values()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"},
                                         "runs": [{"strategy": s, "server_lr": lr, "loss": [c[0] for c in cur],
                                                   "auc": [c[1] for c in cur]} for (s, lr), cur in results.items()]},
                                        indent=1))


if __name__ == "__main__":
    main()
