"""Stateful server optimizers: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Each round the coordinator knows only the weighted mean of the agents' model deltas (with
secure aggregation that mean is all it ever learns), so every optimizer here steps on that
aggregate pseudo-gradient and composes with SecAgg unchanged. ``delta`` below is the mean of
``x_i - x`` over the round's agents (the negated pseudo-gradient); the state is kept in float64.

- FedAvgM [1]_:  ``v = momentum * v + delta``;  ``x = x + server_lr * v``.
- Reddi et al. Algorithm 2 [2]_, with ``m_{-1} = 0`` and ``v_{-1} = tau**2``:
  ``m = beta1 * m + (1 - beta1) * delta``, then
  FedAdagrad ``v = v + delta**2``,
  FedYogi ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)``,
  FedAdam ``v = beta2 * v + (1 - beta2) * delta**2``, and
  ``x = x + server_lr * m / (sqrt(v) + tau)`` (no bias correction, as in the paper).

A step never mutates the optimizer: :meth:`ServerOptimizer.propose` returns the new weights and
the state they came from, and the round machine commits that state only when the round's
checkpoint is written (a redone round starts again from the committed state). The state is
saved as ``server-opt-round-N.safetensors`` next to the round's checkpoint and loaded on resume.

References
----------
.. [1] Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for
   Federated Visual Classification", arXiv:1909.06335, 2019 (FedAvgM).
.. [2] Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from medfl.errors import NonFiniteError, StateError

__all__ = ["OPTIMIZERS", "ServerOptimizer", "ServerOptState", "state_path"]

#: the job's strategy names this module implements (the stateless ones are coordinator.aggregation's)
OPTIMIZERS = ("fedadagrad", "fedadam", "fedavgm", "fedyogi")
_ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")


@dataclass
class ServerOptState:
    """What a stateful server optimizer carries from round to round."""

    steps: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)   # first moment (FedAvgM: the velocity)
    v: dict[str, np.ndarray] = field(default_factory=dict)   # second moment (adaptive only)


def state_path(checkpoint: str | pathlib.Path) -> pathlib.Path:
    """Where the optimizer state of a round lives: beside its model checkpoint.

    The name does not start with ``round-``, so the globs that look for the newest model
    (``*/round-*.safetensors``: the model server's default checkpoint) never pick it.
    """
    p = pathlib.Path(checkpoint)
    return p.with_name("server-opt-" + p.name)


class ServerOptimizer:
    """One job's server optimizer.

    Parameters
    ----------
    strategy : str
        One of :data:`OPTIMIZERS`.
    server_lr : float
        The server step size (eta).
    beta1, beta2 : float
        Decay of the first and second moments (beta2 unused by FedAdagrad), in [0, 1).
    tau : float
        Adaptivity: added to sqrt(v) and the square root of v's initial value; > 0.
    momentum : float
        FedAvgM's server momentum, in [0, 1).
    """

    def __init__(self, strategy: str, *, server_lr: float, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, momentum: float = 0.9):
        if strategy not in OPTIMIZERS:
            raise ValueError(f"{strategy!r} is not a stateful server optimizer; known: {', '.join(OPTIMIZERS)}")
        for name, value, ok, want in (("server_lr", server_lr, server_lr > 0, "> 0"),
                                      ("beta1", beta1, 0 <= beta1 < 1, "in [0, 1)"),
                                      ("beta2", beta2, 0 <= beta2 < 1, "in [0, 1)"),
                                      ("tau", tau, tau > 0, "> 0"),
                                      ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)")):
            if not (np.isfinite(value) and ok):
                raise ValueError(f"server optimizer {strategy}: {name} must be finite and {want}, got {value}")
        self.strategy = strategy
        self.server_lr, self.beta1, self.beta2, self.tau, self.momentum = server_lr, beta1, beta2, tau, momentum
        self.state = ServerOptState()

    @classmethod
    def from_spec(cls, agg) -> ServerOptimizer | None:
        """The optimizer an ``[aggregation]`` table asks for, or None for a stateless strategy."""
        if agg.strategy not in OPTIMIZERS:
            return None
        return cls(agg.strategy, server_lr=agg.server_lr, beta1=agg.beta1, beta2=agg.beta2, tau=agg.tau,
                   momentum=agg.server_momentum)

    # ---- the step ----------------------------------------------------------------------
    def propose(self, global_arrays: Mapping[str, np.ndarray],
                delta: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ServerOptState]:
        """The next global weights and the state after this step; ``self.state`` is not changed.

        Parameters
        ----------
        global_arrays : mapping of str to ndarray
            The weights the round started from; arrays without a delta pass through unchanged.
        delta : mapping of str to ndarray
            The round's mean model delta (mean of agent weights minus ``global_arrays``).

        Raises
        ------
        ValueError
            A delta names an array the model lacks or has another shape.
        NonFiniteError
            The delta holds NaN or infinity, or the step would leave float32's range.
        """
        bad = sorted(k for k in delta if k not in global_arrays
                     or np.shape(delta[k]) != np.shape(global_arrays[k]))
        if bad:
            raise ValueError(f"server optimizer {self.strategy}: deltas {bad[:5]} do not match the global model")
        nonfinite = sorted(k for k, d in delta.items() if not np.all(np.isfinite(d)))
        if nonfinite:
            raise NonFiniteError(f"server optimizer {self.strategy}: the round's mean delta is not finite in "
                                 f"{nonfinite[:5]}; refusing to step (the optimizer state is unchanged)")
        old = self.state
        new = ServerOptState(steps=old.steps + 1)
        out = dict(global_arrays)
        for k, d_in in delta.items():
            d = np.asarray(d_in, dtype=np.float64)
            if self.strategy == "fedavgm":
                m = self.momentum * old.m.get(k, 0.0) + d
                step = self.server_lr * m
            else:
                m = self.beta1 * old.m.get(k, 0.0) + (1.0 - self.beta1) * d
                v_prev = old.v.get(k)
                if v_prev is None:
                    v_prev = np.full(d.shape, self.tau**2)
                d2 = d * d
                if self.strategy == "fedadagrad":
                    v = v_prev + d2
                elif self.strategy == "fedyogi":
                    v = v_prev - (1.0 - self.beta2) * d2 * np.sign(v_prev - d2)
                else:
                    v = self.beta2 * v_prev + (1.0 - self.beta2) * d2
                new.v[k] = v
                step = self.server_lr * m / (np.sqrt(v) + self.tau)
            new.m[k] = np.asarray(m, dtype=np.float64)
            x = np.asarray(global_arrays[k], dtype=np.float64) + step
            if not np.all(np.abs(x) <= np.finfo(np.float32).max):
                raise NonFiniteError(f"server optimizer {self.strategy}: the step leaves float32's range in {k!r} "
                                     f"(|x| up to {np.nanmax(np.abs(x)):.3g}); lower server_lr or the agents' "
                                     "clip_norm")
            out[k] = x.astype(np.float32)
        # arrays without a delta this round keep their moments
        new.m = {**{k: a for k, a in old.m.items() if k not in new.m}, **new.m}
        new.v = {**{k: a for k, a in old.v.items() if k not in new.v}, **new.v}
        return out, new

    def commit(self, state: ServerOptState) -> None:
        """Adopt the state a proposal returned (its round's checkpoint is written)."""
        self.state = state

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | pathlib.Path, state: ServerOptState, *, job_id: str, rnd: int) -> None:
        """Write ``state`` atomically as safetensors (tensors ``m/<name>`` and ``v/<name>``)."""
        from medfl.models.weights import save_checkpoint

        arrays = {**{f"m/{k}": a for k, a in state.m.items()}, **{f"v/{k}": a for k, a in state.v.items()}}
        save_checkpoint(path, arrays, {"job_id": job_id, "round": str(rnd), "kind": "server-optimizer",
                                       "strategy": self.strategy, "steps": str(state.steps)})

    def load(self, path: str | pathlib.Path, *, job_id: str, rnd: int) -> None:
        """Restore the state saved for round ``rnd`` of ``job_id`` (resume)."""
        from medfl.models.weights import load_checkpoint

        path = pathlib.Path(path)
        if not path.exists():
            raise StateError(f"job {job_id}: strategy {self.strategy} needs its server optimizer state of round "
                             f"{rnd}, but {path} is missing; restore it from the backup of the checkpoint folder")
        arrays, meta = load_checkpoint(path)
        want = {"job_id": job_id, "round": str(rnd), "kind": "server-optimizer", "strategy": self.strategy}
        if any(meta.get(k) != v for k, v in want.items()):
            raise StateError(f"server optimizer state {path} does not belong to job {job_id} round {rnd} with "
                             f"strategy {self.strategy} (metadata {meta})")
        state = ServerOptState(steps=int(meta.get("steps", "0")))
        for name, a in arrays.items():
            kind, _, key = name.partition("/")
            if kind not in ("m", "v") or not key or not np.all(np.isfinite(a)):
                raise StateError(f"server optimizer state {path}: bad tensor {name!r}")
            (state.m if kind == "m" else state.v)[key] = np.asarray(a, dtype=np.float64)
        self.state = state

    @property
    def adaptive(self) -> bool:
        """True for the Reddi et al. optimizers (they keep a second moment)."""
        return self.strategy in _ADAPTIVE
