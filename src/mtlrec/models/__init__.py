"""Models: the contract, shared blocks, the registry, one file per method.

Importing this package imports every module in it, so each model file registers itself with
``@register_model``: adding a model is adding a file.
"""

import importlib
import pkgutil

from mtlrec.models.base import HeadLayout, ModelConfig, MultiTaskModel, Target
from mtlrec.models.registry import build_model, get_model_class, list_models, register_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "HeadLayout",
    "ModelConfig",
    "MultiTaskModel",
    "Target",
    "build_model",
    "get_model_class",
    "list_models",
    "register_model",
]
