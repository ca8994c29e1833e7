"""The synthetic generator: determinism, chunking, the funnel, rates, planted signal and pure noise, the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders.synthetic import (
    BLOCK_ROWS,
    SyntheticConfig,
    generate_impressions,
    iter_impression_chunks,
    synthetic_schema,
)
from mtlrec.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def impressions() -> pd.DataFrame:
    """100,000 impressions of the default config, seed 0."""
    return generate_impressions(100_000, seed=0)


def test_same_seed_gives_the_same_frame_and_another_seed_another() -> None:
    a = generate_impressions(3000, seed=7)
    pd.testing.assert_frame_equal(a, generate_impressions(3000, seed=7))
    b = generate_impressions(3000, seed=8)
    assert not a.equals(b)
    assert (a["user_id"] != b["user_id"]).mean() > 0.9


def test_chunked_generation_equals_one_shot_generation() -> None:
    rows = BLOCK_ROWS + 4321  # crosses a block boundary
    whole = generate_impressions(rows, seed=3)
    for chunk_rows in (BLOCK_ROWS, 10_000, 50_001):
        chunks = list(iter_impression_chunks(rows, 3, chunk_rows=chunk_rows))
        assert all(len(c) == chunk_rows for c in chunks[:-1])
        assert 0 < len(chunks[-1]) <= chunk_rows
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)


def test_a_row_does_not_depend_on_how_many_rows_are_generated() -> None:
    pd.testing.assert_frame_equal(generate_impressions(500, seed=1), generate_impressions(BLOCK_ROWS + 10, 1)[:500])


def test_columns_types_and_ids(impressions: pd.DataFrame) -> None:
    schema = synthetic_schema()
    labels = ["click", "conversion"]
    assert schema.scenario is not None and schema.id_column == "impression_id"
    expected = {*schema.feature_names, schema.scenario.name, schema.id_column, *labels}
    assert set(impressions.columns) == expected
    assert impressions["impression_id"].tolist() == list(range(len(impressions)))
    assert sorted(impressions["scenario"].unique()) == ["scenario_0", "scenario_1", "scenario_2"]
    assert impressions["hour"].between(0, 23).all()
    assert set(impressions["device"]) == {"android", "ios", "web"}
    for column in labels:
        assert set(impressions[column].unique()) <= {0, 1}
    assert [t.name for t in schema.tasks] == ["ctr", "cvr"]
    assert schema.task("cvr").label_column == "conversion" and schema.task("cvr").conditioned_on == "ctr"
    noise = [c for c in impressions.columns if c.startswith("noise_") and c != "noise_dense"]
    assert noise == ["noise_0", "noise_1"]


def test_dense_fields_are_skewed_and_have_missing_values(impressions: pd.DataFrame) -> None:
    for column in ("price", "user_activity", "item_rating", "noise_dense"):
        share = impressions[column].isna().mean()
        assert 0.03 < share < 0.07, (column, share)
    for column in ("price", "user_activity"):
        values = impressions[column].dropna()
        assert (values > 0).all()
        assert stats.skew(values) > 1.0, column
        assert values.mean() > values.median()


def test_item_popularity_is_long_tailed(impressions: pd.DataFrame) -> None:
    counts = impressions["item_id"].value_counts()
    top_share = counts.iloc[: len(counts) // 100].sum() / counts.sum()  # the top 1 % of the items seen
    assert top_share > 0.3


def test_conversion_only_after_a_click(impressions: pd.DataFrame) -> None:
    assert not ((impressions["conversion"] == 1) & (impressions["click"] == 0)).any()


def test_rates_are_in_the_target_ranges(impressions: pd.DataFrame) -> None:
    ctr = impressions["click"].mean()
    cvr = impressions.loc[impressions["click"] == 1, "conversion"].mean()
    assert 0.05 < ctr < 0.15
    assert 0.10 < cvr < 0.30
    config = SyntheticConfig(ctr_rate=0.05, cvr_rate=0.1)
    other = generate_impressions(50_000, seed=0, config=config)
    assert other["click"].mean() == pytest.approx(0.05, abs=0.01)


def test_scenarios_behave_differently(impressions: pd.DataFrame) -> None:
    ctr = impressions.groupby("scenario")["click"].mean()
    cvr = impressions[impressions["click"] == 1].groupby("scenario")["conversion"].mean()
    assert ctr.max() - ctr.min() > 0.03
    assert cvr.max() - cvr.min() > 0.03


def test_noise_fields_are_independent_of_the_labels(impressions: pd.DataFrame) -> None:
    clicked = impressions[impressions["click"] == 1]
    for column in ("noise_0", "noise_1"):
        _, p_click, _, _ = stats.chi2_contingency(pd.crosstab(impressions[column], impressions["click"]))
        _, p_conv, _, _ = stats.chi2_contingency(pd.crosstab(clicked[column], clicked["conversion"]))
        assert p_click > 1e-3 and p_conv > 1e-3, (column, p_click, p_conv)
    dense = impressions.dropna(subset=["noise_dense"])
    _, p_dense = stats.ttest_ind(
        dense.loc[dense["click"] == 1, "noise_dense"], dense.loc[dense["click"] == 0, "noise_dense"]
    )
    assert p_dense > 1e-3
    # the same test does detect a planted field: it has the power to see a dependence
    _, p_signal, _, _ = stats.chi2_contingency(pd.crosstab(impressions["item_category"], impressions["click"]))
    assert p_signal < 1e-10


def _auc(train: pd.DataFrame, test: pd.DataFrame, label: str) -> float:
    categorical = ["scenario", "user_segment", "age_bucket", "item_category", "hour", "device"]
    dense = ["price", "user_activity", "item_rating"]
    encoder = OneHotEncoder(handle_unknown="ignore").fit(train[categorical])
    medians = train[dense].median()

    def features(frame: pd.DataFrame) -> np.ndarray:
        numbers = np.log1p(frame[dense].fillna(medians).to_numpy())
        return np.hstack([encoder.transform(frame[categorical]).toarray(), numbers])

    model = LogisticRegression(max_iter=1000).fit(features(train), train[label])
    return float(roc_auc_score(test[label], model.predict_proba(features(test))[:, 1]))


def test_planted_signal_is_learnable_for_both_tasks() -> None:
    frame = generate_impressions(20_000, seed=0)
    train, test = frame.iloc[:16_000], frame.iloc[16_000:]
    assert _auc(train, test, "click") > 0.7
    clicked_train, clicked_test = train[train["click"] == 1], test[test["click"] == 1]
    assert _auc(clicked_train, clicked_test, "conversion") > 0.65  # cvr among clicks


def test_config_changes_the_world() -> None:
    config = SyntheticConfig(num_scenarios=5, num_noise_fields=0, num_users=300, num_items=200)
    frame = generate_impressions(5000, seed=0, config=config)
    assert frame["scenario"].nunique() == 5
    assert frame["user_id"].nunique() <= 300 and frame["item_id"].nunique() <= 200
    assert not any(c.startswith("noise_") and c != "noise_dense" for c in frame.columns)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="rows must be >= 1"):
        generate_impressions(0, seed=0)
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        generate_impressions(10, seed=-1)
    with pytest.raises(ConfigError, match="chunk_rows"):
        next(iter_impression_chunks(10, 0, chunk_rows=0))
    with pytest.raises(ValueError, match="num_items must be at least num_categories"):
        SyntheticConfig(num_items=5, num_categories=10)


# ------------------------------------------------------------------------------------------------ the loader
def test_loader_splits_80_10_10_by_a_seeded_permutation() -> None:
    loader = get_dataset("synthetic")
    assert not loader.info.needs_source
    raw = loader.load(None, seed=0, rows=2000)
    sizes = {name: len(frame) for name, frame in raw.splits.items()}
    assert sizes == {"train": 1600, "val": 200, "test": 200}
    ids = np.concatenate([frame["impression_id"].to_numpy() for frame in raw.splits.values()])
    assert sorted(ids.tolist()) == list(range(2000))
    assert raw.splits["val"]["impression_id"].tolist() != list(range(1600, 1800))  # shuffled, not a head/tail cut
    again = loader.load(None, seed=0, rows=2000)
    pd.testing.assert_frame_equal(raw.splits["test"], again.splits["test"])
    other = loader.load(None, seed=1, rows=2000)
    assert not raw.splits["test"].equals(other.splits["test"])
    assert raw.schema == synthetic_schema()


def test_loader_defaults_to_100k_rows() -> None:
    raw = get_dataset("synthetic").load(None, seed=0, rows=None)
    assert sum(len(f) for f in raw.splits.values()) == 100_000


def test_loader_reads_generator_settings_from_a_yaml_source(tmp_path: Path) -> None:
    spec = tmp_path / "synthetic.yaml"
    spec.write_text("num_scenarios: 2\nnum_noise_fields: 1\n")
    raw = get_dataset("synthetic").load(spec, seed=0, rows=1000)
    assert raw.splits["train"]["scenario"].nunique() == 2
    assert "noise_1" not in raw.schema.feature_names and "noise_0" in raw.schema.feature_names
    spec.write_text("num_scenario: 2\n")
    with pytest.raises(ConfigError, match="num_scenario"):
        get_dataset("synthetic").load(spec, seed=0, rows=1000)


def test_loader_refuses_too_few_rows() -> None:
    with pytest.raises(DataError, match="too few to split"):
        get_dataset("synthetic").load(None, seed=0, rows=5)
