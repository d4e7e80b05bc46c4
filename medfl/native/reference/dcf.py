"""NumPy + OpenSSL references of the DCF kernels (distributed comparison functions, csrc/smpc).

The PRG is fixed-key AES-128 in the Matyas-Meyer-Oseas mode, ``G_i(s) = AES_k(s xor i) xor s xor i``
with the tweak ``i`` xored into the low 64-bit word and ``k`` the public bytes 0..15 (see
:mod:`medfl.smpc.fss` for the construction); AES is OpenSSL's through ``cryptography``. The
native kernels match these functions bit for bit.

References
----------
.. [1] Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and Rathee, "Function Secret Sharing for
   Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021 (the DCF of Fig. 1).
.. [2] Guo, Katz, Wang and Yu, "Efficient and Secure Multiparty Computation from Fixed-Key Block
   Ciphers", IEEE S&P 2020 (fixed-key MMO).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from medfl.native.checks import dcf_points

__all__ = ["dcf_eval_reference", "dcf_gen_reference"]

_PRG_KEY = bytes(range(16))  # public fixed key of the MMO construction, not a secret
_ONE = np.uint64(1)
_CONVERT = 4  # tweak of the leaf conversion


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


def dcf_gen_reference(alpha: np.ndarray, beta: np.ndarray, roots: np.ndarray, bits: int = 64,
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
        As in :class:`medfl.smpc.fss.DcfKey`.

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


def dcf_eval_reference(party: int, key: Any, x: np.ndarray) -> np.ndarray:
    """NumPy + OpenSSL evaluation; the reference of the native kernel. Returns shape (N, P).

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    x = dcf_points(party, key, x)
    bits, payload, rows = int(key.s_cw.shape[1]), int(key.final.shape[1]), np.arange(x.size)
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
