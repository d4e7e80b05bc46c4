"""Encrypted inference (2PC + dealer): medfl per image vs plaintext (and CrypTen when asked), side by side.

    python benchmarks/encrypted_inference.py [--models cnn resnet18] [--images 2] [--device cpu cuda]
                                             [--crypten-python /path/to/crypten-venv/bin/python]
                                             [--json benchmarks/results/encrypted_inference.json]

For the small CNN at 1x128x128 and ResNet-18 (GroupNorm) at 1x224x224, on synthetic standardised
images (the models are freshly initialised, the CNN's zero-initialised head re-drawn so its logits
are not trivially zero; calibration on two other images as at model registration):

- ``plain_seconds``: torch forward of one image (median);
- ``online_seconds``: one query of :class:`medfl.smpc.evaluator.SecureModel` with its dealer material
  fetched ahead by :class:`medfl.smpc.dealer.prefetch.PrefetchDealer`: both compute parties' local work,
  run one after the other in this process, with the openings in memory (no network);
- ``offline_seconds`` / ``offline_bytes``: :meth:`PrefetchDealer.prefetch` for that query: the
  dealer's generation plus the parties' input-independent products (``A_p F + C_p``), and the
  bytes the dealer sends (both parties); ``seconds`` is their sum;
- ``online_bytes_per_party``: bytes each party sends during the query; ``rounds``: openings;
- ``max_abs_error``: largest ``|logit - plaintext logit|`` over the images; ``decisions_agree``;
- ``wan_seconds``: ``online_seconds + rounds * RTT + max(bytes per party) * 8 / bandwidth`` for a
  hospital WAN (100 Mbit/s, 20 ms RTT), as the issue asks (a projection, not a measurement);
- ``session_setup_seconds``: sharing the weights and opening their masks, once per model and session;
- ``*_cpu_seconds``: the same split in process CPU time (all threads), which a busy shared machine
  inflates less than wall time.

The weights' masks are opened once per session (not per query). Times are wall-clock on a machine
whose cores may be shared, so they are noisy.

``--device cpu cuda`` runs every medfl row on each device (rows ``<model> <device>``): with ``cuda`` the
ring products of Conv2d / Linear (online and the offline ``A_p F``) and the ReLU / max-pool DCF
evaluations run on the GPU (:class:`medfl.smpc.device.CudaDevice`, masked weights resident for the
session), and so does the dealer's bulk generation (:class:`medfl.smpc.dealer.generator.CudaGenerator`:
ChaCha20 keystreams, the triples' ``A B``, the DCF keys; counted in ``offline_seconds``); openings,
truncations and element-wise algebra stay on the host; ``bit_identical_to_cpu`` says whether the
logits equal the CPU rows' bit for bit (same seeded randomness on both devices in that comparison
run, the dealer on each device too, see ``--check-identical``).

With ``--crypten-python`` (the Python of a venv with crypten 0.4.1, see benchmarks/crypten_side.py)
both systems also run the BatchNorm variants of the models (CrypTen cannot import GroupNorm):
rows ``<model>-bn`` (medfl, BatchNorm folded into the convolutions) and ``crypten <model>-bn``
(two parties + TTP on loopback, CrypTen's own round and byte counts per party).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from medfl import csprng, native
from medfl.models import create_model
from medfl.smpc import InMemoryChannel, LocalDealer
from medfl.smpc.dealer.prefetch import PrefetchDealer
from medfl.smpc.device import DEVICES, smpc_device
from medfl.smpc.engine.layers import Session
from medfl.smpc.evaluator import SecureModel, calibrate, fold_batchnorm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crypten_side import batchnorm_variant  # noqa: E402

SIDES = {"cnn": 128, "resnet18": 224}
WAN_BPS = 100e6
WAN_RTT_S = 0.020


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


def bench_medfl(name: str, n_images: int, *, batchnorm: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Run ``n_images`` encrypted queries of one model (or its BatchNorm variant) on ``device``; return the figures."""
    side = SIDES[name]
    plain = batchnorm_variant(name) if batchnorm else _model(name)
    model = fold_batchnorm(plain) if batchnorm else plain
    rng = np.random.default_rng(0)  # synthetic benchmark images only
    calib = [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(2)]
    images = [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(n_images)]
    cal = calibrate(model, calib)
    dev = smpc_device(device)
    inner, channel = LocalDealer(device=dev), InMemoryChannel()  # the dealer generates on the same device
    dealer = PrefetchDealer(inner, device=dev)
    t = time.perf_counter()
    secure = SecureModel(model, Session(dealer, channel, device=dev), (1, side, side), cal)  # type: ignore[arg-type]
    setup = time.perf_counter() - t
    secure(calib[0])  # a first query records the plan of dealer requests
    dealer.end_query()
    rows = []
    for img in images:
        o0 = inner.bytes_offline
        t, c = time.perf_counter(), time.process_time()
        dealer.prefetch()  # offline: dealer material plus the parties' input-independent products
        offline, offline_cpu = time.perf_counter() - t, time.process_time() - c
        b0, r0 = list(channel.bytes_sent), channel.rounds
        t, c = time.perf_counter(), time.process_time()
        got = secure(img)
        online, online_cpu = time.perf_counter() - t, time.process_time() - c
        with torch.no_grad():
            want = plain(torch.from_numpy(img)[None])[0].double().numpy()
        sent = [channel.bytes_sent[p] - b0[p] for p in (0, 1)]
        rounds = channel.rounds - r0
        rows.append({"seconds": online + offline, "online_seconds": online, "offline_seconds": offline,
                     "online_cpu_seconds": online_cpu, "offline_cpu_seconds": offline_cpu,
                     "offline_bytes": inner.bytes_offline - o0, "online_bytes_per_party": sent,
                     "rounds": rounds, "max_abs_error": float(np.max(np.abs(got - want))),
                     "decision_agrees": bool(np.argmax(got) == np.argmax(want)),
                     "wan_seconds": online + rounds * WAN_RTT_S + max(sent) * 8 / WAN_BPS})
    med = {k: statistics.median(r[k] for r in rows) for k in ("seconds", "online_seconds", "offline_seconds",
                                                              "online_cpu_seconds", "offline_cpu_seconds",
                                                              "wan_seconds")}
    return {"input": [1, side, side], "device": device, "plain_seconds": _plain_seconds(plain, images[0]),
            "session_setup_seconds": setup, **med, "offline_bytes": rows[0]["offline_bytes"],
            "online_bytes_per_party": rows[0]["online_bytes_per_party"], "rounds": rows[0]["rounds"],
            "max_abs_error": max(r["max_abs_error"] for r in rows),
            "decisions_agree": all(r["decision_agrees"] for r in rows), "per_image": rows}


def bench_crypten(name: str, n_images: int, python: str) -> dict[str, Any]:
    """Run CrypTen (2 parties + TTP) on the BatchNorm variant in its own venv; return its figures."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crypten_side.py")
    proc = subprocess.run([python, script, "--model", name, "--images", str(n_images)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"crypten side failed ({proc.returncode}): {proc.stderr[-2000:]}")
    per_rank = {rows[0]["rank"]: rows for rows in json.loads(proc.stdout.strip().splitlines()[-1])}
    side = SIDES[name]
    plain = batchnorm_variant(name)
    from crypten_side import images

    errors = []
    for img, row in zip(images(side, n_images), per_rank[0], strict=True):
        with torch.no_grad():
            want = plain(torch.from_numpy(img)[None])[0].double().numpy()
        errors.append(float(np.max(np.abs(np.asarray(row["logits"]) - want))))
    seconds = statistics.median(max(per_rank[r][i]["seconds"] for r in (0, 1)) for i in range(n_images))
    sent = [per_rank[r][0]["bytes"] for r in (0, 1)]
    rounds = [per_rank[r][0]["rounds"] for r in (0, 1)]
    return {"input": [1, side, side], "plain_seconds": _plain_seconds(plain, images(side, 1)[0]),
            "session_setup_seconds": per_rank[0][0]["setup_seconds"], "seconds": seconds,
            "online_seconds": seconds, "offline_seconds": 0.0, "online_cpu_seconds": float("nan"),
            "offline_cpu_seconds": float("nan"), "offline_bytes": 0, "online_bytes_per_party": sent,
            "rounds": max(rounds), "rounds_per_party": rounds, "max_abs_error": max(errors),
            "wan_seconds": seconds + max(rounds) * WAN_RTT_S + max(sent) * 8 / WAN_BPS,
            "note": "TTP mode: the dealer's work happens during the query, so online includes it"}


@contextlib.contextmanager
def _fixed_randomness(tag: bytes) -> Iterator[None]:
    """Benchmark check only: medfl's CSPRNG replaced by ChaCha20 streams under fixed, public keys, then restored.

    Two runs under the same tag draw the same shares and dealer material, so their logits can be
    compared bit for bit; nothing secret may run inside.
    """
    counter = itertools.count()
    real_expand, real_token = csprng.expand, csprng.token_bytes

    def next_key() -> bytes:
        return hashlib.sha256(tag + next(counter).to_bytes(8, "little")).digest()

    def fixed_expand(nbytes: int, *, key: bytes | None = None) -> bytes:
        return real_expand(nbytes, key=key or next_key())

    csprng.expand = fixed_expand  # type: ignore[assignment]
    csprng.token_bytes = lambda n: real_expand(n, key=next_key())
    try:
        yield
    finally:
        csprng.expand, csprng.token_bytes = real_expand, real_token


def _bits_identical(name: str, devices: list[str]) -> bool:
    """One query of ``name`` per device from the same fixed randomness; True if all logits have the same bits."""
    side = SIDES[name]
    model = _model(name)
    rng = np.random.default_rng(1)  # synthetic benchmark images only
    cal = calibrate(model, [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(2)])
    img = rng.standard_normal((1, side, side)).astype(np.float32)
    outs = []
    for device in devices:
        with _fixed_randomness(name.encode()):
            secure = SecureModel(model, Session(LocalDealer(device=device), InMemoryChannel()), (1, side, side), cal,
                                 device=device)
            outs.append(secure(img))
    return all(np.array_equal(o, outs[0]) for o in outs[1:])


def _table(results: dict[str, Any]) -> str:
    head = (f"{'model':<18}{'plain s':>9}{'total s':>9}{'online s':>10}{'(cpu)':>7}{'offline s':>11}{'(cpu)':>7}"
            f"{'offline MB':>12}{'online MB/party':>17}{'rounds':>8}{'max err':>10}{'WAN s':>8}")
    lines = [head]
    for name, r in results.items():
        lines.append(f"{name:<18}{r['plain_seconds']:>9.3f}{r['seconds']:>9.2f}{r['online_seconds']:>10.2f}{r['online_cpu_seconds']:>7.2f}"
                     f"{r['offline_seconds']:>11.2f}{r['offline_cpu_seconds']:>7.2f}"
                     f"{r['offline_bytes'] / 1e6:>12.0f}{max(r['online_bytes_per_party']) / 1e6:>17.1f}"
                     f"{r['rounds']:>8d}{r['max_abs_error']:>10.2e}{r['wan_seconds']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SIDES), choices=list(SIDES))
    ap.add_argument("--images", type=int, default=2, help="encrypted queries per model (default 2)")
    ap.add_argument("--device", nargs="+", default=["cpu"], choices=list(DEVICES),
                    help="where medfl's ring products and comparisons run; one row per device (default cpu)")
    ap.add_argument("--check-identical", action="store_true",
                    help="also run one query per device from one fixed (non-secret) seed and compare the logits' bits")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--crypten-python", help="Python of a venv with crypten 0.4.1 (see crypten_side.py)")
    args = ap.parse_args()
    for device in args.device:
        try:
            smpc_device(device)  # fail early and clearly (no CUDA build, no GPU)
        except (ValueError, RuntimeError) as exc:
            ap.error(str(exc))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    results: dict[str, Any] = {}
    for name in args.models:
        for device in args.device:
            results[f"{name} {device}"] = bench_medfl(name, args.images, device=device)
        if args.check_identical and len(args.device) > 1:
            same = _bits_identical(name, args.device)
            for device in args.device:
                results[f"{name} {device}"]["bit_identical_to_cpu"] = same
        if args.crypten_python:
            for device in args.device:
                results[f"{name}-bn {device}"] = bench_medfl(name, args.images, batchnorm=True, device=device)
            results[f"crypten {name}-bn"] = bench_crypten(name, args.images, args.crypten_python)
        print(_table(results), flush=True)
    if args.json:
        out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch": torch.__version__, "native": native.active_backend(),
                           "smpc_kernels": (native.native_module().smpc_impl()  # type: ignore[union-attr]
                                            if native.native_module() is not None else None),
                           "gpu": torch.cuda.get_device_name() if "cuda" in args.device else None},
               "wan": {"bandwidth_bit_s": WAN_BPS, "rtt_s": WAN_RTT_S}, "command": " ".join(sys.argv),
               "results": results}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
