"""Flower's simulation engine on the job ``benchmarks/simulate.py`` gives medfl: the peer arm.

Run by ``benchmarks/simulate.py --flower-python PY`` with a Python that has ``flwr[simulation]``
(flwr 1.42 pins ray 2.55.1, so it lives in its own environment; medfl's ``sim`` extra is ray
2.60.0). It trains medfl's CNN (the module file loaded as is, so the architecture is the same)
with FedAvg, one local epoch of SGD (lr 0.05, momentum 0.9, batches of 16) on each site's
``data.npz`` written by medfl's partitioner, federated evaluation on each site's validation
split, every site in every round, through ``flwr.simulation.start_simulation`` with its Ray
backend (one CPU per client). No DP and no secure aggregation: Flower's simulation has neither
built in at this level, which is the comparison the issue asks for (medfl with both on).

Prints one JSON line: rounds, per-round seconds, rounds per minute at the median round, setup
seconds, the peak RSS of the driver and of the busiest Ray worker process.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import pathlib
import sys
import time
import types

import numpy as np
import torch
from torch import nn


def _cnn_class(repo: pathlib.Path) -> type[nn.Module]:
    """medfl's SmallCNN from its module file, with the registry decorator stood in (no medfl install here)."""
    reg = types.ModuleType("medfl.models.registry")
    reg.register_model = lambda *a, **k: (lambda obj: obj)  # type: ignore[attr-defined]
    for name in ("medfl", "medfl.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["medfl.models.registry"] = reg
    spec = importlib.util.spec_from_file_location("medfl_cnn", repo / "medfl" / "models" / "cnn.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.SmallCNN


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)


def main() -> None:
    """Run Flower's simulation and print the figures."""
    import flwr as fl
    from flwr.common import ndarrays_to_parameters

    ap = argparse.ArgumentParser()
    ap.add_argument("--sites-dir", type=pathlib.Path, required=True, help="sites/<name>/data.npz as medfl wrote them")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repo", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[1])
    ap.add_argument("--rss-dir", type=pathlib.Path, required=True)
    args = ap.parse_args()
    started = time.monotonic()
    cnn = _cnn_class(args.repo)
    files = sorted(glob.glob(str(args.sites_dir / "*" / "data.npz")))
    args.rss_dir.mkdir(parents=True, exist_ok=True)

    def to_tensor(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]

    class Client(fl.client.NumPyClient):
        def __init__(self, path: str):
            torch.set_num_threads(1)
            with np.load(path) as z:
                self.train = (to_tensor(z["train_images"]), torch.from_numpy(z["train_labels"]))
                self.val = (to_tensor(z["val_images"]), torch.from_numpy(z["val_labels"]))
            self.model = cnn()

        def _set(self, params: list[np.ndarray]) -> None:
            keys = list(self.model.state_dict())
            self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in zip(keys, params, strict=True)})

        def get_parameters(self, config):  # noqa: ANN001, ANN201
            return [v.detach().numpy().copy() for v in self.model.state_dict().values()]

        def fit(self, parameters, config):  # noqa: ANN001, ANN201
            self._set(parameters)
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
            x, y = self.train
            self.model.train()
            perm = torch.randperm(len(y))
            for i in range(0, len(y), 16):
                idx = perm[i:i + 16]
                opt.zero_grad()
                nn.functional.cross_entropy(self.model(x[idx]), y[idx]).backward()
                opt.step()
            (args.rss_dir / f"{os.getpid()}.kb").write_text(str(_peak_rss_kb()))
            return self.get_parameters(config), len(y), {}

        def evaluate(self, parameters, config):  # noqa: ANN001, ANN201
            self._set(parameters)
            self.model.eval()
            x, y = self.val
            with torch.no_grad():
                logits = self.model(x)
            loss = float(nn.functional.cross_entropy(logits, y))
            acc = float((logits.argmax(1) == y).float().mean())
            return loss, len(y), {"accuracy": acc}

    def client_fn(cid: str) -> fl.client.Client:
        return Client(files[int(cid)]).to_client()

    marks: list[float] = []

    class Timed(fl.server.strategy.FedAvg):
        def aggregate_evaluate(self, server_round, results, failures):  # noqa: ANN001, ANN201
            out = super().aggregate_evaluate(server_round, results, failures)
            marks.append(time.monotonic())
            return out

    n = len(files)
    torch.manual_seed(1)
    init = [v.detach().numpy().copy() for v in cnn().state_dict().values()]
    strategy = Timed(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=n, min_evaluate_clients=n,
                     min_available_clients=n, initial_parameters=ndarrays_to_parameters(init))
    sim_start = time.monotonic()
    fl.simulation.start_simulation(client_fn=client_fn, num_clients=n,
                                   config=fl.server.ServerConfig(num_rounds=args.rounds), strategy=strategy,
                                   client_resources={"num_cpus": 1},
                                   ray_init_args={"include_dashboard": False, "log_to_driver": False})
    rounds = [b - a for a, b in zip([sim_start, *marks[:-1]], marks, strict=True)]
    workers = [int(p.read_text()) for p in args.rss_dir.glob("*.kb")]
    print(json.dumps({"engine": f"flwr {fl.__version__}", "sites": n, "rounds": len(marks),
                      "round_seconds": [round(r, 2) for r in rounds],
                      "rounds_per_minute": round(60.0 / float(np.median(rounds[1:] or rounds)), 2) if rounds else None,
                      "setup_seconds": round(sim_start - started, 2),
                      "wall_seconds": round(time.monotonic() - started, 2),
                      "peak_rss_mb_driver": round(_peak_rss_kb() / 1024, 1),
                      "peak_rss_mb_worker_max": round(max(workers, default=0) / 1024, 1)}))


if __name__ == "__main__":
    main()
