"""Distributed comparison functions (DCF): keys that share ``beta * [x < alpha]`` for a public ``x``.

Two keys ``k0, k1`` from :func:`dcf_gen` satisfy ``eval(0, k0, x) + eval(1, k1, x) = beta``
if ``x < alpha`` else ``0`` (mod 2^64), and each key alone is pseudorandom. The tree walks the
low ``bits`` bits of ``x`` from the top (inputs are taken mod 2^bits); ``beta`` is one or two
64-bit words. The PRG is fixed-key AES-128 in the Matyas-Meyer-Oseas mode,
``G_i(s) = AES_k(s xor i) xor s xor i`` with the tweak ``i`` xored into the low 64-bit word and
``k`` the public bytes 0..15: ``G_0`` gives the left seed and control bit (bit 0 of the low
word, then cleared), ``G_1`` the right ones, ``G_2`` (and ``G_3`` for two-word payloads) the
value words ``vL``, ``vR``, and ``G_4`` converts the leaf seed into output words. Evaluation
needs two AES blocks per level. :func:`dcf_gen_reference` / :func:`dcf_eval_reference` are the
NumPy references (AES by OpenSSL through ``cryptography``); the public functions dispatch to the
native kernels of ``csrc/smpc`` through :mod:`medfl.native`, which match them bit for bit.

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
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from medfl import csprng, native

__all__ = ["BITS", "DcfKey", "dcf_eval", "dcf_eval_reference", "dcf_gen", "dcf_gen_reference", "dcf_inputs"]

BITS = 64
_PRG_KEY = bytes(range(16))  # public fixed key of the MMO construction, not a secret
_ONE = np.uint64(1)
_CONVERT = 4  # tweak of the leaf conversion


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


def _mmo(seed: np.ndarray, tweaks: tuple[int, ...]) -> np.ndarray:
    """Return ``G_i(seed)`` for every tweak ``i``: shape (N, len(tweaks), 2)."""
    n = seed.shape[0]
    x = np.repeat(seed[:, None, :], len(tweaks), axis=1)
    x[:, :, 0] ^= np.asarray(tweaks, dtype=np.uint64)
    x = np.ascontiguousarray(x)
    enc = Cipher(algorithms.AES(_PRG_KEY), modes.ECB()).encryptor()
    return np.frombuffer(enc.update(x.tobytes()), dtype=np.uint64).reshape(n, len(tweaks), 2) ^ x


def _expand(seed: np.ndarray, payload: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds (N, 2, 2) [side, word], control bits (N, 2) and values (N, 2, P) [side, word] of both children."""
    g = _mmo(seed, tuple(range(2 + payload)))
    s = g[:, :2, :].copy()
    t = (s[:, :, 0] & _ONE).astype(np.uint8)
    s[:, :, 0] &= ~_ONE
    v = g[:, 2, :].reshape(-1, 2, 1) if payload == 1 else g[:, 2:4, :]
    return s, t, v


def _convert(seed: np.ndarray, payload: int) -> np.ndarray:
    return _mmo(seed, (_CONVERT,))[:, 0, :payload]


def _neg_if(cond: np.ndarray, v: np.ndarray) -> np.ndarray:
    c = cond.astype(bool)
    return np.where(c.reshape(c.shape + (1,) * (v.ndim - c.ndim)), np.uint64(0) - v, v)


def _bits_of(a: np.ndarray, bits: int, i: int) -> np.ndarray:
    return ((a >> np.uint64(bits - 1 - i)) & _ONE).astype(np.intp)


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


def dcf_gen_reference(alpha: np.ndarray, beta: np.ndarray, roots: np.ndarray, bits: int = BITS,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Correction words from given root seeds (NumPy + OpenSSL); the reference of the native kernel.

    Parameters
    ----------
    alpha : ndarray of uint64, shape (N,)
        Thresholds (low ``bits`` bits used).
    beta : ndarray of uint64, shape (N, P)
        Payloads.
    roots : ndarray of uint64, shape (2, N, 2)
        Both parties' root seeds.
    bits : int
        Input bits.

    Returns
    -------
    s_cw, v_cw, t_cw, final
        As in :class:`DcfKey`.

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    n, payload = alpha.size, beta.shape[1]
    s = [roots[0].copy(), roots[1].copy()]
    t: list[np.ndarray] = [np.zeros(n, np.uint8), np.ones(n, np.uint8)]
    v_alpha = np.zeros((n, payload), np.uint64)
    s_cw = np.empty((n, bits, 2), np.uint64)
    v_cw = np.empty((n, bits, payload), np.uint64)
    t_cw = np.empty((n, bits, 2), np.uint8)
    rows = np.arange(n)
    for i in range(bits):
        a = _bits_of(alpha, bits, i)
        g = [_expand(s[0], payload), _expand(s[1], payload)]
        keep, lose = a, 1 - a
        s_cw[:, i] = g[0][0][rows, lose] ^ g[1][0][rows, lose]
        vc = _neg_if(t[1], g[1][2][rows, lose] - g[0][2][rows, lose] - v_alpha)
        vc = vc + np.where(a[:, None] == 1, _neg_if(t[1], beta), np.uint64(0))  # lose = left: x_i=0 < alpha_i=1
        v_cw[:, i] = vc
        v_alpha = v_alpha - g[1][2][rows, keep] + g[0][2][rows, keep] + _neg_if(t[1], vc)
        t_cw[:, i, 0] = g[0][1][:, 0] ^ g[1][1][:, 0] ^ a.astype(np.uint8) ^ 1
        t_cw[:, i, 1] = g[0][1][:, 1] ^ g[1][1][:, 1] ^ a.astype(np.uint8)
        tck = t_cw[rows, i, keep]
        for b in (0, 1):
            s[b] = g[b][0][rows, keep] ^ (s_cw[:, i] * t[b][:, None].astype(np.uint64))
            t[b] = g[b][1][rows, keep] ^ (t[b] & tck)
    final = _neg_if(t[1], _convert(s[1], payload) - _convert(s[0], payload) - v_alpha)
    return s_cw, v_cw, t_cw, final


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
    s_cw, v_cw, t_cw, final = native.backend_for(alpha).dcf_gen(alpha, b, roots, bits)
    return DcfKey(roots[0], s_cw, v_cw, t_cw, final), DcfKey(roots[1], s_cw, v_cw, t_cw, final)


def _check_eval(party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
    if party not in (0, 1):
        raise ValueError(f"party must be 0 or 1, got {party}")
    x = np.ascontiguousarray(np.asarray(x, dtype=np.uint64).reshape(-1))
    if x.size != key.seed.shape[0]:
        raise ValueError(f"{x.size} points for {key.seed.shape[0]} keys")
    return x


def dcf_eval_reference(party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
    """NumPy + OpenSSL evaluation; the reference of the native kernel. Returns shape (N, P).

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    x = _check_eval(party, key, x)
    bits, payload, rows = key.bits, key.payload, np.arange(x.size)
    s = key.seed.copy()
    t: np.ndarray = np.full(x.size, party, np.uint8)
    v = np.zeros((x.size, payload), np.uint64)
    neg = np.full(x.size, party, np.uint8)
    for i in range(bits):
        d = _bits_of(x, bits, i)
        gs, gt, gv = _expand(s, payload)
        tm = t.astype(np.uint64)
        v = v + _neg_if(neg, gv[rows, d] + tm[:, None] * key.v_cw[:, i])
        s = gs[rows, d] ^ (key.s_cw[:, i] * tm[:, None])
        t = gt[rows, d] ^ (t & key.t_cw[rows, i, d])
    return v + _neg_if(neg, _convert(s, payload) + t.astype(np.uint64)[:, None] * key.final)


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
    x = _check_eval(party, key, x)
    out = native.backend_for(x).dcf_eval(party, key, x)
    return np.asarray(out[:, 0] if key.payload == 1 else out)
