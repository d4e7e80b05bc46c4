"""Model validation and repair for per-sample clipping, before training starts.

DP-SGD needs each sample's gradient to depend on that sample alone, so batch statistics
(BatchNorm) are replaced by GroupNorm, and every trainable parameter must live in a
module whose per-sample gradient :mod:`medfl.privacy.clipping` knows how to compute.

References
----------
.. [1] Y. Wu and K. He, "Group normalization", ECCV 2018.
.. [2] A. Yousefpour et al., "Opacus: user-friendly differential privacy library in
   PyTorch", arXiv:2109.12298, 2021 (validate-then-fix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from medfl.errors import MedflError
from medfl.privacy.clipping import SUPPORTED

__all__ = ["Problem", "UnsupportedModel", "fix", "validate"]


@dataclass(frozen=True)
class Problem:
    """One DP-incompatible module: where it is, what it is, and the fix."""

    path: str
    kind: str
    fix: str


class UnsupportedModel(MedflError, ValueError):
    """A model has modules per-sample clipping cannot handle; every one is listed with its fix."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [f"{len(problems)} module(s) are not DP-compatible:"]
        lines += [f"  {p.path or '<root>'} ({p.kind}): {p.fix}" for p in problems]
        super().__init__("\n".join(lines))


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _problem(name: str, m: nn.Module) -> Problem | None:
    kind = type(m).__name__
    if isinstance(m, _BN):
        return Problem(name, kind, "BatchNorm mixes samples; medfl.privacy.fix() replaces it by GroupNorm")
    own = [p for p in m.parameters(recurse=False) if p.requires_grad]
    if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.groups != 1 and own:
        return Problem(name, kind, f"groups={m.groups} is not supported; use groups=1 or freeze it")
    if own and not isinstance(m, SUPPORTED):
        names = ", ".join(t.__name__ for t in SUPPORTED)
        return Problem(name, kind, f"no per-sample gradient rule; use {names}, or freeze it (requires_grad=False)")
    return None


def validate(model: nn.Module) -> list[Problem]:
    """Return every DP-incompatible module of ``model`` (empty when it is fine).

    Parameters
    ----------
    model : torch.nn.Module
        The model to check.

    References
    ----------
    Yousefpour et al. 2021 (module docstring).
    """
    found = (_problem(name, m) for name, m in model.named_modules())
    return [p for p in found if p is not None]


def _group_norm(bn: nn.Module, max_groups: int) -> nn.GroupNorm:
    channels = int(bn.num_features)  # type: ignore[arg-type]
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels, eps=float(bn.eps), affine=bool(bn.affine))  # type: ignore[arg-type]


def fix(model: nn.Module, *, max_groups: int = 32) -> nn.Module:
    """Replace every BatchNorm in ``model`` (in place) by GroupNorm, then validate.

    Parameters
    ----------
    model : torch.nn.Module
        The model; modified in place and returned.
    max_groups : int
        GroupNorm uses ``gcd(channels, max_groups)`` groups [1].

    Raises
    ------
    UnsupportedModel
        If problems remain that cannot be repaired automatically, all listed.

    References
    ----------
    Wu and He 2018 (module docstring).
    """
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, _BN):
                setattr(m, child_name, _group_norm(child, max_groups))
    problems = validate(model)
    if problems:
        raise UnsupportedModel(problems)
    return model
