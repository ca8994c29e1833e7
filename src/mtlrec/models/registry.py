"""The model registry: ``@register_model("mmoe")`` on the class; ``build_model(name, config, schema)``.

Registering a name twice raises; an unknown name raises and lists the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mtlrec.config import validate
from mtlrec.errors import ModelError
from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.schema import FeatureSchema

_REGISTRY: dict[str, type[MultiTaskModel]] = {}
T = TypeVar("T", bound=type[MultiTaskModel])


@dataclass(frozen=True)
class ModelInfo:
    """What ``mtlrec models list`` shows."""

    name: str
    summary: str
    tracks: tuple[str, ...]
    config_class: type[ModelConfig]


def register_model(name: str, *, tracks: tuple[str, ...] = ("mtl",)) -> Callable[[T], T]:
    """Class decorator adding a model under ``name``, with the tracks (mtl, msl, mtmsl) it supports."""

    def add(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"model `{name}` is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        cls.tracks = tracks
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtin() -> None:
    from mtlrec import models  # noqa: F401  (importing the package registers the built-in models)


def get_model_class(name: str) -> type[MultiTaskModel]:
    """The class registered as ``name``."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ModelError(f"unknown model `{name}`", hint=f"registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_config(name: str, values: Mapping[str, Any] | ModelConfig | None, where: str = "model") -> ModelConfig:
    """Validate ``values`` as the config of model ``name`` (unknown keys are refused, naming the key)."""
    cls = get_model_class(name)
    if isinstance(values, ModelConfig):
        if not isinstance(values, cls.config_class):
            raise ModelError(f"model `{name}` expects a {cls.config_class.__name__}, got {type(values).__name__}")
        return values
    return validate(cls.config_class, dict(values or {}), where)


def build_model(name: str, config: Mapping[str, Any] | ModelConfig | None, schema: FeatureSchema) -> MultiTaskModel:
    """Build model ``name`` for a fitted ``schema`` from its config (a mapping, a config object or None)."""
    cls = get_model_class(name)
    if not schema.is_fitted:
        raise ModelError("models need a fitted schema (vocabulary sizes)", hint="use the schema of a prepared data dir")
    return cls(model_config(name, config), schema)


def list_models() -> list[ModelInfo]:
    """Every registered model, sorted by name."""
    _load_builtin()
    out = []
    for name in sorted(_REGISTRY):
        cls = _REGISTRY[name]
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out.append(ModelInfo(name, summary, cls.tracks, cls.config_class))
    return out
