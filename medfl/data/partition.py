"""Splitting one data set across virtual hospitals, and the faults of a round, reproducible by seed.

The partitions of the federated-learning literature, over any labelled data set the loaders
read (only the labels are needed; the result is index lists):

- ``iid``: a uniform random split into near-equal parts;
- ``dirichlet``: label skew, each class spread over the sites by proportions drawn from
  Dir(alpha) (Hsu, Qi and Brown 2019): small alpha gives sites dominated by few classes, large
  alpha tends to IID;
- ``quantity``: quantity skew, site sizes drawn from Dir(alpha) over a uniform shuffle, labels IID.

Acquisition shift (each site's scanner: contrast, brightness, noise, blur) comes from
:func:`medfl.data.synthetic.hospital_shifts`. :class:`FaultPlan` draws each round's dropouts and
stragglers from the seed and the round number alone, so a rerun, or a resumed run, meets the same
faults.

References
----------
.. [1] T.-M. H. Hsu, H. Qi, M. Brown, "Measuring the effects of non-identical data distribution
   for federated visual classification", arXiv:1909.06335, 2019.
.. [2] Q. Li, Y. Diao, Q. Chen, B. He, "Federated learning on non-IID data silos: an experimental
   study", ICDE 2022 (label, quantity and feature skew).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SCHEMES", "FaultPlan", "label_skew", "partition"]

SCHEMES = ("iid", "dirichlet", "quantity")


def _check(labels: np.ndarray, n_sites: int, alpha: float, min_per_site: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"partition: labels must be 1-D (one per record), got shape {y.shape}")
    if not isinstance(n_sites, int) or isinstance(n_sites, bool) or n_sites < 1:
        raise ValueError(f"partition: n_sites must be an integer >= 1, got {n_sites!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"partition: alpha must be a finite number > 0, got {alpha!r}")
    if min_per_site < 0:
        raise ValueError(f"partition: min_per_site must be >= 0, got {min_per_site}")
    if n_sites * min_per_site > y.size:
        raise ValueError(f"partition: {n_sites} sites x min_per_site {min_per_site} need {n_sites * min_per_site} "
                         f"records, the data set has {y.size}; lower min_per_site or use fewer sites")
    return y


def _rebalance(parts: list[list[int]], min_per_site: int, rng: np.random.Generator) -> list[list[int]]:
    """Move records from the largest sites to any site below ``min_per_site`` (the draw can leave some empty)."""
    for i in range(len(parts)):
        while len(parts[i]) < min_per_site:
            donor = max(range(len(parts)), key=lambda j: len(parts[j]))
            k = int(rng.integers(len(parts[donor])))
            parts[i].append(parts[donor].pop(k))
    return parts


def partition(labels: np.ndarray, n_sites: int, *, scheme: str = "iid", alpha: float = 0.5, seed: int = 0,
              min_per_site: int = 1) -> list[np.ndarray]:
    """Split record indices across ``n_sites`` sites.

    Parameters
    ----------
    labels : array of int, shape (N,)
        Class of each record (for segmentation, e.g. whether a case holds any lesion).
    n_sites : int
        Number of sites.
    scheme : {"iid", "dirichlet", "quantity"}
        The kind of skew (module docstring).
    alpha : float
        Concentration of the Dirichlet draws (``dirichlet`` and ``quantity``).
    seed : int
        The same seed, labels and arguments give the same split.
    min_per_site : int
        Every site gets at least this many records (records are moved from the largest sites).

    Returns
    -------
    list of ndarray
        Sorted, disjoint index arrays whose union is ``range(N)``.
    """
    y = _check(labels, n_sites, alpha, min_per_site)
    if scheme not in SCHEMES:
        raise ValueError(f"partition: scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    rng = np.random.default_rng([seed, 0x5E1E5])
    n = y.size
    if scheme == "iid":
        parts = [list(p) for p in np.array_split(rng.permutation(n), n_sites)]
    elif scheme == "quantity":
        props = rng.dirichlet([alpha] * n_sites)
        cuts = np.floor(np.cumsum(props)[:-1] * n).astype(int)
        parts = [list(p) for p in np.split(rng.permutation(n), cuts)]
    else:
        parts = [[] for _ in range(n_sites)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet([alpha] * n_sites)
            cuts = np.floor(np.cumsum(props)[:-1] * idx.size).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(int(i) for i in chunk)
    parts = _rebalance([[int(i) for i in p] for p in parts], min_per_site, rng)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's class mix and the pooled one (0: IID, -> 1: disjoint)."""
    y = np.asarray(labels)
    classes = np.unique(y)
    pooled = np.array([(y == c).mean() for c in classes])
    tv = []
    for p in parts:
        if p.size:
            mix = np.array([(y[p] == c).mean() for c in classes])
            tv.append(0.5 * float(np.abs(mix - pooled).sum()))
    return float(np.mean(tv)) if tv else 0.0


@dataclass(frozen=True)
class FaultPlan:
    """Per-round dropouts and stragglers, drawn from (seed, round) alone.

    Attributes
    ----------
    dropout : float
        Probability that a site is gone for a whole round.
    straggler : float
        Probability that a surviving site is late.
    delay_s : float
        How late a straggler is, in seconds (compared with the round's deadline by the caller).
    seed : int
        Seed of the plan.
    """

    dropout: float = 0.0
    straggler: float = 0.0
    delay_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dropout", "straggler"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"FaultPlan: {name} must be a probability in [0, 1], got {v!r}")
        if not (math.isfinite(self.delay_s) and self.delay_s >= 0):
            raise ValueError(f"FaultPlan: delay_s must be a finite number >= 0, got {self.delay_s!r}")

    def round_faults(self, round_number: int, n_sites: int) -> tuple[frozenset[int], dict[int, float]]:
        """The sites that drop out of ``round_number`` and the delay of each straggler.

        The draw depends only on the plan's seed, the round and the site count, not on earlier calls.
        """
        if round_number < 1 or n_sites < 0:
            raise ValueError(f"round_faults: round must be >= 1 and n_sites >= 0, got {round_number}, {n_sites}")
        rng = np.random.default_rng([self.seed, 0xFA17, round_number])
        u_drop, u_late = rng.random(n_sites), rng.random(n_sites)
        dropped = frozenset(int(i) for i in np.flatnonzero(u_drop < self.dropout))
        late = {int(i): self.delay_s for i in np.flatnonzero(u_late < self.straggler) if int(i) not in dropped}
        return dropped, late
