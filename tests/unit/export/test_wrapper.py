"""The export wrapper: positional inputs in spec order, [B, 1] outputs in spec order, and valid example inputs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from mtlrec.errors import ExportError
from mtlrec.export.spec import build_export_spec
from mtlrec.export.wrapper import (
    EXTREME_DENSE,
    ExportWrapper,
    eval_mode,
    example_inputs,
    named_wrapper,
    to_numpy_feed,
    tracing_batch_size,
)
from mtlrec.models import MultiTaskModel, build_model
from mtlrec.schema import MISSING_ID, OOV_ID, FeatureSchema


def _model(schema: FeatureSchema, name: str = "mmoe") -> MultiTaskModel:
    torch.manual_seed(0)
    config = {"embed_dim": 4, "num_experts": 2, "expert": {"hidden": [8], "batch_norm": True}, "tower": {"hidden": [4]}}
    return build_model(name, config if name == "mmoe" else None, schema).eval()


def test_wrapper_returns_b_by_1_outputs_in_spec_order_equal_to_eager(tiny_schema: FeatureSchema) -> None:
    model = _model(tiny_schema)
    spec = build_export_spec(tiny_schema, "mmoe", model.output_names)
    inputs = example_inputs(spec, tiny_schema, 5)
    with torch.no_grad():
        outputs = ExportWrapper(model, spec)(*inputs)
        eager = model(dict(zip(spec.input_names, inputs, strict=True)))
    assert len(outputs) == len(spec.output_names) == 2
    for name, value in zip(spec.output_names, outputs, strict=True):
        assert value.shape == (5, 1), name
        assert value.dtype == torch.float32
        assert torch.equal(value[:, 0], eager[name]), name


def test_wrapper_refuses_spec_with_other_outputs(tiny_schema: FeatureSchema) -> None:
    model = _model(tiny_schema)
    spec = build_export_spec(tiny_schema, "mmoe", ["cvr", "ctr"])
    with pytest.raises(ExportError, match=r"outputs \['cvr', 'ctr'\] differ from the model's \['ctr', 'cvr'\]"):
        ExportWrapper(model, spec)


def test_wrapper_refuses_spec_of_another_schema(
    tiny_schema: FeatureSchema, tiny_schema_no_funnel: FeatureSchema
) -> None:
    model = _model(tiny_schema)
    spec = build_export_spec(tiny_schema_no_funnel, "mmoe", model.output_names)
    with pytest.raises(ExportError, match="built for schema"):
        ExportWrapper(model, spec)


def test_wrapper_refuses_wrong_number_of_inputs(tiny_schema: FeatureSchema) -> None:
    model = _model(tiny_schema)
    spec = build_export_spec(tiny_schema, "mmoe", model.output_names)
    inputs = example_inputs(spec, tiny_schema, 3)
    with pytest.raises(ExportError, match=r"expected 3 inputs"):
        ExportWrapper(model, spec)(*inputs[:2])


def test_named_wrapper_forward_arguments_are_the_spec_input_names(tiny_schema: FeatureSchema) -> None:
    model = _model(tiny_schema)
    spec = build_export_spec(tiny_schema, "mmoe", model.output_names)
    module = named_wrapper(model, spec)
    assert list(inspect.signature(module.forward).parameters) == ["sparse_ids", "dense", "scenario"]
    inputs = example_inputs(spec, tiny_schema, 4)
    with torch.no_grad():
        named = module(**dict(zip(spec.input_names, inputs, strict=True)))
        positional = ExportWrapper(model, spec)(*inputs)
    assert all(torch.equal(a, b) for a, b in zip(named, positional, strict=True))


def test_example_inputs_cover_the_whole_vocabulary_with_oov_and_missing_rows(tiny_schema: FeatureSchema) -> None:
    spec = build_export_spec(tiny_schema, "mmoe", ["ctr", "cvr"])
    sparse, dense, scenario = example_inputs(spec, tiny_schema, 2048)
    assert sparse.dtype == torch.int64 and sparse.shape == (2048, 3)
    assert dense.dtype == torch.float32 and dense.shape == (2048, 2)
    assert scenario.dtype == torch.int64 and scenario.shape == (2048,)
    assert (sparse[0] == OOV_ID).all() and (sparse[1] == MISSING_ID).all()
    for column, size in enumerate(tiny_schema.vocab_sizes()):
        assert set(sparse[:, column].tolist()) == set(range(size)), column  # reserved ids 0 and 1 included
    assert set(scenario.tolist()) == {0, 1}
    assert bool(torch.isfinite(dense).all())
    assert {EXTREME_DENSE, -EXTREME_DENSE} <= set(dense.flatten().tolist())


def test_example_inputs_are_reproducible_from_the_seed_and_allow_batch_1(tiny_schema: FeatureSchema) -> None:
    spec = build_export_spec(tiny_schema, "mmoe", ["ctr", "cvr"])
    first, again = example_inputs(spec, tiny_schema, 9, seed=3), example_inputs(spec, tiny_schema, 9, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], example_inputs(spec, tiny_schema, 9, seed=4)[1])
    assert [tuple(t.shape) for t in example_inputs(spec, tiny_schema, 1)] == [(1, 3), (1, 2), (1,)]
    with pytest.raises(ExportError, match="batch_size must be >= 1"):
        example_inputs(spec, tiny_schema, 0)


def test_to_numpy_feed_names_inputs_with_spec_dtypes(tiny_schema_no_funnel: FeatureSchema) -> None:
    spec = build_export_spec(tiny_schema_no_funnel, "mmoe", ["income", "marital"])
    inputs = example_inputs(spec, tiny_schema_no_funnel, 4)
    feed = to_numpy_feed(spec, inputs)
    assert list(feed) == ["sparse_ids", "dense"]
    assert feed["sparse_ids"].dtype == np.int64 and feed["dense"].dtype == np.float32
    with pytest.raises(ExportError, match="expected 2 inputs"):
        to_numpy_feed(spec, inputs[:1])


def test_tracing_batch_size_is_at_least_3_and_no_other_input_dimension(tiny_schema: FeatureSchema) -> None:
    spec = build_export_spec(tiny_schema, "mmoe", ["ctr", "cvr"])  # sparse [B, 3], dense [B, 2]
    assert tracing_batch_size(spec) == 4


def test_eval_mode_restores_the_training_flag(tiny_schema: FeatureSchema) -> None:
    model = _model(tiny_schema).train()
    with eval_mode(model):
        assert not model.training
    assert model.training
