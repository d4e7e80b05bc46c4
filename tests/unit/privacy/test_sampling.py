"""Poisson sampling rate and micro-batch split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfl.privacy.sampling import micro_batches, poisson_indices


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_poisson_rate(rate):
    n, draws = 20_000, 20
    sizes = [len(poisson_indices(n, rate=rate)) for _ in range(draws)]
    mean = float(np.mean(sizes))
    sd = math.sqrt(n * rate * (1 - rate) / draws)
    assert abs(mean - n * rate) < 6 * sd
    assert float(np.var(sizes)) > 0  # sizes vary: Poisson, not fixed-size, sampling


def test_indices_valid_and_each_record_included():
    idx = poisson_indices(50, rate=1.0)
    assert idx.tolist() == list(range(50))
    hits = np.zeros(10)
    for _ in range(400):
        hits[poisson_indices(10, rate=0.3)] += 1
    assert np.all(np.abs(hits / 400 - 0.3) < 6 * math.sqrt(0.3 * 0.7 / 400))


def test_micro_batches_cover_in_order():
    idx = np.arange(23)
    parts = micro_batches(idx, max_size=5)
    assert [len(p) for p in parts] == [5, 5, 5, 5, 3]
    assert np.concatenate(parts).tolist() == idx.tolist()
    assert micro_batches(np.arange(0), max_size=4) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        poisson_indices(10, rate=0.0)
    with pytest.raises(ValueError, match="max_size"):
        micro_batches(np.arange(3), max_size=0)
