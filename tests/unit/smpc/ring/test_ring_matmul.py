"""The native ring product mod 2^64 against NumPy's wrapping integer matmul, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from medfl import native
from medfl.native import reference
from medfl.smpc import ring

RNG = np.random.default_rng(21)  # test data only
MAX = np.uint64(2**64 - 1)
SHAPES = [(1, 1, 1), (2, 3, 5), (7, 9, 24), (65, 257, 9), (130, 300, 17), (3, 600, 1), (1, 1536, 2), (129, 1, 64)]


def _mod(native_mod: object) -> object:
    if native_mod is None:
        pytest.skip("medfl._native is not built")
    return native_mod


def _rand(*shape: int) -> np.ndarray:
    return RNG.integers(0, 2**64, size=shape, dtype=np.uint64)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_equals_numpy_on_random_matrices(shape: tuple[int, int, int], portable: bool) -> None:
    mod = _mod(native.native_module())
    m, k, n = shape
    a, b = _rand(m, k), _rand(k, n)
    out = np.full((m, n), 12345, np.uint64)
    mod.ring_matmul(a, b, out, False, portable)  # type: ignore[attr-defined]
    assert np.array_equal(out, a @ b)
    acc = _rand(m, n)
    want = acc + a @ b
    mod.ring_matmul(a, b, acc, True, portable)  # type: ignore[attr-defined]
    assert np.array_equal(acc, want)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("fill", ["zeros", "max", "top_bits", "signed_small"])
def test_edge_values(fill: str, portable: bool) -> None:
    mod = _mod(native.native_module())
    m, k, n = 33, 513, 19  # crosses the depth block (256) and the tile sizes
    if fill == "zeros":
        a, b = np.zeros((m, k), np.uint64), _rand(k, n)
    elif fill == "max":
        a, b = np.full((m, k), MAX), np.full((k, n), MAX)
    elif fill == "top_bits":
        a = np.full((m, k), np.uint64(2**63) | np.uint64(2**32)); b = _rand(k, n) | np.uint64(2**63)  # noqa: E702
    else:  # fixed-point style values: small magnitudes of both signs
        a = RNG.integers(-(2**20), 2**20, size=(m, k)).astype(np.int64).view(np.uint64)
        b = RNG.integers(-(2**20), 2**20, size=(k, n)).astype(np.int64).view(np.uint64)
    out = np.empty((m, n), np.uint64)
    mod.ring_matmul(a, b, out, False, portable)  # type: ignore[attr-defined]
    assert np.array_equal(out, a @ b)


def test_dispatch_handles_non_contiguous_and_empty() -> None:
    a, b = _rand(40, 30), _rand(50, 20)
    at, bs = a.T, b[::2, :]  # a transposed view (30, 40) and a strided row slice (25, 20)
    assert np.array_equal(ring.matmul(at[:, :25], bs), at[:, :25] @ bs)
    assert ring.matmul(_rand(0, 4), _rand(4, 3)).shape == (0, 3)
    assert np.array_equal(ring.matmul(_rand(3, 0), _rand(0, 2)), np.zeros((3, 2), np.uint64))
    out = np.ones((3, 2), np.uint64)
    ring.matmul(_rand(3, 0), _rand(0, 2), out=out, accumulate=True)
    assert np.array_equal(out, np.ones((3, 2), np.uint64))


def test_bad_input_gets_clear_errors() -> None:
    with pytest.raises(TypeError, match="uint64"):
        ring.matmul(np.zeros((2, 2), np.int64), _rand(2, 2))
    with pytest.raises(ValueError, match="inner sizes differ"):
        ring.matmul(_rand(2, 3), _rand(4, 2))
    with pytest.raises(ValueError, match="out must be"):
        ring.matmul(_rand(2, 3), _rand(3, 2), out=np.empty((2, 2), np.uint64)[:, :1])
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        ring.matmul(_rand(2, 3), _rand(3, 2), accumulate=True)
    mod = native.native_module()
    if mod is not None:
        with pytest.raises(ValueError, match="C-contiguous"):
            mod.ring_matmul(_rand(4, 4)[:, ::2], _rand(2, 2), np.empty((4, 2), np.uint64))
        with pytest.raises(ValueError, match=r"need a \(m, k\)"):
            mod.ring_matmul(_rand(4, 3), _rand(2, 2), np.empty((4, 2), np.uint64))


def test_reference_backend_matches() -> None:
    a, b = _rand(17, 31), _rand(31, 5)
    ref = reference.ring_matmul_reference(a, b, out=None, accumulate=False)
    assert np.array_equal(ring.matmul(a, b), ref)
