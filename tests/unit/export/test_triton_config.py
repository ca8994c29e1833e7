"""config.pbtxt builders: golden text per platform, parse-back equality, and the Triton rules they encode.

Set ``MTLREC_UPDATE_GOLDEN=1`` to rewrite the golden files after an intended change (then review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mtlrec.errors import ConfigError
from mtlrec.export import preprocess_model, triton_config
from mtlrec.export.spec import ExportSpec, build_export_spec
from mtlrec.export.triton_config import (
    ServingOptions,
    build_ensemble_config,
    build_model_config,
    build_preprocess_config,
    parse,
    render,
    to_dict,
)
from mtlrec.schema import FeatureSchema

GOLDEN = Path(__file__).parents[2] / "golden"
PARAMS = {"mtlrec_schema_hash": "0123456789abcdef", "mtlrec_version": "0.0.0-test", "mtlrec_model": "mmoe"}


@pytest.fixture
def spec(tiny_schema: FeatureSchema) -> ExportSpec:
    return build_export_spec(tiny_schema, "mmoe", ["ctr", "cvr"])


def _configs(schema: FeatureSchema, spec: ExportSpec) -> dict[str, Any]:
    serving = ServingOptions(max_batch_size=256, instance_kind="cpu", instances=2)
    return {
        "model_onnx": build_model_config(spec, "onnxruntime_onnx", "mmoe", serving, PARAMS),
        "model_torchscript": build_model_config(spec, "pytorch_libtorch", "mmoe_torchscript", serving, PARAMS),
        "preprocess_python": build_preprocess_config(schema, spec, "mmoe_preprocess", serving, PARAMS),
        "ensemble": build_ensemble_config(
            schema,
            spec,
            "mmoe_ensemble",
            ("mmoe_preprocess", "mmoe"),
            "onnxruntime_onnx",
            serving,
            version=3,
            parameters=PARAMS,
        ),
    }


@pytest.mark.parametrize("kind", ["model_onnx", "model_torchscript", "preprocess_python", "ensemble"])
def test_config_matches_golden_file_when_rendered(kind: str, tiny_schema: FeatureSchema, spec: ExportSpec) -> None:
    cfg = _configs(tiny_schema, spec)[kind]
    text = render(cfg)
    golden = GOLDEN / f"{kind}.pbtxt"
    if os.environ.get("MTLREC_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    assert parse(golden.read_text()) == cfg  # the golden text parses back to the very same message


def test_onnx_config_equals_literal_dict(tiny_schema: FeatureSchema, spec: ExportSpec) -> None:
    serving = ServingOptions(max_batch_size=8, instance_kind="gpu", preferred_batch_sizes=(4, 8))
    cfg = build_model_config(spec, "onnxruntime_onnx", "mmoe", serving, {"mtlrec_schema_hash": "h"})
    warmup_inputs = {
        "sparse_ids": {"data_type": "TYPE_INT64", "dims": [3], "zero_data": True},
        "dense": {"data_type": "TYPE_FP32", "dims": [2], "zero_data": True},
        "scenario": {"data_type": "TYPE_INT64", "dims": [1], "zero_data": True},
    }
    assert to_dict(parse(render(cfg))) == {
        "name": "mmoe",
        "platform": "onnxruntime_onnx",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 8,
        "input": [
            {"name": "sparse_ids", "data_type": "TYPE_INT64", "dims": [3]},
            {"name": "dense", "data_type": "TYPE_FP32", "dims": [2]},
            {"name": "scenario", "data_type": "TYPE_INT64", "dims": [1], "reshape": {}},
        ],
        "output": [
            {"name": "ctr", "data_type": "TYPE_FP32", "dims": [1]},
            {"name": "cvr", "data_type": "TYPE_FP32", "dims": [1]},
        ],
        "instance_group": [{"kind": "KIND_GPU", "count": 1}],
        "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100},
        "parameters": {"mtlrec_schema_hash": {"string_value": "h"}},
        "model_warmup": [
            {"name": "zeros_batch_1", "batch_size": 1, "inputs": warmup_inputs},
            {"name": "zeros_batch_8", "batch_size": 8, "inputs": warmup_inputs},
        ],
    }


def test_scalar_input_is_dims_one_reshaped_to_scalar_when_per_row(spec: ExportSpec) -> None:
    cfg = build_model_config(spec, "onnxruntime_onnx", "m", ServingOptions())
    scenario = next(i for i in cfg.input if i.name == "scenario")
    assert list(scenario.dims) == [1]
    assert scenario.HasField("reshape") and list(scenario.reshape.shape) == []
    assert all(list(o.dims) == [1] for o in cfg.output)


def test_libtorch_outputs_follow_name_index_convention(spec: ExportSpec) -> None:
    cfg = build_model_config(spec, "pytorch_libtorch", "m", ServingOptions())
    assert [o.name for o in cfg.output] == ["ctr__0", "cvr__1"]
    assert [i.name for i in cfg.input] == spec.input_names
    assert cfg.parameters["INFERENCE_MODE"].string_value == "true"


def test_dynamic_batching_is_absent_when_disabled(spec: ExportSpec) -> None:
    cfg = build_model_config(spec, "onnxruntime_onnx", "m", ServingOptions(dynamic_batching=False))
    assert not cfg.HasField("dynamic_batching")


def test_default_preferred_sizes_stay_within_max_batch_size() -> None:
    assert ServingOptions(max_batch_size=1024).batch_sizes == [256, 512, 1024]
    assert ServingOptions(max_batch_size=1).batch_sizes == [1]


def test_serving_options_refuse_preferred_size_above_max_batch_size() -> None:
    with pytest.raises(ConfigError, match=r"outside 1\.\.max_batch_size"):
        ServingOptions(max_batch_size=8, preferred_batch_sizes=(16,))


def test_ensemble_maps_every_step_tensor_when_built(tiny_schema: FeatureSchema, spec: ExportSpec) -> None:
    cfg = build_ensemble_config(
        tiny_schema, spec, "e", ("p", "m"), "pytorch_libtorch", ServingOptions(), version=-1, parameters={}
    )
    first, second = cfg.ensemble_scheduling.step
    assert dict(first.input_map) == {n: n for n in ["user", "item", "category", "price", "age", "site"]}
    assert set(first.output_map.values()) == set(second.input_map.values())
    assert dict(second.output_map) == {"ctr__0": "ctr", "cvr__1": "cvr"}
    assert [o.name for o in cfg.output] == ["ctr", "cvr"]
    assert first.model_version == second.model_version == -1


def test_ensemble_refuses_tensor_name_clash(tiny_schema: FeatureSchema) -> None:
    spec = build_export_spec(tiny_schema, "esmm", ["ctr", "cvr", "price"])  # an output named like a dense field
    with pytest.raises(ConfigError, match="price"):
        build_ensemble_config(tiny_schema, spec, "e", ("p", "m"), "onnxruntime_onnx", ServingOptions())


def test_preprocess_model_prefix_equals_config_prefix() -> None:
    assert preprocess_model.ENCODED_PREFIX == triton_config.ENCODED_PREFIX


def test_parse_rejects_unknown_field_when_misspelt() -> None:
    with pytest.raises(Exception, match="max_queue_delay_us"):
        parse('name: "m" dynamic_batching { max_queue_delay_us: 5 }')
