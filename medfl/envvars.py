"""Every environment variable medfl reads, in one place.

Each entry names the variable, what it overrides and its allowed values. Modules read
them through :func:`get` so an unknown name is a programming error, not a silent miss.
"""

from __future__ import annotations

import os

__all__ = ["VARIABLES", "get"]

#: name -> help text
VARIABLES: dict[str, str] = {
    "MEDFL_NATIVE": "force the kernel backend: cuda, cpu or reference (default: best available)",
    "MEDFL_SMPC_DEVICE": "where encrypted inference runs its ring products and comparisons: cpu (default) or "
                         "cuda (needs a CUDA build of medfl._native and a GPU torch sees); a session's device= wins",
    "MEDFL_CUDA": "build time: 1 forces the CUDA kernels, 0 disables them (default: if nvcc is found)",
    "MEDFL_LOG_FORMAT": "log format of the daemons: text (default) or json",
    "MEDFL_LOG_LEVEL": "log level of the daemons: DEBUG, INFO (default), WARNING, ERROR",
    "MEDFL_INSECURE_RNG": "1 uses a fast non-cryptographic generator for DP noise (experiments only; warns)",
    "MEDFL_COORDINATOR_CONFIG": "coordinator.toml of medfl-coordinator's commands when --config is not given "
                                "(default: ./coordinator.toml, else /etc/medfl/coordinator.toml)",
    "MEDFL_AGENT_CONFIG": "agent.toml of medfl-agent's commands when --config is not given "
                          "(default: ./agent.toml, else /etc/medfl/agent.toml)",
    "MEDFL_TORCH_THREADS": "torch intra-op threads in the agent (default: 1 in the demo, else torch's default)",
    "MEDFL_FUZZ_SECONDS": "seconds each fuzz target runs in benchmarks/fuzz/run.py and its CI test (default: 60)",
}


def get(name: str, default: str | None = None) -> str | None:
    """Return the value of a registered ``MEDFL_`` variable, or ``default`` if unset.

    Parameters
    ----------
    name : str
        A key of :data:`VARIABLES`.
    default : str, optional
        Value when the variable is unset or empty.
    """
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a registered medfl environment variable")
    value = os.environ.get(name, "")
    return value if value != "" else default
