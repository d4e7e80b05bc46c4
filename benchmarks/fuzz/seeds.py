"""Seed corpus of every fuzz target: real valid inputs made by the product's own encoders.

``python benchmarks/fuzz/seeds.py DIR`` writes ``DIR/<target>/seed-<n>`` for every target;
:func:`seeds` returns them in memory (the hypothesis tests start from the same inputs).
"""

from __future__ import annotations

import io
import pathlib
import sys
from typing import Any

import msgpack
import numpy as np

from benchmarks.fuzz.targets import TARGETS, pack_frames, smpc_keys

_AGENT_TOML = """\
[agent]
name = "st-mary"
state_dir = "state"

[coordinator]
endpoint = "tcp://127.0.0.1:7777"
public_key_file = "keys/coordinator.key"

[keys]
secret_key_file = "keys/agent.key_secret"

[data]
kind = "folder"
path = "data"

[policy]
allowed_models = ["cnn", "resnet18"]
min_parties = 2
require_secure_aggregation = true
max_epsilon_per_job = 3.0
max_total_epsilon = 10.0
total_delta = 1e-5

[training]
torch_threads = 2
device = "cpu"

[transport]
curve = true
max_message_mb = 256

[pacs]
enabled = true
ae_title = "MEDFL"
port = 11112
allowed_calling_aets = ["ORTHANC"]
threshold = 0.5
workers = 2
scoring = "plain"
watch_folder = "incoming"

[pacs.destination]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242

[inference]
allow_encrypted = true
endpoint = "tcp://127.0.0.1:7778"
trusted_dealers = ["keys/dealer.key"]
model = "cnn"
image_size = 64
timeout_s = 120.0
"""

_COORDINATOR_TOML = """\
[coordinator]
bind = "tcp://0.0.0.0:7777"
state_dir = "state"
name = "regional-fl"

[keys]
secret_key_file = "keys/coordinator.key_secret"

[transport]
curve = true
max_message_mb = 256

[liveness]
agent_timeout_s = 20.0
eval_deadline_s = 120.0

[inference]
enabled = true
bind = "tcp://0.0.0.0:7778"
dealer = "tcp://127.0.0.1:7779"
dealer_key_file = "keys/dealer.key"
timeout_s = 60.0

[enrollment]
mode = "invite-only"
max_pending = 100
pending_expiry_h = 168.0
new_keys_per_minute = 20.0
new_keys_per_minute_per_address = 4.0
"""

_JOB_TOML = """\
[job]
name = "pneumonia"
model = "cnn"
rounds = 3
min_agents = 2
image_size = 32
seed = 1

[training]
local_epochs = 1
batch_size = 16
lr = 0.01

[aggregation]
strategy = "fedavg"
secure = true

[privacy]
target_epsilon = 3.0
delta = 1e-5
max_grad_norm = 1.0
"""


def _frames(env: Any) -> bytes:
    from medfl.wire.envelope import encode

    return pack_frames([bytes(f) for f in encode(env)])


def _wire() -> list[bytes]:
    from medfl.wire import Envelope, MessageType

    rng = np.random.default_rng(0)
    envs = [
        Envelope(type=MessageType.HELLO, seq=1, body={"name": "st-mary", "version": "0.4.0", "models": ["cnn"],
                                                      "min_parties": 2, "train_samples": 120, "val_samples": 30}),
        Envelope(type=MessageType.UPDATE, job="j1", round=2, seq=7,
                 body={"num_samples": 120, "train_loss": 0.4, "seconds": 1.5, "epsilon": 0.8, "delta": 1e-5},
                 tensors={"conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
                          "conv.bias": np.zeros(4, np.float32), "step": np.array(3, np.int64),
                          "empty": np.zeros((0, 3), np.float64)}),
        Envelope(type=MessageType.METRICS, job="j1", round=2, seq=8,
                 body={"n": 30.0, "auc": 0.8, "accuracy": 0.7, "loss": 0.5}),
        Envelope(type=MessageType.JOB_REFUSE, job="j1", seq=9, body={"reason": "epsilon over budget", "budget": True}),
    ]
    return [_frames(e) for e in envs]


def _secagg() -> list[bytes]:
    from medfl.secagg import envelopes, messages
    from medfl.secagg.envelopes import Session

    s = Session(job="j1", round=3, attempt=1, phase="fit")
    k = bytes(range(32))
    msgs: list[Any] = [
        messages.AdvertiseKeys(agent="a", c_public=k, s_public=k[::-1]),
        messages.KeyRoster(keys={"a": (k, k), "b": (k[::-1], k)}, graph_seed=k, degree=0, threshold=2,
                           nonce=bytes(12)),
        messages.ShareKeys(agent="a", sealed={"b": b"\1" * 120, "c": b"\2" * 120}),
        messages.ShareDelivery(sealed={"a": b"\3" * 120}),
        messages.MaskedInput(agent="a", masked=np.arange(64, dtype=np.uint64)),
        messages.UnmaskRequest(survivors=["a", "b"], dropped=["c"]),
        messages.UnmaskResponse(agent="a", self_mask_shares={"b": b"\4" * 66}, key_shares={"c": b"\5" * 66}),
    ]
    return [_frames(envelopes.encode(m, s)) for m in msgs]


def _smpc() -> list[bytes]:
    from medfl.smpc.dealer.material import Sealer
    from medfl.wire import Envelope, MessageType

    keys = smpc_keys()
    sealer = Sealer(dealer_secret=keys["dealer"].private_bytes_raw(),
                    party_public=keys["party"].public_key().public_bytes_raw(), session="s-1", party=0)
    out = [_frames(Envelope(type=MessageType.SMPC_SHARE, job="s-1", round=0, body={"session": "s-1", "step": 0},
                            tensors={"s": np.arange(4, dtype=np.uint64)})),
           _frames(Envelope(type=MessageType.SMPC_ABORT, body={"session": "s-1", "code": "plan", "message": "x"}))]
    for last in (False, True):
        seq, ct = sealer.seal(b"material chunk" * 4, last=last)
        out.append(_frames(Envelope(type=MessageType.SMPC_MATERIAL, job="s-1", body={
            "session": "s-1", "party": 0, "seq": seq, "last": last, "pooled": False},
            tensors={"c": np.frombuffer(ct, np.uint8)})))
    return out


def _material() -> list[bytes]:
    from medfl.smpc.dealer import LocalDealer, PlanEntry, generate, pack_items, plan_to_wire

    plan = [PlanEntry("weight_mask", (3, 2)), PlanEntry("matmul_triple", (4,), 0), PlanEntry("trunc_pair", (4, 2), 16),
            PlanEntry("relu_keys", (3,), 20), PlanEntry("mul_triple", (2, 2))]
    items = list(generate(plan, LocalDealer()))
    return [pack_items([(i, k, a0) for i, k, a0, _ in items]), pack_items([(i, k, a1) for i, k, _, a1 in items[:2]]),
            msgpack.packb(plan_to_wire(plan))]


def _invitation() -> list[bytes]:
    import zmq

    from medfl.wire.invitation import Invitation, invitation_mac

    public, secret = zmq.curve_keypair()
    fields = {"id": "inv-1", "federation": "regional-fl", "endpoint": "tcp://fl.example.org:7777",
              "coordinator_key": public.decode(), "name": "st-mary", "created": 1_800_000_000,
              "expires": 1_800_086_400}
    inv = Invitation(**fields, secret=secret.decode(), mac=invitation_mac(b"k" * 32, fields))  # type: ignore[arg-type]
    return [inv.to_text().encode()]


def _dicom() -> list[bytes]:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    out = []
    for ts, photometric, voi in ((ExplicitVRLittleEndian, "MONOCHROME2", True),
                                 (ImplicitVRLittleEndian, "MONOCHROME1", False)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
        meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        meta.TransferSyntaxUID = ts
        ds = FileDataset("seed", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = ComputedRadiographyImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
        ds.Modality, ds.PatientID = "CR", "P1"
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
        if voi:
            ds.WindowCenter, ds.WindowWidth = 2000, 4000
        ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def seeds() -> dict[str, list[bytes]]:
    """Every target's seeds by target name."""
    wire = _wire()
    bodies = [msgpack.packb(b) for b in (
        {"num_samples": 120, "train_loss": 0.4, "seconds": 1.5, "epsilon": 0.8, "delta": 1e-5},
        {"n": 30.0, "auc": 0.8, "accuracy": 0.7, "loss": float("nan")}, {"reason": "over budget", "budget": True},
        {"epsilon": 1.0, "delta": 1e-5})]
    hello = [msgpack.packb({"name": "st-mary", "version": "0.4.0", "models": ["cnn", "resnet18"], "min_parties": 2,
                            "train_samples": 120, "val_samples": 30}), msgpack.packb({"name": "Hôpital Nord"})]
    out = {"envelope": wire + _secagg()[4:5], "bodies": bodies, "hello": hello, "invitation": _invitation(),
           "secagg": _secagg(), "smpc_frames": _smpc(), "material": _material(),
           "toml_config": [t.encode() for t in (_AGENT_TOML, _COORDINATOR_TOML, _JOB_TOML)], "dicom": _dicom()}
    if set(out) != set(TARGETS):
        raise RuntimeError(f"seeds for {sorted(out)} but targets {sorted(TARGETS)}")
    return out


def write(root: pathlib.Path) -> None:
    """Write every target's seeds under ``root/<target>/``."""
    for name, items in seeds().items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(items):
            (d / f"seed-{i}").write_bytes(data)


if __name__ == "__main__":
    write(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz-corpus"))
