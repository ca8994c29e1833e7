"""The census-income loader on tiny files in the exact upstream format (plain, .gz, .bz2), and its errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders.census_income import COLUMNS, DENSE_FIELDS, CensusIncome
from mtlrec.errors import DataError

CensusWriter = Callable[..., Path]
Records = Callable[[int, int], list[str]]


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("census-income").load(source, seed=seed, rows=rows).splits


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_loads_upstream_files_plain_or_compressed(write_census: CensusWriter, suffix: str) -> None:
    splits = load(write_census(train_rows=60, test_rows=41, suffix=suffix))
    assert len(splits["train"]) == 60
    assert (len(splits["val"]), len(splits["test"])) == (20, 21)  # the test file cut 1:1 (odd: test gets one more)


def test_labels_are_derived_and_their_sources_removed(write_census: CensusWriter) -> None:
    raw = CensusIncome().load(write_census(train_rows=60), seed=0, rows=None)
    train = raw.splits["train"]
    i = np.arange(60)
    # census_lines: row i earns 50000+ iff i % 4 == 0 and is never married iff i % 5 == 0
    assert train["income"].tolist() == (i % 4 == 0).astype(int).tolist()
    assert train["never_married"].tolist() == (i % 5 == 0).astype(int).tolist()
    for dropped in ("marital_stat", "income_50k", "instance_weight"):
        assert dropped not in train.columns
        assert dropped not in raw.schema.feature_names
    assert raw.schema.task_names == ["income", "never_married"]
    assert [t.label_column for t in raw.schema.tasks] == ["income", "never_married"]


def test_schema_fields_are_the_frame_columns(write_census: CensusWriter) -> None:
    raw = CensusIncome().load(write_census(), seed=0, rows=None)
    schema = raw.schema
    assert schema.dense_names == [
        "age",
        "wage_per_hour",
        "capital_gains",
        "capital_losses",
        "stock_dividends",
        "num_emp",
        "weeks_worked",
    ]
    assert len(schema.sparse) == len(COLUMNS) - 3 - len(DENSE_FIELDS) == 32
    for coded in ("det_ind_code", "det_occ_code", "own_or_self", "vet_benefits", "year"):
        assert coded in schema.sparse_names
    assert schema.scenario is None
    for frame in raw.splits.values():
        assert sorted(frame.columns) == sorted([*schema.feature_names, "income", "never_married"])
    normalization = {f.name: f.normalization for f in schema.dense}
    assert normalization["capital_gains"] == "log1p" and normalization["age"] == "standardize"


def test_question_mark_is_missing_and_values_are_trimmed(write_census: CensusWriter) -> None:
    train = load(write_census())["train"]
    # `?` in 4 of the 5 template rows (row i uses template i % 5; template 1 has "MSA to MSA")
    assert train["mig_chg_msa"].isna().tolist() == [i % 5 != 1 for i in range(60)]
    assert set(train["mig_chg_msa"].dropna()) == {"MSA to MSA"}
    assert train["citizenship"].str.startswith(" ").sum() == 0  # skipinitialspace
    assert pd.api.types.is_numeric_dtype(train["age"])
    assert train["age"].iloc[0] == 18


def test_val_test_split_is_seeded_and_disjoint(write_census: CensusWriter) -> None:
    source = write_census(test_rows=40)
    a, b, c = load(source, seed=0), load(source, seed=0), load(source, seed=1)
    pd.testing.assert_frame_equal(a["val"], b["val"])
    pd.testing.assert_frame_equal(a["test"], b["test"])
    assert not a["val"].equals(c["val"])
    held_out = pd.concat([a["val"], a["test"]])
    # ages 18 + (1000 + i) % 70 for 40 consecutive i are 40 distinct values: each row appears exactly once
    assert sorted(held_out["age"]) == sorted(18 + (1000 + i) % 70 for i in range(40))


def test_rows_caps_each_file(write_census: CensusWriter) -> None:
    splits = load(write_census(train_rows=60, test_rows=40), rows=10)
    assert len(splits["train"]) == 10
    assert len(splits["val"]) + len(splits["test"]) == 10


def test_missing_files_list_expected_names_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load(tmp_path)
    message = str(err.value)
    for name in ("census-income.data", "census-income.data.gz", "census-income.data.bz2", "census-income.test"):
        assert name in message
    assert str(tmp_path) in message


def test_one_missing_file_is_named(write_census: CensusWriter) -> None:
    source = write_census()
    (source / "census-income.test").unlink()
    with pytest.raises(DataError, match=r"test: one of census-income\.test") as err:
        load(source)
    assert "train:" not in str(err.value)


def test_missing_source_is_a_data_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/census_income_kdd" in err.value.hint
    with pytest.raises(DataError, match="source not found"):
        load(tmp_path / "nope")


def test_source_hint_names_the_shared_folder() -> None:
    info = get_dataset("census-income").info
    assert "../shared/data/census_income_kdd" in info.source_hint
    assert info.needs_source and info.tasks == ("income", "never_married")


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_file_is_a_data_error(write_census: CensusWriter, content: str) -> None:
    source = write_census()
    (source / "census-income.data").write_text(content)
    with pytest.raises(DataError, match=r"census-income.data is empty"):
        load(source)


def test_wrong_column_count_is_a_data_error(write_census: CensusWriter) -> None:
    source = write_census()
    (source / "census-income.data").write_text("1, 2, 3\n4, 5, 6\n")
    with pytest.raises(DataError, match="has 3 columns, expected 42"):
        load(source)


def test_ragged_lines_are_a_data_error(write_census: CensusWriter, census_records: Records) -> None:
    source = write_census()
    lines = census_records(5, 0)
    lines[3] += ", extra"
    (source / "census-income.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="cannot read"):
        load(source)


def test_unknown_income_value_is_a_data_error(write_census: CensusWriter, census_records: Records) -> None:
    source = write_census()
    lines = census_records(5, 0)
    lines[2] = lines[2].replace("- 50000.", "low")
    (source / "census-income.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="income column has the value 'low' at row 2"):
        load(source)


def test_corrupt_compressed_file_is_a_data_error(write_census: CensusWriter) -> None:
    source = write_census(suffix=".gz")
    (source / "census-income.data.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read"):
        load(source)
