"""Distributed comparison functions (DCF): keys that share ``beta * [x < alpha]`` for a public ``x``.

Two keys ``k0, k1`` from :func:`dcf_gen` satisfy ``eval(0, k0, x) + eval(1, k1, x) = beta``
if ``x < alpha`` else ``0`` (mod 2^64), and each key alone is pseudorandom. The tree walks the
low ``bits`` bits of ``x`` from the top (inputs are taken mod 2^bits); ``beta`` is one or two
64-bit words. The PRG is fixed-key AES-128 in the Matyas-Meyer-Oseas mode,
``G_i(s) = AES_k(s xor i) xor s xor i`` with the tweak ``i`` xored into the low 64-bit word and
``k`` the public bytes 0..15: ``G_0`` gives the left seed and control bit (bit 0 of the low
word, then cleared), ``G_1`` the right ones, ``G_2`` (and ``G_3`` for two-word payloads) the
value words ``vL``, ``vR``, and ``G_4`` converts the leaf seed into output words. Evaluation
needs two AES blocks per level. :mod:`medfl.native.reference.dcf` holds the NumPy references
(AES by OpenSSL through ``cryptography``); the public functions dispatch to the native kernels of
``csrc/smpc`` through :mod:`medfl.native`, which match them bit for bit.

Compatibility: a key's layout is its fields below; ``bits`` and the payload width follow from
the array shapes.

References
----------
.. [1] Boyle, Gilboa and Ishai, "Function Secret Sharing", EUROCRYPT 2015.
.. [2] Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and Rathee, "Function Secret Sharing for
   Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021 (the DCF of Fig. 1).
.. [3] Guo, Katz, Wang and Yu, "Efficient and Secure Multiparty Computation from Fixed-Key Block
   Ciphers", IEEE S&P 2020 (fixed-key MMO).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfl import csprng, native

__all__ = ["BITS", "DcfKey", "dcf_eval", "dcf_gen", "dcf_inputs"]

BITS = 64


@dataclass(frozen=True)
class DcfKey:
    """One party's DCF keys for a batch of ``N`` comparisons on ``bits``-bit inputs, ``P``-word payloads.

    Attributes
    ----------
    seed : ndarray of uint64, shape (N, 2)
        The root seed.
    s_cw : ndarray of uint64, shape (N, bits, 2)
        Seed corrections per level.
    v_cw : ndarray of uint64, shape (N, bits, P)
        Value corrections per level.
    t_cw : ndarray of uint8, shape (N, bits, 2)
        Control-bit corrections (left, right) per level.
    final : ndarray of uint64, shape (N, P)
        The last correction word.

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """

    seed: np.ndarray
    s_cw: np.ndarray
    v_cw: np.ndarray
    t_cw: np.ndarray
    final: np.ndarray

    @property
    def bits(self) -> int:
        """Input bits (tree depth)."""
        return int(self.s_cw.shape[1])

    @property
    def payload(self) -> int:
        """Output words per comparison."""
        return int(self.final.shape[1])

    @property
    def nbytes(self) -> int:
        """Size of the key material."""
        return int(self.seed.nbytes + self.s_cw.nbytes + self.v_cw.nbytes + self.t_cw.nbytes + self.final.nbytes)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= BITS:
        raise ValueError(f"bits must be an integer in [1, 64], got {bits!r}")


def _payload_of(beta: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(beta, dtype=np.uint64)
    b = b.reshape(n, 1) if b.ndim <= 1 else b.reshape(n, -1)
    if b.shape[1] not in (1, 2):
        raise ValueError(f"beta must have 1 or 2 words per comparison, got shape {np.shape(beta)}")
    return np.ascontiguousarray(b)


def dcf_inputs(alpha: np.ndarray, beta: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Check a key request and return ``alpha`` as contiguous uint64 (N,) and ``beta`` as (N, P).

    Raises
    ------
    ValueError
        ``bits`` outside 1..64, or ``beta`` not one or two words per comparison.
    """
    _check_bits(bits)
    a = np.ascontiguousarray(np.asarray(alpha, dtype=np.uint64).reshape(-1))
    return a, _payload_of(beta, a.size)


def dcf_gen(alpha: np.ndarray, beta: np.ndarray, *, bits: int = BITS) -> tuple[DcfKey, DcfKey]:
    """Generate keys sharing ``x -> beta * [x mod 2^bits < alpha mod 2^bits]`` (unsigned comparison).

    Parameters
    ----------
    alpha : ndarray of uint64, shape (N,)
        Secret thresholds.
    beta : ndarray of uint64, shape (N,) or (N, P) with P in {1, 2}
        Secret payloads.
    bits : int
        Input bits, 1..64.

    Returns
    -------
    (DcfKey, DcfKey)

    Notes
    -----
    Both parties' root seeds, party 0's first, are the ChaCha20 keystream of one fresh key from
    :func:`medfl.csprng.token_bytes`, as a GPU dealer expands them (:mod:`medfl.smpc.dealer.generator`).

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    alpha, b = dcf_inputs(alpha, beta, bits)
    n = alpha.size
    roots = np.frombuffer(csprng.expand(32 * n, key=csprng.token_bytes(32)), dtype=np.uint64).reshape(2, n, 2).copy()
    s_cw, v_cw, t_cw, final = native.dcf_gen(alpha, b, roots, bits)
    return DcfKey(roots[0], s_cw, v_cw, t_cw, final), DcfKey(roots[1], s_cw, v_cw, t_cw, final)


def dcf_eval(party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
    """Evaluate one party's keys at public points ``x``; the two results add to ``beta [x < alpha]``.

    Parameters
    ----------
    party : {0, 1}
        Which key this is.
    key : DcfKey
        The party's keys for N comparisons.
    x : ndarray of uint64, shape (N,)
        Public (opened, masked) points.

    Returns
    -------
    ndarray of uint64, shape (N,) for one-word payloads, else (N, P)

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    out = native.dcf_eval(party, key, x)
    return np.asarray(out[:, 0] if key.payload == 1 else out)
