"""FedAvg / FedProx server aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregation import aggregate, list_strategies
from medfl.errors import NotFound


def _arrays(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), v, np.float32), "b": np.full((3,), -v, np.float32)}


def test_weighted_by_sample_count():
    out = aggregate("fedavg", _arrays(0), [(_arrays(1.0), 10), (_arrays(4.0), 30)])
    np.testing.assert_allclose(out["w"], 3.25)
    np.testing.assert_allclose(out["b"], -3.25)
    assert out["w"].dtype == np.float32


def test_server_lr_moves_part_way():
    out = aggregate("fedprox", _arrays(0), [(_arrays(2.0), 1)], server_lr=0.5)
    np.testing.assert_allclose(out["w"], 1.0)


def test_errors():
    assert list_strategies() == sorted(["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"])
    with pytest.raises(ValueError, match="keeps state across rounds"):
        aggregate("fedadam", _arrays(0), [(_arrays(1), 1)])
    with pytest.raises(NotFound, match="did you mean 'fedavg'"):
        aggregate("fedavgg", _arrays(0), [(_arrays(1), 1)])
    with pytest.raises(ValueError, match="no updates"):
        aggregate("fedavg", _arrays(0), [])
    bad = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="shape mismatch"):
        aggregate("fedavg", _arrays(0), [(bad, 1)])
    with pytest.raises(ValueError, match="total sample count 0"):
        aggregate("fedavg", _arrays(0), [(_arrays(1), 0)])


def test_registry_implements_the_job_vocabulary():
    from medfl.jobspec import STRATEGIES

    assert list_strategies() == sorted(STRATEGIES)
