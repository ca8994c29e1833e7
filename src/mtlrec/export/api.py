"""``export_run``: a trained run directory in, a verified new version in a Triton model repository out.

Steps, each of which can refuse (and then nothing enters the repository):

1. :func:`~mtlrec.train.checkpoint.load_run` rebuilds the model; the export spec comes from its schema;
2. each asked format is exported into a temporary directory and checked against eager PyTorch
   (:func:`~mtlrec.export.validate.validate_export`); with ``quantize="int8"`` the ONNX model is quantized and the
   AUC change on the run's validation split must stay within ``max_auc_drop``;
3. configs are built from protobuf messages (:mod:`mtlrec.export.triton_config`) and
   :func:`~mtlrec.export.repository.write_model_repository` stages, validates and adds the version atomically.

Model names (``name`` = ``--name``, default the run's model name, e.g. ``mmoe``):

========================  =========================================================================
``<name>``                the served model: ONNX (``onnxruntime_onnx``), or TorchScript when only
                          ``--format torchscript`` is asked
``<name>_torchscript``    the TorchScript twin (``pytorch_libtorch``), only with ``--format both``
``<name>_preprocess``     Python backend: raw records -> tensors with the run's fitted preprocessor
``<name>_ensemble``       ``<name>_preprocess`` then ``<name>``: raw records in, probabilities out
========================  =========================================================================

All models of one export get the same version number. Every version directory holds a ``manifest.json`` (schema
hash, library versions, the checkpoint's metrics, the source run, parity and quantization results); model and
preprocess versions also hold ``schema.json`` and ``preprocessor.json``, models ``export_spec.json`` and
``golden.json`` (a few raw records, odd ones included, and this artifact's answers to them; see
:mod:`mtlrec.export.golden`).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from mtlrec import __version__
from mtlrec.config import StrictModel
from mtlrec.errors import ConfigError, DataError
from mtlrec.export import golden as golden_file
from mtlrec.export import preprocess_model
from mtlrec.export.repository import FileSource, ModelFiles, check_writable, next_version, write_model_repository
from mtlrec.export.spec import ExportSpec, Platform, build_export_spec
from mtlrec.export.triton_config import (
    InstanceKind,
    ModelConfig,
    ServingOptions,
    build_ensemble_config,
    build_model_config,
    build_preprocess_config,
)
from mtlrec.export.validate import ParityReport
from mtlrec.train.checkpoint import Run, library_versions, load_run

DEFAULT_REPOSITORY = Path("model_repository")
MANIFEST_VERSION = 1
FormatChoice = Literal["onnx", "torchscript", "both"]
_PLATFORMS: dict[str, Platform] = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ExportOptions(StrictModel):
    """Options of :func:`export_run` (the ``mtlrec export`` flags)."""

    name: str | None = Field(default=None, description="base model name; default: the run's model name")
    format: FormatChoice = "onnx"
    version: int | None = Field(default=None, ge=1, description="version to add; default: one above the highest")
    max_batch_size: int = Field(default=1024, ge=1)
    instance_kind: InstanceKind = "auto"
    instances: int = Field(default=1, ge=1)
    dynamic_batching: bool = True
    quantize: Literal["int8"] | None = None
    max_auc_drop: float = Field(default=0.002, ge=0, description="largest AUC drop int8 quantization may cost")
    batch_sizes: tuple[int, ...] = Field(default=(1, 7, 1024), description="batch sizes of the parity check")

    @property
    def serving(self) -> ServingOptions:
        """The config-level options."""
        return ServingOptions(
            max_batch_size=self.max_batch_size,
            instance_kind=self.instance_kind,
            instances=self.instances,
            dynamic_batching=self.dynamic_batching,
        )


@dataclass
class ExportResult:
    """What :func:`export_run` added to the repository."""

    repo: Path
    version: int
    models: dict[str, str]  # role (onnx, torchscript, preprocess, ensemble) -> model name
    parity: dict[str, ParityReport] = field(default_factory=dict)
    quantization: dict[str, dict[str, float]] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def version_dir(self, role: str) -> Path:
        """The new version directory of the model with ``role``."""
        return self.repo / self.models[role] / str(self.version)


def model_names(name: str, fmt: FormatChoice) -> dict[str, str]:
    """Repository model names per role for base ``name`` and format; see the module docstring.

    Example:
        >>> model_names("mmoe", "both")["torchscript"]
        'mmoe_torchscript'
        >>> list(model_names("mmoe", "onnx").values())
        ['mmoe', 'mmoe_preprocess', 'mmoe_ensemble']
    """
    names: dict[str, str] = {}
    if fmt in ("onnx", "both"):
        names["onnx"] = name
    if fmt == "torchscript":
        names["torchscript"] = name
    elif fmt == "both":
        names["torchscript"] = f"{name}_torchscript"
    names["preprocess"] = f"{name}_preprocess"
    names["ensemble"] = f"{name}_ensemble"
    return names


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _export_formats(
    run: Run, spec: ExportSpec, options: ExportOptions, work: Path
) -> tuple[dict[str, Path], dict[str, ParityReport], dict[str, dict[str, float]] | None]:
    """Export and verify every asked format in ``work``; return the files to serve, parity and quantization."""
    from mtlrec.export.onnx import export_onnx
    from mtlrec.export.torchscript import export_torchscript
    from mtlrec.export.validate import validate_export

    exporters = {"onnx": export_onnx, "torchscript": export_torchscript}
    formats = ["onnx", "torchscript"] if options.format == "both" else [options.format]
    files: dict[str, Path] = {}
    parity: dict[str, ParityReport] = {}
    for fmt in formats:
        path = exporters[fmt](run.model, spec, work / fmt / _FILES[fmt])
        parity[fmt] = validate_export(run.model, spec, run.schema, path, fmt, options.batch_sizes)  # type: ignore[arg-type]
        files[fmt] = path
    quantization = None
    if options.quantize == "int8":
        quantization = _quantize(run, spec, files["onnx"], work / "int8" / _FILES["onnx"], options.max_auc_drop)
        files["onnx"] = work / "int8" / _FILES["onnx"]
    return files, parity, quantization


def _quantize(run: Run, spec: ExportSpec, fp32: Path, int8: Path, max_auc_drop: float) -> dict[str, dict[str, float]]:
    from mtlrec.data.dataset import open_prepared
    from mtlrec.export.quantize import check_quantization, quantization_auc_change, quantize_onnx_int8

    data_dir = run.info.get("data_dir")
    if not data_dir:
        raise DataError(f"{run.root}/run.json records no data_dir", hint="export without --quantize")
    prepared = open_prepared(Path(data_dir))
    if prepared.schema.hash() != run.schema.hash():
        raise DataError(
            f"the data in {data_dir} was prepared with another schema than the run {run.root}",
            hint="quantization is measured on the run's own validation split; prepare it again or skip --quantize",
        )
    quantize_onnx_int8(fp32, int8)
    changes = quantization_auc_change(run.model, spec, fp32, int8, prepared.split("val"))
    check_quantization(changes, max_auc_drop)
    return changes


def _golden(run: Run, spec: ExportSpec, files: dict[str, Path], quantized: bool) -> dict[str, dict[str, Any]]:
    """The golden file of every exported format (see :mod:`mtlrec.export.golden`).

    Each artifact must answer the golden records (odd ones included: unseen ids, missing fields, extreme numbers)
    with finite values, probabilities in [0, 1], and, unless quantized, eager PyTorch's answers within the spec's
    tolerance: the same answer on every runtime.

    Raises:
        ExportError: an answer is not finite or leaves [0, 1].
        ToleranceExceeded: an artifact and eager PyTorch disagree on a golden record.
    """
    import torch

    from mtlrec.errors import ToleranceExceeded
    from mtlrec.export.validate import run_onnx, run_torchscript
    from mtlrec.export.wrapper import ExportWrapper, eval_mode

    records, labels = golden_file.golden_records(run.preprocessor)
    feed = golden_file.encode_records(run.preprocessor, spec, records)
    inputs = tuple(torch.from_numpy(feed[name]) for name in spec.input_names)
    with eval_mode(run.model), torch.no_grad():
        eager_out = ExportWrapper(run.model, spec)(*inputs)  # [N, 1] per output
    eager = {name: t.numpy().reshape(-1) for name, t in zip(spec.output_names, eager_out, strict=True)}
    probabilities = golden_file.probability_outputs(run.schema, spec.output_names)
    rows = len(records)
    golden_file.check_answers(eager, probabilities, rows, "eager PyTorch on the golden records")
    out: dict[str, dict[str, Any]] = {}
    for fmt, path in files.items():
        raw = run_onnx(path, feed) if fmt == "onnx" else run_torchscript(path, spec, inputs)
        answers = {name: np.asarray(raw[name], dtype=np.float32).reshape(-1) for name in spec.output_names}
        where = f"the {fmt} artifact on the golden records"
        golden_file.check_answers(answers, probabilities, rows, where)
        exact = not (fmt == "onnx" and quantized)  # int8 answers differ by design; the AUC gate judges them
        for name in spec.output_names if exact else []:
            diff = np.abs(answers[name].astype(np.float64) - eager[name].astype(np.float64))
            if not float(diff.max()) <= spec.atol[name]:
                row = int(np.argmax(diff))
                raise ToleranceExceeded(
                    f"{where}: `{name}` differs from eager PyTorch by {float(diff.max()):.3g} on record {row} "
                    f"({labels[row]}; atol {spec.atol[name]:g})",
                    hint="the runtimes disagree on odd input; check the model's handling of extreme values",
                )
        runtime = {"onnx": "onnxruntime", "torchscript": "torchscript"}[fmt] + (" int8" if not exact else "")
        out[fmt] = golden_file.build_golden(
            spec.model, spec.schema_hash, records, labels, answers, spec.output_names, runtime=runtime
        )
    return out


def _manifest(
    run: Run,
    spec: ExportSpec,
    names: dict[str, str],
    version: int,
    options: ExportOptions,
    parity: dict[str, ParityReport],
    quantization: dict[str, dict[str, float]] | None,
) -> dict[str, Any]:
    versions: dict[str, str | None] = dict(library_versions())
    for package in ("onnx", "onnxruntime", "tritonclient"):
        versions[package] = _package_version(package)
    return {
        "manifest_version": MANIFEST_VERSION,
        "version": version,
        "models": names,
        "model": spec.model,
        "schema_hash": spec.schema_hash,
        "inputs": spec.input_names,
        "outputs": spec.output_names,
        "versions": versions,
        "source_run": {
            "path": str(run.root.resolve()),
            "data_dir": run.info.get("data_dir"),
            "dataset": run.info.get("dataset"),
            "best_epoch": run.info.get("best_epoch"),
            "library_versions": run.info.get("versions"),
        },
        "metrics": run.metrics,
        "parity": {fmt: {k: v for k, v in report.to_dict().items() if k != "path"} for fmt, report in parity.items()},
        "quantization": None
        if quantization is None
        else {"mode": "int8", "max_auc_drop": options.max_auc_drop, "auc_change": quantization},
        "serving": options.serving.model_dump(mode="json"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def build_configs(
    run: Run, spec: ExportSpec, names: dict[str, str], version: int, serving: ServingOptions
) -> dict[str, ModelConfig]:
    """The config of every model of one export, by role, in dependency order (model(s), preprocess, ensemble)."""
    parameters = {"mtlrec_schema_hash": spec.schema_hash, "mtlrec_version": __version__, "mtlrec_model": spec.model}
    configs: dict[str, ModelConfig] = {}
    for fmt in ("onnx", "torchscript"):
        if fmt in names:
            configs[fmt] = build_model_config(spec, _PLATFORMS[fmt], names[fmt], serving, parameters)
    configs["preprocess"] = build_preprocess_config(run.schema, spec, names["preprocess"], serving, parameters)
    served = "onnx" if "onnx" in names else "torchscript"
    configs["ensemble"] = build_ensemble_config(
        run.schema,
        spec,
        names["ensemble"],
        (names["preprocess"], names[served]),
        _PLATFORMS[served],
        serving,
        version=version,
        parameters=parameters,
    )
    return configs


def build_models(
    run: Run,
    spec: ExportSpec,
    configs: dict[str, ModelConfig],
    files: dict[str, Path],
    manifest: dict[str, Any],
    golden: dict[str, dict[str, Any]] | None = None,
) -> list[ModelFiles]:
    """Each config with the files of its version directory (model file, schema, preprocessor, manifest, golden)."""
    common: dict[str, FileSource] = {
        "schema.json": run.schema.to_json(),
        "preprocessor.json": run.preprocessor.to_json(),
    }
    models: list[ModelFiles] = []
    for role, config in configs.items():
        role_manifest = {**manifest, "role": role, "triton_model": str(config.name)}
        version_files: dict[str, FileSource] = {"manifest.json": json.dumps(role_manifest, indent=1, default=str)}
        if role in files:
            version_files |= {_FILES[role]: files[role], **common, "export_spec.json": spec.model_dump_json(indent=1)}
            if golden and role in golden:
                version_files[golden_file.GOLDEN_FILE] = json.dumps(golden[role], indent=1)
        elif role == "preprocess":
            version_files |= {"model.py": Path(preprocess_model.__file__).read_text(), **common}
        models.append(ModelFiles(config, version_files))
    return models


def export_run(run_dir: Path, repo: Path = DEFAULT_REPOSITORY, options: ExportOptions | None = None) -> ExportResult:
    """Export a trained run into a new version of the Triton model repository ``repo``.

    Args:
        run_dir: a run directory written by ``mtlrec train``.
        repo: the model repository (created when missing).
        options: formats, names, batching, quantization; defaults to :class:`ExportOptions`.

    Returns:
        The version added, the model names per role, the parity reports and the quantization AUC change.

    Raises:
        CheckpointError: the run directory is incomplete.
        ConfigError: a bad option (name, --quantize without ONNX).
        ExportError: export, parity, the golden records (odd input must give finite answers that agree with eager
            PyTorch), quantization gate or repository validation failed (nothing was written).
    """
    options = options or ExportOptions()
    run = load_run(run_dir)
    name = options.name or run.config.model_name
    if not _MODEL_NAME.match(name):
        raise ConfigError(
            f"model name `{name}` is not usable in a Triton repository",
            hint="use letters, digits, `_`, `-` and `.`, not starting with `-` or `.`",
        )
    if options.quantize is not None and options.format == "torchscript":
        raise ConfigError("--quantize int8 applies to the ONNX model", hint="use --format onnx or both")
    names = model_names(name, options.format)
    spec = build_export_spec(run.schema, run.config.model_name, run.model.output_names)
    version = options.version if options.version is not None else next_version(repo, list(names.values()))
    configs = build_configs(run, spec, names, version, options.serving)
    check_writable(repo, list(configs.values()), version)  # refuse before the (slow) export and checks
    with tempfile.TemporaryDirectory(prefix="mtlrec-export-") as tmp:
        files, parity, quantization = _export_formats(run, spec, options, Path(tmp))
        golden = _golden(run, spec, files, quantized=quantization is not None)
        manifest = _manifest(run, spec, names, version, options, parity, quantization)
        models = build_models(run, spec, configs, files, manifest, golden)
        written = write_model_repository(repo, models, version=version)
    return ExportResult(written.repo, written.version, names, parity, quantization, manifest)
