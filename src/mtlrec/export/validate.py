"""Parity of an exported artifact with eager PyTorch, checked before the artifact enters a model repository.

:func:`validate_export` runs the eager model (through :class:`~mtlrec.export.wrapper.ExportWrapper`, eval mode)
and the artifact (ONNX Runtime on CPU, or the TorchScript module) on fresh random batches whose sizes differ from
the tracing batch (default 1, 7 and 1024; see :func:`~mtlrec.export.wrapper.tracing_batch_size`), then checks, in
this order and per batch size:

1. output **names** equal the spec's (:class:`~mtlrec.errors.ExportError` naming the missing and extra ones);
2. output **shapes** are ``[B, *shape]`` (:class:`~mtlrec.errors.ShapeMismatch` naming the output, expected and
   got) and dtypes float32;
3. values are finite, and probabilities (every output but a regression task) lie in [0, 1]
   (:class:`~mtlrec.errors.ExportError`);
4. values are within ``spec.atol[output]`` of eager (:class:`~mtlrec.errors.ToleranceExceeded` naming the output
   and the max abs difference).

The inputs come from :func:`~mtlrec.export.wrapper.example_inputs`: ids over whole vocabularies (OOV and missing
rows included) and dense values with ±40 extremes.

Example:
    >>> from pathlib import Path
    >>> from tempfile import TemporaryDirectory
    >>> from mtlrec.models import build_model
    >>> from mtlrec.export.spec import build_export_spec
    >>> from mtlrec.export.torchscript import export_torchscript
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=5),), tasks=(TaskSpec(name="ctr"),))
    >>> model = build_model("shared_bottom", {"bottom": {"hidden": [4]}}, schema)
    >>> spec = build_export_spec(schema, "shared_bottom", model.output_names)
    >>> with TemporaryDirectory() as tmp:
    ...     path = export_torchscript(model, spec, Path(tmp) / "model.pt")
    ...     validate_export(model, spec, schema, path, "torchscript", batch_sizes=(1, 7)).batch_sizes
    [1, 7]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mtlrec.errors import ExportError, ShapeMismatch, ToleranceExceeded
from mtlrec.export.spec import ExportSpec
from mtlrec.export.wrapper import ExportWrapper, eval_mode, example_inputs, to_numpy_feed
from mtlrec.models.base import MultiTaskModel
from mtlrec.schema import FeatureSchema

ExportFormat = Literal["onnx", "torchscript"]
DEFAULT_BATCH_SIZES = (1, 7, 1024)
# Why a fixed offset: validation batches are drawn from other seeds than the tracing batch (seed 0).
_SEED_OFFSET = 1000


@dataclass
class ParityReport:
    """The outcome of a passed :func:`validate_export`.

    Attributes:
        format: ``onnx`` or ``torchscript``.
        batch_sizes: the batch sizes checked.
        max_abs_diff: per output, the largest |artifact - eager| over every checked row.
        atol: per output, the tolerance it was checked against (the spec's).
        rows: total rows compared per output.
        path: the artifact checked.
    """

    format: str
    batch_sizes: list[int]
    max_abs_diff: dict[str, float]
    atol: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for a manifest or a report)."""
        return {
            "format": self.format,
            "batch_sizes": list(self.batch_sizes),
            "max_abs_diff": dict(self.max_abs_diff),
            "atol": dict(self.atol),
            "rows": self.rows,
            "path": self.path,
        }


def onnx_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (1 = deterministic and cheap)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_session(session: Any, feed: dict[str, np.ndarray], where: str = "ONNX model") -> dict[str, np.ndarray]:
    """Run an ONNX Runtime session on ``feed``; every output by name, in graph order.

    Raises:
        ExportError: the feed's names are not the graph's inputs.
    """
    expected = [i.name for i in session.get_inputs()]
    missing = [n for n in expected if n not in feed]
    extra = [n for n in feed if n not in expected]
    if missing or extra:
        raise ExportError(f"{where} takes inputs {expected}; the feed lacks {missing} and has extra {extra}")
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feed)
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def run_onnx(path: Path, feed: dict[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """Run an ONNX model with ONNX Runtime on CPU.

    Args:
        path: the ``.onnx`` file.
        feed: one array per graph input, by name.
        threads: intra-op threads of the session.

    Returns:
        Every graph output by name, in graph order.

    Raises:
        ExportError: the feed's names are not the graph's inputs.
    """
    return run_session(onnx_session(path, threads), feed, f"ONNX model {path}")


def run_torchscript(path: Path, spec: ExportSpec, inputs: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    """Run a TorchScript model on positional inputs and name its outputs after the spec.

    Args:
        path: the ``.pt`` file written by ``torch.jit.save``.
        spec: the contract whose output names the returned tuple is matched to, in order.
        inputs: one tensor per spec input, in order.

    Returns:
        ``{spec output name: array}``.

    Raises:
        ExportError: the module's ``forward`` argument names are not the spec's inputs, or it returns another
            number of outputs than the spec names.
    """
    from mtlrec.export.torchscript import torchscript_input_names

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; Triton still serves it
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    module.eval()
    arguments = torchscript_input_names(module)
    if arguments != spec.input_names:
        raise ExportError(f"TorchScript model {path} takes {arguments}, the spec's inputs are {spec.input_names}")
    with torch.no_grad():
        result = module(*inputs)
    outputs = list(result) if isinstance(result, tuple | list) else [result]
    if len(outputs) != len(spec.output_names):
        raise ExportError(
            f"TorchScript model {path} returns {len(outputs)} outputs; the spec names {len(spec.output_names)}: "
            f"{spec.output_names}",
            hint="export again from the model the spec was built for",
        )
    return {name: out.detach().cpu().numpy() for name, out in zip(spec.output_names, outputs, strict=True)}


def _run_artifact(path: Path, fmt: ExportFormat, spec: ExportSpec, inputs: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    if fmt == "onnx":
        return run_onnx(path, to_numpy_feed(spec, inputs))
    if fmt == "torchscript":
        return run_torchscript(path, spec, inputs)
    raise ExportError(f"unknown export format `{fmt}`", hint="use onnx or torchscript")


def check_output_names(got: list[str], spec: ExportSpec, where: str) -> None:
    """Raise :class:`ExportError` unless ``got`` equals the spec's output names, in order."""
    expected = spec.output_names
    if got == expected:
        return
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing or extra:
        raise ExportError(f"{where} outputs differ from the spec: missing {missing}, extra {extra} (got {got})")
    raise ExportError(f"{where} outputs are in order {got}, the spec's order is {expected}")


def _check_shapes(outputs: dict[str, np.ndarray], spec: ExportSpec, batch_size: int, where: str) -> None:
    for tensor in spec.outputs:
        value = outputs[tensor.name]
        expected = (batch_size, *tensor.shape)
        if tuple(value.shape) != expected:
            raise ShapeMismatch(
                f"{where} output `{tensor.name}` has shape {list(value.shape)}, expected {list(expected)}",
                hint="the batch axis may have been specialised at export; export again",
            )
        if str(value.dtype) != tensor.dtype:
            raise ExportError(f"{where} output `{tensor.name}` has dtype {value.dtype}, the spec {tensor.dtype}")


def _check_values(outputs: dict[str, np.ndarray], probabilities: set[str], batch_size: int, where: str) -> None:
    for name, value in outputs.items():
        bad = int((~np.isfinite(value)).sum())
        if bad:
            raise ExportError(f"{where} output `{name}` has {bad} non-finite values at batch size {batch_size}")
        if name in probabilities and (value.min() < 0.0 or value.max() > 1.0):
            raise ExportError(
                f"{where} output `{name}` leaves [0, 1] at batch size {batch_size}: "
                f"min {float(value.min()):.6g}, max {float(value.max()):.6g}"
            )


def validate_export(
    model: MultiTaskModel,
    spec: ExportSpec,
    schema: FeatureSchema,
    path: Path,
    fmt: ExportFormat,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
) -> ParityReport:
    """Compare an exported artifact with eager PyTorch; see the module docstring for the checks and their order.

    The model's train/eval mode is restored afterwards.

    Args:
        model: the eager model the artifact was exported from.
        spec: the contract (names, shapes, tolerances).
        schema: the fitted schema (vocabularies and scenarios of the random inputs).
        path: the artifact (``.onnx`` or TorchScript ``.pt``).
        fmt: ``onnx`` or ``torchscript``.
        batch_sizes: the batch sizes to check; include 1 and sizes other than the tracing batch.

    Returns:
        A :class:`ParityReport` with the max abs difference per output.

    Raises:
        ExportError: output names differ, a dtype differs, or an output is non-finite or a probability outside
            [0, 1].
        ShapeMismatch: an output has the wrong shape.
        ToleranceExceeded: an output differs from eager by more than ``spec.atol``.
    """
    where = f"{fmt} artifact {path.name}"
    no_atol = [name for name in spec.output_names if name not in spec.atol]
    if no_atol:
        raise ExportError(f"the export spec has no tolerance for outputs {no_atol}", hint="rebuild the spec")
    regression = {t.name for t in schema.tasks if t.kind == "regression"}
    probabilities = {name for name in spec.output_names if name not in regression}
    worst = dict.fromkeys(spec.output_names, 0.0)
    rows = 0
    for batch_size in batch_sizes:
        inputs = example_inputs(spec, schema, batch_size, seed=_SEED_OFFSET + batch_size)
        got = _run_artifact(path, fmt, spec, inputs)
        check_output_names(list(got), spec, where)
        _check_shapes(got, spec, batch_size, where)
        _check_values(got, probabilities, batch_size, where)
        wrapper = ExportWrapper(model, spec)
        with eval_mode(model), torch.no_grad():
            eager = dict(zip(spec.output_names, (t.numpy() for t in wrapper(*inputs)), strict=True))
        for name in spec.output_names:
            diff = float(np.abs(got[name].astype(np.float64) - eager[name].astype(np.float64)).max())
            atol = spec.atol[name]
            if not diff <= atol:  # also catches NaN
                raise ToleranceExceeded(
                    f"{where} output `{name}` differs from eager PyTorch by up to {diff:.3g} at batch size "
                    f"{batch_size} (atol {atol:g})",
                    hint="the artifact was exported from another model or in train mode; export it again",
                )
            worst[name] = max(worst[name], diff)
        rows += batch_size
    return ParityReport(
        format=fmt,
        batch_sizes=list(batch_sizes),
        max_abs_diff=worst,
        atol={name: spec.atol[name] for name in spec.output_names},
        rows=rows,
        path=str(path),
    )
