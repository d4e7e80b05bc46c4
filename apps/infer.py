"""``medfl infer``: score images with a checkpoint, in the clear or by encrypted inference.

With ``--encrypted`` and no remote model server given, it starts a dealer and a model server on
loopback as two separate processes (``medfl-coordinator dealer`` and ``model-server``; fresh keys
in a temporary folder, CurveZMQ between all three), acts as the data owner itself, and stops them
at the end. With ``--server`` it talks to a remote model server whose key it pins. Images (PNG,
JPEG, DICOM) are read and resized exactly as the training data; the JSON (``--json``) is the
summary of :func:`medfl.inference.summarize`.
"""

from __future__ import annotations

import contextlib
import pathlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from apps.processes import daemons, free_port, wait_for_line
from medfl.errors import StateError
from medfl.inference import checkpoint_meta, encrypted_session, plain_logits, read_images, summarize
from medfl.smpc.session.client import softmax_positive
from medfl.wire import generate_keypair, read_keypair, write_keypair

__all__ = ["InferOptions", "local_parties", "run_infer"]


@dataclass(frozen=True)
class InferOptions:
    """What ``medfl infer`` was asked to do."""

    checkpoint: pathlib.Path
    images: tuple[pathlib.Path, ...]
    encrypted: bool = False
    compare_plain: bool = False
    server: str | None = None
    server_key: str | None = None
    key: pathlib.Path | None = None
    dealer_key: str | None = None
    calibration_dir: pathlib.Path | None = None
    timeout_s: float = 120.0


@contextlib.contextmanager
def local_parties(checkpoint: pathlib.Path, *, calibration_dir: pathlib.Path | None = None,
                  timeout_s: float = 60.0, pool: int = 0, workdir: pathlib.Path | None = None,
                  startup_timeout_s: float = 900.0, image_size: int | None = None) -> Iterator[dict[str, Any]]:
    """Start a dealer and a model server on loopback as separate processes; yield how to reach them.

    Yields a dict with ``endpoint``, ``server_key`` (Z85), ``client_keys`` (a KeyPair),
    ``dealer_key`` (Z85), ``procs`` and ``logs``; both processes are stopped on exit.
    """
    with tempfile.TemporaryDirectory(prefix="medfl-infer-") as tmp:
        root = workdir or pathlib.Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        keys = root / "keys"
        pubs = {}
        for name in ("client", "model-server", "dealer"):
            pubs[name], _ = write_keypair(keys, name, generate_keypair(), overwrite=True)
        dport, mport = free_port(), free_port()
        dealer_cmd = ["coordinator.cli", "dealer", "--bind", f"tcp://127.0.0.1:{dport}",
                      "--key", str(keys / "dealer.key_secret"), "--allow", str(pubs["model-server"]),
                      "--pool", str(pool)]
        ms_cmd = ["coordinator.cli", "model-server", "--checkpoint", str(checkpoint),
                  "--bind", f"tcp://127.0.0.1:{mport}", "--key", str(keys / "model-server.key_secret"),
                  "--allow", str(pubs["client"]), "--dealer", f"tcp://127.0.0.1:{dport}",
                  "--dealer-key", str(pubs["dealer"]), "--timeout", str(timeout_s),
                  "--status-file", str(root / "sessions.json")]
        if calibration_dir is not None:
            ms_cmd += ["--calibration-dir", str(calibration_dir)]
        if image_size is not None:
            ms_cmd += ["--image-size", str(image_size)]
        logs = {"dealer": root / "dealer.log", "model-server": root / "model-server.log"}
        with daemons([("dealer", dealer_cmd), ("model-server", ms_cmd)], logs, grace_s=30.0) as procs:
            wait_for_line(procs["dealer"], "listening on", startup_timeout_s, logs["dealer"])
            wait_for_line(procs["model-server"], "listening on", startup_timeout_s, logs["model-server"])
            yield {"endpoint": f"tcp://127.0.0.1:{mport}", "server_key": pubs["model-server"],
                   "client_keys": read_keypair(keys / "client.key_secret"), "dealer_key": pubs["dealer"],
                   "procs": procs, "logs": logs, "status_file": root / "sessions.json"}


def run_infer(opts: InferOptions) -> dict[str, Any]:
    """Score the images; return the JSON summary (see the module docstring)."""
    _, meta = checkpoint_meta(opts.checkpoint)
    side = int(meta.get("image_size", 64))
    images = read_images(opts.images, side)
    plain = plain_logits(opts.checkpoint, images) if (opts.compare_plain or not opts.encrypted) else None
    out: dict[str, Any] = {"mode": "2pc+dealer" if opts.encrypted else "plain", "checkpoint": str(opts.checkpoint),
                           "model": meta.get("model", "cnn"), "image_size": side, "images": []}
    if not opts.encrypted:
        for p, lg in zip(opts.images, plain or [], strict=True):
            out["images"].append({"path": str(p), "score": softmax_positive(lg), "plain_score": softmax_positive(lg),
                                  "logits": lg.tolist()})
        out["max_abs_diff"] = None
        return out
    if opts.server is not None:
        if opts.key is None or opts.server_key is None:
            raise StateError("--server needs --server-key (pinned) and --key (this data owner's secret key file)")
        report = encrypted_session(endpoint=opts.server, server_key=opts.server_key,
                                   client_keys=read_keypair(opts.key), dealer_key=opts.dealer_key,
                                   model=meta.get("model", "cnn"), images=images, timeout_s=opts.timeout_s)
    else:
        with local_parties(opts.checkpoint, calibration_dir=opts.calibration_dir, timeout_s=opts.timeout_s) as lp:
            report = encrypted_session(endpoint=lp["endpoint"], server_key=lp["server_key"],
                                       client_keys=lp["client_keys"], dealer_key=lp["dealer_key"],
                                       model=meta.get("model", "cnn"), images=images, timeout_s=opts.timeout_s)
    return summarize(report, opts.images, plain, out)
