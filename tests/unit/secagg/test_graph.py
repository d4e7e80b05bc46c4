"""SecAgg+ neighbourhood graphs."""

from __future__ import annotations

import pytest

from medfl.secagg.graph import default_degree, neighbourhoods

IDS = [f"agent-{i}" for i in range(20)]


def test_complete_graph_for_k_zero_or_large() -> None:
    for k in (0, 19, 50):
        g = neighbourhoods(IDS, k=k, seed=bytes(32))
        assert all(g[a] == frozenset(IDS) - {a} for a in IDS)


def test_regular_symmetric_deterministic_and_seeded() -> None:
    g = neighbourhoods(IDS, k=6, seed=b"\x01" * 32)
    assert all(len(v) == 6 and a not in v for a, v in g.items())
    assert all(a in g[b] for a, v in g.items() for b in v)
    assert g == neighbourhoods(list(reversed(IDS)), k=6, seed=b"\x01" * 32)
    assert g != neighbourhoods(IDS, k=6, seed=b"\x02" * 32)


def test_default_degree_is_logarithmic() -> None:
    assert default_degree(2) == 2
    assert default_degree(1000) == 20


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        neighbourhoods(["a", "a", "b"], k=2, seed=bytes(32))
    with pytest.raises(ValueError):
        neighbourhoods(IDS, k=-1, seed=bytes(32))
