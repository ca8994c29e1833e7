"""ONNX and TorchScript export of every registered model: parity with eager PyTorch, names, dynamic batch, OOV.

Every registered model needs an entry in ``EXPORT_CASES`` (a small config with dropout and batch norm on, so a
train-mode leftover would show); a registered model without one fails
``test_every_registered_model_has_an_export_case``. Each model is exported over three schemas: the ctr→cvr funnel
with a scenario and dense fields (``tiny_schema``), no scenario (``tiny_schema_no_funnel``) and no dense fields;
one model also over dense fields only (no embedding at all). Models are trained a few steps first (non-trivial
batch-norm statistics) and handed to the exporters in train mode.

Each ONNX export costs a second or two (torch.export, decompositions, the torchlib registry), so artifacts are
exported once per module and shared by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from model_cases import CASES, FUNNEL_MODELS, case_config
from mtlrec.data.dataset import Batch
from mtlrec.errors import ExportError
from mtlrec.export.onnx import _restore_inputs, check_onnx_graph, export_onnx
from mtlrec.export.spec import ExportSpec, build_export_spec
from mtlrec.export.torchscript import export_torchscript, torchscript_input_names
from mtlrec.export.validate import run_onnx, run_torchscript, validate_export
from mtlrec.export.wrapper import ExportWrapper, eval_mode, example_inputs, to_numpy_feed
from mtlrec.models import MultiTaskModel, build_model, get_model_class, list_models
from mtlrec.schema import (
    MISSING_ID,
    OOV_ID,
    SCENARIO,
    DenseField,
    FeatureSchema,
    ScenarioField,
    SparseField,
    TaskSpec,
)

BatchFactory = Callable[[FeatureSchema, int, int], Batch]
Format = Literal["onnx", "torchscript"]

SCHEMAS = ["tiny_schema", "tiny_schema_no_funnel", "sparse_only_schema"]
REGISTERED = sorted(info.name for info in list_models())
FORMATS: list[Format] = ["onnx", "torchscript"]
PARITY_ATOL = 1e-5


# Models that slice the input layer themselves (per field or per part) get the schemas without a scenario or without
# dense fields too; the others build on FeatureEmbedding, whose layouts shared_bottom covers.
LAYOUT_MODELS = {"shared_bottom", "mssm", "pepnet", "star", "apg", "automtl"}


def _export_matrix() -> list[tuple[str, str, str]]:
    """(model, schema fixture, track): every model on tiny_schema (mtl) and on mtmsl (the routed heads; msl is its
    one-task case), plus the other input layouts for LAYOUT_MODELS. Each ONNX export costs 1-2 s: the matrix is
    chosen to cover every code path once, not every combination."""
    matrix: list[tuple[str, str, str]] = []
    for name in REGISTERED:
        cls = get_model_class(name)
        if "mtl" in cls.tracks:
            schemas = SCHEMAS if name in LAYOUT_MODELS else ["tiny_schema"]
            matrix += [(name, s, "mtl") for s in schemas if s != "tiny_schema_no_funnel" or not cls.needs_scenario]
        if "mtmsl" in cls.tracks:
            matrix.append((name, "tiny_schema", "mtmsl"))
        elif "msl" in cls.tracks:
            matrix.append((name, "tiny_schema", "msl"))
    return matrix


EXPORT_MATRIX = _export_matrix()
# The first case of each model: on tiny_schema, its first track.
FIRST = {name: next(c for c in EXPORT_MATRIX if c[0] == name) for name in REGISTERED}


@pytest.fixture
def sparse_only_schema() -> FeatureSchema:
    """No dense field: sparse ids and a 3-value scenario, a ctr→cvr funnel."""
    return FeatureSchema(
        sparse=(SparseField(name="user", vocab_size=11), SparseField(name="item", vocab_size=4)),
        scenario=ScenarioField(name="site", values=("a", "b", "c")),
        tasks=(TaskSpec(name="ctr"), TaskSpec(name="cvr", conditioned_on="ctr")),
    )


@pytest.fixture
def dense_only_schema() -> FeatureSchema:
    """Dense fields only: no embedding at all, a click→buy funnel."""
    return FeatureSchema(
        dense=(DenseField(name="price"), DenseField(name="age"), DenseField(name="dwell")),
        tasks=(TaskSpec(name="click"), TaskSpec(name="buy", conditioned_on="click")),
    )


def model_config(name: str, schema: FeatureSchema, track: str = "mtl") -> dict[str, Any]:
    """The case's config (dropout and batch norm on); a funnel model on a schema without a funnel gets one forced."""
    if name not in CASES:
        pytest.fail(f"model `{name}` is registered but has no entry in tests/model_cases.py")
    config = case_config(name, track=track, task=schema.task_names[0])
    if name in FUNNEL_MODELS and not any(t.conditioned_on for t in schema.tasks):
        config["funnel"] = schema.task_names[:2]
    return config


def trained_model(
    name: str, schema: FeatureSchema, factory: BatchFactory, seed: int = 0, track: str = "mtl"
) -> MultiTaskModel:
    """A model after three Adam steps, left in train mode (dropout on, batch-norm statistics moved)."""
    torch.manual_seed(seed)
    model = build_model(name, model_config(name, schema, track), schema).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        batch = factory(schema, 64, step)
        _, losses = model.compute_loss(batch.features, batch.labels)
        optimizer.zero_grad()
        torch.autograd.backward(torch.stack(list(losses.values())).sum())
        optimizer.step()
    return model


@dataclass
class Exported:
    model: MultiTaskModel
    spec: ExportSpec
    schema: FeatureSchema
    paths: dict[str, Path]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[tuple[str, str], Exported], Path]:
    """Exports shared by the tests of this module, keyed by (model, schema fixture)."""
    return {}, tmp_path_factory.mktemp("exports")


def exported(name: str, schema_fixture: str, request: pytest.FixtureRequest, track: str = "mtl") -> Exported:
    """Train, then export ``name`` on ``schema_fixture`` and ``track`` to ONNX and TorchScript (once per module)."""
    store, root = request.getfixturevalue("cache")
    key = (name, schema_fixture, track)
    if key not in store:
        schema: FeatureSchema = request.getfixturevalue(schema_fixture)
        model = trained_model(name, schema, request.getfixturevalue("batch_factory"), track=track)
        spec = build_export_spec(schema, name, model.output_names)
        out = root / f"{name}-{schema_fixture}-{track}"
        paths = {
            "onnx": export_onnx(model, spec, out / "model.onnx"),
            "torchscript": export_torchscript(model, spec, out / "model.pt"),
        }
        assert model.training, "the exporters must restore the model's train mode"
        store[key] = Exported(model, spec, schema, paths)
    result: Exported = store[key]
    return result


def run_artifact(case: Exported, fmt: Format, inputs: tuple[Tensor, ...], path: Path | None = None) -> dict[str, Any]:
    path = path or case.paths[fmt]
    if fmt == "onnx":
        return run_onnx(path, to_numpy_feed(case.spec, inputs))
    return run_torchscript(path, case.spec, inputs)


def eager(case: Exported, inputs: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    with eval_mode(case.model), torch.no_grad():
        outputs = ExportWrapper(case.model, case.spec)(*inputs)
    return {name: t.numpy() for name, t in zip(case.spec.output_names, outputs, strict=True)}


def test_every_registered_model_has_an_export_case() -> None:
    missing = sorted(set(REGISTERED) - set(CASES))
    assert not missing, f"registered models without a case in tests/model_cases.py: {missing}"
    assert {name for name, _, _ in EXPORT_MATRIX} == set(REGISTERED)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("name", "schema_fixture", "track"), EXPORT_MATRIX)
def test_export_matches_eager_at_batch_sizes_1_2_7_1024(
    name: str, schema_fixture: str, track: str, fmt: Format, request: pytest.FixtureRequest
) -> None:
    case = exported(name, schema_fixture, request, track)
    report = validate_export(case.model, case.spec, case.schema, case.paths[fmt], fmt, batch_sizes=(1, 2, 7, 1024))
    assert report.format == fmt and report.batch_sizes == [1, 2, 7, 1024]
    assert list(report.max_abs_diff) == case.model.output_names
    assert max(report.max_abs_diff.values()) <= PARITY_ATOL, report.max_abs_diff
    assert case.model.training, "validation must restore the model's train mode"


@pytest.mark.parametrize(("name", "schema_fixture", "track"), EXPORT_MATRIX)
def test_onnx_graph_io_is_the_spec_with_a_symbolic_batch_axis(
    name: str, schema_fixture: str, track: str, request: pytest.FixtureRequest
) -> None:
    case = exported(name, schema_fixture, request, track)
    graph = onnx.load(str(case.paths["onnx"])).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    assert [i.name for i in inputs] == case.spec.input_names
    assert [o.name for o in graph.output] == case.spec.output_names == case.model.output_names
    for value, tensor in zip([*inputs, *graph.output], [*case.spec.inputs, *case.spec.outputs], strict=True):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value"), value.name
        assert [d.dim_value for d in dims[1:]] == tensor.shape, value.name
        assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == np.dtype(tensor.dtype)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("name", "schema_fixture", "track"), EXPORT_MATRIX)
def test_torchscript_forward_takes_the_spec_input_names(
    name: str, schema_fixture: str, track: str, request: pytest.FixtureRequest
) -> None:
    case = exported(name, schema_fixture, request, track)
    module = torch.jit.load(str(case.paths["torchscript"]))  # type: ignore[no-untyped-call]
    assert torchscript_input_names(module) == case.spec.input_names
    inputs = example_inputs(case.spec, case.schema, 3, seed=5)
    outputs = module(**dict(zip(case.spec.input_names, inputs, strict=True)))  # bound by name, as Triton does
    assert isinstance(outputs, tuple) and [tuple(o.shape) for o in outputs] == [(3, 1)] * len(case.spec.outputs)


@pytest.mark.parametrize("name", REGISTERED)
def test_oov_and_missing_rows_score_the_same_in_eager_ort_and_torchscript(
    name: str, request: pytest.FixtureRequest
) -> None:
    case = exported(FIRST[name][0], FIRST[name][1], request, FIRST[name][2])
    sparse, dense, scenario = example_inputs(case.spec, case.schema, 6, seed=9)
    sparse[:3] = OOV_ID  # rows 0-2: every field unseen
    sparse[3:] = MISSING_ID  # rows 3-5: every field missing
    inputs = (sparse, dense, scenario)
    reference = eager(case, inputs)
    for fmt in FORMATS:
        got = run_artifact(case, fmt, inputs)
        for output, value in reference.items():
            assert np.isfinite(got[output]).all(), (fmt, output)
            np.testing.assert_allclose(got[output], value, rtol=0, atol=PARITY_ATOL, err_msg=f"{fmt} {output}")


# Every model through TorchScript; through ONNX one model (the most batch-norm and dropout layers) keeps the suite
# fast: the ONNX parity test above already runs every model exported from train mode against eager eval.
@pytest.mark.parametrize(("name", "fmt"), [*((n, "torchscript") for n in REGISTERED), ("mmoe", "onnx")])
def test_exporting_twice_gives_identical_outputs_when_the_model_is_in_train_mode(
    name: str, fmt: Format, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case = exported(FIRST[name][0], FIRST[name][1], request, FIRST[name][2])
    batch_norms = [m for m in case.model.modules() if isinstance(m, nn.BatchNorm1d)]
    # Where the model has batch norm, training moved its statistics: a train-mode export would differ.
    assert all(float(m.running_mean.abs().sum()) > 0 for m in batch_norms if m.running_mean is not None)
    assert case.model.training
    export = export_onnx if fmt == "onnx" else export_torchscript
    again = export(case.model, case.spec, tmp_path / ("again.onnx" if fmt == "onnx" else "again.pt"))
    inputs = example_inputs(case.spec, case.schema, 33, seed=11)
    first, second = run_artifact(case, fmt, inputs), run_artifact(case, fmt, inputs, again)
    reference = eager(case, inputs)
    for output in case.spec.output_names:
        assert np.array_equal(first[output], second[output]), output
        np.testing.assert_allclose(first[output], reference[output], rtol=0, atol=PARITY_ATOL, err_msg=output)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_eager_when_the_schema_has_dense_fields_only(
    fmt: Format, request: pytest.FixtureRequest
) -> None:
    case = exported("shared_bottom", "dense_only_schema", request)
    assert case.spec.input_names == ["dense"]
    report = validate_export(case.model, case.spec, case.schema, case.paths[fmt], fmt, batch_sizes=(1, 2, 7, 1024))
    assert max(report.max_abs_diff.values()) <= PARITY_ATOL, report.max_abs_diff


class IgnoresScenario(MultiTaskModel):
    """A model that takes the scenario input and never reads it."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__(self.config_class(), schema)
        self.linear = nn.Linear(len(schema.dense), 1)

    def logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.schema.task_names[0]: self.linear(features["dense"]).squeeze(-1)}  # [B]


def test_export_keeps_an_input_the_model_does_not_use(tmp_path: Path) -> None:
    schema = FeatureSchema(
        dense=(DenseField(name="price"),),
        scenario=ScenarioField(name="site", values=("app", "web")),
        tasks=(TaskSpec(name="ctr"),),
    )
    model = IgnoresScenario(schema)
    spec = build_export_spec(schema, "ignores_scenario", model.output_names)
    assert SCENARIO in spec.input_names
    onnx_path = export_onnx(model, spec, tmp_path / "model.onnx")
    proto = onnx.load(str(onnx_path))
    assert [i.name for i in proto.graph.input] == ["dense", SCENARIO]
    # An exporter that drops the unused input (the legacy one does) is repaired: the input is declared again.
    del proto.graph.input[1]
    assert _restore_inputs(proto, spec)
    check_onnx_graph(proto, spec)
    assert [i.name for i in proto.graph.input] == ["dense", SCENARIO]
    ts_path = export_torchscript(model, spec, tmp_path / "model.pt")
    for fmt, path in (("onnx", onnx_path), ("torchscript", ts_path)):
        validate_export(model, spec, schema, path, fmt, batch_sizes=(1, 5))  # type: ignore[arg-type]


def test_export_refuses_a_spec_built_for_another_model(tiny_schema: FeatureSchema, tmp_path: Path) -> None:
    model = build_model("shared_bottom", case_config("shared_bottom"), tiny_schema)
    spec = build_export_spec(tiny_schema, "shared_bottom", ["ctr"])
    with pytest.raises(ExportError, match=r"outputs \['ctr'\] differ from the model's \['ctr', 'cvr'\]"):
        export_onnx(model, spec, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="differ from the model's"):
        export_torchscript(model, spec, tmp_path / "model.pt")
