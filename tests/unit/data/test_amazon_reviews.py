"""The amazon-reviews loader on tiny JSON-lines files in the upstream (2018) format, and on the shared files."""

from __future__ import annotations

import bz2
import gzip
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.dataset import open_prepared
from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders.amazon_reviews import AmazonReviews, category_of
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError

RATINGS = (5.0, 4.0, 3.0, 5.0, 1.0, 5.0, 2.0, 4.0, 5.0, 5.0)  # every rating class in every 10 rows
FEATURES = ["reviewer_id", "asin", "verified", "month", "year", "style_size", "style_color", "style_other", "vote"]


def record(i: int, **changes: Any) -> dict[str, Any]:
    """A review record as in the 2018 files; review i has rating RATINGS[i % 10] and its own text."""
    out: dict[str, Any] = {
        "overall": RATINGS[i % len(RATINGS)],
        "verified": i % 3 != 0,
        "reviewTime": "09 4, 2015",
        "reviewerID": f"R{i % 7}",
        "asin": f"B{i % 5:09d}",
        "style": {"Size:": " Large", "Color:": f" Blue{i % 2}"},
        "reviewerName": "Someone",
        "reviewText": f"review number {i}",
        "summary": "Five Stars",
        "unixReviewTime": 1441324800 + 86400 * 40 * i,
    }
    if i % 4 == 0:
        out["vote"] = "1,234" if i % 8 == 0 else "3"
    out.update(changes)
    return {k: v for k, v in out.items() if v is not DROP}


DROP = object()


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.name.endswith(".bz2"):
        path.write_bytes(bz2.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_category(folder: Path, category: str, records: list[dict[str, Any]], suffix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_lines(folder / f"{category}_5.json{suffix}", [json.dumps(r) for r in records])


def write_source(tmp_path: Path, n: int = 60, suffix: str = "") -> Path:
    source = tmp_path / "amazon"
    write_category(source, "Toys", [record(i) for i in range(n)], suffix)
    write_category(source, "All_Beauty", [record(i, reviewText=f"beauty {i}") for i in range(n)], suffix)
    return source


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("amazon-reviews").load(source, seed=seed, rows=rows).splits


def everything(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([splits[s] for s in ("train", "val", "test")], ignore_index=True)


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_reads_category_files_plain_or_compressed(tmp_path: Path, suffix: str) -> None:
    raw = AmazonReviews().load(write_source(tmp_path, suffix=suffix), seed=0, rows=None)
    data = everything(raw.splits)
    assert len(data) == 120
    assert sorted(data["category"].unique()) == ["All_Beauty", "Toys"]
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("All_Beauty", "Toys")


def test_category_is_the_file_name_without_5_and_extension() -> None:
    assert category_of(Path("Gift_Cards_5.json.gz")) == "Gift_Cards"
    assert category_of(Path("AMAZON_FASHION_5.json")) == "AMAZON_FASHION"
    assert category_of(Path("Books.json.bz2")) == "Books"
    with pytest.raises(DataError, match="not a JSON-lines review file"):
        category_of(Path("notes.txt"))


def test_labels_are_rating_thresholds_and_the_rating_is_no_input(tmp_path: Path) -> None:
    raw = AmazonReviews().load(write_source(tmp_path), seed=0, rows=None)
    data = everything(raw.splits)
    toys = data[data["category"] == "Toys"]
    assert raw.schema.task_names == ["like", "five_star"]
    assert sorted(data.columns) == sorted([*FEATURES, "category", "like", "five_star"])
    assert "overall" not in data.columns and "overall" not in raw.schema.feature_names
    ratings = np.array([RATINGS[i % 10] for i in range(60)])
    assert int(toys["like"].sum()) == int((ratings >= 4).sum())
    assert int(toys["five_star"].sum()) == int((ratings == 5).sum())
    assert bool((data["five_star"] <= data["like"]).all())


def test_field_values(tmp_path: Path) -> None:
    records = [
        record(0, vote="1,234", verified=True, style={"Size Name:": " XL ", "Color:": " Red", "Style:": " Slim"}),
        record(1, vote=7, verified=False, style=DROP, unixReviewTime=DROP, reviewTime="12 31, 2017"),
        record(2, vote=DROP, verified=DROP, style={"Gift Amount:": " 25", "Format:": " Card"}),
        record(3, unixReviewTime=1514764799),  # 2017-12-31 23:59:59 UTC
    ]
    source = tmp_path / "one"
    write_category(source, "Toys", records)
    data = everything(load(source)).sort_values("vote", ascending=False).reset_index(drop=True)
    first = data.set_index("vote")
    assert first.loc[1234.0, "style_size"] == "XL" and first.loc[1234.0, "style_color"] == "Red"
    assert first.loc[1234.0, "style_other"] == "Style: Slim"
    assert first.loc[1234.0, "verified"] == "true"
    assert first.loc[7.0, "verified"] == "false"
    assert (first.loc[7.0, "month"], first.loc[7.0, "year"]) == ("12", "2017")  # from reviewTime
    assert pd.isna(first.loc[7.0, "style_size"]) and pd.isna(first.loc[7.0, "style_other"])
    no_vote = data[data["vote"] == 0.0]
    assert len(no_vote) == 2  # record 2 has no vote; record 3 ("3" only every 4th i) neither
    gift = no_vote[no_vote["style_other"].notna()].iloc[0]
    assert gift["style_other"] == "Format: Card; Gift Amount: 25" and pd.isna(gift["verified"])
    utc = no_vote[no_vote["style_other"].isna()].iloc[0]
    assert (utc["month"], utc["year"]) == ("12", "2017")


def test_copies_of_a_review_are_dropped(tmp_path: Path) -> None:
    base = [record(i) for i in range(20)]
    copies = [
        record(3, asin="B-OTHER", style={"Color:": " Green"}),  # the same review on another variant
        record(3),  # an exact copy
        record(4, reviewText="another text"),  # a different review
        record(5, overall=4.0 if RATINGS[5] != 4.0 else 5.0),  # a different rating: a different review
    ]
    no_text = [record(30, summary=DROP, reviewText=DROP), record(30, summary=DROP, reviewText=DROP, asin="B-X")]
    source = tmp_path / "dups"
    write_category(source, "Toys", base + copies + no_text)
    raw = AmazonReviews().load(source, seed=0, rows=None)
    data = everything(raw.splits)
    assert len(data) == 20 + 2 + 2  # two copies dropped; texts absent: the asin tells the records apart
    assert "B-OTHER" not in set(data["asin"])
    assert "2 copies of a review" in raw.notes["files"]


def test_unlabeled_records_are_dropped_and_counted(tmp_path: Path) -> None:
    records = [record(i) for i in range(20)] + [record(40, overall=None), record(41, overall=DROP)]
    source = tmp_path / "u"
    write_category(source, "Toys", records)
    raw = AmazonReviews().load(source, seed=0, rows=None)
    assert len(everything(raw.splits)) == 20
    assert "2 without rating dropped" in raw.notes["files"]


def test_truncated_last_line_is_dropped_with_a_note(tmp_path: Path) -> None:
    source = tmp_path / "t"
    source.mkdir()
    lines = [json.dumps(record(i)) for i in range(20)]
    lines.append(json.dumps(record(20))[:37])
    write_lines(source / "Toys_5.json.gz", lines)
    raw = AmazonReviews().load(source, seed=0, rows=None)
    assert len(everything(raw.splits)) == 20
    assert "Toys_5.json.gz" in raw.notes["truncated_last_line"]


def test_a_bad_line_in_the_middle_names_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "b"
    source.mkdir()
    lines = [json.dumps(record(i)) for i in range(10)]
    lines[4] = lines[4][:20]
    write_lines(source / "Toys_5.json", lines)
    with pytest.raises(DataError, match=r"Toys_5\.json:5: not a JSON object"):
        load(source)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reviewerID": DROP}, r"Toys_5\.json:3: `reviewerID` is missing"),
        ({"asin": ""}, r"Toys_5\.json:3: `asin` is missing or empty"),
        ({"overall": 7}, r"Toys_5\.json:3: `overall` is 7"),
        ({"overall": "great"}, r"Toys_5\.json:3: `overall` is 'great'"),
        ({"vote": "many"}, r"Toys_5\.json:3: `vote` is 'many'"),
        ({"vote": -2}, r"Toys_5\.json:3: `vote` is -2"),
        ({"style": "Large"}, r"Toys_5\.json:3: `style` is 'Large'"),
        ({"unixReviewTime": DROP, "reviewTime": "sometime"}, r"Toys_5\.json:3: no review time"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    records = [record(i) for i in range(6)]
    records[2] = record(2, **change)
    source = tmp_path / "bad"
    write_category(source, "Toys", records)
    with pytest.raises(DataError, match=message):
        load(source)


def test_a_line_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "arr"
    source.mkdir()
    write_lines(source / "Toys_5.json", [json.dumps(record(0)), "[1, 2]", json.dumps(record(1))])
    with pytest.raises(DataError, match=r"Toys_5\.json:2: not a JSON object"):
        load(source)


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/amazon_reviews_2018" in err.value.hint
    with pytest.raises(DataError, match="source not found"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no review files"):
        load(tmp_path / "empty")
    source = write_source(tmp_path)
    write_category(source, "Toys", [record(0)], ".gz")
    with pytest.raises(DataError, match="two files for category Toys"):
        load(source)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "e"
    source.mkdir()
    (source / "Toys_5.json").write_text("\n\n")
    with pytest.raises(DataError, match="holds no review record"):
        load(source)


def test_a_single_file_is_a_source(tmp_path: Path) -> None:
    path = write_category(tmp_path / "x", "Toys", [record(i) for i in range(30)])
    data = everything(load(path))
    assert len(data) == 30 and set(data["category"]) == {"Toys"}


def test_rows_caps_the_lines_read_per_file(tmp_path: Path) -> None:
    data = everything(load(write_source(tmp_path), rows=15))
    assert data.groupby("category").size().to_dict() == {"All_Beauty": 15, "Toys": 15}


def test_split_is_seeded_stratified_and_complete(tmp_path: Path) -> None:
    source = write_source(tmp_path, n=100)
    a, b, c = load(source, seed=0), load(source, seed=0), load(source, seed=1)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["val"].equals(c["val"])
    assert [len(a[s]) for s in ("train", "val", "test")] == [160, 20, 20]
    # every row exactly once: (category, month/year) identifies a row of these files
    keys = everything(a)[["category", "year", "month", "reviewer_id"]].astype(str).agg("|".join, axis=1)
    assert keys.is_unique and len(keys) == 200
    for split in ("val", "test"):
        for _, frame in a[split].groupby("category"):
            for task in ("like", "five_star"):
                assert 0 < frame[task].sum() < len(frame), (split, task)
            assert len(frame) == 10  # 10 % of each category (stratified)


def test_prepare_end_to_end(tmp_path: Path) -> None:
    result = prepare("amazon-reviews", write_source(tmp_path, n=100, suffix=".gz"), tmp_path / "out", seed=0)
    data = open_prepared(tmp_path / "out")
    assert data.schema.hash() == result.schema.hash()
    assert data.schema.num_scenarios == 2
    assert data.schema.sparse_names == FEATURES[:-1] and data.schema.dense_names == ["vote"]
    assert len(data.split("train")) == 160
    assert result.summary["val"]["scenarios"]["Toys"]["rows"] == 10


# ------------------------------------------------------------------------------------------------ real data
def shared_amazon() -> Path | None:
    """``$MTLREC_SHARED_DATA`` or ``<repo root>/../shared/data``, folder amazon_reviews_2018; None if absent."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(root.parent / "shared" / "data")
    for base in bases:
        folder = base / "amazon_reviews_2018"
        if any(folder.glob("*_5.json*")):
            return folder
    return None


@pytest.fixture
def real_amazon() -> Path:
    folder = shared_amazon()
    if folder is None:
        pytest.skip(
            "real Amazon 2018 files not found: set MTLREC_SHARED_DATA or put them in ../shared/data/amazon_reviews_2018"
        )
    return folder


SHARED_REVIEWS = {"AMAZON_FASHION": 448, "All_Beauty": 1382, "Appliances": 161, "Gift_Cards": 2214}


@pytest.mark.real_data
def test_real_files_rows_rates_and_both_classes_per_scenario(real_amazon: Path) -> None:
    for seed in (0, 1, 2, 3):
        raw = get_dataset("amazon-reviews").load(real_amazon, seed=seed, rows=None)
        data = everything(raw.splits)
        assert data.groupby("category").size().to_dict() == SHARED_REVIEWS
        assert [len(raw.splits[s]) for s in ("train", "val", "test")] == [3363, 421, 421]
        for split in ("val", "test"):
            for category, frame in raw.splits[split].groupby("category"):
                for task in ("like", "five_star"):
                    positives = int(frame[task].sum())
                    assert 0 < positives < len(frame), (seed, split, category, task)
    assert "3176 records, 2727 copies of a review and 1 without rating dropped" in raw.notes["files"]
    rates = data.groupby("category")[["like", "five_star"]].mean()
    assert rates.loc["AMAZON_FASHION", "like"] == pytest.approx(0.819, abs=0.005)
    assert rates.loc["Gift_Cards", "five_star"] == pytest.approx(0.915, abs=0.005)


@pytest.mark.real_data
def test_prepare_real_files(real_amazon: Path, tmp_path: Path) -> None:
    result = prepare("amazon-reviews", real_amazon, tmp_path / "prep", seed=0)
    data = open_prepared(tmp_path / "prep")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [3363, 421, 421]
    assert data.schema.scenario is not None
    assert data.schema.scenario.values == ("AMAZON_FASHION", "All_Beauty", "Appliances", "Gift_Cards")
    assert data.schema.feature_names == FEATURES
    summary = result.summary
    assert summary["train"]["tasks"]["like"] == pytest.approx(0.931, abs=0.01)
    assert summary["train"]["tasks"]["five_star"] == pytest.approx(0.844, abs=0.01)
    for split in ("val", "test"):
        for scenario, entry in summary[split]["scenarios"].items():
            assert 0 < entry["like"] < 1 and 0 < entry["five_star"] < 1, (split, scenario)


def test_a_bad_line_at_the_rows_cap_is_still_an_error(tmp_path: Path) -> None:
    source = tmp_path / "cap"
    source.mkdir()
    lines = [json.dumps(record(i)) for i in range(10)]
    lines[4] = "{broken"
    write_lines(source / "Toys_5.json", lines)
    with pytest.raises(DataError, match=r"Toys_5\.json:5: not a JSON object"):
        load(source, rows=5)
    assert len(everything(load(source, rows=4))) == 4


def test_verified_given_as_text(tmp_path: Path) -> None:
    source = tmp_path / "v"
    write_category(source, "Toys", [record(0, verified="false"), record(1, verified="True")])
    data = everything(load(source)).sort_values("month")
    assert sorted(data["verified"].tolist()) == ["false", "true"]
