"""Distributed comparison functions (DCF): keys that share ``beta * [x < alpha]`` for a public ``x``.

Two keys ``k0, k1`` from :func:`dcf_gen` satisfy ``eval(0, k0, x) + eval(1, k1, x) = beta``
if ``x < alpha`` else ``0`` (mod 2^64), and each key alone is pseudorandom. The tree walks the
64 bits of ``x`` from the top; its PRG is fixed-key AES-128 in the Matyas-Meyer-Oseas mode
(``G(s) = AES_k(s xor i) xor s xor i`` for four tweaks ``i``), run by OpenSSL with AES-NI.
Everything is vectorised over a batch of independent comparisons.

References
----------
.. [1] Boyle, Gilboa and Ishai, "Function Secret Sharing", EUROCRYPT 2015.
.. [2] Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and Rathee, "Function Secret Sharing for
   Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021 (the DCF of Fig. 1).
.. [3] Ryffel, Tholoniat, Pointcheval and Bach, "AriaNN: Low-Interaction Privacy-Preserving Deep
   Learning via Function Secret Sharing", PoPETs 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from medfl import csprng

__all__ = ["BITS", "DcfKey", "dcf_eval", "dcf_gen"]

BITS = 64
_PRG_KEY = bytes(range(16))  # public fixed key of the MMO construction, not a secret
_ONE = np.uint64(1)


@dataclass(frozen=True)
class DcfKey:
    """One party's DCF keys for a batch of ``N`` comparisons.

    Attributes
    ----------
    seed : ndarray of uint64, shape (N, 2)
        The root seed.
    s_cw : ndarray of uint64, shape (64, N, 2)
        Seed corrections per level.
    v_cw : ndarray of uint64, shape (64, N)
        Value corrections per level.
    t_cw : ndarray of uint8, shape (64, N, 2)
        Control-bit corrections (left, right) per level.
    final : ndarray of uint64, shape (N,)
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
    def nbytes(self) -> int:
        """Size of the key material."""
        return int(self.seed.nbytes + self.s_cw.nbytes + self.v_cw.nbytes + self.t_cw.nbytes + self.final.nbytes)


_Expansion = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _prg(seed: np.ndarray) -> _Expansion:
    """Expand (N, 2) seeds into sL, vL, tL, sR, vR, tR."""
    n = seed.shape[0]
    x = np.repeat(seed[:, None, :], 4, axis=1)
    x[:, :, 0] ^= np.arange(4, dtype=np.uint64)
    x = np.ascontiguousarray(x)
    enc = Cipher(algorithms.AES(_PRG_KEY), modes.ECB()).encryptor()
    out = np.frombuffer(enc.update(x.tobytes()), dtype=np.uint64).reshape(n, 4, 2) ^ x
    t = (out[:, 3, :] & _ONE).astype(np.uint8)
    return out[:, 0], out[:, 2, 0], t[:, 0], out[:, 1], out[:, 2, 1], t[:, 1]


def _pick(right: np.ndarray, left_arr: np.ndarray, right_arr: np.ndarray) -> np.ndarray:
    """Per element, ``right_arr`` where ``right`` else ``left_arr`` (rows for 2-D arrays)."""
    cond = right[:, None] if left_arr.ndim == 2 else right
    return np.asarray(np.where(cond, right_arr, left_arr))


def _neg_if(cond: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.where(cond.astype(bool), np.uint64(0) - v, v)


def _bit(a: np.ndarray, i: int) -> np.ndarray:
    return ((a >> np.uint64(BITS - 1 - i)) & _ONE).astype(np.uint8)


def dcf_gen(alpha: np.ndarray, beta: np.ndarray) -> tuple[DcfKey, DcfKey]:
    """Generate keys sharing ``x -> beta * [x < alpha]`` (unsigned 64-bit comparison).

    Parameters
    ----------
    alpha : ndarray of uint64, shape (N,)
        Secret thresholds.
    beta : ndarray of uint64, shape (N,)
        Secret payloads.

    Returns
    -------
    (DcfKey, DcfKey)

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    alpha = np.asarray(alpha, dtype=np.uint64).reshape(-1)
    beta = np.asarray(beta, dtype=np.uint64).reshape(-1)
    n = alpha.size
    roots = [np.frombuffer(csprng.token_bytes(16 * n), dtype=np.uint64).reshape(n, 2).copy() for _ in range(2)]
    s = [roots[0].copy(), roots[1].copy()]
    t: list[np.ndarray] = [np.zeros(n, np.uint8), np.ones(n, np.uint8)]
    v_alpha = np.zeros(n, np.uint64)
    s_cw = np.empty((BITS, n, 2), np.uint64)
    v_cw = np.empty((BITS, n), np.uint64)
    t_cw = np.empty((BITS, n, 2), np.uint8)
    for i in range(BITS):
        g: list[_Expansion] = [_prg(s[0]), _prg(s[1])]
        a = _bit(alpha, i)
        keep_right = a.astype(bool)
        s_lose = [_pick(~keep_right, g[b][0], g[b][3]) for b in (0, 1)]
        v_lose = [_pick(~keep_right, g[b][1], g[b][4]) for b in (0, 1)]
        s_keep = [_pick(keep_right, g[b][0], g[b][3]) for b in (0, 1)]
        v_keep = [_pick(keep_right, g[b][1], g[b][4]) for b in (0, 1)]
        t_keep = [_pick(keep_right, g[b][2], g[b][5]) for b in (0, 1)]
        s_cw[i] = s_lose[0] ^ s_lose[1]
        vc = _neg_if(t[1], v_lose[1] - v_lose[0] - v_alpha)
        vc = vc + np.where(keep_right, _neg_if(t[1], beta), np.uint64(0))  # lose = left: x_i=0 < alpha_i=1
        v_cw[i] = vc
        v_alpha = v_alpha - v_keep[1] + v_keep[0] + _neg_if(t[1], vc)
        t_cw[i, :, 0] = g[0][2] ^ g[1][2] ^ a ^ 1
        t_cw[i, :, 1] = g[0][5] ^ g[1][5] ^ a
        tck = np.where(keep_right, t_cw[i, :, 1], t_cw[i, :, 0])
        for b in (0, 1):
            s[b] = s_keep[b] ^ (s_cw[i] * t[b][:, None].astype(np.uint64))
            t[b] = t_keep[b] ^ (t[b] & tck)
    final = _neg_if(t[1], s[1][:, 0] - s[0][:, 0] - v_alpha)
    return tuple(DcfKey(roots[b], s_cw, v_cw, t_cw, final) for b in (0, 1))  # type: ignore[return-value]


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
    ndarray of uint64, shape (N,)

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    if party not in (0, 1):
        raise ValueError(f"party must be 0 or 1, got {party}")
    x = np.asarray(x, dtype=np.uint64).reshape(-1)
    if x.size != key.seed.shape[0]:
        raise ValueError(f"{x.size} points for {key.seed.shape[0]} keys")
    s = key.seed.copy()
    t: np.ndarray = np.full(x.size, party, np.uint8)
    v = np.zeros(x.size, np.uint64)
    neg = np.full(x.size, party, np.uint8)
    for i in range(BITS):
        sl, vl, tl, sr, vr, tr = _prg(s)
        tm = t.astype(np.uint64)
        sl = sl ^ (key.s_cw[i] * tm[:, None])
        sr = sr ^ (key.s_cw[i] * tm[:, None])
        tl = tl ^ (t & key.t_cw[i, :, 0])
        tr = tr ^ (t & key.t_cw[i, :, 1])
        right = _bit(x, i).astype(bool)
        v = v + _neg_if(neg, np.where(right, vr, vl) + tm * key.v_cw[i])
        s = np.where(right[:, None], sr, sl)
        t = np.where(right, tr, tl)
    return v + _neg_if(neg, s[:, 0] + t.astype(np.uint64) * key.final)
