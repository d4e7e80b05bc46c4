"""The model registry: models are chosen by name (job files) with "did you mean" errors."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from medfl.errors import NotFound, did_you_mean

__all__ = ["TASKS", "create_model", "list_models", "model_defaults", "model_task", "register_model"]

#: What a model is for: a job's ``task`` must match its model's.
TASKS = ("classification", "segmentation")

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}
_TASK: dict[str, str] = {}


def register_model(name: str, task: str = "classification"
                   ) -> Callable[[Callable[..., torch.nn.Module]], Callable[..., torch.nn.Module]]:
    """Decorator registering a model factory under ``name``.

    Parameters
    ----------
    name : str
        The name job files use.
    task : {"classification", "segmentation"}
        What the model outputs: logits per image, or logits per pixel/voxel.
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")

    def deco(factory: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = factory
        _TASK[name] = task
        return factory
    return deco


def model_task(name: str) -> str:
    """The task a registered model is for ("classification" or "segmentation")."""
    if name not in _MODELS:
        raise NotFound(f"unknown model {name!r}; known: {', '.join(list_models())}" + did_you_mean(name, _MODELS))
    return _TASK[name]


def model_defaults(name: str) -> dict[str, Any]:
    """The keyword arguments of a registered model's factory that have defaults, with those defaults."""
    if name not in _MODELS:
        raise NotFound(f"unknown model {name!r}; known: {', '.join(list_models())}" + did_you_mean(name, _MODELS))
    return {k: p.default for k, p in inspect.signature(_MODELS[name]).parameters.items()
            if p.default is not inspect.Parameter.empty}


def list_models() -> list[str]:
    """Names of the registered models."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    **kwargs
        Keyword arguments of the model (e.g. ``num_classes``, ``in_channels``).
    """
    if name not in _MODELS:
        raise NotFound(f"unknown model {name!r}; known: {', '.join(list_models())}"
                       + did_you_mean(name, _MODELS))
    factory = _MODELS[name]
    params = inspect.signature(factory).parameters
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
        raise TypeError(f"model {name!r} has no argument(s) {bad}; it takes {sorted(params)}")
    return factory(**kwargs)
