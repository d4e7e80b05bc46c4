"""Fixed-point kernels vs the NumPy reference vs a plain memory copy, side by side.

    python benchmarks/fixed_point.py [--sizes 1000000 11000000 25000000] [--json PATH]

Bandwidth counts the bytes read plus the bytes written by each operation; the copy row moves
the same bytes with np.copyto, the practical ceiling on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from medfl import fixed_point as fxp
from medfl import native


def bench(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(0)
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        for k in (32, 64):
            udt = np.uint32 if k == 32 else np.uint64
            enc = fxp.encode(x, frac_bits=16, ring_bits=k)
            stack = np.stack([enc] * 10)
            out_bytes = enc.nbytes
            ops = {
                "encode nearest": (x.nbytes + out_bytes,
                                   lambda k=k, x=x: fxp.encode(x, frac_bits=16, ring_bits=k),
                                   lambda k=k, x=x: fxp.encode_reference(x, frac_bits=16, ring_bits=k)),
                "encode stochastic": (x.nbytes + out_bytes,
                                      lambda k=k, x=x: fxp.encode(x, frac_bits=16, ring_bits=k, rounding="stochastic",
                                                             seed=1),
                                      lambda k=k, x=x: fxp.encode_reference(x, frac_bits=16, ring_bits=k,
                                                                       rounding="stochastic", seed=1)),
                "decode": (out_bytes + x.nbytes, lambda enc=enc: fxp.decode(enc, frac_bits=16),
                           lambda enc=enc: fxp.decode_reference(enc, frac_bits=16)),
                "ring_sum x10": (stack.nbytes + out_bytes, lambda s=stack: fxp.ring_sum(s),
                                 lambda s=stack: fxp.ring_sum_reference(s)),
            }
            for name, (nbytes, native_fn, ref_fn) in ops.items():
                src = np.ones(nbytes // 2, np.uint8)  # touched pages: untouched ones read as the zero page
                dst = np.zeros_like(src)
                t_copy = bench(lambda s=src, d=dst: np.copyto(d, s), repeats)
                t_nat = bench(native_fn, repeats)
                t_ref = bench(ref_fn, max(1, repeats // 2))
                rows.append({"n": n, "ring_bits": k, "op": name, "bytes": nbytes, "dtype": np.dtype(udt).name,
                             "native_s": t_nat, "reference_s": t_ref, "copy_s": t_copy,
                             "native_gbps": nbytes / t_nat / 1e9, "reference_gbps": nbytes / t_ref / 1e9,
                             "copy_gbps": nbytes / t_copy / 1e9, "native_vs_copy": t_copy / t_nat,
                             "speedup_vs_reference": t_ref / t_nat})
                print(f"{n:>10} {k:>3} {name:<18} native {rows[-1]['native_gbps']:6.2f} GB/s  "
                      f"numpy {rows[-1]['reference_gbps']:6.2f} GB/s  copy {rows[-1]['copy_gbps']:6.2f} GB/s  "
                      f"native/copy {rows[-1]['native_vs_copy']:5.2f}  x{rows[-1]['speedup_vs_reference']:.1f} "
                      f"vs numpy", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 11_000_000, 25_000_000])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(f"backend: {native.active_backend()}  build: {native.native_module().build_info()}  "
          f"cores: {os.cpu_count()}  {platform.processor() or platform.machine()}")
    rows = run(args.sizes, args.repeats)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"machine": platform.platform(), "cores": os.cpu_count(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
