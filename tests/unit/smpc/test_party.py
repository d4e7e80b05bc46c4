"""Two parties in two threads over an in-memory link: dealer material sealed, opened and replayed.

The networked parties (:mod:`medfl.smpc.party`) run the in-process engine with only their own
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
from medfl.smpc.evaluator import calibrate
from medfl.smpc.material import Opener, Sealer, plan_from_wire, plan_to_wire, unpack_items
from medfl.smpc.party import PartyRunner, ReplayDealer, trace_plan
from medfl.smpc.provider import make_material, seal_chunks
from medfl.wire.envelope import Envelope


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
    from medfl.smpc.evaluator import SecureModel
    from medfl.smpc.layers import Session

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
