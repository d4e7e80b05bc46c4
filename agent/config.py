"""agent.toml, parsed once into frozen dataclasses.

Example::

    [agent]
    name = "st-mary"
    state_dir = "state"

    [coordinator]
    endpoint = "tcp://coordinator.example.org:7777"
    public_key_file = "keys/coordinator.key"    # handed over by the operator; pinned

    [keys]
    secret_key_file = "keys/agent.key_secret"

    [data]
    kind = "folder"                             # or "npz"; "brats" or "msd" for segmentation
    path = "/data/chest_xray"                   # train/NORMAL, train/PNEUMONIA, val/...

    [policy]
    allowed_models = ["cnn", "resnet18"]
    min_parties = 2                             # refuse aggregates with fewer agents
    require_secure_aggregation = true           # refuse jobs whose updates would be seen in the clear
    max_epsilon_per_job = 8.0                   # refuse rounds that would take a job past this
    max_total_epsilon = 20.0                    # ... or this dataset past this, over all jobs
    total_delta = 1e-5                          # delta of the dataset's total epsilon
    max_delta = 1e-4                            # refuse jobs asking a larger delta

    [training]
    torch_threads = 0                           # 0: torch's default

    [inference]                                 # encrypted inference as a data owner
    allow_encrypted = true                      # may this agent request it at all
    endpoint = "tcp://coordinator.example.org:7778"  # default: the coordinator's host, port 7778
    model_server_key_file = "keys/coordinator.key"   # pinned; default: the coordinator's key
    trusted_dealers = ["keys/dealer.key"]       # dealer public keys accepted: files (relative to agent.toml) or Z85
    image_size = 64                             # must match the announced model
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from medfl import config
from medfl.config import KeySource, KeysSection

__all__ = ["AgentConfig", "key_file_problems", "load_config"]


@dataclass(frozen=True)
class AgentSection:
    """The ``[agent]`` table."""

    name: str
    state_dir: pathlib.Path

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        if not self.name.strip() or len(self.name) > 64:
            return [("name", f"must be 1-64 characters, got {self.name!r}")]
        return []


@dataclass(frozen=True)
class CoordinatorLink:
    """The ``[coordinator]`` table: where to connect and whose key to pin."""

    endpoint: str
    public_key_file: pathlib.Path | None = None

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        if not self.endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            return [("endpoint", f"must be a ZeroMQ endpoint like tcp://host:7777, got {self.endpoint!r}")]
        return []


def detect_data_kind(path: pathlib.Path) -> str:
    """The ``[data] kind`` of a data set on disk, as ``init`` and ``enroll`` write it.

    A ``.npz`` file is ``npz``; a folder with ``dataset.json`` is a Decathlon task (``msd``); a
    folder of case folders holding ``<case>_seg.nii[.gz]`` is ``brats``; any other folder is an
    image ``folder`` (train/<CLASS>/...).
    """
    if path.suffix == ".npz":
        return "npz"
    if (path / "dataset.json").is_file():
        return "msd"
    if path.is_dir():
        for case in path.iterdir():
            if case.is_dir() and any((case / f"{case.name}_seg{ext}").is_file() for ext in (".nii.gz", ".nii")):
                return "brats"
    return "folder"


@dataclass(frozen=True)
class DataSection:
    """The ``[data]`` table."""

    path: pathlib.Path
    #: "folder" or "npz" (classification), "brats" or "msd" (segmentation: NIfTI cases)
    kind: Literal["folder", "npz", "brats", "msd"] = "folder"


@dataclass(frozen=True)
class PolicySection:
    """The ``[policy]`` table: local rules the coordinator cannot override."""

    allowed_models: tuple[str, ...] = ("cnn", "resnet18")
    min_parties: int = 2
    require_secure_aggregation: bool = True
    #: differential privacy limits (unset: no limit). Any limit set refuses jobs without DP.
    max_epsilon_per_job: float | None = None
    max_total_epsilon: float | None = None
    total_delta: float = 1e-5
    max_delta: float | None = None
    #: client-level DP (issue 20): refuse jobs without it, and cap its planned client-level epsilon
    require_client_dp: bool = False
    max_client_epsilon: float | None = None

    @property
    def limits_privacy(self) -> bool:
        """True when agent.toml sets a privacy limit (then every job must use DP)."""
        return self.max_epsilon_per_job is not None or self.max_total_epsilon is not None

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        from medfl.errors import did_you_mean
        from medfl.models import list_models

        out = []
        for i, m in enumerate(self.allowed_models):
            if m not in list_models():
                out.append((f"allowed_models[{i}]", f"unknown model {m!r}; known: {', '.join(list_models())}"
                            + did_you_mean(m, list_models())))
        if self.min_parties < 1:
            out.append(("min_parties", f"must be at least 1, got {self.min_parties}"))
        for key in ("max_epsilon_per_job", "max_total_epsilon", "max_client_epsilon"):
            value = getattr(self, key)
            if value is not None and not 0 < value < float("inf"):
                out.append((key, f"must be positive and finite, got {value}"))
        if not 0 < self.total_delta < 1:
            out.append(("total_delta", f"must be in (0, 1), got {self.total_delta}"))
        if self.max_delta is not None and not 0 < self.max_delta < 1:
            out.append(("max_delta", f"must be in (0, 1), got {self.max_delta}"))
        return out


@dataclass(frozen=True)
class TrainingSection:
    """The ``[training]`` table."""

    torch_threads: int = 0
    device: str = "cpu"

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        out = []
        if self.torch_threads < 0:
            out.append(("torch_threads", f"must be >= 0 (0 = torch's default), got {self.torch_threads}"))
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            out.append(("device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}"))
        return out


@dataclass(frozen=True)
class TransportSection:
    """The ``[transport]`` table."""

    curve: bool = True
    max_message_mb: int = 256


@dataclass(frozen=True)
class PacsDestination:
    """Where Structured Reports go: the PACS's DICOM node."""

    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242


@dataclass(frozen=True)
class PacsSection:
    """The ``[pacs]`` table: the agent as a DICOM node that scores incoming chest X-rays."""

    enabled: bool = False
    ae_title: str = "MEDFL"
    bind: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    destination: PacsDestination = field(default_factory=PacsDestination)
    threshold: float = 0.5
    model_file: pathlib.Path | None = None
    workers: int = 2
    max_batch: int = 8
    senders: int = 3
    watch_folder: pathlib.Path | None = None
    send_retries: int = 5
    scoring: Literal["plain", "encrypted"] = "plain"
    quarantine_max_mb: int = 1024
    #: CT/MR series segmentation: the safetensors checkpoint of a medfl segmentation model (None: CT
    #: and MR instances are refused as before), and how long a series must stay quiet to be complete
    seg_model_file: pathlib.Path | None = None
    series_quiet_s: float = 10.0
    seg_overlap: float = 0.25

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        out = []
        for key, aet in [("ae_title", self.ae_title), ("destination.ae_title", self.destination.ae_title)] + [
                (f"allowed_calling_aets[{i}]", a) for i, a in enumerate(self.allowed_calling_aets)]:
            if not 1 <= len(aet) <= 16 or not aet.isascii() or "\\" in aet:
                out.append((key, f"must be a DICOM AE title (1-16 ASCII characters), got {aet!r}"))
        for key, port in (("port", self.port), ("destination.port", self.destination.port)):
            if not 1 <= port <= 65535:
                out.append((key, f"must be a TCP port 1-65535, got {port}"))
        if not 0.0 <= self.threshold <= 1.0:
            out.append(("threshold", f"must be in [0, 1], got {self.threshold}"))
        if not 1 <= self.workers <= 64:
            out.append(("workers", f"must be 1-64, got {self.workers}"))
        if not 1 <= self.max_batch <= 256:
            out.append(("max_batch", f"must be 1-256, got {self.max_batch}"))
        if not 1 <= self.senders <= 16:
            out.append(("senders", f"must be 1-16, got {self.senders}"))
        if self.send_retries < 0:
            out.append(("send_retries", f"must be >= 0, got {self.send_retries}"))
        if self.quarantine_max_mb < 1:
            out.append(("quarantine_max_mb", f"must be >= 1 (MiB), got {self.quarantine_max_mb}"))
        if not 0.0 < self.series_quiet_s <= 3600.0:
            out.append(("series_quiet_s", f"must be in (0, 3600] seconds, got {self.series_quiet_s}"))
        if not 0.0 <= self.seg_overlap < 1.0:
            out.append(("seg_overlap", f"must be in [0, 1), got {self.seg_overlap}"))
        return out


@dataclass(frozen=True)
class InferenceSection:
    """The ``[inference]`` table: whether and where this agent asks for encrypted inference."""

    allow_encrypted: bool = False
    endpoint: str = ""
    model_server_key_file: pathlib.Path | None = None
    trusted_dealers: tuple[KeySource, ...] = ()
    model: str = "cnn"
    image_size: int = 64
    timeout_s: float = 120.0

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        out = []
        if self.endpoint and not self.endpoint.startswith(("tcp://", "ipc://")):
            out.append(("endpoint", f"must be a ZeroMQ endpoint like tcp://host:7778, got {self.endpoint!r}"))
        if not 28 <= self.image_size <= 4096:
            out.append(("image_size", f"must be 28-4096, got {self.image_size}"))
        if self.timeout_s <= 0:
            out.append(("timeout_s", f"must be positive, got {self.timeout_s}"))
        return out


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent.toml."""

    agent: AgentSection
    coordinator: CoordinatorLink
    data: DataSection
    keys: KeysSection = field(default_factory=KeysSection)
    policy: PolicySection = field(default_factory=PolicySection)
    training: TrainingSection = field(default_factory=TrainingSection)
    transport: TransportSection = field(default_factory=TransportSection)
    pacs: PacsSection = field(default_factory=PacsSection)
    inference: InferenceSection = field(default_factory=InferenceSection)

    def check(self) -> list[tuple[str, str]]:
        """Cross-table checks."""
        out = []
        if self.transport.curve:
            if self.keys.secret_key_file is None:
                out.append(("keys.secret_key_file", "required when transport.curve = true; run 'medfl-agent init'"))
            if self.coordinator.public_key_file is None:
                out.append(("coordinator.public_key_file", "required when transport.curve = true: the "
                            "coordinator operator hands over coordinator.key"))
        return out


def load_config(path: str | pathlib.Path) -> AgentConfig:
    """Read agent.toml; raises ConfigError listing every bad key by TOML path.

    Parameters
    ----------
    path : str or Path
        The file.
    """
    return config.parse_file(AgentConfig, path)


def key_file_problems(cfg: AgentConfig) -> list[tuple[str, str]]:
    """Every key agent.toml names that cannot be read, by TOML path (what ``medfl-agent check`` reports).

    The daemon and ``infer`` read the same files, so a configuration ``check`` passes does not
    fail later on a key.

    Parameters
    ----------
    cfg : AgentConfig
        The parsed agent.toml.
    """
    from medfl.errors import AuthError
    from medfl.wire import read_keypair, read_public_key

    out: list[tuple[str, str]] = []

    def probe(path: str, read: Callable[[Any], object], source: object) -> None:
        looks_like_path = isinstance(source, pathlib.Path) or "/" in str(source) or str(source).endswith(".key")
        if looks_like_path and not pathlib.Path(str(source)).exists():
            out.append((path, f"file not found: {source} (relative paths resolve against agent.toml's folder); "
                              "copy the key file there or fix the path"))
            return
        try:
            read(source)
        except (AuthError, OSError, ValueError) as exc:
            out.append((path, str(exc)))

    if cfg.keys.secret_key_file is not None:
        probe("keys.secret_key_file", read_keypair, cfg.keys.secret_key_file)
    if cfg.coordinator.public_key_file is not None:
        probe("coordinator.public_key_file", read_public_key, cfg.coordinator.public_key_file)
    if cfg.inference.model_server_key_file is not None:
        probe("inference.model_server_key_file", read_public_key, cfg.inference.model_server_key_file)
    for i, dealer in enumerate(cfg.inference.trusted_dealers):
        probe(f"inference.trusted_dealers[{i}]", read_public_key, dealer)
    return out
