"""Dynamic int8 quantization of an exported ONNX model, gated on the AUC it costs.

:func:`quantize_onnx_int8` stores the weights of MatMul/Gemm (and Gather) nodes as int8 with ONNX Runtime's
``quantize_dynamic``; activations are quantized on the fly at run time. Quantization changes scores, so an int8
model is only worth serving if ranking quality holds: :func:`quantization_auc_change` scores a labelled split with
both the fp32 and the int8 model, on the rows each output is defined on (the model's ``targets`` masks, e.g. cvr
on clicked rows), and :func:`check_quantization` refuses a drop above a threshold.

Example:
    >>> check_quantization({"ctr": {"auc_fp32": 0.75, "auc_int8": 0.749, "delta": -0.001}}, max_auc_drop=0.005)
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mtlrec.data.dataset import EncodedData
from mtlrec.errors import ExportError
from mtlrec.export.spec import ExportSpec
from mtlrec.export.validate import check_output_names, onnx_session, run_session
from mtlrec.models.base import MultiTaskModel

# Rows per ONNX Runtime call when scoring a split: bounded memory, few calls.
SCORE_CHUNK = 8192


def quantize_onnx_int8(src: Path, dst: Path) -> Path:
    """Write an int8-weight copy of the ONNX model ``src`` to ``dst`` (dynamic quantization).

    Args:
        src: the fp32 ``.onnx`` file.
        dst: where to write the quantized model (parent directories are created).

    Returns:
        ``dst``.

    Raises:
        ExportError: ONNX Runtime could not quantize the model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]
    from onnxruntime.quantization.shape_inference import quant_pre_process  # type: ignore[import-untyped]

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # ORT's recommended first step: shape inference and graph optimisation, so more nodes quantize.
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(src, prepared)
            quantize_dynamic(prepared, dst, weight_type=QuantType.QInt8)
    except Exception as exc:  # ORT raises plain exceptions of many types; keep the cause
        raise ExportError(f"int8 quantization of {src} failed: {type(exc).__name__}: {exc}") from exc
    return dst


def _score(path: Path, spec: ExportSpec, data: EncodedData) -> dict[str, np.ndarray]:
    """Outputs of an ONNX model for every row of ``data``, [N] per output."""
    session = onnx_session(path)
    missing = [n for n in spec.input_names if n not in data.features]
    if missing:
        raise ExportError(f"the data has no input tensors {missing}", hint="use a split of the model's own dataset")
    dtypes = {t.name: np.int64 if t.dtype == "int64" else np.float32 for t in spec.inputs}
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in spec.output_names}
    for start in range(0, len(data), SCORE_CHUNK):
        feed = {
            name: np.ascontiguousarray(data.features[name][start : start + SCORE_CHUNK].numpy(), dtype=dtypes[name])
            for name in spec.input_names
        }
        out = run_session(session, feed, f"ONNX model {path.name}")
        check_output_names(list(out), spec, f"ONNX model {path.name}")
        for name in spec.output_names:
            chunks[name].append(out[name].reshape(-1))  # [b, 1] -> [b]
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present."""
    positives = int(label.sum())
    if label.size == 0 or positives in (0, label.size):
        return math.nan
    return float(roc_auc_score(label, score.astype(np.float64)))


def quantization_auc_change(
    model: MultiTaskModel, spec: ExportSpec, fp32_path: Path, int8_path: Path, data: EncodedData
) -> dict[str, dict[str, float]]:
    """AUC of the fp32 and the int8 ONNX model per binary output on a labelled split, and the change.

    Each output is scored on the rows where it is defined: the masks of ``model.targets(data.labels)`` (a
    ``conditioned_on`` task only on its parent's positive rows). Regression outputs have no AUC and are left out.

    Args:
        model: the model both files were exported from (for its targets and masks).
        spec: the export contract (input and output names).
        fp32_path: the fp32 ``.onnx`` file.
        int8_path: its quantized copy.
        data: a labelled split (e.g. ``open_prepared(dir).split("val")``).

    Returns:
        ``{output: {"auc_fp32", "auc_int8", "delta", "rows"}}`` with ``delta = auc_int8 - auc_fp32`` (NaN AUCs when
        the rows hold only one class).

    Raises:
        ExportError: the split has no labels, or lacks an input the spec declares.
    """
    if not data.labels:
        raise ExportError("the split has no labels to measure the AUC change on", hint="use the validation split")
    targets = model.targets(data.labels)
    fp32 = _score(fp32_path, spec, data)
    int8 = _score(int8_path, spec, data)
    changes: dict[str, dict[str, float]] = {}
    for name in spec.output_names:
        target = targets.get(name)
        if target is None or target.kind != "binary":
            continue
        mask = target.mask if target.mask is not None else torch.ones_like(target.label, dtype=torch.bool)
        keep = mask.numpy()
        label = target.label.numpy()[keep]
        before, after = _auc(label, fp32[name][keep]), _auc(label, int8[name][keep])
        changes[name] = {"auc_fp32": before, "auc_int8": after, "delta": after - before, "rows": float(keep.sum())}
    return changes


def check_quantization(changes: dict[str, dict[str, float]], max_auc_drop: float) -> None:
    """Refuse an int8 model whose AUC drops by more than ``max_auc_drop`` on any output.

    Args:
        changes: the result of :func:`quantization_auc_change`.
        max_auc_drop: the largest allowed ``auc_fp32 - auc_int8`` (e.g. 0.001).

    Raises:
        ExportError: naming each output over the threshold and its drop, or an output whose AUC could not be
            measured (one class only).
    """
    failures: list[str] = []
    for name, change in changes.items():
        drop = change["auc_fp32"] - change["auc_int8"]
        if math.isnan(drop):
            failures.append(f"`{name}`: AUC not measurable (only one class on its rows)")
        elif drop > max_auc_drop:
            failures.append(f"`{name}`: AUC drops by {drop:.5f} ({change['auc_fp32']:.5f} -> {change['auc_int8']:.5f})")
    if failures:
        raise ExportError(
            f"int8 quantization exceeds the allowed AUC drop of {max_auc_drop:g}: " + "; ".join(failures),
            hint="serve the fp32 model, or measure on a larger validation split",
        )
