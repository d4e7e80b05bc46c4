"""ChaCha20 keystream: RFC 8439 test vectors and agreement with OpenSSL (``cryptography``)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from medfl import native
from medfl.native import chacha20 as prg
from medfl.native import reference

needs_native = pytest.mark.skipif(native.native_module() is None, reason="medfl._native is not built")

KEY_SEQ = bytes(range(32))

# (key, nonce, counter, expected keystream) from RFC 8439.
VECTORS = [
    # Section 2.3.2: the block function.
    (KEY_SEQ, bytes.fromhex("000000090000004a00000000"), 1,
     "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
     "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"),
    # Appendix A.1, test vectors 1, 2 and 5.
    (bytes(32), bytes(12), 0,
     "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
     "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"),
    (bytes(32), bytes(12), 1,
     "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
     "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f"),
    (bytes(32), bytes(11) + b"\x02", 0,
     "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7"
     "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d"),
]

# Section 2.4.2: encryption of the sunscreen text (the keystream is ciphertext xor plaintext).
SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")
SUNSCREEN_CT = ("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
                "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
                "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
                "5af90bbf74a35be6b40b8eedf2785e42874d")

BACKENDS = ["reference", pytest.param("cpu", marks=needs_native)]


def _keystream(backend: str, key: bytes, nonce: bytes, counter: int, nbytes: int) -> bytes:
    if backend == "reference":
        return reference.chacha20_keystream_reference(key, nonce, counter, nbytes)
    mod = native.native_module()
    assert mod is not None
    return bytes(mod.chacha20_keystream(key, nonce, counter, nbytes))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("key", "nonce", "counter", "expected"), VECTORS)
def test_rfc8439_block_vectors(backend: str, key: bytes, nonce: bytes, counter: int, expected: str) -> None:
    assert _keystream(backend, key, nonce, counter, 64).hex() == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_rfc8439_encryption_vector(backend: str) -> None:
    ks = _keystream(backend, KEY_SEQ, bytes.fromhex("000000000000004a00000000"), 1, len(SUNSCREEN))
    ct = bytes(a ^ b for a, b in zip(ks, SUNSCREEN, strict=True))
    assert ct.hex() == SUNSCREEN_CT


def _openssl(key: bytes, nonce: bytes, counter: int, nbytes: int) -> bytes:
    enc = Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce), mode=None).encryptor()
    return enc.update(bytes(nbytes))


@needs_native
@pytest.mark.parametrize("nbytes", [0, 1, 7, 63, 64, 65, 127, 511, 512, 513, 4099, 70001, 1 << 20])
def test_native_matches_openssl(nbytes: int) -> None:
    for _ in range(3):
        key, nonce = os.urandom(32), os.urandom(12)
        counter = int.from_bytes(os.urandom(2), "little")
        assert prg.chacha20_keystream(key, nonce, counter, nbytes) == _openssl(key, nonce, counter, nbytes)


@needs_native
def test_native_matches_openssl_near_counter_limit() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    counter = 2**32 - 20
    assert prg.chacha20_keystream(key, nonce, counter, 20 * 64) == _openssl(key, nonce, counter, 20 * 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_rejected(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    call = reference.chacha20_keystream_reference if backend == "reference" else prg.chacha20_keystream
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        call(bytes(31), bytes(12), 0, 64)
    with pytest.raises(ValueError, match="nonce must be 12 bytes"):
        call(bytes(32), bytes(16), 0, 64)
    with pytest.raises(ValueError, match="32-bit block counter"):
        call(bytes(32), bytes(12), 2**32 - 1, 65)
    with pytest.raises(ValueError, match=r"\[0, 2\^32 - 1\]"):
        call(bytes(32), bytes(12), 2**32, 0)
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        call(bytes(32), bytes(12), 0, -1)
    assert len(call(bytes(32), bytes(12), 2**32 - 1, 64)) == 64


@needs_native
def test_native_kernel_checks_counter_itself() -> None:
    mod = native.native_module()
    assert mod is not None
    with pytest.raises(ValueError, match="exceeds the 32-bit block counter"):
        mod.chacha20_keystream(bytes(32), bytes(12), 2**32 - 1, 65)
    with pytest.raises(ValueError, match="expected 32 bytes"):
        mod.chacha20_keystream(bytes(3), bytes(12), 0, 1)
