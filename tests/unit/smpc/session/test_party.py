"""Two parties in two threads over an in-memory link: dealer material sealed, opened and replayed.

The networked parties (:mod:`medfl.smpc.session.party`) run the in-process engine with only their own
slot real; here they exchange shares through queues (the in-memory twin of the ZeroMQ link) and
must give the plaintext model's logits. The real-process version is in tests/integration.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from medfl.errors import SessionAborted
from medfl.models import create_model
from medfl.smpc.dealer.material import Opener, Sealer, plan_from_wire, plan_to_wire, unpack_items
from medfl.smpc.evaluator import Calibration, calibrate
from medfl.smpc.session.party import PartyRunner, ReplayDealer, trace_plan
from medfl.smpc.session.provider import make_material, seal_chunks
from medfl.wire.envelope import Envelope
from medfl.wire.messages import MessageType


class QueueLink:
    """The in-memory twin of a party link: one queue each way."""

    def __init__(self, out: queue.Queue, inbox: queue.Queue):
        self.out, self.inbox = out, inbox

    def send(self, env: Envelope) -> None:
        self.out.put(env)

    def recv(self, timeout_s: float) -> Envelope | None:
        try:
            return self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None


def _model() -> tuple[torch.nn.Module, list[np.ndarray]]:
    torch.manual_seed(2)  # test model weights only, not protocol randomness
    model = create_model("cnn", width=2).eval()
    torch.nn.init.normal_(model.head[2].weight, std=0.3)
    rng = np.random.default_rng(5)
    imgs = [rng.random((1, 64, 64)).astype(np.float32) for _ in range(3)]
    return model, imgs


def _sealed_roundtrip(items, party, session="s" * 16):
    dealer_sk = X25519PrivateKey.generate()
    party_sk = X25519PrivateKey.generate()
    sealer = Sealer(dealer_secret=dealer_sk.private_bytes_raw(), party_public=party_sk.public_key().public_bytes_raw(),
                    session=session, party=party)
    opener = Opener(party_secret=party_sk, dealer_public=dealer_sk.public_key().public_bytes_raw(), session=session,
                    party=party)
    chunks = [opener.open(session=session, seq=s, last=last, ciphertext=ct)
              for s, last, ct in seal_chunks(items, sealer, 1 << 20)]
    assert opener.done
    return unpack_items(b"".join(chunks))


def test_two_party_threads_match_plaintext_with_sealed_material() -> None:
    model, imgs = _model()
    cal = calibrate(model, imgs)
    plan, rounds = trace_plan(model, (1, 64, 64), cal)
    plan = plan_from_wire(plan_to_wire(plan))
    prep = sum(e.kind == "weight_mask" for e in plan)
    full = plan[:prep] + plan[prep:] * 2  # two images in one session: weight masks opened once
    mat = make_material(full)
    halves = [_sealed_roundtrip(mat.halves[p], p) for p in (0, 1)]
    q01, q10 = queue.Queue(), queue.Queue()
    skeleton = create_model("cnn", width=2).eval()  # the data owner knows the architecture only
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def party(p: int) -> None:
        try:
            link = QueueLink(q01, q10) if p == 0 else QueueLink(q10, q01)
            runner = PartyRunner(party=p, model=skeleton if p == 0 else model, in_shape=(1, 64, 64),
                                 calibration=cal, dealer=ReplayDealer(p, halves[p]), session="x" * 16, link=link,
                                 timeout_s=120)
            for img in imgs[:2]:
                results[p].append(runner.infer(img if p == 0 else None))
            runner.dealer.check_used_up()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=party, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    for img, res in zip(imgs[:2], results[0], strict=True):
        with torch.no_grad():
            want = model(torch.from_numpy(img)[None])[0].double().numpy()
        assert np.max(np.abs(res.logits - want)) < 5e-2
        assert int(np.argmax(res.logits)) == int(np.argmax(want))
        assert res.rounds == rounds - prep
    assert all(r.logits is None for r in results[1])  # the model server never sees the result


def test_replay_dealer_aborts_when_the_protocol_and_the_material_disagree() -> None:
    model, imgs = _model()
    cal = calibrate(model, imgs)
    plan, _ = trace_plan(model, (1, 64, 64), cal)
    mat = make_material(plan[:3])
    d = ReplayDealer(0, mat.halves[0])
    d.weight_mask(tuple(mat.halves[0][0][2]["b"].shape))
    with pytest.raises(SessionAborted, match="asks for trunc_pair") as exc:
        d.trunc_pair((3, 3), 16)
    assert exc.value.code == "plan"


def test_adaptive_pool_that_upsamples_is_a_local_repeat() -> None:
    """medfl's cnn at 32 px ends in a 2x2 map pooled 'up' to 4x4: exact, no extra rounds."""
    from medfl.smpc import InMemoryChannel, LocalDealer
    from medfl.smpc.engine.layers import Session
    from medfl.smpc.evaluator import SecureModel

    torch.manual_seed(4)  # test model weights only
    model = create_model("cnn", width=2).eval()
    torch.nn.init.normal_(model.head[2].weight, std=0.3)
    rng = np.random.default_rng(6)
    imgs = [rng.random((1, 32, 32)).astype(np.float32) for _ in range(3)]
    sm = SecureModel(model, Session(LocalDealer(), InMemoryChannel()), (1, 32, 32), calibrate(model, imgs))
    got = sm(imgs[0])
    with torch.no_grad():
        want = model(torch.from_numpy(imgs[0])[None])[0].double().numpy()
    assert np.max(np.abs(got - want)) < 5e-2 and int(np.argmax(got)) == int(np.argmax(want))


def _run_pair(model_server_model, images, *, record=False, inject=None, side=32, cal=None):
    """Both parties in threads over queues; returns (results, runners' views, errors)."""
    cal = cal or calibrate(model_server_model, [np.full((1, side, side), v, np.float32) for v in (0.1, 0.5, 0.9)]
                    + [np.random.default_rng(9).random((1, side, side)).astype(np.float32)])
    plan, _ = trace_plan(model_server_model, (1, side, side), cal)
    prep = sum(e.kind == "weight_mask" for e in plan)
    mat = make_material(plan[:prep] + plan[prep:] * len(images))
    q01, q10 = queue.Queue(), queue.Queue()
    if inject is not None:
        q01.put(inject)
    skeleton = create_model("cnn", width=2).eval()
    out: dict[int, list] = {0: [], 1: []}
    views: dict[int, list[bytes]] = {}
    errors: dict[int, BaseException] = {}

    def party(p: int) -> None:
        try:
            link = QueueLink(q01, q10) if p == 0 else QueueLink(q10, q01)
            r = PartyRunner(party=p, model=skeleton if p == 0 else model_server_model, in_shape=(1, side, side),
                            calibration=cal, dealer=ReplayDealer(p, mat.halves[p]), session="s" * 16, link=link,
                            timeout_s=5, record=record)
            for img in images:
                out[p].append(r.infer(img if p == 0 else None))
            views[p] = r.channel.view or []
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors[p] = exc

    ts = [threading.Thread(target=party, args=(p,)) for p in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    return out, views, errors


def _uniform_and_indistinguishable(a: bytes, b: bytes) -> None:
    va, vb = np.frombuffer(a, np.uint64), np.frombuffer(b, np.uint64)
    assert va.size == vb.size > 10_000
    for v in (va, vb):  # each of the 64 bit positions is a fair coin (6 sigma)
        bits = ((v[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
        assert np.all(np.abs(bits - 0.5) < 6 * 0.5 / np.sqrt(v.size))
    h = [np.bincount(v.view(np.uint8), minlength=256).astype(np.float64) for v in (va, vb)]
    pooled = (h[0] + h[1]) / 2  # two-sample chi-square on bytes, 255 dof, ~1e-6 level
    assert float(np.sum((h[0] - pooled) ** 2 / pooled + (h[1] - pooled) ** 2 / pooled)) < 380


def test_model_servers_view_of_two_different_images_is_uniform_and_indistinguishable() -> None:
    model, _ = _model()
    black, white = np.zeros((1, 32, 32), np.float32), np.ones((1, 32, 32), np.float32)
    views = []
    for img in (black, white):
        _, v, errors = _run_pair(model, [img], record=True)
        assert not errors, errors
        views.append(b"".join(v[1]))  # every byte party 1 received over its link
    _uniform_and_indistinguishable(*views)


def test_data_owners_view_of_two_different_models_is_uniform_and_indistinguishable() -> None:
    img = np.random.default_rng(1).random((1, 32, 32)).astype(np.float32)
    views = []
    # the announced plan (architecture, shapes, calibrated ranges) is public and the same for both
    cal = Calibration(8.0, ((1e-3, 50.0),) * 4)
    for seed in (0, 1):
        torch.manual_seed(seed)  # two different models (test weights only)
        model = create_model("cnn", width=2).eval()
        torch.nn.init.normal_(model.head[2].weight, std=0.3 * (seed + 1))
        res, v, errors = _run_pair(model, [img], record=True, cal=cal)
        assert not errors, errors
        last = v[0].pop()  # the final message is the model server's share of the logits, meant to be opened
        assert len(last) == 16
        views.append(b"".join(v[0]))
    _uniform_and_indistinguishable(*views)


def test_share_from_another_session_aborts_with_a_clear_error() -> None:
    model, _ = _model()
    foreign = Envelope(type=MessageType.SMPC_SHARE, body={"session": "other-session-id", "step": 0},
                       tensors={"s": np.zeros(1, np.uint64)})
    _, _, errors = _run_pair(model, [np.zeros((1, 32, 32), np.float32)], inject=foreign)
    assert isinstance(errors.get(1), SessionAborted) and errors[1].code == "foreign_session"
    assert "other-session-id" in str(errors[1])
    assert isinstance(errors.get(0), SessionAborted) and errors[0].code == "timeout"  # its peer stopped


def test_replayed_share_aborts() -> None:
    model, _ = _model()
    replay = Envelope(type=MessageType.SMPC_SHARE, body={"session": "s" * 16, "step": 7},
                      tensors={"s": np.zeros(1, np.uint64)})
    _, _, errors = _run_pair(model, [np.zeros((1, 32, 32), np.float32)], inject=replay)
    assert isinstance(errors.get(1), SessionAborted) and errors[1].code == "replay"


@pytest.mark.parametrize("kind", ["trunc_pair", "mul_triple", "relu_keys"])
def test_replay_dealer_refuses_material_of_the_wrong_size_beyond_the_first_array(kind: str) -> None:
    # a dealer item whose first array fits but whose others do not (or are missing, or not ring words)
    # is refused before any of it is used, and the dealer does not advance
    from medfl.smpc.dealer.material import PlanEntry

    shape = (4, 3) if kind != "relu_keys" else (12,)
    entry = PlanEntry(kind, shape, 16 if kind == "trunc_pair" else 64) if kind != "mul_triple" \
        else PlanEntry(kind, shape)
    mat = make_material([entry])
    index, got, arrays = mat.halves[0][0]
    take = {"trunc_pair": lambda d: d.trunc_pair(shape, 16), "mul_triple": lambda d: d.mul_triple(shape),
            "relu_keys": lambda d: d.relu_keys(shape[0])}[kind]
    take(ReplayDealer(0, [(index, got, dict(arrays))]))  # the honest item goes through
    other = {"trunc_pair": "low", "mul_triple": "c", "relu_keys": "rmsb"}[kind]
    for bad in (np.zeros((1,), np.uint64), arrays[other].astype(np.uint32), None):
        tampered = dict(arrays)
        if bad is None:
            tampered.pop(other)
        else:
            tampered[other] = bad
        d = ReplayDealer(0, [(index, got, tampered)])
        with pytest.raises(SessionAborted, match=f"{other!r}.*wrong size") as exc:
            take(d)
        assert exc.value.code == "plan" and d.next == 0
