"""Hypothesis properties of quantize -> mask -> sum -> unmask -> dequantize (error <= n * 2^-f per coordinate)."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medfl.secagg import masking  # noqa: E402
from medfl.secagg.masking import MaskSeed  # noqa: E402
from medfl.secagg.quantization import choose_spec  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(n_agents=st.integers(1, 6), size=st.integers(0, 300), ring_seed=st.integers(0, 2**32 - 1),
       frac_bits=st.integers(4, 24), data=st.data())
def test_round_trip_of_masked_sum(n_agents: int, size: int, ring_seed: int, frac_bits: int,
                                  data: st.DataObject) -> None:
    spec = choose_spec(n_agents=n_agents, clip_norm=2.0, frac_bits=frac_bits)
    rng = np.random.default_rng(ring_seed)
    xs = [rng.uniform(-1, 1, size).astype(np.float32) * np.float32(2.0 / max(1.0, np.sqrt(size)))
          for _ in range(n_agents)]
    seeds = data.draw(st.lists(st.binary(min_size=32, max_size=32), min_size=n_agents * (n_agents + 1) // 2,
                               max_size=n_agents * (n_agents + 1) // 2))
    nonce = data.draw(st.binary(min_size=12, max_size=12))
    selfs, pair_seeds = seeds[:n_agents], iter(seeds[n_agents:])
    pairs = {(i, j): next(pair_seeds) for i in range(n_agents) for j in range(i + 1, n_agents)}
    total = np.zeros(size, dtype=spec.dtype)
    for i, x in enumerate(xs):
        masks = [MaskSeed(selfs[i], 1)] + [MaskSeed(s, 1 if i == a else -1) for (a, b), s in pairs.items()
                                           if i in (a, b)]
        total += masking.quantize_and_mask(x, spec=spec, masks=masks, nonce=nonce, rounding_seed=ring_seed + i)
    out = masking.unmask_and_dequantize(total, spec=spec, masks=[MaskSeed(s, 1) for s in selfs], nonce=nonce)
    want = np.sum(np.array(xs, dtype=np.float64).reshape(n_agents, size), axis=0)
    tol = n_agents * 2.0 ** -spec.frac_bits + 4 * np.finfo(np.float32).eps * (1 + np.abs(want))
    assert np.all(np.abs(out.astype(np.float64) - want) <= tol)
