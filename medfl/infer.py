"""``medfl infer``: score images with a checkpoint, in the clear or by encrypted inference.

With ``--encrypted`` and no remote model server given, it starts a dealer and a model server on
loopback as two separate processes (fresh keys in a temporary folder, CurveZMQ between all
three), acts as the data owner itself, and stops them at the end. With ``--server`` it talks to
a remote model server whose key it pins. Images (PNG, JPEG, DICOM) are read and resized exactly
as the training data (:func:`medfl.data.folder.read_image`).

JSON (``--json``)::

    {"mode": "2pc+dealer" | "plain",
     "images": [{"path", "score", "plain_score", "seconds", "online_seconds", "bytes_online",
                 "bytes_offline", "rounds", "logits", "plain_logits"}],
     "max_abs_diff",            # largest |encrypted - plain| over the logits of all images
     "max_abs_score_diff", "decisions_agree", "session": {...}}

``seconds`` is the session's wall time divided by the images (offline, weight preparation and
online together); ``online_seconds``, ``bytes_online`` (both directions) and ``rounds`` are the
image's own online phase; ``bytes_offline`` is the sealed dealer material this party received,
divided by the images.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfl.errors import SessionAborted, StateError

__all__ = ["InferOptions", "format_table", "local_parties", "run_infer"]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _meta(checkpoint: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from medfl.models.weights import load_checkpoint

    if not checkpoint.is_file():
        raise StateError(f"checkpoint {checkpoint} not found")
    return load_checkpoint(checkpoint)


def read_images(paths: Sequence[pathlib.Path], side: int) -> list[np.ndarray]:
    """(1, side, side) float32 images in [0, 1], read as the training data is."""
    from medfl.data.folder import read_image

    return [read_image(p, side)[None] for p in paths]


def plain_logits(checkpoint: pathlib.Path, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Logits of the plain model."""
    import torch

    from medfl.models import create_model
    from medfl.models.weights import load_state_arrays

    arrays, meta = _meta(checkpoint)
    model = create_model(meta.get("model", "cnn"), **json.loads(meta.get("model_args", "{}")))
    load_state_arrays(model, arrays)
    model.eval()
    with torch.no_grad():
        return [model(torch.from_numpy(np.asarray(i, np.float32))[None])[0].double().numpy() for i in images]


def _wait_line(proc: subprocess.Popen, marker: str, timeout_s: float, log: pathlib.Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SessionAborted(f"local {log.stem} exited with "
                                 f"{proc.returncode}: {log.read_text()[-2000:]}", code="peer")
        if marker in log.read_text():
            return
        time.sleep(0.1)
    raise SessionAborted(f"no '{marker}' from a local party within {timeout_s:g} s: {log.read_text()[-2000:]}",
                         code="timeout")


@contextlib.contextmanager
def local_parties(checkpoint: pathlib.Path, *, calibration_dir: pathlib.Path | None = None,
                  timeout_s: float = 60.0, pool: int = 0, workdir: pathlib.Path | None = None,
                  startup_timeout_s: float = 900.0, image_size: int | None = None) -> Iterator[dict[str, Any]]:
    """Start a dealer and a model server on loopback as separate processes; yield how to reach them.

    Yields a dict with ``endpoint``, ``server_key`` (Z85), ``client_keys`` (a KeyPair),
    ``dealer_key`` (Z85), ``procs`` and ``logs``; both processes are stopped on exit.
    """
    from medfl.wire import generate_keypair, read_keypair, write_keypair

    with tempfile.TemporaryDirectory(prefix="medfl-infer-") as tmp:
        root = workdir or pathlib.Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        keys = root / "keys"
        pubs = {}
        for name in ("client", "model-server", "dealer"):
            pubs[name], _ = write_keypair(keys, name, generate_keypair(), overwrite=True)
        dport, mport = _free_port(), _free_port()
        py = sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        dealer_cmd = [py, "-m", "coordinator.cli", "dealer", "--bind", f"tcp://127.0.0.1:{dport}",
                      "--key", str(keys / "dealer.key_secret"), "--allow", str(pubs["model-server"]),
                      "--pool", str(pool)]
        ms_cmd = [py, "-m", "coordinator.cli", "model-server", "--checkpoint", str(checkpoint),
                  "--bind", f"tcp://127.0.0.1:{mport}", "--key", str(keys / "model-server.key_secret"),
                  "--allow", str(pubs["client"]), "--dealer", f"tcp://127.0.0.1:{dport}",
                  "--dealer-key", str(pubs["dealer"]), "--timeout", str(timeout_s),
                  "--status-file", str(root / "sessions.json")]
        if calibration_dir is not None:
            ms_cmd += ["--calibration-dir", str(calibration_dir)]
        if image_size is not None:
            ms_cmd += ["--image-size", str(image_size)]
        logs = {"dealer": root / "dealer.log", "model-server": root / "model-server.log"}
        procs: dict[str, subprocess.Popen] = {}
        files = []
        try:
            for name, cmd in (("dealer", dealer_cmd), ("model-server", ms_cmd)):
                fh = open(logs[name], "w")  # noqa: SIM115 - closed in finally
                files.append(fh)
                procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            _wait_line(procs["dealer"], "listening on", startup_timeout_s, logs["dealer"])
            _wait_line(procs["model-server"], "listening on", startup_timeout_s, logs["model-server"])
            yield {"endpoint": f"tcp://127.0.0.1:{mport}", "server_key": pubs["model-server"],
                   "client_keys": read_keypair(keys / "client.key_secret"), "dealer_key": pubs["dealer"],
                   "procs": procs, "logs": logs, "status_file": root / "sessions.json"}
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
            for p in procs.values():
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for fh in files:
                fh.close()


def encrypted_session(*, endpoint: str, server_key: Any, client_keys: Any, dealer_key: Any, model: str,
                      images: Sequence[np.ndarray], timeout_s: float) -> Any:
    """Run one session as the data owner against a model server; return its SessionReport."""
    from medfl.smpc.session.client import infer_remote
    from medfl.wire import ClientChannel, read_public_key

    trusted = None
    if dealer_key is not None:
        import zmq

        trusted = {bytes(zmq.utils.z85.decode(read_public_key(dealer_key)))}
    with ClientChannel(connect=endpoint, keys=client_keys, server_public_key=read_public_key(server_key)) as ch:
        return infer_remote(channel=ch, model=model, images=images, trusted_dealers=trusted, timeout_s=timeout_s)


def run_infer(opts: InferOptions) -> dict[str, Any]:
    """Score the images; return the JSON summary (see the module docstring)."""
    arrays, meta = _meta(opts.checkpoint)
    side = int(meta.get("image_size", 64))
    images = read_images(opts.images, side)
    plain = plain_logits(opts.checkpoint, images) if (opts.compare_plain or not opts.encrypted) else None
    from medfl.smpc.session.client import softmax_positive

    out: dict[str, Any] = {"mode": "2pc+dealer" if opts.encrypted else "plain", "checkpoint": str(opts.checkpoint),
                           "model": meta.get("model", "cnn"), "image_size": side, "images": []}
    if not opts.encrypted:
        for p, lg in zip(opts.images, plain or [], strict=True):
            out["images"].append({"path": str(p), "score": softmax_positive(lg), "plain_score": softmax_positive(lg),
                                  "logits": lg.tolist()})
        out["max_abs_diff"] = None
        return out
    if opts.server is not None:
        from medfl.wire import read_keypair

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


def summarize(report: Any, paths: Sequence[pathlib.Path | str], plain: Sequence[np.ndarray] | None,
              out: dict[str, Any]) -> dict[str, Any]:
    """Fill the JSON summary from a session report (and the plain logits, if any)."""
    from medfl.smpc.session.client import softmax_positive

    n = len(report.images)
    diffs, sdiffs, agree = [], [], []
    for i, (p, im) in enumerate(zip(paths, report.images, strict=True)):
        row: dict[str, Any] = {"path": str(p), "score": im.score, "plain_score": None,
                               "seconds": report.seconds / n, "online_seconds": im.online_seconds,
                               "bytes_online": im.bytes_online, "bytes_offline": report.bytes_offline // n,
                               "rounds": im.rounds, "logits": im.logits.tolist()}
        if plain is not None:
            row["plain_score"] = softmax_positive(plain[i])
            row["plain_logits"] = plain[i].tolist()
            diffs.append(float(np.max(np.abs(im.logits - plain[i]))))
            sdiffs.append(abs(row["score"] - row["plain_score"]))
            agree.append(int(np.argmax(im.logits)) == int(np.argmax(plain[i])))
        out["images"].append(row)
    out["max_abs_diff"] = max(diffs) if diffs else None
    out["max_abs_score_diff"] = max(sdiffs) if sdiffs else None
    out["decisions_agree"] = all(agree) if agree else None
    out["session"] = {"id": report.session, "seconds": report.seconds, "queued_seconds": report.queued_seconds,
                      "offline_seconds": report.offline_seconds, "bytes_offline": report.bytes_offline,
                      "prepare_seconds": report.prepare_seconds, "prepare_bytes": report.prepare_bytes,
                      "prepare_rounds": report.prepare_rounds, "announced": report.description}
    return out


def format_table(summary: dict[str, Any]) -> str:
    """One line per image."""
    lines = [f"mode {summary['mode']}, model {summary['model']} at {summary['image_size']} px"]
    head = f"{'image':40s} {'score':>7s} {'plain':>7s} {'seconds':>8s} {'online s':>8s} {'MB online':>9s} " \
           f"{'MB offline':>10s} {'rounds':>6s}"
    lines.append(head)

    def f(v: Any, fmt: str) -> str:
        return format(v, fmt) if v is not None else format("-", ">" + fmt.split(".")[0].rstrip("dfe"))

    for r in summary["images"]:
        name = pathlib.Path(r["path"]).name[:40]
        lines.append(f"{name:40s} {f(r['score'], '7.4f')} {f(r.get('plain_score'), '7.4f')} "
                     f"{f(r.get('seconds'), '8.2f')} {f(r.get('online_seconds'), '8.2f')} "
                     f"{f(r['bytes_online'] / 1e6 if r.get('bytes_online') is not None else None, '9.2f')} "
                     f"{f(r['bytes_offline'] / 1e6 if r.get('bytes_offline') is not None else None, '10.1f')} "
                     f"{f(r.get('rounds'), '6d')}")
    if summary.get("max_abs_diff") is not None:
        lines.append(f"max |encrypted - plain| logit difference: {summary['max_abs_diff']:.2e}; decisions "
                     f"{'agree' if summary.get('decisions_agree') else 'DIFFER'}")
    return "\n".join(lines)
