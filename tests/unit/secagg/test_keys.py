"""X25519 + HKDF key derivation and the AEAD channel of the relayed share messages."""

from __future__ import annotations

import pytest

from medfl.errors import Rejected
from medfl.secagg.keys import KeyPair, Scope, derive, open_sealed, seal

SCOPE = Scope(job="job-1", round=3)


def _pair() -> tuple[KeyPair, KeyPair]:
    return KeyPair.generate(), KeyPair.generate()


def test_both_ends_derive_the_same_key_and_it_is_bound() -> None:
    a, b = _pair()
    k_ab = derive(a.secret, b.public, purpose="mask", scope=SCOPE, ids=("a", "b"))
    k_ba = derive(b.secret, a.public, purpose="mask", scope=SCOPE, ids=("b", "a"))
    assert k_ab == k_ba and len(k_ab) == 32
    others = {
        derive(a.secret, b.public, purpose="aead", scope=SCOPE, ids=("a", "b")),
        derive(a.secret, b.public, purpose="mask", scope=Scope("job-1", 4), ids=("a", "b")),
        derive(a.secret, b.public, purpose="mask", scope=Scope("job-2", 3), ids=("a", "b")),
        derive(a.secret, b.public, purpose="mask", scope=SCOPE, ids=("a", "c")),
    }
    assert k_ab not in others and len(others) == 4


def test_from_secret_round_trips() -> None:
    a = KeyPair.generate()
    assert KeyPair.from_secret(a.secret) == a


def test_low_order_public_key_rejected() -> None:
    a = KeyPair.generate()
    with pytest.raises(Rejected):
        derive(a.secret, bytes(32), purpose="mask", scope=SCOPE, ids=("a", "b"))


def test_seal_open_and_tamper_replay_redirect_rejected() -> None:
    a, b = _pair()
    key = derive(a.secret, b.public, purpose="aead", scope=SCOPE, ids=("a", "b"))
    msg = seal(key, b"shares", sender="a", receiver="b", scope=SCOPE)
    assert open_sealed(key, msg, sender="a", receiver="b", scope=SCOPE) == b"shares"
    tampered = msg[:-1] + bytes([msg[-1] ^ 1])
    flipped = msg[:13] + bytes([msg[13] ^ 0x80]) + msg[14:]
    for bad, kwargs in [
        (tampered, dict(sender="a", receiver="b", scope=SCOPE)),
        (flipped, dict(sender="a", receiver="b", scope=SCOPE)),
        (msg, dict(sender="a", receiver="b", scope=Scope("job-1", 4))),  # replay into next round
        (msg, dict(sender="a", receiver="c", scope=SCOPE)),  # redirected
        (msg, dict(sender="c", receiver="b", scope=SCOPE)),  # spoofed sender
        (msg[:10], dict(sender="a", receiver="b", scope=SCOPE)),
    ]:
        with pytest.raises(Rejected):
            open_sealed(key, bad, **kwargs)
