"""Models by name: a small CNN and ResNet-18 (classification), 2-D and 3-D U-Nets (segmentation); all GroupNorm."""

from medfl.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from medfl.models import resnet as _resnet  # noqa: F401  (registers "resnet18")
from medfl.models import unet as _unet  # noqa: F401  (registers "unet2d", "unet3d")
from medfl.models.registry import TASKS, create_model, list_models, model_defaults, model_task, register_model

__all__ = ["TASKS", "create_model", "list_models", "model_defaults", "model_task", "register_model"]
