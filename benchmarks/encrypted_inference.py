"""Encrypted inference (2PC + dealer): medfl per image vs plaintext (and CrypTen when asked), side by side.

    python benchmarks/encrypted_inference.py [--models cnn resnet18] [--images 2]
                                             [--json benchmarks/results/encrypted_inference.json]

For the small CNN at 1x128x128 and ResNet-18 (GroupNorm) at 1x224x224, on synthetic standardised
images (the models are freshly initialised, the CNN's zero-initialised head re-drawn so its logits
are not trivially zero; calibration on two other images as at model registration):

- ``plain_seconds``: torch forward of one image (median);
- ``online_seconds``: one query of :class:`medfl.smpc.evaluator.SecureModel` minus the time spent
  inside the dealer: both compute parties' local work, run one after the other in this process,
  with the openings in memory (no network);
- ``offline_seconds`` / ``offline_bytes``: the dealer's time and the bytes it sends (both parties);
- ``online_bytes_per_party``: bytes each party sends during the query; ``rounds``: openings;
- ``max_abs_error``: largest ``|logit - plaintext logit|`` over the images; ``decisions_agree``;
- ``wan_seconds``: ``online_seconds + rounds * RTT + max(bytes per party) * 8 / bandwidth`` for a
  hospital WAN (100 Mbit/s, 20 ms RTT), as the issue asks (a projection, not a measurement);
- ``session_setup_seconds``: sharing the weights and opening their masks, once per model and session;
- ``*_cpu_seconds``: the same split in process CPU time (all threads), which a busy shared machine
  inflates less than wall time.

The weights' masks are opened once per session (not per query). Times are wall-clock on a machine
whose cores may be shared, so they are noisy. CrypTen runs only with ``--crypten-python`` (a venv
with crypten 0.4.1); it is not installed here, see the issue for its install facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from medfl import native
from medfl.models import create_model
from medfl.smpc import InMemoryChannel, LocalDealer
from medfl.smpc.evaluator import SecureModel, calibrate
from medfl.smpc.layers import Session

SIDES = {"cnn": 128, "resnet18": 224}
WAN_BPS = 100e6
WAN_RTT_S = 0.020


class TimedDealer:
    """Forwards every request to a :class:`LocalDealer` and adds up the (wall and CPU) time spent in it."""

    def __init__(self) -> None:
        self.inner = LocalDealer()
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self.cpu_seconds += time.process_time() - c

        return timed


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # benchmark model weights only, not protocol randomness
    model = create_model(name)
    if name == "cnn":
        model.head[2].reset_parameters()  # type: ignore[index]
    return model.eval()


def _plain_seconds(model: torch.nn.Module, img: np.ndarray, repeats: int = 5) -> float:
    x = torch.from_numpy(img)[None]
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_medfl(name: str, n_images: int) -> dict[str, Any]:
    """Run ``n_images`` encrypted queries of one model and return the per-image figures."""
    side = SIDES[name]
    model = _model(name)
    rng = np.random.default_rng(0)  # synthetic benchmark images only
    calib = [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(2)]
    images = [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(n_images)]
    cal = calibrate(model, calib)
    dealer, channel = TimedDealer(), InMemoryChannel()
    t = time.perf_counter()
    secure = SecureModel(model, Session(dealer, channel), (1, side, side), cal)  # type: ignore[arg-type]
    setup = time.perf_counter() - t
    rows = []
    for img in images:
        d0, b0, r0, o0 = dealer.seconds, list(channel.bytes_sent), channel.rounds, dealer.inner.bytes_offline
        dc0 = dealer.cpu_seconds
        t, c = time.perf_counter(), time.process_time()
        got = secure(img)
        total, total_cpu = time.perf_counter() - t, time.process_time() - c
        with torch.no_grad():
            want = model(torch.from_numpy(img)[None])[0].double().numpy()
        offline = dealer.seconds - d0
        sent = [channel.bytes_sent[p] - b0[p] for p in (0, 1)]
        rounds = channel.rounds - r0
        online = total - offline
        rows.append({"seconds": total, "online_seconds": online, "offline_seconds": offline,
                     "online_cpu_seconds": total_cpu - (dealer.cpu_seconds - dc0),
                     "offline_cpu_seconds": dealer.cpu_seconds - dc0,
                     "offline_bytes": dealer.inner.bytes_offline - o0, "online_bytes_per_party": sent,
                     "rounds": rounds, "max_abs_error": float(np.max(np.abs(got - want))),
                     "decision_agrees": bool(np.argmax(got) == np.argmax(want)),
                     "wan_seconds": online + rounds * WAN_RTT_S + max(sent) * 8 / WAN_BPS})
    med = {k: statistics.median(r[k] for r in rows) for k in ("seconds", "online_seconds", "offline_seconds",
                                                              "online_cpu_seconds", "offline_cpu_seconds",
                                                              "wan_seconds")}
    return {"input": [1, side, side], "plain_seconds": _plain_seconds(model, images[0]),
            "session_setup_seconds": setup, **med, "offline_bytes": rows[0]["offline_bytes"],
            "online_bytes_per_party": rows[0]["online_bytes_per_party"], "rounds": rows[0]["rounds"],
            "max_abs_error": max(r["max_abs_error"] for r in rows),
            "decisions_agree": all(r["decision_agrees"] for r in rows), "per_image": rows}


def _table(results: dict[str, Any]) -> str:
    head = (f"{'model':<10}{'plain s':>9}{'online s':>10}{'(cpu)':>7}{'offline s':>11}{'(cpu)':>7}{'offline MB':>12}"
            f"{'online MB/party':>17}{'rounds':>8}{'max err':>10}{'WAN s':>8}")
    lines = [head]
    for name, r in results.items():
        lines.append(f"{name:<10}{r['plain_seconds']:>9.3f}{r['online_seconds']:>10.2f}{r['online_cpu_seconds']:>7.2f}"
                     f"{r['offline_seconds']:>11.2f}{r['offline_cpu_seconds']:>7.2f}"
                     f"{r['offline_bytes'] / 1e6:>12.0f}{max(r['online_bytes_per_party']) / 1e6:>17.1f}"
                     f"{r['rounds']:>8d}{r['max_abs_error']:>10.2e}{r['wan_seconds']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SIDES), choices=list(SIDES))
    ap.add_argument("--images", type=int, default=2, help="encrypted queries per model (default 2)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    results = {name: bench_medfl(name, args.images) for name in args.models}
    print(_table(results))
    if args.json:
        out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch": torch.__version__, "native": native.active_backend(),
                           "smpc_kernels": (native.native_module().smpc_impl()  # type: ignore[union-attr]
                                            if native.native_module() is not None else None)},
               "wan": {"bandwidth_bit_s": WAN_BPS, "rtt_s": WAN_RTT_S}, "medfl": results,
               "crypten": None, "note": "crypten: not run (needs its own venv; see the module docstring)"}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
