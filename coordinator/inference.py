"""Encrypted inference at the coordinator: the model server (hosted or standalone) and the dealer process.

``medfl-coordinator dealer`` runs the crypto provider in its own process with its own key;
``medfl-coordinator model-server`` runs a model server alone, and ``serve`` hosts one in a
thread when coordinator.toml has ``[inference] enabled = true``. The model server admits the
approved agents (the coordinator's node table) or, standalone without a config, the keys
given with ``--allow``; sessions are written to the store so ``medfl-coordinator status``
lists them.

References
----------
.. [1] Ryffel et al., "AriaNN", PoPETs 2022.
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
from typing import Any

import numpy as np
import zmq

from coordinator.store import Store
from medfl.data.folder import read_image
from medfl.errors import StateError
from medfl.models import create_model
from medfl.models.weights import load_checkpoint, load_state_arrays
from medfl.smpc.evaluator import calibrate
from medfl.smpc.session.provider import DealerService
from medfl.smpc.session.server import ModelServer, ServedModel
from medfl.wire import ClientChannel, KeyPair, ServerChannel, SocketLimits, read_public_key

__all__ = ["HostedModelServer", "load_served", "make_dealer", "make_model_server", "public_keys", "raw_key",
           "store_writer"]

log = logging.getLogger(__name__)

SESSIONS_META = "smpc_sessions"
#: largest message the dealer accepts: requests carry keys and a plan's item counts, a few KiB
DEALER_REQUEST_LIMIT = 4 << 20


def raw_key(z85: bytes) -> bytes:
    """The raw 32-byte X25519 key of a Z85 CURVE key."""
    return bytes(zmq.utils.z85.decode(z85))


def _synthetic_calibration_images(side: int, n: int = 8) -> list[np.ndarray]:
    """Calibration stand-ins when no images are given: smooth fields, gradients and flats in [0, 1]."""
    # fixed seed: public calibration stand-ins, not protocol randomness; the same images give the
    # same ranges on every start, so the traced plan cache stays valid
    rng = np.random.default_rng(20240)
    out = []
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    for i in range(n):
        coarse = rng.random((8, 8))
        field = np.kron(coarse, np.ones((side // 8 + 1, side // 8 + 1)))[:side, :side]
        img = 0.5 * field + 0.5 * (xx if i % 2 else yy) * rng.random()
        out.append(np.clip(img, 0, 1).astype(np.float32)[None])
    out.append(np.zeros((1, side, side), np.float32))
    out.append(np.ones((1, side, side), np.float32) * 0.5 + 0.5 * (xx[None] > 0.5).astype(np.float32))
    return out


def load_served(checkpoint: pathlib.Path, *, calibration_dir: pathlib.Path | None = None,
                max_calibration: int = 32, image_size: int | None = None) -> ServedModel:
    """Load a checkpoint, calibrate its ranges and trace its plan.

    Parameters
    ----------
    checkpoint : Path
        A safetensors checkpoint with ``model``, ``model_args`` and ``image_size`` metadata.
    calibration_dir : Path, optional
        Images (PNG/JPEG/DICOM, any folder depth) representative of the inputs; without it,
        synthetic images and a wider margin are used (more Newton steps, same correctness).
    """
    if not checkpoint.is_file():
        raise StateError(f"checkpoint {checkpoint} not found; pass --checkpoint or set [inference] checkpoint")
    arrays, meta = load_checkpoint(checkpoint)
    name = meta.get("model", "cnn")
    kwargs = json.loads(meta.get("model_args", "{}"))
    side = int(meta.get("image_size", image_size or 64))
    if image_size is not None and side != image_size:
        raise StateError(f"checkpoint {checkpoint} was trained at {side} px, not --image-size {image_size}")
    model = create_model(name, **kwargs)
    load_state_arrays(model, arrays)
    model.eval()
    if calibration_dir is not None:
        files = sorted(p for p in calibration_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [read_image(p, side)[None] for p in files[:max_calibration]]
        if not images:
            raise StateError(f"no images under calibration folder {calibration_dir}")
        cal = calibrate(model, images)
    else:
        log.warning("no calibration images: calibrating %s on synthetic images with a wide margin", name)
        cal = calibrate(model, _synthetic_calibration_images(side), margin=16.0)
    return ServedModel.register(name=name, kwargs=kwargs, model=model, in_shape=(1, side, side), calibration=cal,
                                cache=checkpoint.with_name(checkpoint.name + ".smpc-plan.json"))


def make_dealer(*, bind: str, keys: KeyPair, allowed: set[bytes], pool: int, device: str | None = None
                ) -> DealerService:
    """A dealer service bound at ``bind`` admitting the model servers whose public keys are ``allowed``.

    ``device`` is where it generates material (``"cpu"`` or ``"cuda"``; default ``MEDFL_SMPC_DEVICE``).
    """
    # model servers ask for material with small requests; what is streamed back is not bounded by this
    channel = ServerChannel(bind=bind, keys=keys, is_allowed=lambda k: bytes(k) in allowed,
                            limits=SocketLimits(max_message_bytes=DEALER_REQUEST_LIMIT))
    if keys.secret is None:
        raise StateError("the dealer needs its secret key")
    return DealerService(channel=channel, secret_raw=raw_key(keys.secret), pool=pool, device=device)


def make_model_server(*, served: ServedModel, bind: str, keys: KeyPair, is_allowed: Any, dealer: str,
                      dealer_key: bytes, timeout_s: float, on_change: Any = None) -> ModelServer:
    """A model server bound at ``bind`` (data owners connect to it) and connected to the dealer."""
    channel = ServerChannel(bind=bind, keys=keys, is_allowed=is_allowed)
    try:
        dealer_ch = ClientChannel(connect=dealer, keys=keys, server_public_key=dealer_key)
    except BaseException:
        channel.close()
        raise
    return ModelServer(channel=channel, dealer=dealer_ch, dealer_public=raw_key(dealer_key), served=served,
                       timeout_s=timeout_s, on_change=on_change)


class HostedModelServer:
    """A model server running in a thread of the coordinator daemon (``[inference] enabled = true``)."""

    def __init__(self, *, server: ModelServer):
        self.server = server
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="model-server", daemon=True)

    def _run(self) -> None:
        try:
            self.server.serve(self.stop_event)
        finally:
            self.server.channel.close()
            self.server.dealer.close()

    def start(self) -> None:
        """Start serving."""
        self.thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self.stop_event.set()
        self.thread.join(timeout=30)


def store_writer(db_path: pathlib.Path) -> Any:
    """A callback writing session records to the coordinator's store (own connection, any thread)."""
    holder: dict[int, Store] = {}

    def write(records: list[dict[str, Any]]) -> None:
        tid = threading.get_ident()
        if tid not in holder:
            holder[tid] = Store(db_path)
        holder[tid].set_meta(SESSIONS_META, json.dumps(records))

    return write


def public_keys(sources: list[str]) -> set[bytes]:
    """Z85 public keys from key files or literal keys."""
    return {read_public_key(s) for s in sources}
