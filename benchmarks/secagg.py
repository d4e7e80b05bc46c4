"""Secure-aggregation data path: native quantize + mask vs the straightforward path, side by side.

    python benchmarks/secagg.py [--sizes 1000000 11000000 25000000] [--peers 2 8 32] [--repeats 3]
                                [--json benchmarks/results/secagg.json]

For each update size (float32 parameters) and number of masks (peers + the self mask):

- ``fused``: :func:`medfl.secagg.masking.quantize_and_mask` (native stochastic encode, then the
  native masking kernel that consumes every keystream tile while it is in cache);
- ``straight``: the straightforward path: NumPy stochastic encode
  (:func:`medfl.fixed_point.encode_reference`) then, per mask, ``cryptography``'s ChaCha20 keystream
  and a NumPy add (:func:`medfl.secagg.masking.quantize_and_mask_reference`);
- ``ks_openssl`` / ``ks_native``: one keystream of the update's ring size, OpenSSL through
  ``cryptography`` vs :func:`medfl.secagg.prg.chacha20_keystream`;
- ``copy``: ``np.copyto`` of the float32 update between touched buffers.

GB/s counts the update's float32 bytes (keystreams: the keystream bytes). Targets (issue #4):
native keystream >= 0.8x OpenSSL; fused >= 3x the straightforward path at 8 peers. The 10-agent
loopback round (secure vs plain) is measured by benchmarks/secagg_round.py.
Times are medians over the repeats; the machine's cores may be shared, so figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from medfl import native
from medfl.secagg import masking, prg
from medfl.secagg.masking import MaskSeed
from medfl.secagg.quantization import QuantSpec, choose_spec


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_one(n: int, peers: int, repeats: int) -> dict[str, Any]:
    """Time every column for one update size and neighbourhood."""
    spec: QuantSpec = choose_spec(n_agents=peers + 1, clip_norm=1.0)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n, dtype=np.float32) / np.float32(np.sqrt(n)))
    masks = [MaskSeed(os.urandom(32), 1 if i % 2 else -1) for i in range(peers)] + [MaskSeed(os.urandom(32), 1)]
    nonce = os.urandom(12)
    ks_bytes = n * np.dtype(spec.dtype).itemsize
    key = os.urandom(32)
    dst = np.empty_like(x)
    dst[:] = 0
    row: dict[str, Any] = {"params": n, "peers": peers, "masks": len(masks), "ring_bits": spec.ring_bits}
    secs = {
        "fused": _median_s(lambda: masking.quantize_and_mask(x, spec=spec, masks=masks, nonce=nonce,
                                                             rounding_seed=1), repeats),
        "straight": _median_s(lambda: masking.quantize_and_mask_reference(x, spec=spec, masks=masks, nonce=nonce,
                                                                          rounding_seed=1), max(1, repeats // 2)),
        "ks_openssl": _median_s(lambda: prg.chacha20_keystream_reference(key, nonce, 0, ks_bytes), repeats),
        "ks_native": _median_s(lambda: prg.chacha20_keystream(key, nonce, 0, ks_bytes), repeats),
        "copy": _median_s(lambda: np.copyto(dst, x), repeats),
    }
    for name, s in secs.items():
        nbytes = ks_bytes if name.startswith("ks_") else x.nbytes
        row[f"{name}_s"] = s
        row[f"{name}_gbps"] = nbytes / s / 1e9
    row["ks_native_vs_openssl"] = secs["ks_openssl"] / secs["ks_native"]
    row["fused_speedup_vs_straight"] = secs["straight"] / secs["fused"]
    row["fused_vs_copy"] = secs["copy"] / secs["fused"]
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["params", "peers", "ring_bits", "fused_gbps", "straight_gbps", "ks_native_gbps", "ks_openssl_gbps",
            "copy_gbps", "fused_s", "straight_s", "ks_native_vs_openssl", "fused_speedup_vs_straight"]
    lines = [" | ".join(cols)]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and targets, write JSON if asked."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 11_000_000, 25_000_000])
    ap.add_argument("--peers", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    rows = [bench_one(n, p, args.repeats) for n in args.sizes for p in args.peers]
    print(f"backend: {native.active_backend()}  cpus: {os.cpu_count()}  ({platform.processor() or platform.machine()})")
    print(_table(rows))
    ks_ratio = min(r["ks_native_vs_openssl"] for r in rows)
    at8 = [r["fused_speedup_vs_straight"] for r in rows if r["peers"] == 8]
    targets = {"ks_native_vs_openssl_min": ks_ratio, "ks_target": 0.8, "ks_met": ks_ratio >= 0.8,
               "fused_speedup_at_8_peers_min": min(at8) if at8 else None, "fused_target": 3.0,
               "fused_met": bool(at8) and min(at8) >= 3.0}
    print(f"native keystream / OpenSSL (min over rows): {ks_ratio:.2f}x (target >= 0.8x): "
          f"{'met' if targets['ks_met'] else 'NOT met'}")
    if at8:
        print(f"fused vs straightforward at 8 peers (min): {min(at8):.2f}x (target >= 3x): "
              f"{'met' if targets['fused_met'] else 'NOT met'}")
    if args.json:
        out = {"command": "python benchmarks/secagg.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "backend": native.active_backend(), "cpus": os.cpu_count(), "rows": rows, "targets": targets}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
