"""Models of a repository written by ``mtlrec export``, opened for serving: spec, preprocessor, runner.

``list_models(repo)`` names the servable models (those with an export spec: the plain and TorchScript models, not
the preprocess/ensemble helpers of Triton), and ``open_model(repo, name)`` loads the newest (or a given) version
with the runtime asked for. The preprocessor stored beside the model is THE transform of the run, so raw records
become exactly the tensors the model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlrec.data.preprocess import EncodedFrame, Preprocessor
from mtlrec.errors import CheckpointError
from mtlrec.export.spec import ExportSpec
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema
from mtlrec.serving.runners import OnnxRuntimeRunner, Runner, TorchScriptRunner

MODEL_FILES = {"model.onnx": "onnxruntime", "model.pt": "torchscript"}


@dataclass
class ServedModel:
    """One version of a model, ready to answer: ``predict_frame(raw) -> {output: [N]}``."""

    name: str
    version: int
    path: Path
    spec: ExportSpec
    schema: FeatureSchema
    preprocessor: Preprocessor
    runner: Runner
    manifest: dict[str, Any] = field(default_factory=dict)

    def encode(self, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Raw rows -> the model's input tensors (and OOV counts per field), through the run's transform."""
        return self._tensors(self.preprocessor.transform(frame, with_labels=False))

    def encode_records(
        self, records: Sequence[Mapping[str, Any]], keys: Mapping[str, str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Raw records -> the model's input tensors and OOV counts, through the run's transform without a frame
        (:meth:`~mtlrec.data.preprocess.Preprocessor.transform_records`; ``keys`` as there)."""
        return self._tensors(self.preprocessor.transform_records(records, keys))

    def _tensors(self, encoded: EncodedFrame) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        tensors: dict[str, np.ndarray] = {}
        if SPARSE_IDS in self.spec.input_names:
            tensors[SPARSE_IDS] = encoded.sparse
        if DENSE in self.spec.input_names:
            tensors[DENSE] = encoded.dense
        if SCENARIO in self.spec.input_names and encoded.scenario is not None:
            tensors[SCENARIO] = encoded.scenario
        return tensors, encoded.oov_counts

    def predict_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per-output probabilities for raw rows, [N] each."""
        tensors, _ = self.encode(frame)
        return self.runner.infer(tensors)

    def close(self) -> None:
        """Release the runtime."""
        self.runner.close()


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _model_file(version_dir: Path) -> Path | None:
    return next((version_dir / f for f in MODEL_FILES if (version_dir / f).is_file()), None)


def list_models(repo: Path) -> dict[str, list[int]]:
    """Servable model names and their versions (those holding an export spec and a model file)."""
    if not repo.is_dir():
        raise CheckpointError(f"model repository not found: {repo}", hint="run `mtlrec export RUN_DIR --repo DIR`")
    out: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [
            v
            for v in _versions(model_dir)
            if (model_dir / str(v) / "export_spec.json").is_file() and _model_file(model_dir / str(v))
        ]
        if versions:
            out[model_dir.name] = versions
    return out


def open_model(
    repo: Path,
    name: str,
    version: int | None = None,
    *,
    backend: str = "auto",
    threads: int | None = None,
    device: str = "cpu",
) -> ServedModel:
    """Load ``name`` (newest version unless given) from ``repo`` with an in-process runner.

    Args:
        repo: the model repository.
        name: a model name of :func:`list_models`.
        version: the version; None = the highest.
        backend: ``onnxruntime``, ``torchscript`` or ``auto`` (whatever the version holds).
        threads: intra-op threads of the runtime.
        device: ``cpu``, ``cuda`` or ``auto``.
    """
    models = list_models(repo)
    if name not in models:
        raise CheckpointError(
            f"model `{name}` is not in {repo}", hint=f"servable models: {', '.join(models) or '(none)'}"
        )
    chosen = version if version is not None else models[name][-1]
    if chosen not in models[name]:
        raise CheckpointError(f"model `{name}` has no version {chosen}", hint=f"versions: {models[name]}")
    path = repo / name / str(chosen)
    model_file = _model_file(path)
    assert model_file is not None
    kind = MODEL_FILES[model_file.name]
    if backend not in ("auto", kind):
        raise CheckpointError(
            f"{name} version {chosen} holds {model_file.name}, not a {backend} model",
            hint=f"use --backend {kind}, or export with --format both and serve {name}_torchscript",
        )
    spec = ExportSpec.load(path / "export_spec.json")
    schema = FeatureSchema.load(path / "schema.json")
    preprocessor = Preprocessor.load(path / "preprocessor.json")
    if schema.hash() != spec.schema_hash or preprocessor.schema.hash() != spec.schema_hash:
        raise CheckpointError(f"{path}: schema, preprocessor and export spec disagree", hint="export the run again")
    runner: Runner
    if kind == "onnxruntime":
        runner = OnnxRuntimeRunner(model_file, spec, threads, device)
    else:
        runner = TorchScriptRunner(model_file, spec, threads, device)
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return ServedModel(name, chosen, path, spec, schema, preprocessor, runner, manifest)
