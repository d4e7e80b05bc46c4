"""Fixed-point kernels vs the NumPy reference vs a plain memory copy, side by side.

    python benchmarks/fixed_point.py [--sizes 1000000 11000000 25000000] [--repeats 7] [--json PATH]

Bandwidth counts the bytes read plus the bytes written by each operation. Columns:

- ``kernel``: the native CPU kernel writing into a preallocated output (what streaming callers
  such as secure aggregation pay);
- ``api``: the public ``medfl.native.fixed_point`` call, which also allocates (and page-faults) its output;
- ``numpy``: the NumPy reference;
- ``copy``: ``np.copyto`` of the same number of bytes between preallocated, touched buffers, the
  practical ceiling on this machine. ``kernel/copy`` is the DESIGN.md target (>= 0.5).

Times are medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from medfl import native
from medfl.native import fixed_point as fxp
from medfl.native.reference import fixed_point as fxp_ref


def bench(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ops_for(x: np.ndarray, k: int, mod) -> dict[str, tuple[int, Callable, Callable, Callable]]:
    """name -> (bytes moved, kernel, api, reference)."""
    enc = fxp.encode(x, frac_bits=16, ring_bits=k)
    stack = np.stack([enc] * 10)
    out_u, out_f, out_sum = np.empty_like(enc), np.empty_like(x), np.empty_like(enc)
    out_u.fill(0), out_f.fill(0), out_sum.fill(0)
    io = x.nbytes + enc.nbytes
    return {
        "encode nearest": (io, lambda: mod.encode(x, out_u, 16, False, 1, 0),
                           lambda: fxp.encode(x, frac_bits=16, ring_bits=k),
                           lambda: fxp_ref.encode_reference(x, frac_bits=16, ring_bits=k)),
        "encode stochastic": (io, lambda: mod.encode(x, out_u, 16, True, 1, 0),
                              lambda: fxp.encode(x, frac_bits=16, ring_bits=k, rounding="stochastic", seed=1),
                              lambda: fxp_ref.encode_reference(x, frac_bits=16, ring_bits=k, rounding="stochastic",
                                                           seed=1)),
        "decode": (io, lambda: mod.decode(enc, out_f, 16), lambda: fxp.decode(enc, frac_bits=16),
                   lambda: fxp_ref.decode_reference(enc, frac_bits=16)),
        "ring_sum x10": (stack.nbytes + enc.nbytes, lambda: mod.ring_sum(stack, out_sum),
                         lambda: fxp.ring_sum(stack), lambda: fxp_ref.ring_sum_reference(stack)),
    }


def run(sizes: list[int], repeats: int) -> list[dict]:
    mod = native.native_module()
    if mod is None:
        raise SystemExit("medfl._native is not built; run 'make install'")
    rows = []
    for n in sizes:
        x = (np.random.default_rng(0).standard_normal(n) * 3).astype(np.float32)
        for k in (32, 64):
            for name, (nbytes, kernel_fn, api_fn, ref_fn) in ops_for(x, k, mod).items():
                src = np.ones(nbytes // 2, np.uint8)  # touched pages: untouched ones read as the zero page
                dst = np.zeros_like(src)
                t_copy = bench(lambda s=src, d=dst: np.copyto(d, s), repeats)
                t_kernel = bench(kernel_fn, repeats)
                t_api = bench(api_fn, repeats)
                t_ref = bench(ref_fn, max(1, repeats // 2))
                row = {"n": n, "ring_bits": k, "op": name, "bytes": nbytes,
                       "kernel_s": t_kernel, "api_s": t_api, "reference_s": t_ref, "copy_s": t_copy}
                for key in ("kernel", "api", "reference", "copy"):
                    row[f"{key}_gbps"] = nbytes / row[f"{key}_s"] / 1e9
                row["kernel_vs_copy"] = t_copy / t_kernel
                row["api_vs_copy"] = t_copy / t_api
                row["kernel_speedup_vs_reference"] = t_ref / t_kernel
                rows.append(row)
                print(f"  {n:>10,} k={k} {name}: kernel {row['kernel_gbps']:.1f} GB/s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'n':>11} {'k':>3} {'op':<18} {'kernel':>8} {'api':>8} {'numpy':>8} {'copy':>8} "
            f"{'kern/copy':>9} {'api/copy':>8} {'kern/numpy':>10}")
    lines = [head + "   (GB/s; ratios of bandwidth)", "-" * len(head)]
    for r in rows:
        lines.append(f"{r['n']:>11,} {r['ring_bits']:>3} {r['op']:<18} {r['kernel_gbps']:>8.2f} {r['api_gbps']:>8.2f} "
                     f"{r['reference_gbps']:>8.2f} {r['copy_gbps']:>8.2f} {r['kernel_vs_copy']:>9.2f} "
                     f"{r['api_vs_copy']:>8.2f} {r['kernel_speedup_vs_reference']:>9.1f}x")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 11_000_000, 25_000_000])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    info = native.native_module().build_info() if native.native_module() else {}
    print(f"backend: {native.active_backend()}  build: {info}  cores: {os.cpu_count()}  "
          f"{platform.processor() or platform.machine()}  load: {os.getloadavg()[0]:.2f}")
    rows = run(args.sizes, args.repeats)
    print(table(rows))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"machine": platform.platform(), "cores": os.cpu_count(), "build": info,
                       "repeats": args.repeats, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
