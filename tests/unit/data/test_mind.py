"""The mind loader on tiny files in both layouts (MIND's behaviors/news TSVs, Scenario-Wise-Rec's table), real data."""

from __future__ import annotations

import bz2
import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders.mind import CATEGORIES, split_dev_by_impression
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError

# news id -> (category, subcategory); N9 is outside the 4 categories, N8 is missing from news.tsv
NEWS = {
    "N1": ("news", "newsworld"),
    "N2": ("lifestyle", "shop-holidays"),
    "N3": ("sports", "football_nfl"),
    "N4": ("finance", "finance-retirement"),
    "N5": ("sports", "football_ncaa"),
    "N9": ("autos", "autosnews"),
}


def write(path: Path, text: str) -> Path:
    data = text.encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".bz2"):
        data = bz2.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def news_tsv() -> str:
    """MIND's news.tsv: 8 tab-separated columns, no header; titles hold quotes, entities hold JSON."""
    lines = []
    for news_id, (category, sub) in NEWS.items():
        entities = '[{"Label": "X", "Type": "P"}]'
        lines.append(
            f'{news_id}\t{category}\t{sub}\tA "quoted" title\tAn abstract\thttps://a/{news_id}\t{entities}\t[]'
        )
    return "\n".join(lines) + "\n"


def behaviors_tsv(n: int, offset: int = 0) -> str:
    """MIND's behaviors.tsv: impression i by user U{i % 5} shows 4 news, the one at position i % 4 clicked."""
    lines = []
    for i in range(offset, offset + n):
        shown = ["N1", "N2", "N3", "N4"] if i % 3 else ["N5", "N9", "N8", "N1"]
        tokens = " ".join(f"{nid}-{int(k == i % 4)}" for k, nid in enumerate(shown))
        history = "" if i % 2 else "N1 N2"
        lines.append(f"{i + 1}\tU{i % 5}\t11/15/2019 8:55:22 AM\t{history}\t{tokens}")
    return "\n".join(lines) + "\n"


def write_upstream(folder: Path, names: tuple[str, str] = ("train", "dev"), suffix: str = "") -> Path:
    write(folder / names[0] / f"behaviors.tsv{suffix}", behaviors_tsv(30))
    write(folder / names[0] / f"news.tsv{suffix}", news_tsv())
    write(folder / names[1] / f"behaviors.tsv{suffix}", behaviors_tsv(20, offset=100))
    write(folder / names[1] / f"news.tsv{suffix}", news_tsv())
    return folder


def table_text(n: int = 200) -> str:
    """Scenario-Wise-Rec's table: row i shows news N{1 + i % 5} to user U{i}, clicked iff i % 10 == 0."""
    lines = ["User_ID,News_ID,label,Category,SubCategory"]
    for i in range(n):
        nid = f"N{1 + i % 5}"
        category, sub = NEWS[nid]
        lines.append(f"U{i},{nid},{int(i % 10 == 0)},{category},{sub}")
    return "\n".join(lines) + "\n"


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("mind").load(source, seed=seed, rows=rows).splits


# ------------------------------------------------------------------------------------------------------------ table
@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_table_columns_labels_and_scenarios(tmp_path: Path, suffix: str) -> None:
    write(tmp_path / f"mind_sample.csv{suffix}", table_text())
    raw = get_dataset("mind").load(tmp_path, seed=0, rows=None)
    schema = raw.schema
    assert schema.sparse_names == ["user_id", "news_id", "subcategory"] and schema.task_names == ["click"]
    assert schema.scenario is not None and schema.scenario.name == "category"
    frame = pd.concat(raw.splits.values())
    assert list(frame.columns) == ["user_id", "news_id", "subcategory", "category", "click"]
    assert len(frame) == 200 and int(frame["click"].sum()) == 20
    assert frame.groupby("category").size().to_dict() == {"finance": 40, "lifestyle": 40, "news": 40, "sports": 80}
    assert [len(raw.splits[s]) for s in ("train", "val", "test")] == [160, 20, 20]
    for split in raw.splits.values():
        assert set(split["category"]) == set(CATEGORIES)  # stratified: every category in every split


def test_table_other_categories_are_dropped_and_counted(tmp_path: Path) -> None:
    text = table_text(50) + "U99,N9,1,autos,autosnews\n"
    raw = get_dataset("mind").load(write(tmp_path / "mind_all.csv", text), seed=0, rows=None)
    assert sum(len(f) for f in raw.splits.values()) == 50
    assert raw.notes["dropped"].startswith("1 rows outside")


def test_table_split_is_seeded_and_rows_capped(tmp_path: Path) -> None:
    write(tmp_path / "mind_sample.csv", table_text())
    a, b, c = load(tmp_path, seed=5), load(tmp_path, seed=5), load(tmp_path, seed=6)
    pd.testing.assert_frame_equal(a["test"], b["test"])
    assert not a["test"].equals(c["test"])
    assert sum(len(f) for f in load(tmp_path, rows=100).values()) == 100


def test_table_bad_label_is_an_error_naming_the_line(tmp_path: Path) -> None:
    lines = table_text(20).splitlines()
    lines[7] = lines[7].replace(",0,", ",yes,")
    write(tmp_path / "mind_sample.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mind_sample\.csv, line 8: label is 'yes', expected 0 or 1"):
        load(tmp_path)


def test_table_missing_column_is_named(tmp_path: Path) -> None:
    write(tmp_path / "mind_sample.csv", "User_ID,News_ID,label\nU1,N1,0\n")
    with pytest.raises(DataError, match="lacks the columns SubCategory, Category"):
        load(tmp_path)


# --------------------------------------------------------------------------------------------------------- upstream
@pytest.mark.parametrize(("names", "suffix"), [(("train", "dev"), ""), (("MINDsmall_train", "MINDsmall_dev"), ".gz")])
def test_upstream_impressions_are_expanded_and_joined(tmp_path: Path, names: tuple[str, str], suffix: str) -> None:
    raw = get_dataset("mind").load(write_upstream(tmp_path, names, suffix), seed=0, rows=None)
    train = raw.splits["train"]
    # 30 impressions: 20 show N1-N4 (4 rows kept), 10 show N5, N9, N8, N1 (N9: autos, N8: unknown -> 2 rows kept)
    assert len(train) == 20 * 4 + 10 * 2
    clicked = [(f"U{i % 5}", ["N1", "N2", "N3", "N4"][i % 4]) for i in range(30) if i % 3]
    clicked += [(f"U{i % 5}", ["N5", "N9", "N8", "N1"][i % 4]) for i in range(30) if i % 3 == 0 and i % 4 in (0, 3)]
    got = train.loc[train["click"] == 1, ["user_id", "news_id"]]
    assert sorted(map(tuple, got.to_numpy().tolist())) == sorted(clicked)
    assert train.set_index("news_id")["subcategory"].to_dict()["N3"] == "football_nfl"
    assert set(train["category"]) == set(CATEGORIES)
    assert raw.notes["dropped"].startswith("20 train and")
    assert names[1] in raw.notes["split"]


def test_upstream_dev_is_cut_by_impression_and_seeded(tmp_path: Path) -> None:
    source = write_upstream(tmp_path)
    raw_a = get_dataset("mind").load(source, seed=0, rows=None)
    b, c = load(source, seed=0), load(source, seed=1)
    a = raw_a.splits
    pd.testing.assert_frame_equal(a["val"], b["val"])
    assert not a["val"].equals(c["val"])
    assert len(a["val"]) + len(a["test"]) == 14 * 4 + 6 * 2  # 20 dev impressions
    assert len(a["train"]) == 100  # the train folder, whole
    assert "impression_id" not in a["val"].columns


def test_upstream_split_keeps_each_impression_in_one_split() -> None:
    dev = pd.DataFrame({"impression_id": ["1", "1", "2", "2", "3", "3", "4"], "x": range(7)})
    val, test = split_dev_by_impression(dev, seed=0)
    assert set(val["impression_id"]).isdisjoint(test["impression_id"])
    assert len(set(val["impression_id"])) == 2 and len(val) + len(test) == 7


def test_upstream_rows_caps_impressions(tmp_path: Path) -> None:
    splits = load(write_upstream(tmp_path), rows=3)
    assert len(splits["train"]) == 2 + 4 + 4  # impressions 0 (2 of its 4 news kept), 1 and 2


def test_unlabelled_impression_is_an_error_naming_the_line(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    lines = behaviors_tsv(5, offset=100).splitlines()
    lines[3] = lines[3].replace("N2-0", "N2")
    write(tmp_path / "dev" / "behaviors.tsv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"dev/behaviors\.tsv, line 4: impression 'N2' has no click label") as err:
        load(tmp_path)
    assert err.value.hint is not None and "unlabelled" in err.value.hint


def test_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    lines = behaviors_tsv(5, offset=100).splitlines()
    lines[4] = lines[4].replace("-1", "-x")
    write(tmp_path / "dev" / "behaviors.tsv", "\n".join([*lines[:2], "", *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="line 6: impression"):
        load(tmp_path)


def test_missing_impressions_column_is_an_error(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    write(tmp_path / "train" / "behaviors.tsv", behaviors_tsv(3) + "7\tU1\t11/15/2019 8:55:22 AM\t\t\n")
    with pytest.raises(DataError, match=r"train/behaviors\.tsv, line 4: the user id or the impressions"):
        load(tmp_path)


def test_missing_news_file_is_named(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    (tmp_path / "dev" / "news.tsv").unlink()
    with pytest.raises(DataError, match=r"lacks news\.tsv"):
        load(tmp_path)


def test_no_source_and_no_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/mind" in err.value.hint
    with pytest.raises(DataError, match="no MIND files"):
        load(tmp_path)


def test_prepare_on_upstream_files(tmp_path: Path) -> None:
    result = prepare("mind", write_upstream(tmp_path / "src"), tmp_path / "out", seed=0)
    assert result.schema.scenario is not None
    assert result.schema.scenario.values == tuple(sorted(CATEGORIES))
    assert result.summary["train"]["rows"] == 100


# -------------------------------------------------------------------------------------------------------- real data
def real_dir() -> Path | None:
    """``$MTLREC_SHARED_DATA/mind`` or ``<repo root>/../shared/data/mind``; None if absent."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(root.parent / "shared" / "data")
    return next((b / "mind" for b in bases if (b / "mind" / "mind_sample.csv").is_file()), None)


@pytest.fixture
def real_mind() -> Path:
    folder = real_dir()
    if folder is None:
        pytest.skip("real MIND sample not found: set MTLREC_SHARED_DATA or put mind/mind_sample.csv in ../shared/data")
    return folder


@pytest.mark.real_data
def test_real_mind_sample_prepares_with_the_documented_counts(real_mind: Path, tmp_path: Path) -> None:
    raw = get_dataset("mind").load(real_mind, seed=0, rows=None)
    frame = pd.concat(raw.splits.values())
    assert len(frame) == 8000 and int(frame["click"].sum()) == 363  # PROVENANCE.md: label 1 -> 363
    assert frame.groupby("category").size().to_dict() == {
        "finance": 1265,
        "lifestyle": 1565,
        "news": 3742,
        "sports": 1428,
    }
    result = prepare("mind", real_mind, tmp_path / "out", seed=0)
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["rows"] == {"train": 6402, "val": 799, "test": 799}
    assert result.summary["train"]["tasks"]["click"] == pytest.approx(0.045, abs=0.005)
    assert set(result.summary["test"]["scenarios"]) == set(CATEGORIES)
