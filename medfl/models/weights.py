"""Model weights as named float32 arrays, and safetensors checkpoints (never pickle)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from medfl.errors import StateError

__all__ = ["load_checkpoint", "load_state_arrays", "save_checkpoint", "state_arrays"]


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as C-contiguous float32 NumPy arrays, in state-dict order.

    Parameters
    ----------
    model : torch.nn.Module
        Any model of the registry.
    """
    return {k: np.ascontiguousarray(v.detach().cpu().to(torch.float32).numpy()) for k, v in model.state_dict().items()}


def load_state_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load named arrays into ``model``; every name and shape must match.

    Parameters
    ----------
    model : torch.nn.Module
        Destination.
    arrays : dict of str to ndarray
        As produced by :func:`state_arrays`.
    """
    state = model.state_dict()
    missing = sorted(set(state) - set(arrays))
    extra = sorted(set(arrays) - set(state))
    shapes = sorted(k for k in set(state) & set(arrays) if tuple(state[k].shape) != tuple(np.shape(arrays[k])))
    if missing or extra or shapes:
        raise ValueError(f"weights do not fit the model: missing={missing[:5]} extra={extra[:5]} "
                         f"shape mismatch={shapes[:5]}")
    model.load_state_dict({k: torch.as_tensor(np.asarray(arrays[k])).to(state[k].dtype) for k in state})


def save_checkpoint(path: str | pathlib.Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a safetensors checkpoint atomically (temp file, fsync, rename).

    Parameters
    ----------
    path : str or Path
        Destination file.
    arrays : dict of str to ndarray
        The weights.
    metadata : dict of str to str
        Stored in the safetensors header (job id, round, model name).
    """
    bad = sorted(repr(k) for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str))
    if bad:
        raise TypeError(f"checkpoint metadata must map str to str; bad entries for keys {bad}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=dict(metadata))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a checkpoint written by :func:`save_checkpoint`: (arrays, metadata).

    Parameters
    ----------
    path : str or Path
        The file.

    Raises
    ------
    StateError
        The file exists but is not a readable safetensors checkpoint (truncated, corrupt, another
        format); the message names the file and the fix.
    FileNotFoundError
        There is no such file.
    """
    from safetensors import SafetensorError, safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, ValueError, OSError, MemoryError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise StateError(f"model checkpoint {path} ({path.stat().st_size} bytes) is not a readable safetensors "
                         f"file ({type(exc).__name__}: {detail}); it is truncated, corrupt or in another format: "
                         "replace it with a checkpoint written by medfl (a round-N.safetensors from the "
                         "coordinator's or the agent's state folder) or point the config at another file") from None
