"""Models: the contract, shared blocks, the registry, one file per method (importing this registers them)."""

from mtlrec.models import esmm, mmoe, shared_bottom
from mtlrec.models.base import ModelConfig, MultiTaskModel, Target
from mtlrec.models.registry import build_model, get_model_class, list_models, register_model

__all__ = [
    "ModelConfig",
    "MultiTaskModel",
    "Target",
    "build_model",
    "esmm",
    "get_model_class",
    "list_models",
    "mmoe",
    "register_model",
    "shared_bottom",
]
