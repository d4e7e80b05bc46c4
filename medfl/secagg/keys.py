"""Key agreement for secure aggregation: X25519 pairs, HKDF-derived mask seeds and AEAD keys.

Each agent holds two X25519 key pairs per round: ``c`` (for the AEAD channel of the share
messages relayed by the coordinator) and ``s`` (for the pairwise mask seeds). The shared secret
of two agents is expanded with HKDF-SHA256, whose ``info`` binds the purpose, the job, the round
and the two agent ids (sorted, so both ends derive the same key). Share messages are sealed with
ChaCha20-Poly1305; the associated data binds sender, receiver, job and round, so a message
replayed into another round, or redirected to another agent, fails to open.

Compatibility: the ``info`` and associated-data layouts are part of the protocol and never
change; a new purpose gets a new label.

References
----------
.. [1] Langley, Hamburg and Turner, "Elliptic Curves for Security", RFC 7748, 2016 (X25519).
.. [2] Krawczyk and Eronen, "HMAC-based Extract-and-Expand Key Derivation Function", RFC 5869.
.. [3] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018.
.. [4] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017, figure 4 (KA.agree, AE.enc with the ids of both ends).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medfl import csprng
from medfl.errors import Rejected

__all__ = ["KeyPair", "Scope", "derive", "open_sealed", "seal"]

_NONCE_BYTES = 12


@dataclass(frozen=True)
class Scope:
    """What a derived key is bound to: the job and the round.

    Parameters
    ----------
    job : str
        Job id.
    round : int
        Round number (a retried round gets a new number or fresh keys).
    """

    job: str
    round: int


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair, secret and public key as 32 raw bytes each.

    Parameters
    ----------
    secret : bytes
        Raw private key (never sent, except as Shamir shares of a dropped agent's ``s`` key).
    public : bytes
        Raw public key.
    """

    secret: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """Return a fresh key pair whose secret comes from :mod:`medfl.csprng`.

        References
        ----------
        .. [1] RFC 7748, section 5 (any 32 random bytes are a valid X25519 secret).
        """
        return cls.from_secret(csprng.token_bytes(32))

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """Return the key pair of a raw 32-byte secret (e.g. one rebuilt from shares)."""
        if len(secret) != 32:
            raise ValueError(f"an X25519 secret is 32 bytes, got {len(secret)}")
        priv = X25519PrivateKey.from_private_bytes(secret)
        return cls(secret=secret, public=priv.public_key().public_bytes_raw())


def derive(secret: bytes, peer_public: bytes, *, purpose: str, scope: Scope, ids: tuple[str, str]) -> bytes:
    """Return 32 bytes shared by the two agents ``ids`` for ``purpose`` in ``scope``.

    Parameters
    ----------
    secret : bytes
        This agent's raw X25519 secret.
    peer_public : bytes
        The other agent's raw X25519 public key.
    purpose : str
        ``"mask"`` for a pairwise mask seed, ``"aead"`` for a share channel key.
    scope : Scope
        Job and round the key is bound to.
    ids : tuple of str
        The two agent ids (order does not matter).

    Raises
    ------
    Rejected
        The peer's public key is not a valid X25519 point (an all-zero shared secret).

    References
    ----------
    .. [1] RFC 7748 section 6.1; RFC 5869.
    """
    if len(peer_public) != 32:
        raise Rejected(f"an X25519 public key is 32 bytes, got {len(peer_public)}")
    try:
        shared = X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise Rejected(f"peer public key is not usable for X25519: {exc}") from exc
    a, b = sorted(ids)
    info = msgpack.packb(["medfl-secagg-v1", purpose, scope.job, scope.round, a, b])
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _ad(sender: str, receiver: str, scope: Scope) -> bytes:
    return msgpack.packb(["medfl-secagg-share-v1", sender, receiver, scope.job, scope.round])


def seal(key: bytes, plaintext: bytes, *, sender: str, receiver: str, scope: Scope) -> bytes:
    """Encrypt ``plaintext`` from ``sender`` to ``receiver`` (nonce || ciphertext || tag).

    References
    ----------
    .. [1] RFC 8439 section 2.8 (AEAD_CHACHA20_POLY1305), with a random 96-bit nonce.
    """
    nonce = csprng.token_bytes(_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, _ad(sender, receiver, scope))


def open_sealed(key: bytes, sealed: bytes, *, sender: str, receiver: str, scope: Scope) -> bytes:
    """Decrypt what :func:`seal` produced, checking it was meant for this receiver and round.

    Raises
    ------
    Rejected
        Tampered, replayed into another job or round, or redirected to another agent.
    """
    if len(sealed) < _NONCE_BYTES + 16:
        raise Rejected(f"sealed share message too short ({len(sealed)} bytes)")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _ad(sender, receiver, scope))
    except InvalidTag as exc:
        raise Rejected(
            f"share message from {sender!r} to {receiver!r} (job {scope.job!r}, round {scope.round}) fails "
            "authentication: tampered, replayed or redirected"
        ) from exc
