"""Typed training and run configs, read from YAML.

A run config file has two sections::

    model:            # validated by the model's own config class (see `mtlrec models list`)
      name: mmoe
      embed_dim: 4
      num_experts: 8
    train:            # validated by TrainConfig
      lr: 0.001
      epochs: 10

Every key is checked: an unknown one is an error naming it, never a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mtlrec.config import StrictModel, read_yaml, validate
from mtlrec.errors import ConfigError
from mtlrec.models.base import ModelConfig
from mtlrec.models.registry import model_config


class EarlyStopping(StrictModel):
    """Stop when the validation metric has not improved for ``patience`` epochs; restore the best weights."""

    patience: int = Field(default=3, ge=1)
    metric: Literal["auc", "logloss"] = Field(
        default="auc", description="validation metric; auc is maximised, logloss minimised"
    )
    task: str | None = Field(default=None, description="the task to monitor; None = mean over all evaluated outputs")
    min_delta: float = Field(default=0.0, ge=0.0)
    start_from_epoch: int = Field(
        default=0,
        ge=0,
        description="never stop before this epoch (the best epoch is still chosen among all): on small data the "
        "first epochs, a few optimiser steps each, are warm-up whose validation AUC is noise (Keras' start_from_epoch)",
    )


class TrainConfig(StrictModel):
    """Optimiser, schedule and stopping. Defaults follow common MTL practice (Adam 1e-3, batch 1024)."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=1024, ge=1)
    eval_batch_size: int = Field(default=8192, ge=1, description="evaluation has no backward: larger is faster")
    epochs: int = Field(default=10, ge=1)
    loss_weights: dict[str, float] = Field(
        default_factory=dict, description="weight per loss term (task names, plus any auxiliary term); default 1.0"
    )
    early_stopping: EarlyStopping | None = Field(default_factory=EarlyStopping)
    seed: int = Field(default=0, ge=0)
    # Why a fixed thread count: results are reproducible for a seed only with a fixed intra-op thread count;
    # None keeps torch's default (all cores).
    num_threads: int | None = Field(default=None, ge=1)
    grad_clip_norm: float | None = Field(default=None, gt=0)


class RunConfig(StrictModel):
    """A model name, its config and the training config."""

    model_name: str
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)


def build_run_config(
    model_name: str | None,
    file_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    where: str = "config",
    model_overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge a config file's sections with CLI overrides (train keys) and validate everything.

    Args:
        model_name: the model; when given with a file naming another, the file must agree.
        file_values: the parsed YAML (``model`` and ``train`` sections), or None.
        overrides: train keys set on the command line (None values are ignored).
        model_overrides: model keys set on the command line (``track``, ``tasks``; None values are ignored).
        where: what to call the source in error messages (the file path).
    """
    values = dict(file_values or {})
    unknown = set(values) - {"model", "train"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level keys: {', '.join(sorted(unknown))}",
            hint="a run config has `model` and `train`",
        )
    model_values = dict(values.get("model") or {})
    file_model = model_values.pop("name", None)
    model_values.update({k: v for k, v in (model_overrides or {}).items() if v is not None})
    if model_name and file_model and model_name != file_model:
        raise ConfigError(
            f"{where}: model.name is `{file_model}` but `{model_name}` was asked for",
            hint="drop --model or use the config file of that model",
        )
    name = model_name or file_model
    if not name:
        raise ConfigError("no model given", hint="pass --model NAME or set model.name in the config file")
    train_values = dict(values.get("train") or {})
    train_values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    train = validate(TrainConfig, train_values, f"{where}: train")
    return RunConfig(model_name=name, model=model_config(name, model_values, f"{where}: model"), train=train)


def load_run_config(
    path: Path | None,
    model_name: str | None,
    overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a run config file (optional) and apply overrides (train keys, then model keys)."""
    values = read_yaml(path) if path is not None else None
    return build_run_config(model_name, values, overrides, str(path) if path else "config", model_overrides)
