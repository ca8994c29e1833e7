"""The aliexpress loader on tiny files in the Tianchi and MTReclib/torch-rechub formats, and on the shared sample."""

from __future__ import annotations

import bz2
import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.dataset import open_prepared
from mtlrec.data.loaders import aliexpress, get_dataset
from mtlrec.data.loaders.aliexpress import CATEGORICAL, NUMERICAL, PREPROCESSED_COLUMNS, AliExpress
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.name.endswith(".bz2"):
        path.write_bytes(bz2.compress(data))
    else:
        path.write_bytes(data)
    return path


def user_row(search: int) -> list[str]:
    """33 values: search id, user 2..8 categorical, 9..31 numerical, 32..33 categorical."""
    values = [str(search)]
    values += [str((search * c) % 5) for c in range(2, 9)]
    values += [f"{(search % 10) / 10 + c / 1000:.4f}" for c in range(9, 32)]
    values += [str(search % 3), str(search % 2)]
    return values


def item_row(search: int, k: int, label: int) -> list[str]:
    """49 values: search id, item columns 2..48 (19/34/35/36/40/41/42 categorical), the label."""
    values = [str(search)]
    for c in range(2, 49):
        if c in aliexpress.CATEGORICAL_ITEM:
            values.append(str((search + k + c) % 4))
        else:
            values.append(f"{((search + k) % 7) / 7 + c / 10000:.5f}")
    values.append(str(label))
    return values


def label_of(search: int, k: int) -> int:
    return 2 if (search + k) % 9 == 0 else 1 if (search + k) % 3 == 0 else 0


def write_tianchi(folder: Path, cc: str, searches: int, offset: int = 0, suffix: str = "", skip_user: int = -1) -> None:
    """Tianchi files of country ``cc``: ``searches`` searches of 3 impressions each per split."""
    for split, first in (("train", offset), ("test", offset + 10_000)):
        ids = range(first, first + searches)
        users = [",".join(user_row(s)) for s in ids if s != skip_user]
        items = [",".join(item_row(s, k, label_of(s, k))) for s in ids for k in range(3)]
        write_lines(folder / f"{cc}_user_{split}.csv{suffix}", users)
        write_lines(folder / f"{cc}_item_{split}.csv{suffix}", items)


def preprocessed_frame(n: int, offset: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(offset)
    frame = pd.DataFrame({"search_id": np.arange(offset, offset + n) // 3})
    for c in CATEGORICAL:
        frame[c] = rng.integers(0, 5, n)
    for c in NUMERICAL:
        frame[c] = rng.random(n).round(4)
    frame["click"] = (np.arange(n) % 3 == 0).astype(int)
    frame["conversion"] = (np.arange(n) % 9 == 0).astype(int)
    return frame


def write_sample(folder: Path, n_train: int = 50, n_test: int = 20, extra: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        frame = preprocessed_frame(n, offset)
        for name, source in (extra or {}).items():
            frame[name] = frame[source]
        frame.to_csv(folder / f"aliexpress_{split}_sample.csv", index=False)
    return folder


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("aliexpress").load(source, seed=seed, rows=rows).splits


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_tianchi_files_of_two_countries(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 20, suffix=suffix)
    write_tianchi(source / "AliExpress_US", "us", 10, offset=500, suffix=suffix)  # a subfolder is searched too
    raw = AliExpress().load(source, seed=0, rows=None)
    splits = raw.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [54 + 27, 6 + 3, 60 + 30]
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("NL", "US")
    for frame in splits.values():
        assert list(frame.columns[:2]) == ["search_id", "country"]
        assert sorted(frame.columns) == sorted(
            ["search_id", "country", *CATEGORICAL, *NUMERICAL, "click", "conversion"]
        )
    assert splits["val"].groupby("country").size().to_dict() == {"NL": 6, "US": 3}
    assert raw.schema.id_column == "search_id"
    assert raw.notes["join"].startswith("Tianchi user and item files joined")


def test_tianchi_columns_and_labels_follow_mtreclib(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "es", 12)
    test = load(source)["test"]
    row = test.iloc[4]  # search 10001, impression k = 1
    search, k = 10_001, 1
    user, item = user_row(search), item_row(search, k, label_of(search, k))
    assert row["search_id"] == search and row["country"] == "ES"
    assert row["categorical_1"] == int(user[1])  # user_2
    assert row["categorical_8"] == int(user[31])  # user_32
    assert row["categorical_10"] == int(item[18])  # item_19
    assert row["categorical_16"] == int(item[41])  # item_42
    assert row["numerical_1"] == pytest.approx(float(user[8]))  # user_9
    assert row["numerical_23"] == pytest.approx(float(user[30]))  # user_31
    assert row["numerical_24"] == pytest.approx(float(item[1]))  # item_2
    assert row["numerical_63"] == pytest.approx(float(item[47]))  # item_48
    expected = [label_of(s, kk) for s in range(10_000, 10_012) for kk in range(3)]
    assert test["click"].tolist() == [int(v >= 1) for v in expected]
    assert test["conversion"].tolist() == [int(v == 2) for v in expected]
    assert bool((test["conversion"] <= test["click"]).all()) and 0 < test["conversion"].sum() < test["click"].sum()


def test_items_without_a_user_row_are_dropped(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "fr", 10, skip_user=10_003)
    assert len(load(source)["test"]) == 27


def test_rows_cap_reads_users_until_every_search_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aliexpress, "_USER_CHUNK_ROWS", 2)
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 20)
    splits = load(source, rows=10)
    assert len(splits["train"]) + len(splits["val"]) == 10 and len(splits["test"]) == 10
    assert sorted(splits["test"]["search_id"].unique()) == [10_000, 10_001, 10_002, 10_003]


def test_torch_rechub_sample_is_us_and_extra_columns_are_dropped(tmp_path: Path) -> None:
    source = write_sample(tmp_path / "s" / "torch_rechub_samples", extra={"ctcvr_label": "conversion", "note": "click"})
    raw = AliExpress().load(tmp_path / "s", seed=0, rows=None)
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("US",)
    assert [len(raw.splits[s]) for s in ("train", "val", "test")] == [45, 5, 20]
    for frame in raw.splits.values():
        assert "ctcvr_label" not in frame.columns and "note" not in frame.columns
        assert set(frame["country"]) == {"US"}
    assert "ctcvr_label" not in raw.schema.feature_names
    assert "ctcvr_label, note" in raw.notes["dropped_columns"]
    assert str(source) in raw.notes["files"]
    expected = preprocessed_frame(20, 1000)
    np.testing.assert_array_equal(raw.splits["test"]["numerical_5"], expected["numerical_5"])


def test_mtreclib_folder_names_the_country(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "AliExpress_FR"
    folder.mkdir(parents=True)
    preprocessed_frame(30).to_csv(folder / "train.csv", index=False)
    preprocessed_frame(10, 100).to_csv(folder / "test.csv.gz", index=False)
    splits = load(tmp_path / "data")
    assert set(splits["test"]["country"]) == {"FR"} and len(splits["test"]) == 10


def test_tianchi_files_win_over_mtreclib_outputs_beside_them(tmp_path: Path) -> None:
    folder = tmp_path / "AliExpress_NL"
    write_tianchi(folder, "nl", 10)
    preprocessed_frame(5).to_csv(folder / "train.csv", index=False)
    preprocessed_frame(5).to_csv(folder / "test.csv", index=False)
    raw = AliExpress().load(tmp_path, seed=0, rows=None)
    assert len(raw.splits["test"]) == 30 and "NL (raw" in raw.notes["files"]


def test_val_cut_is_seeded_and_disjoint(tmp_path: Path) -> None:
    source = write_sample(tmp_path / "s", n_train=100)
    a, b, c = load(source, seed=0), load(source, seed=0), load(source, seed=1)
    pd.testing.assert_frame_equal(a["val"], b["val"])
    assert not a["val"].equals(c["val"])
    both = pd.concat([a["train"], a["val"]])
    pd.testing.assert_frame_equal(
        both.sort_values(list(NUMERICAL[:3])).reset_index(drop=True)[list(PREPROCESSED_COLUMNS)],
        preprocessed_frame(100).sort_values(list(NUMERICAL[:3])).reset_index(drop=True),
        check_dtype=False,
    )


def test_rows_caps_preprocessed_files(tmp_path: Path) -> None:
    splits = load(write_sample(tmp_path / "s"), rows=20)
    assert len(splits["train"]) + len(splits["val"]) == 20 and len(splits["test"]) == 20


def test_wrong_column_count_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 5)
    write_lines(source / "nl_item_test.csv", ["1,2,3", "4,5,6"])
    with pytest.raises(DataError, match=r"nl_item_test\.csv has 3 columns, expected 49"):
        load(source)


def test_bad_raw_label_names_the_row(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 5)
    lines = [",".join(item_row(s, k, 0)) for s in range(10_000, 10_005) for k in range(3)]
    lines[6] = lines[6].rsplit(",", 1)[0] + ",3"
    write_lines(source / "nl_item_test.csv", lines)
    with pytest.raises(DataError, match=r"label \(column 49\) is 3 at data row 7"):
        load(source)


def test_ragged_line_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 5)
    lines = [",".join(item_row(s, k, 0)) for s in range(10_000, 10_005) for k in range(3)]
    lines[3] += ",9"
    write_lines(source / "nl_item_test.csv", lines)
    with pytest.raises(DataError, match=r"cannot read .*nl_item_test\.csv"):
        load(source)


def test_non_numeric_value_is_an_error(tmp_path: Path) -> None:
    source = write_sample(tmp_path / "s")
    frame = preprocessed_frame(20, 1000).astype({"categorical_3": object})
    frame.loc[4, "categorical_3"] = "x"
    frame.to_csv(source / "aliexpress_test_sample.csv", index=False)
    with pytest.raises(DataError, match=r"column categorical_3 has the value 'x' at data row 5"):
        load(source)


def test_conversion_without_click_is_an_error(tmp_path: Path) -> None:
    source = write_sample(tmp_path / "s")
    frame = preprocessed_frame(20, 1000)
    frame.loc[2, ["click", "conversion"]] = [0, 1]
    frame.to_csv(source / "aliexpress_test_sample.csv", index=False)
    with pytest.raises(DataError, match=r"conversion without click at data row 3 \(line 4\)"):
        load(source)


def test_missing_preprocessed_column_is_an_error(tmp_path: Path) -> None:
    source = write_sample(tmp_path / "s")
    preprocessed_frame(20).drop(columns=["numerical_7", "click"]).to_csv(
        source / "aliexpress_train_sample.csv", index=False
    )
    with pytest.raises(DataError, match="lacks the columns numerical_7, click"):
        load(source)


def test_incomplete_or_ambiguous_sources_are_errors(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 5)
    (source / "nl_user_test.csv").unlink()
    with pytest.raises(DataError, match=r"part of the Tianchi files of NL: missing nl_user_test\.csv"):
        load(source)
    twice = tmp_path / "twice"
    write_tianchi(twice, "us", 5)
    write_sample(twice / "torch_rechub_samples")
    with pytest.raises(DataError, match="US is there twice"):
        load(twice)
    half = tmp_path / "half"
    write_sample(half)
    (half / "aliexpress_test_sample.csv").unlink()
    with pytest.raises(DataError, match=r"has aliexpress_train_sample\.csv but no test file"):
        load(half)


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/aliexpress" in err.value.hint
    with pytest.raises(DataError, match="source not found"):
        load(tmp_path / "nope")
    (tmp_path / "aliexpress_NL_datasets.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="no AliExpress files") as err:
        load(tmp_path)
    assert err.value.hint is not None and "unzip aliexpress_NL_datasets.zip" in err.value.hint
    with pytest.raises(DataError, match="is a file"):
        load(tmp_path / "aliexpress_NL_datasets.zip")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    source = write_sample(tmp_path / "s")
    (source / "aliexpress_test_sample.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load(source)


def test_prepare_end_to_end(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 30, suffix=".gz")
    write_tianchi(source, "es", 30, offset=700)
    result = prepare("aliexpress", source, tmp_path / "out", seed=0)
    data = open_prepared(tmp_path / "out")
    assert data.schema.num_scenarios == 2 and data.schema.id_column == "search_id"
    assert len(data.schema.sparse) == 16 and len(data.schema.dense) == 63
    assert {d.normalization for d in data.schema.dense} == {"none"}
    assert set(result.summary["test"]["scenarios"]) == {"ES", "NL"}
    assert len(data.split("test")) == 180


# ------------------------------------------------------------------------------------------------ real data
def shared_aliexpress() -> Path | None:
    """``$MTLREC_SHARED_DATA`` or ``<repo root>/../shared/data``, folder aliexpress; None if absent."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(root.parent / "shared" / "data")
    for base in bases:
        folder = base / "aliexpress"
        if any(folder.glob("**/aliexpress_train_sample.csv*")) or any(folder.glob("**/*_item_train.csv*")):
            return folder
    return None


@pytest.fixture
def real_aliexpress() -> Path:
    folder = shared_aliexpress()
    if folder is None:
        pytest.skip("AliExpress files not found: set MTLREC_SHARED_DATA or put them in ../shared/data/aliexpress")
    return folder


@pytest.mark.real_data
def test_real_sample_rows_and_labels(real_aliexpress: Path) -> None:
    raw = get_dataset("aliexpress").load(real_aliexpress, seed=0, rows=None)
    splits = raw.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [90, 10, 20]
    assert int(splits["train"]["click"].sum() + splits["val"]["click"].sum()) == 60
    assert int(splits["train"]["conversion"].sum() + splits["val"]["conversion"].sum()) == 2
    assert (int(splits["test"]["click"].sum()), int(splits["test"]["conversion"].sum())) == (10, 2)
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("US",)
    assert (
        splits["test"]["search_id"].iloc[0]
        == pd.read_csv(next(real_aliexpress.glob("**/aliexpress_test_sample.csv*")))["search_id"].iloc[0]
    )


@pytest.mark.real_data
def test_prepare_real_sample(real_aliexpress: Path, tmp_path: Path) -> None:
    result = prepare("aliexpress", real_aliexpress, tmp_path / "prep", seed=0)
    data = open_prepared(tmp_path / "prep")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [90, 10, 20]
    assert data.schema.sparse_names == list(CATEGORICAL) and data.schema.dense_names == list(NUMERICAL)
    assert data.schema.num_scenarios == 1
    assert result.summary["test"]["tasks"]["click"] == pytest.approx(0.5)
    assert result.summary["test"]["tasks"]["conversion"] == pytest.approx(0.2)  # among clicks
    assert result.summary["train"]["tasks"]["click"] == pytest.approx(55 / 90)


def test_two_copies_of_a_tianchi_file_are_an_error(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 5)
    write_tianchi(source, "nl", 5, suffix=".gz")
    with pytest.raises(DataError, match=r"two item_test files for NL"):
        load(source)


def test_user_and_item_files_that_do_not_match_are_an_error(tmp_path: Path) -> None:
    source = tmp_path / "ae"
    write_tianchi(source, "nl", 5)
    write_lines(source / "nl_user_test.csv", [",".join(user_row(s)) for s in range(50, 55)])
    with pytest.raises(DataError, match=r"no row of nl_item_test\.csv has its search id in nl_user_test\.csv"):
        load(source)
