"""SecAgg+ neighbourhoods: a random k-regular graph of agents drawn from a public round seed.

Agents are placed on a ring in an order drawn from the round seed (a Fisher-Yates shuffle
driven by a ChaCha20 stream of the seed), and each is joined to the ``k/2`` agents on either
side, which gives a ``k``-regular graph (``k`` even, rounded up). Every party derives the same
graph from the seed the coordinator announces. ``k = 0`` or ``k >= n - 1`` gives the complete
graph, i.e. classic SecAgg. Bell et al. show ``k = O(log n)`` keeps the sum secure and
recoverable with high probability.

References
----------
.. [1] Bell, Bonawitz, Gascón, Lepoint and Raykova, "Secure Single-Server Aggregation with
   (Poly)Logarithmic Overhead", CCS 2020 (Harary-graph style neighbourhoods).
.. [2] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017 (the complete graph).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medfl import csprng

__all__ = ["default_degree", "neighbourhoods"]


def default_degree(n: int) -> int:
    """Return a neighbourhood size ``O(log n)`` for ``n`` agents (even, at least 2).

    References
    ----------
    .. [1] Bell et al. 2020, section 3 (degree logarithmic in n).
    """
    return max(2, 2 * math.ceil(math.log2(max(n, 2))))


def neighbourhoods(agents: Sequence[str], *, k: int, seed: bytes) -> dict[str, frozenset[str]]:
    """Return each agent's neighbours (itself excluded) in the graph of ``seed``.

    Parameters
    ----------
    agents : sequence of str
        Distinct agent ids of the round.
    k : int
        Neighbourhood size; ``0`` or ``>= len(agents) - 1`` gives the complete graph.
    seed : bytes
        32-byte public round seed (the same for every party).
    """
    ids = sorted(agents)
    if len(set(ids)) != len(ids):
        raise ValueError("agent ids must be distinct")
    if k < 0:
        raise ValueError(f"neighbourhood size must be >= 0, got {k}")
    n = len(ids)
    if k == 0 or k >= n - 1:
        return {a: frozenset(ids) - {a} for a in ids}
    stream = csprng.expand(8 * n, key=seed)
    order = list(ids)
    for i in range(n - 1, 0, -1):  # Fisher-Yates; 64-bit draws, bias < n / 2^64
        j = int.from_bytes(stream[8 * i : 8 * i + 8], "little") % (i + 1)
        order[i], order[j] = order[j], order[i]
    half = (k + 1) // 2
    out: dict[str, set[str]] = {a: set() for a in ids}
    for pos, a in enumerate(order):
        for d in range(1, half + 1):
            b = order[(pos + d) % n]
            out[a].add(b)
            out[b].add(a)
    return {a: frozenset(v) for a, v in out.items()}
