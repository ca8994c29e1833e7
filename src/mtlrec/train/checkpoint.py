"""Self-describing checkpoints: a run directory that rebuilds its model from what it stores.

Layout of ``RUN_DIR``::

    model.safetensors   the weights (safetensors: loading runs no code)
    config.json         {"model_name", "model": model config, "train": train config}
    schema.json         the fitted feature schema
    preprocessor.json   the fitted preprocessor (raw values -> tensors)
    metrics.json        validation metrics of the restored (best) epoch
    run.json            format version, schema hash, library versions, data dir, best epoch, per-epoch history

A run is written into a temporary sibling directory and renamed into place only when complete, so a crash never
leaves a half-written run where a good one was.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from mtlrec import __version__
from mtlrec.data.preprocess import Preprocessor
from mtlrec.errors import CheckpointError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.registry import build_model
from mtlrec.schema import FeatureSchema
from mtlrec.train.config import RunConfig

RUN_FORMAT_VERSION = 1
RUN_FILES = ("model.safetensors", "config.json", "schema.json", "preprocessor.json", "metrics.json", "run.json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on."""
    import pandas
    import pydantic

    return {
        "mtlrec": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "pydantic": pydantic.__version__,
        "python": platform.python_version(),
    }


@dataclass
class Run:
    """A loaded run: the model in eval mode and everything it was trained with."""

    root: Path
    model: MultiTaskModel
    config: RunConfig
    schema: FeatureSchema
    preprocessor: Preprocessor
    metrics: dict[str, Any]
    info: dict[str, Any]


def save_run(
    out: Path,
    model: MultiTaskModel,
    config: RunConfig,
    preprocessor: Preprocessor,
    metrics: dict[str, Any],
    info: dict[str, Any],
) -> Path:
    """Write a complete run directory at ``out`` atomically (replacing an older run there)."""
    schema = preprocessor.schema
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={"schema_hash": schema.hash()})
        config_json = {
            "model_name": config.model_name,
            "model": config.model.model_dump(mode="json"),
            "train": config.train.model_dump(mode="json"),
        }
        (tmp / "config.json").write_text(json.dumps(config_json, indent=1))
        schema.save(tmp / "schema.json")
        preprocessor.save(tmp / "preprocessor.json")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        run_info = {
            "format_version": RUN_FORMAT_VERSION,
            "schema_hash": schema.hash(),
            "versions": library_versions(),
            **info,
        }
        (tmp / "run.json").write_text(json.dumps(run_info, indent=1, default=str))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_run(root: Path) -> Run:
    """Rebuild the model of a run directory from its stored config and schema, and load its weights."""
    if not root.is_dir():
        raise CheckpointError(f"run directory not found: {root}", hint="pass the --out directory of `mtlrec train`")
    missing = [name for name in RUN_FILES if not (root / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{root} is not a complete run: missing {', '.join(missing)}", hint="train again into this directory"
        )
    info = json.loads((root / "run.json").read_text())
    if info.get("format_version") != RUN_FORMAT_VERSION:
        raise CheckpointError(
            f"{root}: run format {info.get('format_version')} is not supported (expected {RUN_FORMAT_VERSION})",
            hint="retrain with this version of mtlrec",
        )
    schema = FeatureSchema.load(root / "schema.json")
    if schema.hash() != info.get("schema_hash"):
        raise CheckpointError(f"{root}: schema.json does not match the hash recorded in run.json")
    preprocessor = Preprocessor.load(root / "preprocessor.json")
    stored = json.loads((root / "config.json").read_text())
    from mtlrec.train.config import build_run_config

    config = build_run_config(
        stored["model_name"],
        {"model": stored["model"], "train": stored["train"]},
        where=str(root / "config.json"),
    )
    model = build_model(config.model_name, config.model, schema)
    missing_keys, unexpected = load_model(model, str(root / "model.safetensors"), strict=False)
    if missing_keys or unexpected:
        raise CheckpointError(
            f"{root}: weights do not fit the model (missing {sorted(missing_keys)[:5]}, unexpected {unexpected[:5]})",
            hint="the run was written by another model definition; retrain",
        )
    model.eval()
    metrics = json.loads((root / "metrics.json").read_text())
    return Run(root, model, config, schema, preprocessor, metrics, info)
