"""coordinator.toml, parsed once into frozen dataclasses.

Example::

    [coordinator]
    name = "coordinator"
    bind = "tcp://0.0.0.0:7777"
    state_dir = "state"                      # SQLite database and checkpoints

    [keys]
    secret_key_file = "keys/coordinator.key_secret"

    [transport]
    curve = true                             # false only for tests of the plain path
    max_message_mb = 256

    [liveness]
    agent_timeout_s = 20                     # silent this long -> offline

    [inference]                              # encrypted inference (model server hosted by serve)
    enabled = false
    bind = "tcp://0.0.0.0:7778"              # agents connect here (same key); init: --bind's host, port 7778
    checkpoint = "state/checkpoints/<job>/round-0005.safetensors"  # default: the newest federated model
    dealer = "tcp://dealer.example.org:7779"  # the crypto provider (medfl-coordinator dealer)
    dealer_key_file = "keys/dealer.key"       # its public key, pinned
    calibration_dir = "calibration"           # representative images; omit for synthetic ones
    timeout_s = 60                            # a silent party aborts the session after this

    [enrollment]                             # handshakes from keys not approved yet
    mode = "pending"                          # or "invite-only": unknown keys refused, never recorded
    max_pending = 100                         # pending keys kept at most; past it new keys are refused unrecorded
    pending_expiry_h = 168                    # a pending key not seen for this long is forgotten
    new_keys_per_minute = 20                  # new keys recorded per minute, all addresses together
    new_keys_per_minute_per_address = 4       # ... and from one source address

    [web]                                    # status page, /status.json and Prometheus /metrics (read-only)
    enabled = true
    bind = "127.0.0.1:7790"                   # loopback clients need no token; others send the bearer token
    token_file = "state/web.token"            # written by 'medfl-coordinator web-token' (mode 0600)
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from medfl import config
from medfl.config import KeysSection

__all__ = ["CoordinatorConfig", "load_config"]


@dataclass(frozen=True)
class CoordinatorSection:
    """The ``[coordinator]`` table."""

    bind: str
    state_dir: pathlib.Path
    name: str = "coordinator"

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        if not self.bind.startswith(("tcp://", "ipc://", "inproc://")):
            return [("bind", f"must be a ZeroMQ endpoint like tcp://0.0.0.0:7777, got {self.bind!r}")]
        return []


@dataclass(frozen=True)
class TransportSection:
    """The ``[transport]`` table."""

    curve: bool = True
    max_message_mb: int = 256

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        if not 1 <= self.max_message_mb <= 4096:
            return [("max_message_mb", f"must be between 1 and 4096, got {self.max_message_mb}")]
        return []


@dataclass(frozen=True)
class LivenessSection:
    """The ``[liveness]`` table."""

    agent_timeout_s: float = 20.0
    eval_deadline_s: float = 120.0

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        out = []
        if self.agent_timeout_s <= 0:
            out.append(("agent_timeout_s", f"must be positive, got {self.agent_timeout_s}"))
        if self.eval_deadline_s <= 0:
            out.append(("eval_deadline_s", f"must be positive, got {self.eval_deadline_s}"))
        return out


@dataclass(frozen=True)
class InferenceSection:
    """The ``[inference]`` table: the model server the daemon hosts."""

    enabled: bool = False
    bind: str = "tcp://0.0.0.0:7778"
    checkpoint: pathlib.Path | None = None
    dealer: str = ""
    dealer_key_file: pathlib.Path | None = None
    calibration_dir: pathlib.Path | None = None
    timeout_s: float = 60.0

    def check(self) -> list[tuple[str, str]]:
        """Range checks; an enabled model server needs a checkpoint and a dealer."""
        out = []
        if not self.bind.startswith(("tcp://", "ipc://")):
            out.append(("bind", f"must be a ZeroMQ endpoint like tcp://0.0.0.0:7778, got {self.bind!r}"))
        if self.timeout_s <= 0:
            out.append(("timeout_s", f"must be positive, got {self.timeout_s}"))
        if self.enabled:
            if not self.dealer.startswith(("tcp://", "ipc://")):
                out.append(("dealer", f"required when enabled = true: the dealer's endpoint, got {self.dealer!r}"))
            if self.dealer_key_file is None:
                out.append(("dealer_key_file", "required when enabled = true: the dealer's public key file"))
        return out


@dataclass(frozen=True)
class EnrollmentSection:
    """The ``[enrollment]`` table: how handshakes from unknown keys are treated (see coordinator.admission)."""

    mode: str = "pending"
    max_pending: int = 100
    pending_expiry_h: float = 168.0
    new_keys_per_minute: float = 20.0
    new_keys_per_minute_per_address: float = 4.0

    def check(self) -> list[tuple[str, str]]:
        """Range checks."""
        out = []
        if self.mode not in ("pending", "invite-only"):
            out.append(("mode", f"must be 'pending' (unknown keys wait for approval) or 'invite-only' (unknown "
                                f"keys are refused and not recorded), got {self.mode!r}"))
        if not 0 <= self.max_pending <= 100_000:
            out.append(("max_pending", f"must be between 0 and 100000, got {self.max_pending}"))
        if self.pending_expiry_h <= 0:
            out.append(("pending_expiry_h", f"must be positive (hours), got {self.pending_expiry_h}"))
        for key in ("new_keys_per_minute", "new_keys_per_minute_per_address"):
            if not 0 < getattr(self, key) <= 10_000:
                out.append((key, f"must be in (0, 10000], got {getattr(self, key)}"))
        return out


@dataclass(frozen=True)
class WebSection:
    """The ``[web]`` table: the daemon's read-only status page and metrics endpoint (see coordinator.web)."""

    enabled: bool = True
    bind: str = "127.0.0.1:7790"
    token_file: pathlib.Path | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        """``bind`` split into host and port (an IPv6 host in brackets)."""
        host, _, port = self.bind.rpartition(":")
        return host.strip("[]"), int(port)

    def check(self) -> list[tuple[str, str]]:
        """``bind`` must be HOST:PORT."""
        host, sep, port = self.bind.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            return [("bind", f"must be HOST:PORT such as 127.0.0.1:7790, got {self.bind!r}")]
        return []


@dataclass(frozen=True)
class CoordinatorConfig:
    """The whole coordinator.toml."""

    coordinator: CoordinatorSection
    keys: KeysSection = field(default_factory=KeysSection)
    transport: TransportSection = field(default_factory=TransportSection)
    liveness: LivenessSection = field(default_factory=LivenessSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    enrollment: EnrollmentSection = field(default_factory=EnrollmentSection)
    web: WebSection = field(default_factory=WebSection)

    def check(self) -> list[tuple[str, str]]:
        """Cross-table checks."""
        if self.transport.curve and self.keys.secret_key_file is None:
            return [("keys.secret_key_file", "required when transport.curve = true; run "
                     "'medfl-coordinator init' to create a key pair")]
        return []

    @property
    def db_path(self) -> pathlib.Path:
        """The SQLite database."""
        return self.coordinator.state_dir / "coordinator.sqlite"

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        """Where the global model of every round is kept."""
        return self.coordinator.state_dir / "checkpoints"

    @property
    def web_token_file(self) -> pathlib.Path:
        """The status page's bearer token file (``[web] token_file``, default ``state_dir/web.token``)."""
        return self.web.token_file or self.coordinator.state_dir / "web.token"


def load_config(path: str | pathlib.Path) -> CoordinatorConfig:
    """Read coordinator.toml; raises ConfigError listing every bad key by TOML path.

    Parameters
    ----------
    path : str or Path
        The file.
    """
    return config.parse_file(CoordinatorConfig, path)
