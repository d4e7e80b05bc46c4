"""Models by name: a small CNN and ResNet-18, both GroupNorm and 1-channel."""

from medfl.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from medfl.models import resnet as _resnet  # noqa: F401  (registers "resnet18")
from medfl.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
