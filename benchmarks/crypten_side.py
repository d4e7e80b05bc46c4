"""CrypTen's side of benchmarks/encrypted_inference.py: two parties on loopback plus its TTP dealer.

Run by ``encrypted_inference.py --crypten-python PATH`` with the Python of a separate venv holding
crypten 0.4.1 (``pip install crypten==0.4.1 --no-deps`` plus omegaconf, onnx, pandas, pyyaml,
scipy, scikit-learn; torch from medfl's venv is reused). Prints one JSON object on stdout.

CrypTen's ONNX importer has no GroupNorm (nor Dropout's Identity), so both systems are compared
on BatchNorm variants of the same models (:func:`batchnorm_variant`: every GroupNorm replaced by
a BatchNorm2d with running statistics from a few training-mode passes, Dropout removed); medfl
folds those BatchNorms into the convolutions (:func:`medfl.smpc.evaluator.fold_batchnorm`).
Two shims make crypten 0.4.1 import under torch >= 2.9: the TorchScript exporter's registry lives
at ``torch.onnx._internal.torchscript_exporter.registration``, and ``torch.onnx.export`` must be
called with ``dynamo=False``.

Per image (data owner = rank 0 shares the image, model server = rank 1 holds the model, TTP as
the dealer, ``mpc.provider = "TTP"``): wall time from sharing the input to rank 0 holding the
logits, rounds and bytes from CrypTen's own communication statistics (per party), logits.
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
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medfl.models import create_model  # noqa: E402

SIDES = {"cnn": 128, "resnet18": 224}


def batchnorm_variant(name: str) -> nn.Module:
    """The registry model ``name`` with BatchNorm2d instead of GroupNorm and no Dropout (deterministic)."""
    torch.manual_seed(0)  # benchmark model weights only
    model = create_model(name)
    if name == "cnn":
        model.head[2].reset_parameters()  # type: ignore[index]
        model.head = nn.Sequential(nn.Flatten(), model.head[2])  # type: ignore[index]

    def swap(mod: nn.Module) -> None:
        for child_name, child in mod.named_children():
            if isinstance(child, nn.GroupNorm):
                bn = nn.BatchNorm2d(child.num_channels)
                # distinct affine parameters (torch's exporter turns equal initializers into Identity
                # nodes, which CrypTen's importer rejects)
                nn.init.uniform_(bn.weight, 0.5, 1.5)
                nn.init.normal_(bn.bias, std=0.1)
                setattr(mod, child_name, bn)
            else:
                swap(child)

    swap(model)
    side = SIDES[name]
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(4, 1, side, side, generator=gen))
    return model.eval()


def images(side: int, n: int) -> list[np.ndarray]:
    """The benchmark's synthetic standardised images (same as encrypted_inference.py)."""
    rng = np.random.default_rng(0)
    rng.standard_normal((2, 1, side, side))  # the two calibration images come first
    return [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(n)]


def _shims() -> None:
    import torch.onnx
    from torch.onnx._internal.torchscript_exporter import registration

    sys.modules.setdefault("torch.onnx._internal.registration", registration)
    export = torch.onnx.export

    def export_torchscript(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("dynamo", False)
        return export(*args, **kwargs)

    torch.onnx.export = export_torchscript  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=list(SIDES), required=True)
    ap.add_argument("--images", type=int, default=1)
    args = ap.parse_args()
    _shims()
    import crypten
    import crypten.communicator as comm
    import crypten.mpc as mpc

    torch.set_num_threads(1)  # two parties + TTP share the machine's cores
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True
    side = SIDES[args.model]
    imgs = images(side, args.images)

    @mpc.run_multiprocess(world_size=2)
    def run() -> list[dict[str, Any]]:
        model = batchnorm_variant(args.model)
        rank = comm.get().get_rank()
        t = time.perf_counter()
        secure = crypten.nn.from_pytorch(model, torch.zeros(1, 1, side, side))
        secure.encrypt(src=1)
        secure.eval()
        setup = time.perf_counter() - t
        rows = []
        for img in imgs:
            comm.get().reset_communication_stats()
            t = time.perf_counter()
            x = crypten.cryptensor(torch.from_numpy(img)[None] if rank == 0 else torch.zeros(1, 1, side, side),
                                   src=0)
            logits = secure(x).get_plain_text(dst=0)
            seconds = time.perf_counter() - t
            stats = comm.get().get_communication_stats()
            rows.append({"rank": rank, "seconds": seconds, "rounds": int(stats["rounds"]),
                         "bytes": int(stats["bytes"]), "setup_seconds": setup,
                         "logits": logits.reshape(-1).tolist() if rank == 0 else None})
        return rows

    out = run()
    if out is None:
        raise SystemExit("crypten: a party failed (see the log above)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
