"""The tabular loader: CSV and Parquet with a YAML spec, strict spec validation, and errors naming the culprit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlrec.config import load_yaml
from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders.tabular import TabularSpec
from mtlrec.errors import ConfigError, DataError, LabelLeakageError

FIELDS = """\
sparse:
  - user
  - {name: item, min_count: 2}
dense:
  - {name: price, normalization: log1p, fill: median}
scenario: site
tasks:
  - {name: ctr, label: click}
  - {name: cvr, label: buy, conditioned_on: ctr}
id_column: rid
"""


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "rid": np.arange(n),
            "user": rng.choice(["u1", "u2", "u3"], n),
            "item": rng.integers(100, 110, n),
            "price": np.round(rng.lognormal(2, 1, n), 2),
            "site": rng.choice(["app", "web"], n),
            "click": click,
            "buy": click * rng.integers(0, 2, n),
            "unused": rng.normal(size=n),
        }
    )


def write_spec(folder: Path, files: str, fields: str = FIELDS, name: str = "spec.yaml") -> Path:
    spec = folder / name
    spec.write_text(f"files: {files}\n{fields}")
    return spec


def load(spec: Path | None, seed: int = 0, rows_cap: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("tabular").load(spec, seed=seed, rows=rows_cap).splits


def test_three_csv_files_are_read_as_the_three_splits(tmp_path: Path) -> None:
    for name, n in (("train", 50), ("val", 20), ("test", 10)):
        rows(n, seed=n).to_csv(tmp_path / f"{name}.csv", index=False)
    spec = write_spec(tmp_path, "{train: train.csv, val: val.csv, test: test.csv}")
    raw = get_dataset("tabular").load(spec, seed=0, rows=None)
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 50, "val": 20, "test": 10}
    assert list(raw.splits["train"].columns) == ["user", "item", "price", "site", "click", "buy", "rid"]
    expected = rows(20, seed=20).drop(columns=["unused"])[raw.splits["val"].columns]
    text = ["user", "item", "site"]  # categorical CSV columns are read as text, never inferred
    expected[text] = expected[text].astype("string")
    pd.testing.assert_frame_equal(raw.splits["val"], expected)
    schema = raw.schema
    assert schema.sparse_names == ["user", "item"] and schema.sparse[1].min_count == 2
    assert schema.dense[0].normalization == "log1p"
    assert schema.scenario is not None and schema.scenario.name == "site"
    assert schema.task("cvr").conditioned_on == "ctr" and schema.id_column == "rid"


def test_one_parquet_file_is_split_by_fractions_with_the_seed(tmp_path: Path) -> None:
    rows(200).to_parquet(tmp_path / "events.parquet")
    spec = write_spec(tmp_path, "{path: events.parquet, split: {val: 0.2, test: 0.1}}")
    a, b, c = load(spec, seed=0), load(spec, seed=0), load(spec, seed=1)
    assert {k: len(v) for k, v in a.items()} == {"train": 140, "val": 40, "test": 20}
    ids = pd.concat(a.values())["rid"]
    assert sorted(ids) == list(range(200))
    pd.testing.assert_frame_equal(a["val"], b["val"])
    assert not a["val"].equals(c["val"])


def test_default_split_is_10_percent_each(tmp_path: Path) -> None:
    rows(100).to_csv(tmp_path / "all.csv.gz", index=False)
    splits = load(write_spec(tmp_path, "{path: all.csv.gz}"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 80, "val": 10, "test": 10}


def test_relative_paths_are_resolved_against_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    rows(30).to_csv(tmp_path / "data" / "rows.csv", index=False)
    spec = write_spec(tmp_path, "{path: data/rows.csv}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert sum(len(f) for f in load(spec).values()) == 30
    absolute = write_spec(elsewhere, f"{{path: {tmp_path / 'data' / 'rows.csv'}}}", name="abs.yaml")
    assert sum(len(f) for f in load(absolute).values()) == 30


def test_csv_separator_option(tmp_path: Path) -> None:
    rows(40).to_csv(tmp_path / "rows.csv", index=False, sep=";")
    spec = write_spec(tmp_path, "{path: rows.csv}\ncsv: {separator: ';'}")
    assert sum(len(f) for f in load(spec).values()) == 40


def test_rows_caps_each_file(tmp_path: Path) -> None:
    rows(500).to_csv(tmp_path / "rows.csv", index=False)
    rows(500).to_parquet(tmp_path / "rows.parquet", row_group_size=64)
    for name in ("rows.csv", "rows.parquet"):
        splits = load(write_spec(tmp_path, f"{{path: {name}}}"), rows_cap=100)
        ids = sorted(pd.concat(splits.values())["rid"])
        assert ids == list(range(100)), name  # the first 100 rows


def test_unknown_key_in_the_spec_is_refused_by_name(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "{path: rows.csv}", FIELDS + "labels: [click]\n")
    with pytest.raises(ConfigError, match="labels: unknown key"):
        load(spec)
    spec = write_spec(tmp_path, "{path: rows.csv}", FIELDS.replace("min_count", "mincount"))
    with pytest.raises(ConfigError, match="mincount"):
        load(spec)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ("{path: a.csv, train: b.csv}", "not both"),
        ("{train: a.csv, val: b.csv}", "all three"),
        ("{train: a.csv, val: b.csv, test: c.csv, split: {val: 0.1}}", "leave it out"),
        ("{path: a.csv, split: {val: 0.6, test: 0.5}}", "below 1"),
    ],
)
def test_inconsistent_file_layouts_are_refused(tmp_path: Path, files: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write_spec(tmp_path, files))


def test_a_label_listed_as_a_feature_is_label_leakage(tmp_path: Path) -> None:
    rows(30).to_csv(tmp_path / "rows.csv", index=False)
    spec = write_spec(tmp_path, "{path: rows.csv}", "sparse: [user, click]\ntasks: [{name: ctr, label: click}]\n")
    with pytest.raises(LabelLeakageError, match=r"label leakage.*`click`"):
        load(spec)


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    rows(30).to_csv(tmp_path / "train.csv", index=False)
    spec = write_spec(tmp_path, "{train: train.csv, val: val.csv, test: train.csv}")
    with pytest.raises(DataError, match="data file not found") as err:
        load(spec)
    assert str(tmp_path / "val.csv") in str(err.value)


def test_missing_column_is_named_with_the_file(tmp_path: Path) -> None:
    rows(30).drop(columns=["price"]).to_parquet(tmp_path / "rows.parquet")
    rows(30).drop(columns=["buy"]).to_csv(tmp_path / "rows.csv", index=False)
    for name, column in (("rows.parquet", "price"), ("rows.csv", "buy")):
        with pytest.raises(DataError, match=f"lacks the columns {column}") as err:
            load(write_spec(tmp_path, f"{{path: {name}}}"))
        assert name in str(err.value)


@pytest.mark.parametrize("content", ["", "user,item,price,site,click,buy,rid\n"])
def test_empty_csv_is_a_data_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "rows.csv").write_text(content)
    with pytest.raises(DataError, match="empty"):
        load(write_spec(tmp_path, "{path: rows.csv}"))


def test_empty_parquet_is_a_data_error(tmp_path: Path) -> None:
    rows(5).iloc[:0].to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(DataError, match="empty"):
        load(write_spec(tmp_path, "{path: rows.parquet}"))


def test_too_few_rows_to_split_is_a_data_error(tmp_path: Path) -> None:
    rows(4).to_csv(tmp_path / "rows.csv", index=False)
    with pytest.raises(DataError, match="too few to split"):
        load(write_spec(tmp_path, "{path: rows.csv}"))


def test_unsupported_file_type_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "rows.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported data file type"):
        load(write_spec(tmp_path, "{path: rows.xlsx}"))


def test_unreadable_file_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "rows.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read"):
        load(write_spec(tmp_path, "{path: rows.parquet}"))


def test_source_must_be_the_spec_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source"):
        load(None)
    with pytest.raises(DataError, match="is a folder"):
        load(tmp_path)
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")


def test_spec_model_accepts_bare_names() -> None:
    spec = TabularSpec.model_validate(
        {"files": {"path": "x.csv"}, "sparse": ["a", {"name": "b"}], "dense": ["c"], "tasks": [{"name": "y"}]}
    )
    schema = spec.to_schema()
    assert schema.sparse_names == ["a", "b"] and schema.dense_names == ["c"]


def test_csv_categorical_codes_keep_leading_zeros(tmp_path: Path) -> None:
    rows = "\n".join(f"{'01234' if i % 2 else '1234'},{i % 2}" for i in range(20))
    (tmp_path / "rows.csv").write_text("zip,click\n" + rows + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("files: {path: rows.csv, split: {val: 0.2, test: 0.2}}\nsparse: [zip]\ntasks: [{name: click}]\n")
    raw = get_dataset("tabular").load(spec, seed=0, rows=None)
    assert set(raw.splits["train"]["zip"]) == {"01234", "1234"}


def test_shipped_example_spec_is_valid() -> None:
    example = Path(__file__).resolve().parents[3] / "configs" / "tabular-example.yaml"
    schema = load_yaml(example, TabularSpec).to_schema()
    assert schema.task("cvr").conditioned_on == "ctr"
    assert schema.scenario is not None and schema.id_column == "request_id"
