"""Request/response models generated from a schema: what they accept, what they refuse and how errors read."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, ValidationError

from mtlrec.data.preprocess import Preprocessor
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec
from mtlrec.serving.schemas import (
    PredictResponse,
    build_record_model,
    build_request_model,
    records_to_frame,
    request_schema_json,
)


@pytest.fixture
def schema() -> FeatureSchema:
    """Field names a Python identifier could not be (``item.id``, ``schema``) on purpose."""
    return FeatureSchema(
        sparse=(SparseField(name="user"), SparseField(name="item.id"), SparseField(name="schema")),
        dense=(DenseField(name="price"), DenseField(name="age-years")),
        scenario=ScenarioField(name="site", values=("app", "web")),
        tasks=(TaskSpec(name="ctr", label="click"), TaskSpec(name="cvr", label="buy", conditioned_on="ctr")),
    )


def _errors(model: type[BaseModel], body: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as failure:
        model.model_validate(body)
    return [(tuple(e["loc"]), e["msg"]) for e in failure.value.errors()]


def test_request_accepts_raw_values_and_absent_optional_fields(schema: FeatureSchema) -> None:
    request = build_request_model(schema)
    body = request.model_validate(
        {
            "records": [
                {"user": "u1", "item.id": 12, "schema": None, "price": 9.5, "age-years": 30, "site": "app"},
                {"site": "web"},  # every feature missing: the preprocessor's missing rules apply
            ]
        }
    )
    frame = records_to_frame(body, schema)
    assert list(frame.columns) == ["user", "item.id", "schema", "price", "age-years", "site"]
    assert frame["user"].tolist() == ["u1", None]
    assert frame["item.id"].tolist() == ["12", None]
    assert frame["price"].dtype == np.float64 and math.isnan(frame["price"].iloc[1])
    assert frame["age-years"].tolist()[0] == 30.0


def test_request_unknown_field_rejected_naming_it(schema: FeatureSchema) -> None:
    errors = _errors(build_request_model(schema), {"records": [{"site": "app", "colour": "red"}]})
    assert errors == [(("records", 0, "colour"), "Extra inputs are not permitted")]


@pytest.mark.parametrize("value", ["cheap", True, float("nan"), float("inf"), [1.0]])
def test_request_numeric_field_rejects_non_finite_numbers_bools_and_strings(schema: FeatureSchema, value: Any) -> None:
    errors = _errors(build_request_model(schema), {"records": [{"site": "app"}, {"site": "app", "price": value}]})
    assert [loc for loc, _ in errors] == [("records", 1, "price")]


@pytest.mark.parametrize("value", [1.5, True, {"a": 1}])
def test_request_categorical_field_rejects_floats_bools_and_objects(schema: FeatureSchema, value: Any) -> None:
    errors = _errors(build_request_model(schema), {"records": [{"site": "app", "item.id": value}]})
    assert {loc for loc, _ in errors} == {("records", 0, "item.id")}


def test_request_missing_scenario_rejected_naming_it(schema: FeatureSchema) -> None:
    errors = _errors(build_request_model(schema), {"records": [{"user": "u1"}]})
    assert errors == [(("records", 0, "site"), "Field required")]


def test_request_without_records_or_with_too_many_rejected(schema: FeatureSchema) -> None:
    request = build_request_model(schema, max_records=2)
    assert _errors(request, {"records": []})[0][0] == ("records",)
    assert _errors(request, {"records": [{"site": "app"}] * 3})[0][0] == ("records",)
    assert _errors(request, {})[0] == (("records",), "Field required")


def test_request_internal_attribute_names_are_not_accepted_as_keys(schema: FeatureSchema) -> None:
    errors = _errors(build_record_model(schema), {"site": "app", "f0": "u1"})
    assert errors == [(("f0",), "Extra inputs are not permitted")]


def test_request_parses_json_text(schema: FeatureSchema) -> None:
    body = build_request_model(schema).model_validate_json('{"records": [{"site": "web", "price": 3}]}')
    assert records_to_frame(body, schema)["price"].tolist() == [3.0]


def test_schema_without_scenario_makes_every_field_optional() -> None:
    schema = FeatureSchema(sparse=(SparseField(name="user"),), tasks=(TaskSpec(name="ctr"),))
    body = build_request_model(schema).model_validate({"records": [{}]})
    assert records_to_frame(body, schema)["user"].tolist() == [None]
    assert request_schema_json(schema, ["ctr"])["scenario"] is None


def test_request_schema_json_lists_fields_scenario_and_tasks(schema: FeatureSchema) -> None:
    described = request_schema_json(schema, ["ctr", "cvr"])
    assert set(described) == {"fields", "scenario", "tasks"}
    assert described["fields"] == [
        {"name": "user", "kind": "categorical", "required": False},
        {"name": "item.id", "kind": "categorical", "required": False},
        {"name": "schema", "kind": "categorical", "required": False},
        {"name": "price", "kind": "numeric", "required": False},
        {"name": "age-years", "kind": "numeric", "required": False},
    ]
    assert described["scenario"] == {"name": "site", "kind": "categorical", "required": True, "values": ["app", "web"]}
    assert described["tasks"] == ["ctr", "cvr"]


def test_records_to_frame_encodes_like_the_same_rows_read_from_a_file(schema: FeatureSchema) -> None:
    train = pd.DataFrame(
        {
            "user": ["a", "b", "a", "c"],
            "item.id": ["12", "13", "12", "12"],
            "schema": ["x", "y", "x", "x"],
            "price": [1.0, 2.0, np.nan, 4.0],
            "age-years": [20.0, 30.0, 40.0, 50.0],
            "site": ["app", "web", "app", "web"],
            "click": [1, 0, 1, 0],
            "buy": [0, 0, 1, 0],
        }
    )
    pre = Preprocessor.fit(train, schema)
    records = [
        {"user": "a", "item.id": 12, "schema": "y", "price": 2.0, "age-years": 33, "site": "web"},
        {"user": "zzz", "site": "app"},
    ]
    body = build_request_model(pre.schema).model_validate({"records": records})
    from_records = pre.transform(records_to_frame(body, pre.schema), with_labels=False)
    from_file = pre.transform(
        pd.DataFrame(
            {
                "user": ["a", "zzz"],
                "item.id": ["12", None],
                "schema": ["y", None],
                "price": [2.0, None],
                "age-years": [33.0, None],
                "site": ["web", "app"],
            }
        ),
        with_labels=False,
    )
    np.testing.assert_array_equal(from_records.sparse, from_file.sparse)
    np.testing.assert_array_equal(from_records.dense, from_file.dense)
    assert from_records.scenario is not None and from_file.scenario is not None
    np.testing.assert_array_equal(from_records.scenario, from_file.scenario)
    assert from_records.oov_counts["user"] == 1


def test_records_to_frame_leaves_unvalidated_bad_values_for_the_transform(schema: FeatureSchema) -> None:
    frame = records_to_frame([{"site": "app", "price": "abc"}, {"site": "web", "price": 1.0}], schema)
    assert frame["price"].dtype == object and frame["price"].tolist() == ["abc", 1.0]


def test_response_model_round_trips() -> None:
    response = PredictResponse(model="mmoe", version="1", predictions=[{"ctr": 0.5, "cvr": 0.1}], oov={"user": 1})
    assert PredictResponse.model_validate_json(response.model_dump_json()) == response
    assert set(response.model_dump()) == {"model", "version", "predictions", "oov"}
    assert PredictResponse(model="m", version="2", predictions=[]).oov is None
