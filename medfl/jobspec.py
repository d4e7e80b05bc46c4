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
    strategy = "fedavg"      # or "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"
    server_lr = 1.0          # server step; FedAdam/FedYogi/FedAdagrad want far less (0.01-0.1)
    beta1 = 0.9              # FedAdam/FedYogi/FedAdagrad: first-moment decay
    beta2 = 0.99             # FedAdam/FedYogi: second-moment decay
    tau = 1e-3               # FedAdam/FedYogi/FedAdagrad: adaptivity (step = m / (sqrt(v) + tau))
    server_momentum = 0.9    # FedAvgM: server momentum
    secure = true            # the default: the coordinator learns only the sum (SecAgg / SecAgg+)
    threshold = 0            # 0: max(2, ceil(2n/3)) of the round's n participants
    neighbours = 0           # SecAgg+ neighbourhood size; 0: every agent masks with every other (SecAgg)
    clip_norm = 10.0         # L2 bound of each agent's model delta before quantization
    frac_bits = 24           # fixed-point precision 2^-frac_bits of the quantized updates
    sample_cap = 10000       # FedAvg weight = min(samples, sample_cap) / sample_cap
    stage_deadline_s = 30    # deadline of each key-exchange / unmasking stage

    [privacy]                # sample-level DP-SGD at every agent; the section turns it on
    noise_multiplier = 1.0   # or target_epsilon = 8.0 (for the whole job; agents pick sigma)
    max_grad_norm = 1.0
    delta = 1e-5
    accountant = "rdp"       # or "pld"
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from dataclasses import dataclass, field
from typing import Any, Literal

from medfl import config
from medfl.errors import did_you_mean

__all__ = ["PRIVACY_LEVELS", "STRATEGIES",
           "AggregationSpec", "JobSpec", "PrivacySpec", "TrainingSpec", "load_job", "job_from_dict"]

#: aggregation strategies a job may name: the coordinator implements each one
#: (:mod:`coordinator.aggregation`, :mod:`coordinator.server_optim`), the agents apply FedProx's
#: proximal term themselves
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


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
    task: str = "classification"
    #: segmentation: the patch's slices (D of D x image_size x image_size); 0 means image_size (a cube).
    #: A 2-D model trains on each of a patch's D slices.
    patch_depth: int = 0

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
        from medfl.models import TASKS, list_models, model_task  # lazy: torch loads in seconds

        if self.model not in list_models():
            out.append(("model", f"unknown model {self.model!r}; known: {', '.join(list_models())}"
                        + did_you_mean(self.model, list_models())))
        elif self.task in TASKS and model_task(self.model) != self.task:
            fits = [m for m in list_models() if model_task(m) == self.task]
            out.append(("model", f"{self.model!r} is a {model_task(self.model)} model but task = {self.task!r}; "
                                 f"use one of {', '.join(fits)} or set task = {model_task(self.model)!r}"))
        if self.task not in TASKS:
            out.append(("task", f"must be one of {', '.join(TASKS)}, got {self.task!r}"
                        + did_you_mean(self.task, TASKS)))
        if not 0 <= self.patch_depth <= 1024:
            out.append(("patch_depth", f"must be between 0 (image_size) and 1024 slices, got {self.patch_depth}"))
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
    secure: bool = True
    threshold: int = 0
    neighbours: int = 0
    clip_norm: float = 10.0
    frac_bits: int = 24
    sample_cap: int = 10_000
    stage_deadline_s: float = 30.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    server_momentum: float = 0.9

    def threshold_for(self, n: int) -> int:
        """The secure-aggregation threshold of a round with ``n`` participants.

        An explicit ``threshold`` is used as given; ``0`` means ``max(2, ceil(2n/3))``, which
        survives the loss of a third of the agents.

        References
        ----------
        .. [1] Bonawitz et al., CCS 2017, section 4 (t > 2n/3 against a semi-honest server
           colluding with up to n/3 users).
        """
        return self.threshold if self.threshold else max(2, -(-2 * n // 3))

    @property
    def label(self) -> str:
        """What the demo and the status call this aggregation: "secagg", "secagg+" or "plain"."""
        if not self.secure:
            return "plain"
        return "secagg+" if self.neighbours else "secagg"

    def check(self) -> list[tuple[str, str]]:
        """Range checks, reported by TOML key."""
        out = []
        if self.threshold == 1 or self.threshold < 0:
            out.append(("threshold", f"must be 0 (automatic) or at least 2, got {self.threshold}; a threshold of 1 "
                                     "would let one agent's masked update be unmasked alone"))
        if self.neighbours < 0 or self.neighbours == 1:
            out.append(("neighbours", f"must be 0 (complete graph, SecAgg) or at least 2 (SecAgg+), got "
                                      f"{self.neighbours}"))
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            out.append(("clip_norm", f"must be a finite number > 0, got {self.clip_norm}"))
        if not 8 <= self.frac_bits <= 48:
            out.append(("frac_bits", f"must be between 8 and 48, got {self.frac_bits}"))
        if self.sample_cap < 1:
            out.append(("sample_cap", f"must be at least 1, got {self.sample_cap}"))
        if not self.stage_deadline_s > 0:
            out.append(("stage_deadline_s", f"must be positive, got {self.stage_deadline_s}"))
        if self.strategy not in STRATEGIES:
            out.append(("strategy", f"unknown strategy {self.strategy!r}; known: "
                        f"{', '.join(STRATEGIES)}" + did_you_mean(self.strategy, STRATEGIES)))
        if self.fedprox_mu < 0:
            out.append(("fedprox_mu", f"must be >= 0, got {self.fedprox_mu}"))
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            out.append(("server_lr", f"must be a finite number > 0, got {self.server_lr}"))
        for key, value in (("beta1", self.beta1), ("beta2", self.beta2), ("server_momentum", self.server_momentum)):
            if not (math.isfinite(value) and 0 <= value < 1):
                out.append((key, f"must be in [0, 1), got {value}"))
        if not (math.isfinite(self.tau) and self.tau > 0):
            out.append(("tau", f"must be a finite number > 0, got {self.tau} (Reddi et al. use 1e-3; it bounds "
                               "the step where the second moment is near 0)"))
        if self.strategy in ("fedadam", "fedyogi", "fedadagrad") and math.isfinite(self.server_lr) \
                and self.server_lr > 1:
            out.append(("server_lr", f"{self.strategy} moves each weight by up to about server_lr per round; "
                                     f"got {self.server_lr}, use at most 1 (typical: 0.01-0.1)"))
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
    #: "sample" (DP-SGD at every agent, the default), "client" (distributed discrete Gaussian on each
    #: agent's whole update inside secure aggregation, medfl.privacy.distributed_dp) or "both"
    level: str = "sample"
    #: z of client-level DP: total noise std at the secure sum's threshold over the update's sensitivity
    client_noise_multiplier: float | None = None

    @property
    def sample_level(self) -> bool:
        """DP-SGD at every agent (``level`` "sample" or "both")."""
        return self.enabled and self.level in ("sample", "both")

    @property
    def client_level(self) -> bool:
        """The distributed discrete Gaussian on each agent's whole update (``level`` "client" or "both")."""
        return self.enabled and self.level in ("client", "both")

    def check(self) -> list[tuple[str, str]]:
        """Range checks, reported by TOML key."""
        from medfl.privacy.accountant import ACCOUNTANTS  # lazy: dp_accounting and torch load in seconds

        out = []
        if self.accountant not in ACCOUNTANTS:
            out.append(("accountant", f"unknown accountant {self.accountant!r}; known: {', '.join(ACCOUNTANTS)}"
                        + did_you_mean(self.accountant, ACCOUNTANTS)))
        if self.level not in PRIVACY_LEVELS:
            out.append(("level", f"must be one of {', '.join(PRIVACY_LEVELS)}, got {self.level!r}"
                        + did_you_mean(self.level, PRIVACY_LEVELS)))
        if not self.enabled:
            return out
        if self.level in ("client", "both") and not (self.client_noise_multiplier is not None
                                                      and 0 < self.client_noise_multiplier <= 1e4):
            out.append(("client_noise_multiplier", f"level = {self.level!r} needs client_noise_multiplier in "
                        f"(0, 10000], got {self.client_noise_multiplier} (typical: 0.5-2)"))
        if self.level == "client":
            return out
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            seen = ("neither" if self.noise_multiplier is None else
                    f"both (noise_multiplier = {self.noise_multiplier}, target_epsilon = {self.target_epsilon})")
            out.append(("", "give exactly one of noise_multiplier and target_epsilon (or enabled = false), "
                            f"got {seen}"))
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


#: the values of ``[privacy] level``
PRIVACY_LEVELS: tuple[str, ...] = ("sample", "client", "both")
#: fields added after agents of the previous minor version were released: left out of
#: :meth:`JobSpec.to_dict` at their defaults, so those agents (which refuse unknown keys) still parse offers
_NEW_PRIVACY_DEFAULTS = {"level": "sample", "client_noise_multiplier": None}

#: a job file without a [privacy] table
NO_PRIVACY = PrivacySpec(enabled=False)


@dataclass(frozen=True)
class JobSpec:
    """A whole job file."""

    job: JobSection
    training: TrainingSpec = TrainingSpec()
    aggregation: AggregationSpec = AggregationSpec()
    privacy: PrivacySpec = NO_PRIVACY

    def check(self) -> list[tuple[str, str]]:
        """Checks across tables (secure aggregation against the job's party counts)."""
        out: list[tuple[str, str]] = []
        agg, job = self.aggregation, self.job
        if self.privacy.client_level and not agg.secure:
            out.append(("privacy.level", f"level = {self.privacy.level!r}: client-level DP adds its noise inside "
                                         "secure aggregation (each share alone is under-noised); set "
                                         "aggregation.secure = true"))
        if not agg.secure:
            return out
        if job.min_agents < 2:
            out.append(("job.min_agents", f"secure aggregation needs at least 2 agents per round, got min_agents="
                                          f"{job.min_agents}; raise it or set aggregation.secure = false"))
        if agg.threshold and job.max_agents and agg.threshold > job.max_agents:
            out.append(("aggregation.threshold", f"threshold {agg.threshold} exceeds max_agents={job.max_agents}; "
                                                 "no round could ever be unmasked"))
        if not (math.isfinite(agg.clip_norm) and agg.clip_norm > 0 and 8 <= agg.frac_bits <= 48):
            return out  # reported by the table's own checks
        most = job.max_agents or 1000  # the same bound QuantSpec checks, for the most agents a round may have
        if not most * (math.ceil(agg.clip_norm * 2.0**agg.frac_bits) + 1) < 2**63:
            out.append(("aggregation.clip_norm", f"{most} agents x clip_norm {agg.clip_norm} x 2^{agg.frac_bits} do "
                                                 "not fit a 64-bit ring; lower clip_norm or frac_bits (or set "
                                                 "job.max_agents)"))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON and msgpack safe) that :func:`job_from_dict` reads back.

        Keys newer than the previous minor version (``job.task``, the client-level privacy keys) are
        left out at their defaults, so that agents one minor version older still read the job.
        """
        out = dataclasses.asdict(self)
        if out["job"].get("task") == "classification":
            del out["job"]["task"]
        if out["job"].get("patch_depth") == 0:
            del out["job"]["patch_depth"]
        for key, default in _NEW_PRIVACY_DEFAULTS.items():
            if out["privacy"].get(key, default) == default:
                out["privacy"].pop(key, None)
        return out

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def num_classes(self) -> int:
        """Classes the job's model outputs (its ``num_classes`` argument, or the factory's default)."""
        from medfl.models import model_defaults

        return int(self.job.model_args.get("num_classes", model_defaults(self.job.model).get("num_classes", 2)))

    @property
    def patch(self) -> tuple[int, int, int]:
        """A segmentation job's (D, H, W) patch."""
        side = self.job.image_size
        return (self.job.patch_depth or side, side, side)

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
