"""The Preprocessor: OOV and missing ids, fills, normalisations, train-only fitting, JSON round trip, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlrec.data.preprocess import (
    SMALL_FRAME_ROWS,
    Preprocessor,
    _category_codes,
    _category_strings,
    _lookup,
    _vocabulary_array,
)
from mtlrec.errors import DataError, SchemaError
from mtlrec.schema import (
    FIRST_VALUE_ID,
    MISSING_ID,
    OOV_ID,
    DenseField,
    FeatureSchema,
    ScenarioField,
    SparseField,
    TaskSpec,
)


def schema_of(
    sparse: tuple[SparseField, ...] = (SparseField(name="user"),),
    dense: tuple[DenseField, ...] = (DenseField(name="price"),),
    scenario: ScenarioField | None = None,
) -> FeatureSchema:
    return FeatureSchema(sparse=sparse, dense=dense, scenario=scenario, tasks=(TaskSpec(name="ctr", label="click"),))


def frame(**columns: Any) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    defaults: dict[str, Any] = {"user": ["a"] * n, "price": [1.0] * n, "click": [0] * n}
    return pd.DataFrame({**defaults, **columns})


TRAIN = frame(
    user=["a", "b", "a", "c", "a", "b"],
    price=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    click=[1, 0, 1, 0, 0, 1],
)


def sparse_ids(pre: Preprocessor, **columns: Any) -> list[int]:
    return [int(v) for v in pre.transform(frame(**columns)).sparse[:, 0]]


def dense_values(pre: Preprocessor, values: list[Any]) -> np.ndarray:
    return pre.transform(frame(price=values)).dense[:, 0]


# ------------------------------------------------------------------------------------------------ sparse
def test_known_values_get_ids_by_frequency_then_value() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of())
    # a: 3 times, b: 2, c: 1 -> ids 2, 3, 4
    assert pre.state.vocabularies["user"] == ["a", "b", "c"]
    assert sparse_ids(pre, user=["a", "b", "c"]) == [FIRST_VALUE_ID, FIRST_VALUE_ID + 1, FIRST_VALUE_ID + 2]
    assert pre.schema.sparse[0].vocab_size == FIRST_VALUE_ID + 3
    assert pre.schema.is_fitted


def test_vocabulary_does_not_depend_on_row_order() -> None:
    shuffled = TRAIN.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert Preprocessor.fit(shuffled, schema_of()).to_json() == Preprocessor.fit(TRAIN, schema_of()).to_json()


def test_unseen_category_maps_to_oov_at_transform_time() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of())
    encoded = pre.transform(frame(user=["a", "zzz", "never-seen"]))
    assert encoded.sparse[:, 0].tolist() == [FIRST_VALUE_ID, OOV_ID, OOV_ID]
    assert encoded.oov_counts == {"user": 2}


def test_missing_sparse_value_gets_its_own_id_by_default() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of())
    assert sparse_ids(pre, user=["a", None, "", "   ", np.nan]) == [2, MISSING_ID, MISSING_ID, MISSING_ID, MISSING_ID]
    assert pre.transform(frame(user=[None, "a"])).oov_counts == {"user": 0}  # missing is not counted as OOV


def test_missing_sparse_value_shares_the_oov_id_when_asked() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(sparse=(SparseField(name="user", missing="oov"),)))
    assert sparse_ids(pre, user=[None, "", "a"]) == [OOV_ID, OOV_ID, FIRST_VALUE_ID]


def test_missing_values_in_train_are_not_a_vocabulary_entry() -> None:
    train = frame(user=["a", None, "", "a"], price=[1.0] * 4, click=[0] * 4)
    pre = Preprocessor.fit(train, schema_of())
    assert pre.state.vocabularies["user"] == ["a"]


def test_min_count_sends_rare_values_to_oov() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(sparse=(SparseField(name="user", min_count=2),)))
    assert pre.state.vocabularies["user"] == ["a", "b"]
    assert sparse_ids(pre, user=["a", "b", "c"]) == [2, 3, OOV_ID]
    assert pre.schema.sparse[0].vocab_size == FIRST_VALUE_ID + 2


def test_int_float_and_string_spellings_are_one_category() -> None:
    train = frame(user=[12, 13, 12], price=[1.0] * 3, click=[0] * 3)  # int64 column
    pre = Preprocessor.fit(train, schema_of())
    expected = sparse_ids(pre, user=[12])
    assert expected == [FIRST_VALUE_ID]
    assert sparse_ids(pre, user=[12.0]) == expected  # float column
    assert sparse_ids(pre, user=["12"]) == expected  # string column
    assert sparse_ids(pre, user=[" 12 "]) == expected  # stray spaces
    assert sparse_ids(pre, user=[12.0, None]) == [*expected, MISSING_ID]  # float column with NaN
    mixed = pd.Series([12, 12.0, "12", np.float64(12.0)], dtype=object)  # e.g. JSON records from clients
    assert sparse_ids(pre, user=mixed) == expected * 4
    assert sparse_ids(pre, user=[12.0, 12.5]) == [*expected, OOV_ID]  # one non-integral value changes nothing


def test_float_train_column_with_missing_values_is_read_as_integers() -> None:
    train = frame(user=[7.0, np.nan, 7.0, 8.0], price=[1.0] * 4, click=[0] * 4)
    pre = Preprocessor.fit(train, schema_of())
    assert pre.state.vocabularies["user"] == ["7", "8"]
    assert sparse_ids(pre, user=[7, "8"]) == [2, 3]


def test_extreme_numbers_in_a_sparse_field_are_oov_not_a_crash() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of())
    assert sparse_ids(pre, user=[np.inf, 1e30, -np.inf]) == [OOV_ID, OOV_ID, OOV_ID]


# ------------------------------------------------------------------------------------------------ dense
@pytest.mark.parametrize(
    ("fill", "expected"),
    [("mean", 2.0), ("median", 1.5), ("zero", 0.0)],
)
def test_missing_dense_value_is_filled_from_train(fill: str, expected: float) -> None:
    train = frame(user=["a"] * 5, price=[1.0, 1.0, 2.0, 4.0, None], click=[0] * 5)
    spec = DenseField(name="price", normalization="none", fill=fill)  # type: ignore[arg-type]
    pre = Preprocessor.fit(train, schema_of(dense=(spec,)))
    assert pre.state.dense_stats["price"].fill_value == pytest.approx(expected)
    assert dense_values(pre, [None, "", 3.0]).tolist() == pytest.approx([expected, expected, 3.0])


def test_standardize_gives_zero_mean_unit_variance_on_train() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(dense=(DenseField(name="price", normalization="standardize"),)))
    values = dense_values(pre, TRAIN["price"].tolist())
    assert values.mean() == pytest.approx(0.0, abs=1e-6)
    assert values.std() == pytest.approx(1.0, abs=1e-6)
    mean, std = np.mean(TRAIN["price"]), np.std(TRAIN["price"])
    assert dense_values(pre, [10.0])[0] == pytest.approx((10.0 - mean) / std, rel=1e-6)


def test_log1p_is_sign_preserving_then_standardized() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(dense=(DenseField(name="price", normalization="log1p"),)))
    logged = np.log1p(np.asarray(TRAIN["price"], dtype=np.float64))
    mean, std = logged.mean(), logged.std()
    expected = (np.array([0.0, np.log(10.0), np.log(100000.0), -np.log(10.0)]) - mean) / std
    assert dense_values(pre, [0.0, 9.0, 99999.0, -9.0]).tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_minmax_maps_the_train_range_to_unit_interval() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(dense=(DenseField(name="price", normalization="minmax"),)))
    assert dense_values(pre, [1.0, 3.5, 6.0, 11.0]).tolist() == pytest.approx([0.0, 0.5, 1.0, 2.0])


def test_none_keeps_values() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(dense=(DenseField(name="price", normalization="none"),)))
    assert dense_values(pre, [-2.5, 7.25]).tolist() == [-2.5, 7.25]


def test_clip_bounds_outliers_and_infinities() -> None:
    spec = DenseField(name="price", normalization="none", clip=5.0)
    pre = Preprocessor.fit(TRAIN, schema_of(dense=(spec,)))
    assert dense_values(pre, [1e30, -np.inf, np.inf, 2.0]).tolist() == [5.0, -5.0, 5.0, 2.0]


def test_constant_dense_column_does_not_divide_by_zero() -> None:
    train = frame(user=["a"] * 3, price=[4.0] * 3, click=[0] * 3)
    pre = Preprocessor.fit(train, schema_of())
    assert pre.state.dense_stats["price"].scale == 1.0
    assert dense_values(pre, [4.0, 5.0]).tolist() == [0.0, 1.0]


def test_non_numeric_dense_value_is_a_data_error_naming_the_column() -> None:
    bad = frame(user=["a"] * 3, price=["1.5", "cheap", "2"], click=[0] * 3)
    with pytest.raises(DataError, match=r"dense column `price`.*'cheap'.*row 1"):
        Preprocessor.fit(bad, schema_of())
    pre = Preprocessor.fit(TRAIN, schema_of())
    with pytest.raises(DataError, match="`price`"):
        pre.transform(bad)


def test_numeric_strings_and_booleans_are_accepted_as_dense_values() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(dense=(DenseField(name="price", normalization="none"),)))
    assert dense_values(pre, ["1.5", " 2 ", None]).tolist()[:2] == [1.5, 2.0]
    assert pre.transform(frame(price=[True, False])).dense[:, 0].tolist() == [1.0, 0.0]


# ------------------------------------------------------------------------------------------------ train only
def test_vocabulary_and_statistics_come_from_train_only() -> None:
    schema = schema_of()
    pre = Preprocessor.fit(TRAIN, schema)
    before = pre.to_json()
    val = frame(user=["only-in-val", "a"], price=[1000.0, 2000.0], click=[0, 1])
    encoded = pre.transform(val)
    assert encoded.sparse[:, 0].tolist() == [OOV_ID, FIRST_VALUE_ID]  # a value only in val is OOV
    assert pre.to_json() == before  # transforming val changes nothing
    # fitting on train+val would have given other statistics: val must not have been used
    both = Preprocessor.fit(pd.concat([TRAIN, val], ignore_index=True), schema)
    assert both.state.dense_stats["price"] != pre.state.dense_stats["price"]
    assert "only-in-val" in both.state.vocabularies["user"]


def test_input_schema_is_not_modified_by_fit() -> None:
    schema = schema_of(scenario=ScenarioField(name="site"))
    train = TRAIN.assign(site=["x", "y"] * 3)
    pre = Preprocessor.fit(train, schema)
    assert schema.sparse[0].vocab_size is None and schema.scenario is not None and schema.scenario.values is None
    assert pre.schema.hash() != schema.hash()


# ------------------------------------------------------------------------------------------------ scenario
def test_scenario_values_are_sorted_train_values() -> None:
    train = TRAIN.assign(site=["web", "app", "web", "mini", "app", "web"])
    pre = Preprocessor.fit(train, schema_of(scenario=ScenarioField(name="site")))
    assert pre.schema.scenario is not None and pre.schema.scenario.values == ("app", "mini", "web")
    encoded = pre.transform(frame(site=["web", "app"]))
    assert encoded.scenario is not None and encoded.scenario.tolist() == [2, 0]


def test_unknown_scenario_at_transform_is_a_data_error() -> None:
    pre = Preprocessor.fit(TRAIN.assign(site="app"), schema_of(scenario=ScenarioField(name="site")))
    with pytest.raises(DataError, match="unknown value 'tv'"):
        pre.transform(frame(site=["app", "tv"]))


def test_missing_scenario_in_train_is_a_data_error() -> None:
    train = TRAIN.assign(site=["app", None, "app", "web", "web", "app"])
    with pytest.raises(DataError, match="scenario column `site` is missing at row 1"):
        Preprocessor.fit(train, schema_of(scenario=ScenarioField(name="site")))


def test_declared_scenario_values_are_kept_and_checked() -> None:
    declared = ScenarioField(name="site", values=("app", "tv", "web"))
    pre = Preprocessor.fit(TRAIN.assign(site="app"), schema_of(scenario=declared))
    assert pre.schema.num_scenarios == 3
    with pytest.raises(DataError, match="not declared"):
        Preprocessor.fit(TRAIN.assign(site="radio"), schema_of(scenario=declared))


# ------------------------------------------------------------------------------------------------ labels
def test_labels_are_encoded_when_present_and_skipped_when_absent() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of())
    assert pre.transform(TRAIN).labels["ctr"].tolist() == [1, 0, 1, 0, 0, 1]
    assert pre.transform(TRAIN.drop(columns=["click"])).labels == {}
    with pytest.raises(DataError, match="label column `click`"):
        pre.transform(TRAIN.drop(columns=["click"]), with_labels=True)


def test_bad_binary_labels_are_data_errors() -> None:
    pre = Preprocessor.fit(TRAIN, schema_of())
    with pytest.raises(DataError, match="only 0 and 1"):
        pre.transform(frame(click=[0, 2]))
    with pytest.raises(DataError, match="label `click` is missing at row 1"):
        pre.transform(frame(click=[0, None]))


# ------------------------------------------------------------------------------------------------ errors
def test_empty_train_split_is_a_data_error() -> None:
    with pytest.raises(DataError, match="empty"):
        Preprocessor.fit(TRAIN.iloc[:0], schema_of())


def test_missing_columns_are_named() -> None:
    with pytest.raises(DataError, match="missing from the data: price"):
        Preprocessor.fit(TRAIN.drop(columns=["price"]), schema_of())
    pre = Preprocessor.fit(TRAIN, schema_of())
    with pytest.raises(DataError, match="columns missing from the input: user"):
        pre.transform(TRAIN.drop(columns=["user"]))


# ------------------------------------------------------------------------------------------------ JSON
def test_json_round_trip_gives_an_identical_transform(tmp_path: Path) -> None:
    schema = FeatureSchema(
        sparse=(SparseField(name="user", min_count=2), SparseField(name="city", missing="oov")),
        dense=(
            DenseField(name="price", normalization="log1p", fill="median"),
            DenseField(name="age", normalization="minmax"),
            DenseField(name="score", fill="zero"),
        ),
        scenario=ScenarioField(name="site"),
        tasks=(TaskSpec(name="ctr", label="click"), TaskSpec(name="cvr", label="buy", conditioned_on="ctr")),
        id_column="rid",
    )
    rng = np.random.default_rng(0)
    n = 200
    data = pd.DataFrame(
        {
            "rid": np.arange(n),
            "user": rng.choice(["u1", "u2", "u3", "u4", None], n),
            "city": rng.choice([1, 2, 3], n),
            "price": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(3, 1, n)),
            "age": rng.integers(18, 80, n),
            "score": rng.normal(size=n),
            "site": rng.choice(["app", "web"], n),
            "click": rng.integers(0, 2, n),
        }
    )
    data["buy"] = data["click"] * rng.integers(0, 2, n)
    pre = Preprocessor.fit(data.iloc[:150], schema)
    pre.save(tmp_path / "pre.json")
    again = Preprocessor.load(tmp_path / "pre.json")
    assert again.schema == pre.schema and again.schema.hash() == pre.schema.hash()
    assert again.to_json() == pre.to_json()
    a, b = pre.transform(data.iloc[150:]), again.transform(data.iloc[150:])
    np.testing.assert_array_equal(a.sparse, b.sparse)
    np.testing.assert_array_equal(a.dense, b.dense)
    assert a.scenario is not None and b.scenario is not None
    np.testing.assert_array_equal(a.scenario, b.scenario)
    for task in ("ctr", "cvr"):
        np.testing.assert_array_equal(a.labels[task], b.labels[task])
    assert a.ids is not None and a.ids.tolist() == list(range(150, 200))
    assert a.sparse.dtype == np.int64 and a.dense.dtype == np.float32 and a.dense.flags.c_contiguous
    assert Preprocessor.from_json(pre.to_json()).describe() == pre.describe()


def test_loading_a_missing_preprocessor_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="preprocessor file not found"):
        Preprocessor.load(tmp_path / "pre.json")


# ------------------------------------------------------------------------- small frames take the per-value path
_CATEGORY_VALUES = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.integers(-(10**6), 10**6),
    st.integers(-(10**6), 10**6).map(float),
    st.text(alphabet=st.sampled_from("ab12 .\t-"), max_size=4),
)


@given(
    values=st.lists(_CATEGORY_VALUES, min_size=1, max_size=12),
    dtype=st.sampled_from(["object", "infer"]),
)
@settings(max_examples=200, deadline=None)
def test_small_frame_category_path_equals_vectorised_path(values: list[object], dtype: str) -> None:
    series = pd.Series(values, dtype=object) if dtype == "object" else pd.Series(values)
    vocabulary = ["1", "a", "12", "-3", "b 2", "0"]
    index = {v: i for i, v in enumerate(vocabulary)}
    small_codes, small_missing = _category_codes(series, index, _vocabulary_array(vocabulary))
    strings = _category_strings(series)
    assert small_codes.tolist() == _lookup(strings, _vocabulary_array(vocabulary)).tolist()
    assert small_missing.tolist() == strings.isna().tolist()


@pytest.mark.parametrize("rows", [3, SMALL_FRAME_ROWS + 5])
def test_transform_gives_the_same_ids_below_and_above_the_small_frame_size(rows: int) -> None:
    pre = Preprocessor.fit(TRAIN, schema_of(dense=(DenseField(name="price"),)))
    users = (["a", " b", None, "zzz", 12, 12.0, ""] * 20)[:rows]
    frame = pd.DataFrame({"user": pd.Series(users, dtype=object), "price": [1.0] * rows})
    expected = [pre.transform(frame.iloc[[i]].reset_index(drop=True)).sparse[0, 0] for i in range(rows)]
    assert pre.transform(frame).sparse[:, 0].tolist() == expected


# ------------------------------------------------------------------ records take the frame-free path, same rules
_RECORD_SCHEMA = FeatureSchema(
    sparse=(SparseField(name="user"), SparseField(name="item", missing="oov")),
    dense=(
        DenseField(name="price", normalization="log1p", clip=3.0),
        DenseField(name="age", fill="median", normalization="minmax"),
        DenseField(name="score", normalization="none"),
        DenseField(name="count", fill="zero", clip=1.5),
    ),
    scenario=ScenarioField(name="site"),
    tasks=(TaskSpec(name="ctr", label="click"),),
)
_RECORD_TRAIN = pd.DataFrame(
    {
        "user": ["a", "b", "a", "12", "a", "b", "c", "-3"],
        "item": [1, 2, 2, 3, 1, None, 7, 2],
        "price": [1.0, 20.0, 300.0, None, 5.0, 0.5, -4.0, 9.0],
        "age": [20, 30, None, 50, 60, 25, 35, 45],
        "score": [0.1, -0.2, 0.3, 0.4, None, 0.6, 0.7, 0.8],
        "count": [1, 2, 3, 4, 5, 6, 7, 100],
        "site": ["app", "web", "app", "web", "app", "web", "app", "web"],
        "click": [1, 0, 1, 0, 0, 1, 0, 1],
    }
)
_NUMBERS = st.one_of(
    st.none(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(-1e6, 1e6),
)
_RECORD_VALUES = {
    "user": _CATEGORY_VALUES,
    "item": _CATEGORY_VALUES,
    "price": _NUMBERS,
    "age": _NUMBERS,
    "score": _NUMBERS,
    "count": _NUMBERS,
    "site": st.sampled_from(["app", "web", " web ", "app"]),
}


@given(
    records=st.lists(
        st.fixed_dictionaries({}, optional=_RECORD_VALUES),  # any field may be absent (= missing)
        min_size=1,
        max_size=SMALL_FRAME_ROWS + 6,  # both sides of the small-frame size of the frame path
    )
)
@settings(max_examples=150, deadline=None)
def test_records_path_equals_the_frame_path(records: list[dict[str, Any]]) -> None:
    from mtlrec.serving.schemas import records_to_frame

    pre = Preprocessor.fit(_RECORD_TRAIN, _RECORD_SCHEMA)
    for record in records:
        record.setdefault("site", "app")
    expected = pre.transform(records_to_frame(records, pre.schema), with_labels=False)
    got = pre.transform_records(records)
    assert got.sparse.tolist() == expected.sparse.tolist()
    assert got.dense.tobytes() == expected.dense.tobytes()  # bit for bit
    assert got.scenario is not None and expected.scenario is not None
    assert got.scenario.tolist() == expected.scenario.tolist()
    assert got.oov_counts == expected.oov_counts


def test_records_path_reads_values_under_other_keys_and_reports_like_the_frame_path() -> None:
    pre = Preprocessor.fit(_RECORD_TRAIN, _RECORD_SCHEMA)
    keys = {"user": "f0", "price": "f2", "site": "f9"}
    got = pre.transform_records([{"f0": "a", "f2": 20.0, "f9": "web"}], keys=keys)
    expected = pre.transform(
        pd.DataFrame(
            {
                "user": ["a"],
                "item": [None],
                "price": [20.0],
                "age": [None],
                "score": [None],
                "count": [None],
                "site": ["web"],
            }
        )
    )
    assert got.sparse.tolist() == expected.sparse.tolist()
    assert got.dense.tobytes() == expected.dense.tobytes()
    with pytest.raises(DataError, match=r"scenario `site` has an unknown value 'mobile' at row 1"):
        pre.transform_records([{"site": "app"}, {"site": "mobile"}])
    with pytest.raises(DataError, match=r"dense column `price` has a non-numeric value 'cheap' at row 0"):
        pre.transform_records([{"site": "app", "price": "cheap"}])
    numeric_text = pre.transform_records([{"site": "app", "price": " 20 ", "count": True}])
    assert (
        numeric_text.dense.tobytes()
        == pre.transform_records([{"site": "app", "price": 20, "count": 1}]).dense.tobytes()
    )
