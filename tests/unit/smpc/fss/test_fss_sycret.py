"""medfl's DCF against sycret, the AriaNN authors' function secret sharing (Ryffel et al., PoPETs 2022).

Both build comparison keys on the Boyle et al. (EUROCRYPT 2021) tree with a fixed-key AES PRG;
sycret's ``LeFactory`` draws its own secret threshold ``alpha`` (additively shared in the keys'
first four bytes) on 32-bit inputs, medfl's :func:`dcf_gen` takes ``alpha`` on 1..64-bit inputs.
Key bytes differ by design (layout, PRG tweaks), so the comparison is of the functions: with
sycret's ``alpha``, medfl's keys on 32 bits must reconstruct the same bits as sycret's keys at
the same points, including the edges (``alpha`` itself, its neighbours, 0 and 2^32-1).
"""

from __future__ import annotations

import numpy as np
import pytest

from medfl.smpc.fss import dcf_eval, dcf_gen

sycret = pytest.importorskip("sycret", reason="sycret (the AriaNN FSS library) is not installed; pip install .[test]")

RNG = np.random.default_rng(8)  # public test points only


def _points(alpha: np.ndarray) -> np.ndarray:
    """Per key: alpha - 1, alpha, alpha + 1, 0, 2^32 - 1 and three random 32-bit points."""
    a = alpha.astype(np.int64)
    cols = [a - 1, a, a + 1, np.zeros_like(a), np.full_like(a, 2**32 - 1),
            *(RNG.integers(0, 2**32, size=a.size, dtype=np.int64) for _ in range(3))]
    return np.stack(cols, axis=1) % 2**32


def _sycret_bits(le, keys_a, keys_b, x: np.ndarray) -> np.ndarray:
    s = le.eval(0, x.astype(np.int64), keys_a) + le.eval(1, x.astype(np.int64), keys_b)
    return s.astype(np.int64) % 2**32  # sycret's shares live in Z_2^32


def test_medfl_dcf_computes_the_same_comparison_as_sycret():
    n = 64
    le = sycret.LeFactory(n_threads=1)
    keys_a, keys_b = le.keygen(n)
    alpha = le.alpha(keys_a, keys_b).astype(np.uint64)  # sycret's secret thresholds, reconstructed here
    pts = _points(alpha)
    # sycret's function: [x <= alpha] on 32-bit unsigned inputs (checked, not assumed)
    got_sycret = np.stack([_sycret_bits(le, keys_a, keys_b, pts[:, j]) for j in range(pts.shape[1])], axis=1)
    assert np.array_equal(got_sycret, (pts <= alpha[:, None]).astype(np.int64))
    # medfl's keys for [x < alpha + 1] (= [x <= alpha]) on 32 bits; alpha = 2^32-1 means "always" there
    k0, k1 = dcf_gen(alpha + np.uint64(1), np.ones(n, np.uint64), bits=32)
    wraps = alpha == np.uint64(2**32 - 1)
    for j in range(pts.shape[1]):
        x = pts[:, j].astype(np.uint64)
        ours = (dcf_eval(0, k0, x) + dcf_eval(1, k1, x)).astype(np.int64)
        assert np.array_equal(ours[~wraps], got_sycret[~wraps, j]), j


def test_each_party_key_alone_looks_random_in_both():
    """One party's evaluations at fixed points do not reveal the bit: both sides' shares are spread."""
    n = 4096
    le = sycret.LeFactory(n_threads=1)
    keys_a, _ = le.keygen(n)
    share_sycret = le.eval(0, np.zeros(n, np.int64), keys_a).astype(np.uint64)  # in Z_2^32
    k0, _ = dcf_gen(RNG.integers(0, 2**32, size=n, dtype=np.uint64), np.ones(n, np.uint64), bits=32)
    share_medfl = dcf_eval(0, k0, np.zeros(n, np.uint64))  # in Z_2^64
    for share, top_bit in ((share_sycret, 31), (share_medfl, 63)):
        top = ((share >> np.uint64(top_bit)) & np.uint64(1)).astype(np.float64)  # Bernoulli(1/2) if uniform
        assert abs(top.mean() - 0.5) < 6 * 0.5 / np.sqrt(n)
        assert np.unique(share).size > n * 0.99
