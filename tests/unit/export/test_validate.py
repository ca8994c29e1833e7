"""Parity validation: it passes a faithful export and names the output when names, shapes or values differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mtlrec.errors import ExportError, ShapeMismatch, ToleranceExceeded
from mtlrec.export.onnx import export_onnx
from mtlrec.export.spec import ExportSpec, TensorSpec, build_export_spec
from mtlrec.export.torchscript import export_torchscript
from mtlrec.export.validate import ParityReport, run_onnx, run_torchscript, validate_export
from mtlrec.export.wrapper import example_inputs, to_numpy_feed
from mtlrec.models import MultiTaskModel, build_model
from mtlrec.models.blocks import Tower
from mtlrec.schema import DenseField, FeatureSchema, SparseField, TaskSpec

Format = Literal["onnx", "torchscript"]
FORMATS: list[Format] = ["onnx", "torchscript"]
CONFIG = {"embed_dim": 4, "num_experts": 2, "expert": {"hidden": [8], "batch_norm": True}, "tower": {"hidden": [4]}}


def _mmoe(schema: FeatureSchema, seed: int) -> MultiTaskModel:
    torch.manual_seed(seed)
    return build_model("mmoe", CONFIG, schema)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An MMoE over the ctr→cvr schema, exported once to ONNX and TorchScript for this module."""
    schema = FeatureSchema(
        sparse=(SparseField(name="user", vocab_size=12), SparseField(name="item", vocab_size=9)),
        dense=(DenseField(name="price"),),
        tasks=(TaskSpec(name="ctr"), TaskSpec(name="cvr", conditioned_on="ctr")),
    )
    model = _mmoe(schema, seed=0)
    spec = build_export_spec(schema, "mmoe", model.output_names)
    root = tmp_path_factory.mktemp("validate")
    paths = {
        "onnx": export_onnx(model, spec, root / "m.onnx"),
        "torchscript": export_torchscript(model, spec, root / "m.pt"),
    }
    return {"schema": schema, "model": model, "spec": spec, "paths": paths}


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_export_reports_max_abs_diff_per_output_when_faithful(fmt: Format, artifacts: dict[str, Any]) -> None:
    report = validate_export(artifacts["model"], artifacts["spec"], artifacts["schema"], artifacts["paths"][fmt], fmt)
    assert isinstance(report, ParityReport)
    assert report.batch_sizes == [1, 7, 1024] and report.rows == 1032
    assert set(report.max_abs_diff) == {"ctr", "cvr"} and report.atol == {"ctr": 1e-5, "cvr": 1e-5}
    assert all(0.0 <= d <= 1e-5 for d in report.max_abs_diff.values())
    assert report.to_dict()["format"] == fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_export_raises_tolerance_exceeded_naming_the_output_when_weights_differ(
    fmt: Format, artifacts: dict[str, Any]
) -> None:
    other = _mmoe(artifacts["schema"], seed=1)  # same architecture, other weights
    with pytest.raises(ToleranceExceeded, match=r"output `ctr` differs from eager PyTorch by up to 0\.\d+"):
        validate_export(other, artifacts["spec"], artifacts["schema"], artifacts["paths"][fmt], fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_export_raises_shape_mismatch_when_the_spec_shape_differs(
    fmt: Format, artifacts: dict[str, Any]
) -> None:
    spec: ExportSpec = artifacts["spec"]
    wide = spec.model_copy(
        update={"outputs": [TensorSpec(name=n, dtype="float32", shape=[2]) for n in spec.output_names]}
    )
    with pytest.raises(ShapeMismatch, match=r"output `ctr` has shape \[1, 1\], expected \[1, 2\]"):
        validate_export(artifacts["model"], wide, artifacts["schema"], artifacts["paths"][fmt], fmt)


def test_validate_export_raises_export_error_naming_missing_and_extra_outputs(artifacts: dict[str, Any]) -> None:
    spec: ExportSpec = artifacts["spec"]
    renamed = spec.model_copy(
        update={
            "outputs": [
                TensorSpec(name="ctr", dtype="float32", shape=[1]),
                TensorSpec(name="buy", dtype="float32", shape=[1]),
            ],
            "atol": {"ctr": 1e-5, "buy": 1e-5},
        }
    )
    with pytest.raises(ExportError, match=r"missing \['buy'\], extra \['cvr'\]"):
        validate_export(artifacts["model"], renamed, artifacts["schema"], artifacts["paths"]["onnx"], "onnx")


def test_validate_export_raises_export_error_when_torchscript_returns_another_number_of_outputs(
    artifacts: dict[str, Any],
) -> None:
    spec: ExportSpec = artifacts["spec"]
    more = spec.model_copy(
        update={
            "outputs": [*spec.outputs, TensorSpec(name="ctcvr", dtype="float32", shape=[1])],
            "atol": {**spec.atol, "ctcvr": 1e-5},
        }
    )
    with pytest.raises(ExportError, match="returns 2 outputs; the spec names 3"):
        validate_export(artifacts["model"], more, artifacts["schema"], artifacts["paths"]["torchscript"], "torchscript")


def test_run_onnx_names_missing_and_extra_inputs(artifacts: dict[str, Any]) -> None:
    spec: ExportSpec = artifacts["spec"]
    feed = to_numpy_feed(spec, example_inputs(spec, artifacts["schema"], 2))
    feed["scenario"] = np.zeros(2, dtype=np.int64)
    del feed["dense"]
    with pytest.raises(ExportError, match=r"lacks \['dense'\] and has extra \['scenario'\]"):
        run_onnx(artifacts["paths"]["onnx"], feed)


def test_run_onnx_and_run_torchscript_return_outputs_by_spec_name(artifacts: dict[str, Any]) -> None:
    spec: ExportSpec = artifacts["spec"]
    inputs = example_inputs(spec, artifacts["schema"], 5)
    by_onnx = run_onnx(artifacts["paths"]["onnx"], to_numpy_feed(spec, inputs), threads=2)
    by_ts = run_torchscript(artifacts["paths"]["torchscript"], spec, inputs)
    assert list(by_onnx) == list(by_ts) == ["ctr", "cvr"]
    assert all(by_onnx[n].shape == by_ts[n].shape == (5, 1) for n in spec.output_names)


class Scaled(MultiTaskModel):
    """Sigmoid of a linear map times ``scale``, or NaN: a binary output that can leave [0, 1]."""

    def __init__(self, schema: FeatureSchema, scale: float) -> None:
        super().__init__(self.config_class(), schema)
        self.linear = nn.Linear(len(schema.dense), 1)
        self.scale = scale

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.schema.task_names[0]: torch.sigmoid(self.linear(features["dense"]).squeeze(-1)) * self.scale}


@pytest.mark.parametrize(("scale", "message"), [(3.0, r"output `ctr` leaves \[0, 1\]"), (float("nan"), "non-finite")])
def test_validate_export_refuses_probabilities_outside_unit_interval_or_non_finite(
    scale: float, message: str, tmp_path: Path
) -> None:
    schema = FeatureSchema(dense=(DenseField(name="x"),), tasks=(TaskSpec(name="ctr"),))
    model = Scaled(schema, scale)
    spec = build_export_spec(schema, "scaled", model.output_names)
    path = export_torchscript(model, spec, tmp_path / "m.pt")
    with pytest.raises(ExportError, match=message):
        validate_export(model, spec, schema, path, "torchscript", batch_sizes=(4,))


def test_validate_export_accepts_regression_values_outside_unit_interval(tmp_path: Path) -> None:
    schema = FeatureSchema(
        dense=(DenseField(name="x"), DenseField(name="y")),
        tasks=(TaskSpec(name="ctr"), TaskSpec(name="dwell", kind="regression")),
    )
    torch.manual_seed(0)
    model = build_model("shared_bottom", {"bottom": {"hidden": [8]}, "tower": {"hidden": [4]}}, schema)
    towers = model.towers
    assert isinstance(towers, nn.ModuleList)
    tower = towers[model.task_names.index("dwell")]  # one tower per head, in task order on the mtl track
    assert isinstance(tower, Tower)
    bias = tower.out.bias
    with torch.no_grad():
        bias.fill_(5.0)  # regression values far above 1
    spec = build_export_spec(schema, "shared_bottom", model.output_names)
    for fmt, path in (
        ("onnx", export_onnx(model, spec, tmp_path / "m.onnx")),
        ("torchscript", export_torchscript(model, spec, tmp_path / "m.pt")),
    ):
        report = validate_export(model, spec, schema, path, fmt, batch_sizes=(1, 7))  # type: ignore[arg-type]
        assert report.max_abs_diff["dwell"] <= 1e-5


def test_validate_export_refuses_an_unknown_format(artifacts: dict[str, Any]) -> None:
    with pytest.raises(ExportError, match="unknown export format `tflite`"):
        fmt: Any = "tflite"
        validate_export(artifacts["model"], artifacts["spec"], artifacts["schema"], artifacts["paths"]["onnx"], fmt)
