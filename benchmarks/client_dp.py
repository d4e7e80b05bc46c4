"""Client-level DP: the discrete Gaussian noise kernel next to quantize + mask, and epsilon tables.

    python benchmarks/client_dp.py [--sizes 1000000 4000000] [--peers 2 8] [--repeats 5]
                                   [--json benchmarks/results/client_dp.json]

Per update size (float32 parameters) and number of masks, on the host (times are medians; the
cores may be shared with other work, so figures are noisy):

- ``quantize+mask``: :func:`medfl.native.quantize_and_mask` alone (32-bit ring), the secure
  upload without client-level DP;
- ``noise``: :func:`medfl.native.ddg.add_discrete_gaussian` on the same ring vector (sigma as a
  client-level round uses: z = 0.8, t = 2);
- ``noise+quantize+mask``: both, and ``ratio`` = that time over quantize+mask alone (target of
  issue 20: at most 1.2);
- ``numpy noise+mask``: the NumPy reference of the noise
  (:func:`medfl.native.reference.ddg.discrete_gaussian_reference`) then the NumPy masking reference,
  on the smallest size only (it is slow).

Then the client-level epsilon (delta 1e-5) of the distributed discrete Gaussian
(:mod:`medfl.privacy.ddg_accountant`) for a few federations, worst case (t survivors) and with
every agent surviving.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from medfl import csprng
from medfl.native import quantize_and_mask
from medfl.native.ddg import add_discrete_gaussian
from medfl.native.reference.ddg import discrete_gaussian_reference
from medfl.native.reference.masking import apply_masks_reference
from medfl.privacy import ddg_accountant
from medfl.privacy.distributed_dp import ClientDP
from medfl.secagg.masking import MaskSeed


def _median(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _kernel_row(n: int, m: int, repeats: int, *, numpy_too: bool) -> dict[str, object]:
    nonce = bytes(12)
    spec = ClientDP(clip=1.0, noise_multiplier=0.8, dim=n, threshold=2)
    x = (np.random.default_rng(0).normal(size=n) * 1e-3).astype(np.float32)
    masks = [MaskSeed(csprng.token_bytes(32), 1 if j % 2 else -1) for j in range(m)]
    out = np.empty(n, dtype=np.uint32)

    def qm() -> None:
        quantize_and_mask(x, frac_bits=16, ring_bits=32, masks=masks, nonce=nonce, rounding_seed=1, out=out)

    def noise() -> None:
        add_discrete_gaussian(out, sigma=spec.sigma)

    def both() -> None:
        qm()
        noise()

    def numpy_path() -> None:
        v = discrete_gaussian_reference(n, spec.sigma, csprng.token_bytes(32)).astype(np.uint32)
        apply_masks_reference(v, masks, nonce)

    qm()
    t_qm, t_noise, t_both = (_median(f, repeats) for f in (qm, noise, both))
    row: dict[str, object] = {"params": n, "masks": m, "sigma": round(spec.sigma, 1), "quantize+mask_s": t_qm,
                              "noise_s": t_noise, "noise+quantize+mask_s": t_both, "ratio": t_both / t_qm}
    if numpy_too:
        row["numpy_noise+mask_s"] = _median(numpy_path, 1)
    return row


def kernel_rows(sizes: list[int], peers: list[int], repeats: int) -> list[dict[str, object]]:
    """Time quantize+mask, the noise, both, and (smallest size) the NumPy reference."""
    return [_kernel_row(n, m, repeats, numpy_too=n == min(sizes)) for n in sizes for m in peers]


def epsilon_rows() -> list[dict[str, object]]:
    """Client-level epsilon at delta 1e-5 for a few federations (d = 1e6, clip 1)."""
    rows = []
    for sites, t, z, rounds in [(3, 2, 0.8, 2), (3, 2, 1.0, 10), (10, 7, 1.0, 50), (10, 5, 2.0, 100),
                                (50, 35, 1.0, 100)]:
        spec = ClientDP(clip=1.0, noise_multiplier=z, dim=10**6, threshold=t)
        worst = ddg_accountant.epsilon([spec.round_rho(t)] * rounds, 1e-5)
        everyone = ddg_accountant.epsilon([spec.round_rho(sites)] * rounds, 1e-5)
        rows.append({"sites": sites, "t": t, "z": z, "rounds": rounds, "sigma_per_agent": round(spec.sigma, 1),
                     "epsilon_t_survive": round(worst, 3), "epsilon_all_survive": round(everyone, 3)})
    return rows


def _print(rows: list[dict[str, object]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("  ".join(f"{k:>22}" for k in keys))
    for r in rows:
        print("  ".join(f"{r.get(k, ''):>22.4g}" if isinstance(r.get(k), float) else f"{r.get(k, ''):>22}"
                        for k in keys))


def main() -> None:
    """Run the tables and print them (and write JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--peers", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    print(f"host: {os.cpu_count()} cores")
    kr = kernel_rows(a.sizes, a.peers, a.repeats)
    _print(kr)
    er = epsilon_rows()
    print()
    _print(er)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kernels": kr, "epsilon": er}, f, indent=1)


if __name__ == "__main__":
    main()
