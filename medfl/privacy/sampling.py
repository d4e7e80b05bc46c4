"""Poisson sampling of logical batches and their split into memory-sized micro-batches.

Each record joins a logical batch independently with probability ``q`` (the sampling
rate the accountant's amplification-by-sampling bound assumes); the inclusion coins come
from the CSPRNG (:mod:`medfl.csprng`) because they are part of the privacy mechanism.

References
----------
.. [1] M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
.. [2] I. Mironov, K. Talwar, L. Zhang, "Renyi differential privacy of the sampled
   Gaussian mechanism", arXiv:1908.10530, 2019.
"""

from __future__ import annotations

import numpy as np

from medfl import csprng

__all__ = ["micro_batches", "poisson_indices"]


def poisson_indices(n: int, *, rate: float) -> np.ndarray:
    """Return the indices of a Poisson-sampled batch of a dataset of ``n`` records.

    Parameters
    ----------
    n : int
        Dataset size, >= 0.
    rate : float
        Inclusion probability ``q`` in (0, 1].

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices; the size is Binomial(n, q), possibly 0.

    References
    ----------
    Mironov, Talwar and Zhang 2019 (module docstring).
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if not 0 < rate <= 1:
        raise ValueError(f"rate={rate!r} must be in (0, 1]; use batch_size / dataset_size")
    words = np.frombuffer(csprng.expand(8 * n), dtype="<u8")
    u = (words >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # in [0, 1)
    return np.flatnonzero(u < rate).astype(np.int64)


def micro_batches(indices: np.ndarray, *, max_size: int) -> list[np.ndarray]:
    """Split a logical batch into consecutive micro-batches of at most ``max_size``.

    Clipped per-sample gradients are summed over the micro-batches and noised once per
    logical batch, so the split changes memory use, not the privacy guarantee [1].
    """
    if max_size < 1:
        raise ValueError(f"max_size={max_size} must be >= 1")
    return [indices[i : i + max_size] for i in range(0, len(indices), max_size)]
