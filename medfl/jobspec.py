"""The job file: what a researcher submits and what every agent is offered.

A job is TOML (``medfl-coordinator jobs submit job.toml``). The coordinator parses it once
into a frozen :class:`JobSpec`, stores it as JSON, and sends it to agents in JOB_OFFER,
where the agent parses it again with the same code before its policy looks at it.

Compatibility: keys are never removed or re-purposed; new keys are optional.

Example::

    [job]
    name = "pneumonia"
    model = "cnn"
    rounds = 5
    min_agents = 3
    round_deadline_s = 300

    [training]
    local_epochs = 1
    batch_size = 32
    lr = 0.01

    [aggregation]
    strategy = "fedavg"      # or "fedprox"

    [privacy]                # sample-level DP-SGD at every agent; the section turns it on
    noise_multiplier = 1.0   # or target_epsilon = 8.0 (for the whole job; agents pick sigma)
    max_grad_norm = 1.0
    delta = 1e-5
    accountant = "rdp"       # or "pld"
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any, Literal

from medfl import config

__all__ = ["AggregationSpec", "JobSpec", "PrivacySpec", "TrainingSpec", "load_job", "job_from_dict"]


@dataclass(frozen=True)
class JobSection:
    """The ``[job]`` table: what to train and how rounds run."""

    name: str
    model: str = "cnn"
    rounds: int = 5
    min_agents: int = 2
    max_agents: int = 0
    round_deadline_s: float = 300.0
    max_round_retries: int = 3
    seed: int = 0
    image_size: int = 64
    model_args: dict[str, Any] = field(default_factory=dict)

    def check(self) -> list[tuple[str, str]]:
        """Range checks, reported by TOML key."""
        out = []
        if not self.name.strip():
            out.append(("name", "must not be empty"))
        if not 1 <= self.rounds <= 100_000:
            out.append(("rounds", f"must be between 1 and 100000, got {self.rounds}"))
        if self.min_agents < 1:
            out.append(("min_agents", f"must be at least 1, got {self.min_agents}"))
        if self.max_agents < 0 or (self.max_agents and self.max_agents < self.min_agents):
            out.append(("max_agents", f"must be 0 (all) or >= min_agents={self.min_agents}, got {self.max_agents}"))
        if self.round_deadline_s <= 0:
            out.append(("round_deadline_s", f"must be positive, got {self.round_deadline_s}"))
        if self.max_round_retries < 0:
            out.append(("max_round_retries", f"must be >= 0, got {self.max_round_retries}"))
        if not 16 <= self.image_size <= 1024:
            out.append(("image_size", f"must be between 16 and 1024 pixels, got {self.image_size}"))
        from medfl.models import list_models

        if self.model not in list_models():
            from medfl.errors import did_you_mean

            out.append(("model", f"unknown model {self.model!r}; known: {', '.join(list_models())}"
                        + did_you_mean(self.model, list_models())))
        return out


@dataclass(frozen=True)
class TrainingSpec:
    """The ``[training]`` table: local training at each agent."""

    local_epochs: int = 1
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0

    def check(self) -> list[tuple[str, str]]:
        """Range checks, reported by TOML key."""
        out = []
        if self.local_epochs < 1:
            out.append(("local_epochs", f"must be at least 1, got {self.local_epochs}"))
        if self.batch_size < 1:
            out.append(("batch_size", f"must be at least 1, got {self.batch_size}"))
        if not self.lr > 0:
            out.append(("lr", f"must be positive, got {self.lr}"))
        if not 0 <= self.momentum < 1:
            out.append(("momentum", f"must be in [0, 1), got {self.momentum}"))
        if self.weight_decay < 0:
            out.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        return out


@dataclass(frozen=True)
class AggregationSpec:
    """The ``[aggregation]`` table: how the coordinator combines updates."""

    strategy: str = "fedavg"
    fedprox_mu: float = 0.01
    server_lr: float = 1.0

    def check(self) -> list[tuple[str, str]]:
        """Range checks, reported by TOML key."""
        from medfl.aggregation import list_strategies
        from medfl.errors import did_you_mean

        out = []
        if self.strategy not in list_strategies():
            out.append(("strategy", f"unknown strategy {self.strategy!r}; known: "
                        f"{', '.join(list_strategies())}" + did_you_mean(self.strategy, list_strategies())))
        if self.fedprox_mu < 0:
            out.append(("fedprox_mu", f"must be >= 0, got {self.fedprox_mu}"))
        if not self.server_lr > 0:
            out.append(("server_lr", f"must be positive, got {self.server_lr}"))
        return out


@dataclass(frozen=True)
class PrivacySpec:
    """The ``[privacy]`` table: sample-level DP-SGD at every agent.

    A job file with a ``[privacy]`` table trains with DP unless it says ``enabled = false``;
    one without it trains without DP (the meaning job files had before the table existed).
    Give exactly one of ``noise_multiplier`` and ``target_epsilon``; with ``target_epsilon``
    (for the whole job, every round) each agent chooses the smallest noise multiplier that
    keeps its own data within it. Each agent's agent.toml policy may still refuse the job.
    """

    enabled: bool = True
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    max_physical_batch: int = 64

    def check(self) -> list[tuple[str, str]]:
        """Range checks, reported by TOML key."""
        from medfl.errors import did_you_mean
        from medfl.privacy.accountant import ACCOUNTANTS

        out = []
        if self.accountant not in ACCOUNTANTS:
            out.append(("accountant", f"unknown accountant {self.accountant!r}; known: {', '.join(ACCOUNTANTS)}"
                        + did_you_mean(self.accountant, ACCOUNTANTS)))
        if not self.enabled:
            return out
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            out.append(("", "give exactly one of noise_multiplier and target_epsilon (or enabled = false)"))
        if self.noise_multiplier is not None and not 0 < self.noise_multiplier <= 1e4:
            out.append(("noise_multiplier", f"must be in (0, 10000], got {self.noise_multiplier} "
                        "(typical: 0.5-2)"))
        if self.target_epsilon is not None and not 0 < self.target_epsilon <= 1e3:
            out.append(("target_epsilon", f"must be in (0, 1000], got {self.target_epsilon}"))
        if not 0 < self.max_grad_norm < float("inf"):
            out.append(("max_grad_norm", f"must be positive and finite, got {self.max_grad_norm}"))
        if not 0 < self.delta < 1:
            out.append(("delta", f"must be in (0, 1) and well below 1/records, got {self.delta}"))
        if not 1 <= self.max_physical_batch <= 4096:
            out.append(("max_physical_batch", f"must be 1-4096, got {self.max_physical_batch}"))
        return out


#: a job file without a [privacy] table
NO_PRIVACY = PrivacySpec(enabled=False)


@dataclass(frozen=True)
class JobSpec:
    """A whole job file."""

    job: JobSection
    training: TrainingSpec = TrainingSpec()
    aggregation: AggregationSpec = AggregationSpec()
    privacy: PrivacySpec = NO_PRIVACY

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON and msgpack safe) that :func:`job_from_dict` reads back."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def prox_mu(self) -> float:
        """The proximal coefficient agents use (0 unless the strategy is FedProx)."""
        return self.aggregation.fedprox_mu if self.aggregation.strategy == "fedprox" else 0.0


def load_job(path: str | pathlib.Path) -> JobSpec:
    """Parse a job TOML file; raises ConfigError listing every problem by TOML path.

    Parameters
    ----------
    path : str or Path
        The job file.
    """
    return config.parse_file(JobSpec, path)


def job_from_dict(data: dict[str, Any], *, source: str = "job") -> JobSpec:
    """Parse a job from a dict (JSON from the store, or a JOB_OFFER body).

    Parameters
    ----------
    data : dict
        The job as :meth:`JobSpec.to_dict` wrote it.
    source : str
        Where it came from, for error messages.
    """
    return config.parse(JobSpec, data, source=source)
