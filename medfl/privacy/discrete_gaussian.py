"""The discrete Gaussian distribution N_Z(0, sigma^2): its exact pmf, for tests and the accountant.

``P[X = x] = exp(-x^2 / (2 sigma^2)) / sum_y exp(-y^2 / (2 sigma^2))`` over the integers. The
samplers are the native kernel and its NumPy reference (:mod:`medfl.native.ddg`); this module
gives the law they are tested against.

References
----------
.. [1] C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy",
   NeurIPS 2020 (definition 1; variance below sigma^2, corollary 9).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["normaliser", "pmf", "variance"]


def _support(sigma: float) -> np.ndarray:
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    half = math.ceil(40.0 * sigma) + 40  # mass beyond 40 sigma is below exp(-800)
    return np.arange(-half, half + 1, dtype=np.float64)


def normaliser(sigma: float) -> float:
    """``sum_y exp(-y^2 / (2 sigma^2))`` over the integers (to double precision)."""
    y = _support(sigma)
    return float(np.exp(-(y * y) / (2.0 * sigma * sigma)).sum())


def pmf(x: np.ndarray | int, sigma: float) -> np.ndarray:
    """``P[X = x]`` for ``X ~ N_Z(0, sigma^2)``, elementwise."""
    xs = np.asarray(x, dtype=np.float64)
    return np.exp(-(xs * xs) / (2.0 * sigma * sigma)) / normaliser(sigma)


def variance(sigma: float) -> float:
    """``E[X^2]`` of ``N_Z(0, sigma^2)`` (strictly below sigma^2, to within exp(-2 pi^2 sigma^2) for sigma >= 1)."""
    y = _support(sigma)
    w = np.exp(-(y * y) / (2.0 * sigma * sigma))
    return float((w * y * y).sum() / w.sum())
