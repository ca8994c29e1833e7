"""Dynamic int8 quantization: the int8 model runs, its AUC change is reported per output and gated."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from mtlrec.data.dataset import open_prepared
from mtlrec.errors import ExportError
from mtlrec.export.onnx import export_onnx
from mtlrec.export.quantize import check_quantization, quantization_auc_change, quantize_onnx_int8
from mtlrec.export.spec import build_export_spec
from mtlrec.export.validate import run_onnx
from mtlrec.export.wrapper import example_inputs, to_numpy_feed
from mtlrec.models import build_model


@pytest.fixture(scope="module")
def quantized(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An ESMM trained briefly on the synthetic train split, exported to fp32 ONNX and quantized to int8."""
    data = open_prepared(synthetic_dir)
    schema = data.schema
    torch.manual_seed(0)
    model = build_model("esmm", {"embed_dim": 8, "ctr_tower": {"hidden": [32]}, "cvr_tower": {"hidden": [32]}}, schema)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for batch in data.split("train").batches(512):
        _, losses = model.compute_loss(batch.features, batch.labels)
        optimizer.zero_grad()
        torch.autograd.backward(torch.stack(list(losses.values())).sum())
        optimizer.step()
    spec = build_export_spec(schema, "esmm", model.output_names)
    root = tmp_path_factory.mktemp("quantize")
    fp32 = export_onnx(model, spec, root / "fp32.onnx")
    int8 = quantize_onnx_int8(fp32, root / "int8" / "model.onnx")
    return {"model": model, "spec": spec, "schema": schema, "fp32": fp32, "int8": int8, "val": data.split("val")}


def test_int8_model_has_integer_weights_and_runs_with_the_spec_io(quantized: dict[str, Any]) -> None:
    graph = onnx.load(str(quantized["int8"])).graph
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)
    spec = quantized["spec"]
    feed = to_numpy_feed(spec, example_inputs(spec, quantized["schema"], 7))
    outputs = run_onnx(quantized["int8"], feed)
    assert list(outputs) == spec.output_names == ["ctr", "cvr", "ctcvr"]
    for name, value in outputs.items():
        assert value.shape == (7, 1) and value.dtype == np.float32, name
        assert np.isfinite(value).all() and (value >= 0).all() and (value <= 1).all(), name


def test_quantization_auc_change_is_reported_per_output_on_its_own_rows(quantized: dict[str, Any]) -> None:
    val = quantized["val"]
    changes = quantization_auc_change(quantized["model"], quantized["spec"], quantized["fp32"], quantized["int8"], val)
    assert list(changes) == ["ctr", "cvr", "ctcvr"]
    for name, change in changes.items():
        assert set(change) == {"auc_fp32", "auc_int8", "delta", "rows"}, name
        assert 0.5 < change["auc_fp32"] <= 1.0, (name, change)  # the model learned something
        assert change["delta"] == pytest.approx(change["auc_int8"] - change["auc_fp32"])
        assert abs(change["delta"]) < 0.05, (name, change)
    # cvr is scored on clicked rows only (ESMM's target mask), ctr and ctcvr on every row.
    assert changes["ctr"]["rows"] == changes["ctcvr"]["rows"] == len(val)
    assert changes["cvr"]["rows"] == float(val.labels["ctr"].sum())


def test_check_quantization_raises_naming_the_output_above_the_threshold(quantized: dict[str, Any]) -> None:
    changes = quantization_auc_change(
        quantized["model"], quantized["spec"], quantized["fp32"], quantized["int8"], quantized["val"]
    )
    check_quantization(changes, max_auc_drop=1.0)
    with pytest.raises(ExportError, match=r"`ctr`: AUC drops by -?\d\.\d{5}"):
        check_quantization(changes, max_auc_drop=-1.0)


def test_check_quantization_refuses_an_auc_it_could_not_measure() -> None:
    changes = {"cvr": {"auc_fp32": math.nan, "auc_int8": math.nan, "delta": math.nan, "rows": 3.0}}
    with pytest.raises(ExportError, match="`cvr`: AUC not measurable"):
        check_quantization(changes, max_auc_drop=1.0)


def test_quantize_onnx_int8_names_a_file_it_cannot_quantize(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ExportError, match=r"int8 quantization of .*bad\.onnx failed"):
        quantize_onnx_int8(bad, tmp_path / "out.onnx")
