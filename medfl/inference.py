"""The data owner's view of inference: images read as training reads them, one session, its JSON summary.

Used by ``medfl-agent infer`` (a hospital against the model server it is configured for) and
by the ``medfl infer`` / ``medfl demo`` apps (against local or remote parties). Nothing here
starts a process: starting a dealer and a model server is the apps' business.

The summary (``summarize``)::

    {"mode": "2pc+dealer" | "plain",
     "images": [{"path", "score", "plain_score", "seconds", "online_seconds", "bytes_online",
                 "bytes_offline", "rounds", "logits", "plain_logits"}],
     "max_abs_diff",            # largest |encrypted - plain| over the logits of all images
     "max_abs_score_diff", "decisions_agree", "session": {...}}

``seconds`` is the session's wall time divided by the images (offline, weight preparation and
online together); ``online_seconds``, ``bytes_online`` (both directions) and ``rounds`` are the
image's own online phase; ``bytes_offline`` is the sealed dealer material this party received,
divided by the images (the dealer seals as much again for the model server, so the dealer's
log, which counts both parties, shows about twice the session's ``bytes_offline``).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import zmq

from medfl.data.folder import read_image
from medfl.errors import StateError
from medfl.models import create_model
from medfl.models.weights import load_checkpoint, load_state_arrays
from medfl.smpc.session.client import SessionReport, infer_remote, softmax_positive
from medfl.wire import ClientChannel, read_public_key

__all__ = ["checkpoint_meta", "encrypted_session", "format_table", "plain_logits", "read_images", "summarize"]


def checkpoint_meta(checkpoint: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of a safetensors checkpoint; a clear error when the file is missing."""
    if not checkpoint.is_file():
        raise StateError(f"checkpoint {checkpoint} not found")
    return load_checkpoint(checkpoint)


def read_images(paths: Sequence[pathlib.Path], side: int) -> list[np.ndarray]:
    """(1, side, side) float32 images in [0, 1], read as the training data is."""
    return [read_image(p, side)[None] for p in paths]


def plain_logits(checkpoint: pathlib.Path, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Logits of the plain model."""
    arrays, meta = checkpoint_meta(checkpoint)
    model = create_model(meta.get("model", "cnn"), **json.loads(meta.get("model_args", "{}")))
    load_state_arrays(model, arrays)
    model.eval()
    with torch.no_grad():
        return [model(torch.from_numpy(np.asarray(i, np.float32))[None])[0].double().numpy() for i in images]


def encrypted_session(*, endpoint: str, server_key: Any, client_keys: Any, dealer_key: Any, model: str,
                      images: Sequence[np.ndarray], timeout_s: float) -> SessionReport:
    """Run one session as the data owner against a model server; return its SessionReport."""
    trusted = None
    if dealer_key is not None:
        trusted = {bytes(zmq.utils.z85.decode(read_public_key(dealer_key)))}
    with ClientChannel(connect=endpoint, keys=client_keys, server_public_key=read_public_key(server_key)) as ch:
        return infer_remote(channel=ch, model=model, images=images, trusted_dealers=trusted, timeout_s=timeout_s)


def summarize(report: Any, paths: Sequence[pathlib.Path | str], plain: Sequence[np.ndarray] | None,
              out: dict[str, Any]) -> dict[str, Any]:
    """Fill the JSON summary from a session report (and the plain logits, if any)."""
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
    session = summary.get("session") or {}
    if session.get("bytes_offline") is not None:
        lines.append(f"MB offline: dealer material received by this data owner (party 0), per image; "
                     f"{session['bytes_offline'] / 1e6:.1f} MB for the session. The model server received its "
                     "own half, about as much: the dealer's log counts both parties")
    if summary.get("max_abs_diff") is not None:
        lines.append(f"max |encrypted - plain| logit difference: {summary['max_abs_diff']:.2e}; decisions "
                     f"{'agree' if summary.get('decisions_agree') else 'DIFFER'}")
    return "\n".join(lines)
