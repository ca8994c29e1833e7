"""The feature schema: validation (unknown keys, duplicates, funnels, label leakage), JSON round trip, hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mtlrec.config import validate
from mtlrec.errors import ConfigError, LabelLeakageError, SchemaError
from mtlrec.schema import (
    DENSE,
    SCENARIO,
    SPARSE_IDS,
    DenseField,
    FeatureSchema,
    ScenarioField,
    SparseField,
    TaskSpec,
)


def schema_dict() -> dict[str, Any]:
    return {
        "sparse": [{"name": "user", "min_count": 2}, {"name": "item"}],
        "dense": [{"name": "price", "normalization": "log1p", "fill": "median"}],
        "scenario": {"name": "site"},
        "tasks": [
            {"name": "ctr", "label": "click"},
            {"name": "cvr", "label": "buy", "conditioned_on": "ctr"},
        ],
        "id_column": "rid",
    }


def make(**changes: Any) -> FeatureSchema:
    return FeatureSchema.model_validate({**schema_dict(), **changes})


def test_valid_schema_exposes_names_in_order() -> None:
    schema = make()
    assert schema.sparse_names == ["user", "item"]
    assert schema.dense_names == ["price"]
    assert schema.feature_names == ["user", "item", "price"]
    assert schema.task_names == ["ctr", "cvr"]
    assert schema.input_names == [SPARSE_IDS, DENSE, SCENARIO]
    assert schema.task("cvr").label_column == "buy"
    assert TaskSpec(name="income").label_column == "income"


@pytest.mark.parametrize(
    ("where", "data"),
    [
        ("top level", {**schema_dict(), "sparce": []}),
        ("sparse field", {**schema_dict(), "sparse": [{"name": "user", "mincount": 2}]}),
        ("dense field", {**schema_dict(), "dense": [{"name": "price", "normalisation": "log1p"}]}),
        ("task", {**schema_dict(), "tasks": [{"name": "ctr", "lable": "click"}]}),
    ],
)
def test_unknown_key_is_refused(where: str, data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        FeatureSchema.model_validate(data)


def test_unknown_key_names_the_key_through_validate() -> None:
    with pytest.raises(ConfigError, match="sparce") as err:
        validate(FeatureSchema, {**schema_dict(), "sparce": []}, "schema.yaml")
    assert "unknown key" in str(err.value)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        SparseField(name="user", min_count=0)
    with pytest.raises(ValidationError):
        DenseField(name="price", normalization="zscore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        SparseField(name="has space")


def test_schema_is_frozen() -> None:
    schema = make()
    with pytest.raises(ValidationError):
        schema.id_column = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"sparse": [{"name": "user"}, {"name": "user"}]},
        {"dense": [{"name": "user"}]},
        {"scenario": {"name": "item"}},
    ],
)
def test_duplicate_field_names_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(SchemaError, match=r"field names used twice: .*(user|item)"):
        make(**changes)


def test_duplicate_task_names_are_refused() -> None:
    with pytest.raises(SchemaError, match="task names used twice: ctr"):
        make(tasks=[{"name": "ctr", "label": "click"}, {"name": "ctr", "label": "buy"}])


def test_conditioned_on_an_unknown_task_is_refused() -> None:
    with pytest.raises(SchemaError, match="conditioned_on unknown task `clicks`") as err:
        make(tasks=[{"name": "ctr", "label": "click"}, {"name": "cvr", "label": "buy", "conditioned_on": "clicks"}])
    assert err.value.hint is not None and "ctr" in err.value.hint


def test_conditioned_on_a_regression_task_is_refused() -> None:
    with pytest.raises(SchemaError, match="not binary"):
        make(tasks=[{"name": "dwell", "kind": "regression"}, {"name": "like", "conditioned_on": "dwell"}])


def test_conditioned_on_cycle_is_refused() -> None:
    with pytest.raises(SchemaError, match="cycle"):
        make(tasks=[{"name": "a", "conditioned_on": "b"}, {"name": "b", "conditioned_on": "a"}])


@pytest.mark.parametrize(
    ("changes", "column"),
    [
        ({"sparse": [{"name": "user"}, {"name": "click"}]}, "click"),
        ({"dense": [{"name": "buy"}]}, "buy"),
        ({"scenario": {"name": "click"}}, "click"),
        ({"sparse": [{"name": "user"}, {"name": "ctr"}]}, "ctr"),  # the task name is its default label
    ],
)
def test_label_used_as_a_feature_is_label_leakage(changes: dict[str, Any], column: str) -> None:
    with pytest.raises(LabelLeakageError) as err:
        make(**changes)
    message = str(err.value)
    assert "label leakage" in message
    assert f"`{column}`" in message
    assert isinstance(err.value, SchemaError)


def test_id_column_that_is_a_feature_is_refused() -> None:
    with pytest.raises(SchemaError, match="id column `user`"):
        make(id_column="user")


def test_schema_without_tasks_or_features_is_refused() -> None:
    with pytest.raises(SchemaError, match="no task"):
        make(tasks=[])
    with pytest.raises(SchemaError, match="no input feature"):
        make(sparse=[], dense=[])


def test_unknown_task_lookup_lists_tasks() -> None:
    with pytest.raises(SchemaError, match="unknown task `ltv`") as err:
        make().task("ltv")
    assert err.value.hint is not None and "ctr, cvr" in err.value.hint


def test_unfitted_schema_says_so() -> None:
    schema = make()
    assert not schema.is_fitted
    with pytest.raises(SchemaError, match="vocabulary sizes"):
        schema.vocab_sizes()
    with pytest.raises(SchemaError, match="scenario values"):
        _ = schema.num_scenarios
    fitted = make(
        sparse=[{"name": "user", "vocab_size": 5}, {"name": "item", "vocab_size": 3}],
        scenario={"name": "site", "values": ["app", "web"]},
    )
    assert fitted.is_fitted
    assert fitted.vocab_sizes() == [5, 3]
    assert fitted.num_scenarios == 2
    assert FeatureSchema(dense=(DenseField(name="x"),), tasks=(TaskSpec(name="y"),)).num_scenarios == 0


def test_json_round_trip_gives_an_equal_schema(tmp_path: Path) -> None:
    schema = make(sparse=[{"name": "user", "vocab_size": 9}], scenario={"name": "site", "values": ["a", "b"]})
    assert FeatureSchema.from_json(schema.to_json()) == schema
    schema.save(tmp_path / "schema.json")
    loaded = FeatureSchema.load(tmp_path / "schema.json")
    assert loaded == schema
    assert loaded.hash() == schema.hash()


def test_loading_a_missing_schema_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="schema file not found"):
        FeatureSchema.load(tmp_path / "nope.json")


def test_hash_is_stable_across_key_order() -> None:
    data = schema_dict()
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["sparse"] = [{"min_count": 2, "name": "user"}, {"name": "item"}]
    reordered["tasks"] = [
        {"label": "click", "name": "ctr"},
        {"conditioned_on": "ctr", "label": "buy", "name": "cvr"},
    ]
    a, b = FeatureSchema.model_validate(data), FeatureSchema.model_validate(reordered)
    assert a == b
    assert a.hash() == b.hash()
    assert len(a.hash()) == 16 and all(c in "0123456789abcdef" for c in a.hash())
    # and across a JSON round trip with other formatting
    assert FeatureSchema.from_json(json.dumps(json.loads(a.to_json()))).hash() == a.hash()


def test_equal_schemas_built_differently_have_equal_hashes() -> None:
    built = FeatureSchema(
        sparse=(SparseField(name="user", min_count=2), SparseField(name="item")),
        dense=(DenseField(name="price", normalization="log1p", fill="median"),),
        scenario=ScenarioField(name="site"),
        tasks=(TaskSpec(name="ctr", label="click"), TaskSpec(name="cvr", label="buy", conditioned_on="ctr")),
        id_column="rid",
    )
    assert built == make()
    assert built.hash() == make().hash()


@pytest.mark.parametrize(
    "changes",
    [
        {"sparse": [{"name": "user", "min_count": 3}, {"name": "item"}]},
        {"sparse": [{"name": "item"}, {"name": "user", "min_count": 2}]},  # field order is tensor order
        {"dense": [{"name": "price"}]},
        {"scenario": None},
        {"id_column": None},
        {"tasks": [{"name": "ctr", "label": "click"}]},
    ],
)
def test_different_schemas_have_different_hashes(changes: dict[str, Any]) -> None:
    assert make(**changes).hash() != make().hash()
