"""Native DCF generation and evaluation (AES-NI and portable AES) against the NumPy + OpenSSL reference."""

from __future__ import annotations

import numpy as np
import pytest

from medfl import native
from medfl.native import reference
from medfl.smpc.fss import dcf as fss

RNG = np.random.default_rng(31)  # test data and test root seeds only
MAX = np.uint64(2**64 - 1)


def _mod() -> object:
    mod = native.native_module()
    if mod is None:
        pytest.skip("medfl._native is not built")
    return mod


def _mask(bits: int) -> np.uint64:
    return MAX if bits == 64 else np.uint64((1 << bits) - 1)


def _native_gen(alpha: np.ndarray, beta: np.ndarray, roots: np.ndarray, bits: int, aes: str) -> tuple:
    n, p = alpha.size, beta.shape[1]
    out = (np.empty((n, bits, 2), np.uint64), np.empty((n, bits, p), np.uint64), np.empty((n, bits, 2), np.uint8),
           np.empty((n, p), np.uint64))
    _mod().dcf_gen(alpha, beta, roots, *out, bits, p, aes)  # type: ignore[attr-defined]
    return out


def _native_eval(party: int, key: fss.DcfKey, x: np.ndarray, aes: str) -> np.ndarray:
    out = np.empty((x.size, key.payload), np.uint64)
    _mod().dcf_eval(party, key.seed, key.s_cw, key.v_cw, key.t_cw, key.final, x, out,  # type: ignore[attr-defined]
                    key.bits, key.payload, aes)
    return out


def _aes_paths() -> list[str]:
    """Every AES path this CPU can run ('portable' always)."""
    mod = native.native_module()
    if mod is None:
        return ["portable"]
    have = {"vaes": ["vaes", "aesni", "portable"], "aesni": ["aesni", "portable"]}
    return have.get(mod.smpc_impl()["aes"], ["portable"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("aes", _aes_paths())
@pytest.mark.parametrize("payload", [1, 2])
@pytest.mark.parametrize("bits", [64, 63, 17, 1])
def test_native_gen_and_eval_equal_reference_bit_for_bit(bits: int, payload: int, aes: str) -> None:
    n = 45  # not a multiple of the 8 evaluation lanes
    alpha = RNG.integers(0, 2**64, size=n, dtype=np.uint64) & _mask(bits)
    alpha[:4] = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64) & _mask(bits)
    beta = RNG.integers(0, 2**64, size=(n, payload), dtype=np.uint64)
    beta[0] = 0
    beta[1] = MAX
    roots = RNG.integers(0, 2**64, size=(2, n, 2), dtype=np.uint64)
    ref = reference.dcf_gen_reference(alpha, beta, roots, bits)
    got = _native_gen(alpha, beta, roots, bits, aes)
    for name, a, b in zip(("s_cw", "v_cw", "t_cw", "final"), ref, got, strict=True):
        assert np.array_equal(a, b), name
    keys = [fss.DcfKey(roots[p], *ref) for p in (0, 1)]
    near = alpha + RNG.integers(-2, 3, size=n).astype(np.uint64)
    for x in (near & _mask(bits), alpha, np.zeros(n, np.uint64), np.full(n, _mask(bits)),
              RNG.integers(0, 2**64, size=n, dtype=np.uint64) & _mask(bits)):
        shares = []
        for p in (0, 1):
            want = reference.dcf_eval_reference(p, keys[p], x)
            assert np.array_equal(_native_eval(p, keys[p], x, aes), want)
            shares.append(want)
        assert np.array_equal(shares[0] + shares[1], np.where((x < alpha)[:, None], beta, np.uint64(0)))


def test_inputs_above_the_domain_use_their_low_bits() -> None:
    n, bits = 16, 20
    alpha = RNG.integers(0, 2**bits, size=n, dtype=np.uint64)
    k0, k1 = fss.dcf_gen(alpha, np.ones(n, np.uint64), bits=bits)
    x = RNG.integers(0, 2**64, size=n, dtype=np.uint64)
    got = fss.dcf_eval(0, k0, x) + fss.dcf_eval(1, k1, x)
    assert np.array_equal(got, ((x & _mask(bits)) < alpha).astype(np.uint64))


def test_public_functions_dispatch_and_agree_with_reference() -> None:
    n = 300
    alpha = RNG.integers(0, 2**64, size=n, dtype=np.uint64)
    beta = RNG.integers(0, 2**64, size=(n, 2), dtype=np.uint64)
    k0, k1 = fss.dcf_gen(alpha, beta)
    x = RNG.integers(0, 2**64, size=n, dtype=np.uint64)
    for p, k in ((0, k0), (1, k1)):
        assert np.array_equal(fss.dcf_eval(p, k, x), reference.dcf_eval_reference(p, k, x))
    assert fss.dcf_eval(0, k0, x[::-1]).shape == (n, 2)  # a reversed (non-contiguous) view is copied


def test_empty_batch_and_bad_arguments() -> None:
    k0, _ = fss.dcf_gen(np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    assert fss.dcf_eval(0, k0, np.zeros(0, np.uint64)).shape == (0,)
    with pytest.raises(ValueError, match="bits must be"):
        fss.dcf_gen(np.zeros(2, np.uint64), np.zeros(2, np.uint64), bits=65)
    with pytest.raises(ValueError, match="1 or 2 words"):
        fss.dcf_gen(np.zeros(2, np.uint64), np.zeros((2, 3), np.uint64))
    k0, _ = fss.dcf_gen(np.zeros(2, np.uint64), np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match="party must be"):
        fss.dcf_eval(2, k0, np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match="3 points for 2 keys"):
        fss.dcf_eval(0, k0, np.zeros(3, np.uint64))
    mod = _mod()
    out = np.empty((2, 1), np.uint64)
    with pytest.raises(ValueError, match="s_cw has"):
        mod.dcf_eval(0, k0.seed, k0.s_cw[:, :10], k0.v_cw, k0.t_cw, k0.final,  # type: ignore[attr-defined]
                     np.zeros(2, np.uint64), out, 64, 1)
    with pytest.raises(ValueError, match="aes must be"):
        mod.dcf_eval(0, k0.seed, k0.s_cw, k0.v_cw, k0.t_cw, k0.final,  # type: ignore[attr-defined]
                     np.zeros(2, np.uint64), out, 64, 1, "des")
    with pytest.raises(ValueError, match="expected dtype uint64"):
        mod.dcf_eval(0, k0.seed, k0.s_cw, k0.v_cw, k0.t_cw, k0.final,  # type: ignore[attr-defined]
                     np.zeros(2, np.int64), out, 64, 1)
