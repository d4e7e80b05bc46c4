"""Server-side aggregation strategies (FedAvg, FedProx) behind a registry.

The names a job may ask for are :data:`medfl.jobspec.STRATEGIES` (both sides read them); this
registry (the stateless strategies) and :mod:`coordinator.server_optim` (the stateful server
optimizers FedAvgM, FedAdam, FedYogi, FedAdagrad) implement exactly those together (checked in
tests/unit/coordinator/test_aggregation.py).

References
----------
.. [1] McMahan et al., "Communication-Efficient Learning of Deep Networks from
   Decentralized Data", AISTATS 2017 (FedAvg).
.. [2] Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (FedProx:
   the proximal term is applied by the agents; the server averages as FedAvg does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from medfl.errors import NotFound, did_you_mean

__all__ = ["Update", "aggregate", "list_strategies", "mean_delta"]

Arrays = Mapping[str, np.ndarray]
#: one agent's contribution: its trained weights and its number of training samples
Update = tuple[Arrays, int]

_STRATEGIES: dict[str, Callable[[Arrays, Sequence[Update], float], dict[str, np.ndarray]]] = {}


def _register(name: str):
    def deco(fn):
        _STRATEGIES[name] = fn
        return fn
    return deco


def list_strategies() -> list[str]:
    """Names of every strategy a job may name: the stateless ones here and the server optimizers."""
    from coordinator.server_optim import OPTIMIZERS

    return sorted({*_STRATEGIES, *OPTIMIZERS})


def _weighted_mean(updates: Sequence[Update]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError(f"cannot average updates with total sample count {total}; every agent reported 0 samples")
    names = list(updates[0][0])
    out: dict[str, np.ndarray] = {}
    for name in names:
        acc = np.zeros(updates[0][0][name].shape, dtype=np.float64)
        for arrays, n in updates:
            acc += np.asarray(arrays[name], dtype=np.float64) * (n / total)
        out[name] = acc.astype(np.float32)
    return out


@_register("fedavg")
def _fedavg(global_arrays: Arrays, updates: Sequence[Update], server_lr: float) -> dict[str, np.ndarray]:
    mean = _weighted_mean(updates)
    if server_lr == 1.0:
        return mean
    return {k: (global_arrays[k] + server_lr * (mean[k] - global_arrays[k])).astype(np.float32) for k in mean}


_register("fedprox")(_fedavg)


def aggregate(strategy: str, global_arrays: Arrays, updates: Sequence[Update], *,
              server_lr: float = 1.0) -> dict[str, np.ndarray]:
    """Combine the agents' trained weights into the next global model.

    Parameters
    ----------
    strategy : str
        A name from :func:`list_strategies`.
    global_arrays : mapping of str to ndarray
        The global model the round started from.
    updates : sequence of (arrays, num_samples)
        Each surviving agent's trained weights and its sample count (the FedAvg weight).
    server_lr : float
        Server step size; 1.0 is plain FedAvg.

    Returns
    -------
    dict of str to ndarray
        The new global weights (float32).
    """
    if strategy not in _STRATEGIES:
        from coordinator.server_optim import OPTIMIZERS

        if strategy in OPTIMIZERS:
            raise ValueError(f"strategy {strategy!r} keeps state across rounds; step it with "
                             "coordinator.server_optim.ServerOptimizer on the round's mean delta")
        raise NotFound(f"unknown aggregation strategy {strategy!r}" + did_you_mean(strategy, list_strategies()))
    _check_updates(global_arrays, updates)
    return _STRATEGIES[strategy](global_arrays, updates, server_lr)


def mean_delta(global_arrays: Arrays, updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """The sample-weighted mean of ``weights - global_arrays`` over the updates, in float64.

    This is what a secure sum reveals, computed from clear updates: the (negated) pseudo-gradient
    a server optimizer steps on.
    """
    _check_updates(global_arrays, updates)
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError(f"cannot average updates with total sample count {total}; every agent reported 0 samples")
    out: dict[str, np.ndarray] = {}
    for name, g in global_arrays.items():
        acc = np.zeros(np.shape(g), dtype=np.float64)
        for arrays, n in updates:
            acc += (np.asarray(arrays[name], dtype=np.float64) - np.asarray(g, dtype=np.float64)) * (n / total)
        out[name] = acc
    return out


def _check_updates(global_arrays: Arrays, updates: Sequence[Update]) -> None:
    if not updates:
        raise ValueError("no updates to aggregate")
    expected = {k: v.shape for k, v in global_arrays.items()}
    for i, (arrays, _) in enumerate(updates):
        got = {k: tuple(np.shape(v)) for k, v in arrays.items()}
        if got != {k: tuple(s) for k, s in expected.items()}:
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            bad = sorted(k for k in set(got) & set(expected) if got[k] != tuple(expected[k]))
            raise ValueError(f"update {i} does not match the global model: missing={missing} extra={extra} "
                             f"shape mismatch={bad}")
