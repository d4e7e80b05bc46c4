"""Dealer material from the attacker's side: tampered, replayed, reordered, moved or misaddressed chunks."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from medfl.errors import MalformedMessage, SessionAborted
from medfl.smpc.dealer.material import Opener, PlanEntry, Sealer, pack_items, plan_from_wire, plan_to_wire, unpack_items
from medfl.smpc.session.provider import make_material, seal_chunks

SESSION = "a1" * 12


def _keys():
    dealer, party = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    return dealer, party


def _sealed(n_chunks_bytes: int = 4096):
    dealer, party = _keys()
    mat = make_material([PlanEntry("weight_mask", (8, 4)), PlanEntry("matmul_triple", (300,), 0),
                         PlanEntry("trunc_pair", (300, 4), 16), PlanEntry("relu_keys", (50,), 20),
                         PlanEntry("mul_triple", (7,))])
    sealer = Sealer(dealer_secret=dealer.private_bytes_raw(), party_public=party.public_key().public_bytes_raw(),
                    session=SESSION, party=0)
    chunks = seal_chunks(mat.halves[0], sealer, n_chunks_bytes)
    return dealer, party, mat, chunks


def _opener(dealer, party, session=SESSION, p=0):
    return Opener(party_secret=party, dealer_public=dealer.public_key().public_bytes_raw(), session=session, party=p)


def test_sealed_material_round_trips_bit_for_bit() -> None:
    dealer, party, mat, chunks = _sealed()
    assert len(chunks) > 3
    op = _opener(dealer, party)
    blob = b"".join(op.open(session=SESSION, seq=s, last=last, ciphertext=ct) for s, last, ct in chunks)
    got = unpack_items(blob)
    assert [(i, k) for i, k, _ in got] == [(i, k) for i, k, _ in mat.halves[0]]
    for (_, _, a), (_, _, b) in zip(got, mat.halves[0], strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def test_tampered_chunk_is_refused_with_auth_abort() -> None:
    dealer, party, _, chunks = _sealed()
    seq, last, ct = chunks[0]
    bad = bytearray(ct)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(SessionAborted, match="failed authentication") as exc:
        _opener(dealer, party).open(session=SESSION, seq=seq, last=last, ciphertext=bytes(bad))
    assert exc.value.code == "auth"


def test_replayed_and_reordered_chunks_are_refused() -> None:
    dealer, party, _, chunks = _sealed()
    op = _opener(dealer, party)
    op.open(session=SESSION, seq=chunks[0][0], last=chunks[0][1], ciphertext=chunks[0][2])
    with pytest.raises(SessionAborted, match="replayed") as exc:
        op.open(session=SESSION, seq=chunks[0][0], last=chunks[0][1], ciphertext=chunks[0][2])
    assert exc.value.code == "replay"
    with pytest.raises(SessionAborted, match="expected"):  # skipping chunk 1
        op.open(session=SESSION, seq=chunks[2][0], last=chunks[2][1], ciphertext=chunks[2][2])
    # relabelling chunk 2 as seq 1 does not help: the nonce and associated data bind the position
    with pytest.raises(SessionAborted, match="failed authentication"):
        op.open(session=SESSION, seq=1, last=chunks[2][1], ciphertext=chunks[2][2])


def test_truncation_by_a_false_last_flag_is_refused() -> None:
    dealer, party, _, chunks = _sealed()
    seq, _, ct = chunks[0]
    with pytest.raises(SessionAborted, match="failed authentication"):
        _opener(dealer, party).open(session=SESSION, seq=seq, last=True, ciphertext=ct)


def test_chunk_from_another_session_is_refused() -> None:
    dealer, party, _, chunks = _sealed()
    other = "b2" * 12
    with pytest.raises(SessionAborted, match="another session|arrived in session") as exc:
        _opener(dealer, party).open(session=other, seq=0, last=chunks[0][1], ciphertext=chunks[0][2])
    assert exc.value.code == "foreign_session"
    # an opener of the other session with the same keys cannot open it either (HKDF salt, AAD)
    with pytest.raises(SessionAborted, match="failed authentication"):
        _opener(dealer, party, session=other).open(session=other, seq=0, last=chunks[0][1], ciphertext=chunks[0][2])


def test_relaying_party_and_wrong_dealer_key_cannot_open() -> None:
    dealer, party, _, chunks = _sealed()
    relay = X25519PrivateKey.generate()  # the model server's own key: it relays party 0's chunks
    seq, last, ct = chunks[0]
    for op in (Opener(party_secret=relay, dealer_public=dealer.public_key().public_bytes_raw(), session=SESSION,
                      party=0),
               _opener(X25519PrivateKey.generate(), party),  # a dealer key the party did not pin
               _opener(dealer, party, p=1)):  # the right keys but the other party's label
        with pytest.raises(SessionAborted) as exc:
            op.open(session=SESSION, seq=seq, last=last, ciphertext=ct)
        assert exc.value.code == "auth"


def test_ciphertext_looks_uniform() -> None:
    _, _, _, chunks = _sealed()
    data = np.frombuffer(b"".join(ct for _, _, ct in chunks), np.uint8)
    h = np.bincount(data, minlength=256).astype(float)
    expected = data.size / 256
    assert float(np.sum((h - expected) ** 2 / expected)) < 380  # chi-square, 255 dof, ~1e-6 level


def test_bad_plans_and_records_are_refused() -> None:
    with pytest.raises(MalformedMessage, match="known kind"):
        plan_from_wire([{"k": "exec", "s": [1]}])
    with pytest.raises(MalformedMessage, match="earlier weight mask"):
        plan_from_wire([{"k": "matmul_triple", "s": [4], "x": 0}])
    with pytest.raises(MalformedMessage, match="limit"):
        plan_from_wire([{"k": "mul_triple", "s": [2**30, 4], "x": 0}])
    with pytest.raises(MalformedMessage, match="bad shape"):
        plan_from_wire([{"k": "mul_triple", "s": [-1], "x": 0}])
    plan = [PlanEntry("weight_mask", (2, 3)), PlanEntry("matmul_triple", (5,), 0)]
    assert plan_from_wire(plan_to_wire(plan)) == plan
    blob = pack_items([(0, "mul_triple", {"a": np.arange(6, dtype=np.uint64)})])
    with pytest.raises(MalformedMessage, match="past the end|cut short"):
        unpack_items(blob[:-5])
