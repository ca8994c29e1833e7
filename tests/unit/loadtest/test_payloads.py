"""Payloads generated from an exported model's schema: realistic records, a scenario mix, tensors of the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtlrec.errors import ConfigError
from mtlrec.loadtest.payloads import (
    load_model_files,
    parse_scenario_mix,
    payload_source,
    raw_records,
    record_requests,
    tensor_requests,
)
from mtlrec.schema import FeatureSchema


def test_scenario_mix_parsing() -> None:
    assert parse_scenario_mix("a=1,b=3") == {"a": 0.25, "b": 0.75}
    assert parse_scenario_mix(None) is None and parse_scenario_mix("natural") is None
    for bad in ("a", "a=x", "a=-1", "=1", "a=0"):
        with pytest.raises(ConfigError):
            parse_scenario_mix(bad)


def test_records_of_an_unfamiliar_schema_come_from_the_fitted_vocabulary(tiny_schema: FeatureSchema) -> None:
    assert payload_source(tiny_schema) == "vocabulary"
    frame = raw_records(tiny_schema, None, rows=200, seed=1, scenario_mix={"web": 1.0})
    assert list(frame.columns) == ["user", "item", "category", "price", "age", "site"]
    assert set(frame["site"]) == {"web"}
    assert frame["price"].isna().any() and frame["price"].notna().mean() > 0.8  # ~5 % missing


def test_requests_are_json_and_tensors_match_them(exported_repo: Path) -> None:
    files = load_model_files(exported_repo, "mmoe")
    assert payload_source(files.schema) == "synthetic"
    mix = {"scenario_0": 0.5, "scenario_1": 0.5}
    frame = raw_records(files.schema, files.preprocessor, rows=300, seed=0, scenario_mix=mix)
    assert set(frame["scenario"]) == set(mix)
    bodies = record_requests(frame, records_per_request=8, count=5, seed=3)
    assert len(bodies) == 5 and all(len(b["records"]) == 8 for b in bodies)
    text = json.dumps(bodies, allow_nan=False)  # missing values are null, never NaN
    assert "null" in text
    tensors = tensor_requests(frame, files.preprocessor, files.spec, records_per_request=8, count=5, seed=3)
    first = tensors[0]
    assert list(first) == files.spec.input_names
    assert first["sparse_ids"].dtype == np.int64 and first["sparse_ids"].shape == (8, len(files.schema.sparse))
    assert first["dense"].dtype == np.float32 and first["scenario"].shape == (8, 1)
    with pytest.raises(ConfigError, match="does not know"):
        raw_records(files.schema, files.preprocessor, rows=10, scenario_mix={"nowhere": 1.0})
