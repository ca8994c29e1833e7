"""The douban loader on tiny files in both layouts (Kaggle upstream, Scenario-Wise-Rec table) and on the real sample."""

from __future__ import annotations

import bz2
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders.douban import DOMAINS, douban_schema
from mtlrec.data.loaders.reading import stratified_split
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError

TABLE_HEADER = "user_id,item_id,rating,domain,living_place,join_time,time_bin"
COUNTS = {"book": 40, "movie": 100, "music": 30}  # rows per domain in the tiny table


def write(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8), compressed as the file name says."""
    data = text.encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".bz2"):
        data = bz2.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def table_lines(counts: dict[str, int] = COUNTS) -> list[str]:
    """Rows of Scenario-Wise-Rec's table: row i of a domain is positive iff i % 3 != 0; every 7th place is missing."""
    lines = []
    for domain, n in counts.items():
        for i in range(n):
            place = "" if i % 7 == 0 else ('"Paris, France"' if i % 2 else "北京")
            month = 1 + i % 12
            lines.append(
                f"{i % 13},{1000 * DOMAINS.index(domain) + i},{int(i % 3 != 0)},{domain},{place},"
                f"2008-{month:02d}-15,{month}"
            )
    return lines


def write_table(folder: Path, name: str = "douban_sample.csv", lines: list[str] | None = None) -> Path:
    write(folder / name, "\n".join([TABLE_HEADER, *(table_lines() if lines is None else lines)]) + "\n")
    return folder


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("douban").load(source, seed=seed, rows=rows).splits


def pooled(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(splits.values(), ignore_index=True)


# ------------------------------------------------------------------------------------------- Scenario-Wise-Rec table
@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_table_columns_labels_and_scenarios(tmp_path: Path, suffix: str) -> None:
    raw = get_dataset("douban").load(write_table(tmp_path, f"douban_sample.csv{suffix}"), seed=0, rows=None)
    schema = raw.schema
    assert schema.sparse_names == ["user_id", "item_id", "living_place", "join_month"]
    assert schema.scenario is not None and schema.scenario.name == "domain"
    assert schema.task_names == ["high_rating"] and schema.dense_names == []
    frame = pooled(raw.splits)
    for split in raw.splits.values():
        assert list(split.columns) == ["user_id", "item_id", "living_place", "join_month", "domain", "high_rating"]
    assert len(frame) == sum(COUNTS.values())
    assert frame.groupby("domain").size().to_dict() == COUNTS
    # row i of a domain (item id 1000 * domain index + i) is positive iff i % 3 != 0
    i = frame["item_id"].astype(int) % 1000
    assert frame["high_rating"].tolist() == (i % 3 != 0).astype(int).tolist()
    assert frame["join_month"].tolist() == [f"2008-{1 + k % 12:02d}" for k in i]
    assert frame["living_place"].isna().sum() == sum((np.arange(n) % 7 == 0).sum() for n in COUNTS.values())
    assert "Paris, France" in set(frame["living_place"].dropna())
    assert "rating" in raw.notes["removed_inputs"] and "within each domain" in raw.notes["split"]


def test_full_output_with_domain_ids_and_a_file_source(tmp_path: Path) -> None:
    lines = [
        line.replace(",book,", ",0,").replace(",movie,", ",1,").replace(",music,", ",2,") for line in table_lines()
    ]
    header = TABLE_HEADER.replace("domain", "domain_id")
    path = write(tmp_path / "douban.csv", "\n".join([header, *lines]) + "\n")
    assert pooled(load(tmp_path)).groupby("domain").size().to_dict() == COUNTS
    assert pooled(load(path)).groupby("domain").size().to_dict() == COUNTS  # --source the file itself


def test_split_is_80_10_10_within_each_domain_and_seeded(tmp_path: Path) -> None:
    source = write_table(tmp_path)
    a, b, c = load(source, seed=0), load(source, seed=0), load(source, seed=1)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["val"].equals(c["val"])
    for domain, n in COUNTS.items():
        sizes = [int((a[s]["domain"] == domain).sum()) for s in ("train", "val", "test")]
        assert sizes == [n - 2 * round(n * 0.1), round(n * 0.1), round(n * 0.1)]
    keys = pooled(a)[["domain", "item_id"]].astype(str).agg("-".join, axis=1)
    assert keys.is_unique  # every row in exactly one split


def test_rows_caps_the_table(tmp_path: Path) -> None:
    assert len(pooled(load(write_table(tmp_path), rows=50))) == 50


def test_rating_other_than_0_1_is_an_error_naming_the_line(tmp_path: Path) -> None:
    lines = table_lines()
    user, item, _, rest = lines[4].split(",", 3)
    lines[4] = f"{user},{item},5,{rest}"
    with pytest.raises(DataError, match=r"douban_sample\.csv, line 6: rating is '5'") as err:
        load(write_table(tmp_path, lines=lines))
    assert err.value.hint is not None and "Kaggle" in err.value.hint


def test_unknown_domain_is_an_error_naming_the_line(tmp_path: Path) -> None:
    lines = table_lines()
    lines[2] = lines[2].replace(",book,", ",games,")
    with pytest.raises(DataError, match=r"line 4: domain is 'games'"):
        load(write_table(tmp_path, lines=lines))


def test_missing_column_is_named(tmp_path: Path) -> None:
    write(tmp_path / "douban_sample.csv", "user_id,item_id,domain\n1,2,book\n")
    with pytest.raises(DataError, match="lacks the columns rating, living_place, join_time"):
        load(tmp_path)


# ----------------------------------------------------------------------------------------------------- Kaggle layout
def review_file(domain: str, ratings: list[str]) -> str:
    """A Kaggle review file: quoted, tab separated, with the text columns the loader does not read."""
    header = f'"user_id"\t"{domain}_id"\t"rating"\t"labels"\t"comment"\t"time"\t"ID"'
    lines = [header]
    for i, rating in enumerate(ratings):
        comment = '"good, ""really"" good\tok"' if i % 2 else '"meh"'
        lines.append(f'"u{i % 4}"\t"{i}"\t"{rating}"\t"tag"\t{comment}\t"2010-01-01 10:00:00"\t"{i}"')
    return "\n".join(lines) + "\n"


USERS = (
    '"UID"\t"living_place"\t"join_time"\t"self_statement"\n'
    '"u0"\t"北京"\t"2006-03-01"\t"hi"\n'
    '"u1"\t""\t"2009-12-31"\t"x"\n'
    '"u2"\t"上海"\t"unknown"\t""\n'
)  # u3 has no profile


def write_kaggle(folder: Path, suffix: str = "", ratings: dict[str, list[str]] | None = None) -> Path:
    ratings = ratings or {
        "book": ["1", "2", "3", "4", "5", "4", "5", "3", "2", "5"],
        "movie": ["5", "4", "-1", "", "3", "1", "4", "4", "5", "2", "2", "5"],
        "music": ["3", "4", "5", "1", "5", "5", "4", "3", "5", "4"],
    }
    write(folder / f"users_cleaned.txt{suffix}", USERS)
    for domain, values in ratings.items():
        write(folder / f"{domain}reviews_cleaned.txt{suffix}", review_file(domain, values))
    return folder


@pytest.mark.parametrize("suffix", ["", ".bz2"])
def test_kaggle_files_are_joined_and_thresholded(tmp_path: Path, suffix: str) -> None:
    raw = get_dataset("douban").load(write_kaggle(tmp_path, suffix), seed=0, rows=None)
    frame = pooled(raw.splits)
    # 10 book + 12 movie (-1 and empty dropped: 10) + 10 music
    assert frame.groupby("domain").size().to_dict() == {"book": 10, "movie": 10, "music": 10}
    book = frame[frame["domain"] == "book"].sort_values("item_id", key=lambda s: s.str[5:].astype(int))
    assert book["high_rating"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 1]  # rating > 3
    assert set(frame["item_id"].str.split(":").str[0]) == set(DOMAINS)  # the domain prefixes the item id
    user = frame.drop_duplicates("user_id").set_index("user_id")
    assert user.loc["u0", "living_place"] == "北京" and user.loc["u0", "join_month"] == "2006-03"
    assert pd.isna(user.loc["u1", "living_place"]) and user.loc["u1", "join_month"] == "2009-12"
    assert pd.isna(user.loc["u2", "join_month"])  # unparseable join_time
    assert pd.isna(user.loc["u3", "living_place"])  # no profile: left join
    assert "movie: 2" in raw.notes["dropped_ratings"] and "rating > 3" in raw.notes["label"]


def test_kaggle_files_in_their_subfolder_and_rows_cap(tmp_path: Path) -> None:
    write_kaggle(tmp_path / "douban_dataset(text information)")
    frame = pooled(load(tmp_path, rows=5))
    # the cap counts rows read: 2 of the first 5 movie rows have no 1-5 rating
    assert frame.groupby("domain").size().to_dict() == {"book": 5, "movie": 3, "music": 5}


def test_kaggle_non_numeric_rating_is_an_error_naming_the_row(tmp_path: Path) -> None:
    write_kaggle(tmp_path, ratings={d: ["4", "5", "x", "1"] for d in DOMAINS})
    with pytest.raises(DataError, match=r"bookreviews_cleaned\.txt, data row 3: rating is 'x'"):
        load(tmp_path)


def test_kaggle_missing_file_is_named(tmp_path: Path) -> None:
    write_kaggle(tmp_path)
    (tmp_path / "musicreviews_cleaned.txt").unlink()
    with pytest.raises(DataError, match=r"missing in .*: musicreviews_cleaned\.txt"):
        load(tmp_path)


def test_kaggle_file_without_the_item_column_is_a_data_error(tmp_path: Path) -> None:
    write_kaggle(tmp_path)
    write(tmp_path / "bookreviews_cleaned.txt", '"user_id"\t"rating"\n"u0"\t"4"\n')
    with pytest.raises(DataError, match=r"cannot read .*bookreviews_cleaned"):
        load(tmp_path)


# ---------------------------------------------------------------------------------------------------------- errors
def test_no_source_no_files_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/douban" in err.value.hint
    with pytest.raises(DataError, match="no Douban files"):
        load(tmp_path)
    with pytest.raises(DataError, match="source not found"):
        load(tmp_path / "nope")


def test_empty_table_is_a_data_error(tmp_path: Path) -> None:
    write(tmp_path / "douban_sample.csv", TABLE_HEADER + "\n")
    with pytest.raises(DataError, match="no data rows"):
        load(tmp_path)


def test_stratified_split_keeps_small_groups_in_train() -> None:
    frame = pd.DataFrame({"g": ["a"] * 20 + ["b"] * 3 + ["c"], "x": range(24)})
    splits = stratified_split(frame, "g", seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [20, 2, 2]
    assert set(splits["train"]["g"]) == {"a", "b", "c"}
    assert splits["train"]["x"].is_monotonic_increasing  # file order kept
    again = stratified_split(frame, "g", seed=3)
    pd.testing.assert_frame_equal(splits["val"], again["val"])


def test_prepare_on_the_tiny_table(tmp_path: Path) -> None:
    result = prepare("douban", write_table(tmp_path / "src"), tmp_path / "out", seed=0)
    assert result.schema.scenario is not None and result.schema.scenario.values == ("book", "movie", "music")
    assert result.summary["train"]["rows"] == 136
    assert douban_schema().task_names == ["high_rating"]


# ------------------------------------------------------------------------------------------------------- real data
def real_dir() -> Path | None:
    """``$MTLREC_SHARED_DATA/douban`` or ``<repo root>/../shared/data/douban``; None if absent."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(root.parent / "shared" / "data")
    return next((b / "douban" for b in bases if (b / "douban" / "douban_sample.csv").is_file()), None)


@pytest.fixture
def real_douban() -> Path:
    folder = real_dir()
    if folder is None:
        pytest.skip(
            "real Douban sample not found: set MTLREC_SHARED_DATA or put douban/douban_sample.csv in ../shared/data"
        )
    return folder


@pytest.mark.real_data
def test_real_douban_sample_prepares_with_the_documented_counts(real_douban: Path, tmp_path: Path) -> None:
    raw = get_dataset("douban").load(real_douban, seed=0, rows=None)
    frame = pooled(raw.splits)
    assert len(frame) == 3000 and int(frame["high_rating"].sum()) == 1936  # PROVENANCE.md: rating 1 -> 1,936
    assert frame.groupby("domain").size().to_dict() == {"book": 364, "movie": 2299, "music": 337}
    assert [len(raw.splits[s]) for s in ("train", "val", "test")] == [2400, 300, 300]
    result = prepare("douban", real_douban, tmp_path / "out", seed=0)
    train = result.summary["train"]
    assert train["rows"] == 2400 and train["tasks"]["high_rating"] == pytest.approx(0.648, abs=0.01)
    assert set(train["scenarios"]) == {"book", "movie", "music"}
    assert train["scenarios"]["movie"]["rows"] == 1839
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["rows"] == {"train": 2400, "val": 300, "test": 300}
    assert [f.name for f in result.schema.sparse] == ["user_id", "item_id", "living_place", "join_month"]
