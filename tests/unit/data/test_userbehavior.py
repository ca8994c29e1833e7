"""The userbehavior loader on tiny UserBehavior.csv files (grouping, labels, cut last line, bad lines) and real data."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders import userbehavior as ub
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError

T0 = 1511658000  # 2017-11-26 09:00 (UTC+8)


def write(path: Path, text: str) -> Path:
    data = text.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.name.endswith(".bz2"):
        path.write_bytes(bz2.compress(data))
    elif path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(path.name[: -len(".zip")], data)
    else:
        path.write_bytes(data)
    return path


def events(n_pairs: int = 60) -> list[str]:
    """Lines of UserBehavior.csv. Pair k = (user k % 7, item 100 + k, category k % 5):

    every pair has a pv except k % 10 == 9; buy iff k % 4 == 0; cart iff k % 6 == 0; fav iff k % 9 == 0; pairs with
    k % 3 == 0 repeat their pv (a duplicate count must change nothing).
    """
    lines = []
    for k in range(n_pairs):
        key = f"{k % 7},{100 + k},{k % 5}"
        behaviours = [] if k % 10 == 9 else ["pv"]
        behaviours += ["pv"] * (k % 3 == 0 and k % 10 != 9)
        behaviours += ["buy"] * (k % 4 == 0) + ["cart"] * (k % 6 == 0) + ["fav"] * (k % 9 == 0)
        if not behaviours:
            behaviours = ["cart"]  # k % 10 == 9 and no other behaviour: keep the pair in the file
        lines += [f"{key},{b},{T0 + 10 * k + j}" for j, b in enumerate(behaviours)]
    return lines


def expected(n_pairs: int = 60) -> pd.DataFrame:
    k = np.arange(n_pairs)
    no_other = (k % 4 != 0) & (k % 6 != 0) & (k % 9 != 0)
    return pd.DataFrame(
        {
            "user_id": k % 7,
            "item_id": 100 + k,
            "category_id": k % 5,
            "click": (k % 10 != 9).astype(np.int8),
            "buy": (k % 4 == 0).astype(np.int8),
            "cart": ((k % 6 == 0) | ((k % 10 == 9) & no_other)).astype(np.int8),
            "fav": (k % 9 == 0).astype(np.int8),
        }
    )


def write_file(folder: Path, name: str = "UserBehavior.csv", lines: list[str] | None = None, end: str = "\n") -> Path:
    return write(folder / name, "\n".join(events() if lines is None else lines) + end)


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("userbehavior").load(source, seed=seed, rows=rows).splits


def pooled(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frame = pd.concat(splits.values(), ignore_index=True)
    return frame.sort_values(["user_id", "item_id"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- grouping and labels
@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".zip"])
def test_pairs_and_their_four_labels(tmp_path: Path, suffix: str) -> None:
    raw = get_dataset("userbehavior").load(write_file(tmp_path, f"UserBehavior.csv{suffix}"), seed=0, rows=None)
    schema = raw.schema
    assert schema.sparse_names == ["user_id", "item_id", "category_id"] and schema.dense_names == []
    assert schema.task_names == ["click", "buy", "cart", "fav"] and schema.scenario is None
    assert all(t.conditioned_on is None for t in schema.tasks)  # buys without a pv exist
    want = expected().sort_values(["user_id", "item_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pooled(raw.splits), want, check_dtype=False)
    assert "behaviour records grouped into 60" in raw.notes["examples"]


def test_buy_without_a_page_view_is_kept(tmp_path: Path) -> None:
    lines = [
        f"1,10,3,buy,{T0}",
        f"1,11,3,pv,{T0}",
        f"1,11,3,cart,{T0 + 1}",
        *[f"{u},{u},1,pv,{T0}" for u in range(2, 12)],
    ]
    frame = pooled(load(write_file(tmp_path, lines=lines)))
    first = frame[frame["item_id"] == 10].iloc[0]
    assert (first["click"], first["buy"]) == (0, 1)
    second = frame[frame["item_id"] == 11].iloc[0]
    assert (second["click"], second["cart"], second["buy"]) == (1, 1, 0)


def test_folder_prefers_the_upstream_name_else_pools_the_samples(tmp_path: Path) -> None:
    write_file(tmp_path, "UserBehavior_a.csv", events(30))
    write_file(tmp_path, "UserBehavior_b.csv.gz", events(60)[len(events(30)) :])
    assert len(pooled(load(tmp_path))) == 60  # the two halves pooled
    write_file(tmp_path, "UserBehavior.csv", events(20))
    assert len(pooled(load(tmp_path))) == 20  # the upstream file alone


# ------------------------------------------------------------------------------------------------- cut and bad lines
@pytest.mark.parametrize("chunk_rows", [1, 5, 1000])  # 1: the cut line is a chunk of its own
@pytest.mark.parametrize("cut", ["301780,543546,4181361,pv,15", "3,99,1,p", "3,99", "3,99,1,pv,", "3,99,1,fav"])
def test_cut_last_line_is_dropped_with_a_note(
    tmp_path: Path, cut: str, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ub, "CHUNK_ROWS", chunk_rows)
    lines = [*events(), cut]
    raw = get_dataset("userbehavior").load(write_file(tmp_path, lines=lines, end=""), seed=0, rows=None)
    assert len(pooled(raw.splits)) == 60
    assert f"last line {len(lines)} is cut mid-record" in raw.notes["files"]


@pytest.mark.parametrize("chunk_rows", [4, 1000])
def test_bad_line_is_an_error_naming_its_number(
    tmp_path: Path, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ub, "CHUNK_ROWS", chunk_rows)  # line numbers across chunk boundaries
    lines = events()
    lines[20] = "5,7,x,pv,1511658000"
    with pytest.raises(DataError, match=r"UserBehavior\.csv, line 21: malformed record '5,7,x,pv,1511658000'") as err:
        load(write_file(tmp_path, lines=lines))
    assert err.value.hint is not None and "pv, buy, cart, fav" in err.value.hint


@pytest.mark.parametrize("bad", ["1,2,3,click,1511658000", "1,2.5,3,pv,1511658000", "1,2,3,zz"])
def test_malformed_lines_are_errors_even_when_last(tmp_path: Path, bad: str) -> None:
    lines = events()
    with pytest.raises(DataError, match="line 3: malformed record"):
        load(write_file(tmp_path, lines=[*lines[:2], bad, *lines[2:]]))
    with pytest.raises(DataError, match=f"line {len(lines) + 1}: malformed record"):
        load(write_file(tmp_path, lines=[*lines, bad], end=""))  # not the beginning of a valid record


def test_too_many_fields_is_an_error_naming_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ub, "CHUNK_ROWS", 5)
    lines = events()
    lines[11] += ",9"
    with pytest.raises(DataError, match="line 12"):
        load(write_file(tmp_path, lines=lines))


def test_typed_and_checked_reads_agree(tmp_path: Path) -> None:
    clean = pooled(load(write_file(tmp_path / "clean")))  # the C parser's typed read
    lines = events()
    checked = pooled(load(write_file(tmp_path / "blank", lines=[*lines[:5], "", *lines[5:]])))  # read as text
    pd.testing.assert_frame_equal(clean, checked)


def test_blank_lines_and_a_header_are_skipped(tmp_path: Path) -> None:
    lines = ["user_id,item_id,category_id,behavior_type,timestamp", *events()[:10], "", *events()[10:]]
    raw = get_dataset("userbehavior").load(write_file(tmp_path, lines=lines), seed=0, rows=None)
    assert len(pooled(raw.splits)) == 60 and "line 1 is a header" in raw.notes["files"]


def test_rows_caps_lines_and_a_cap_before_the_cut_line_drops_nothing(tmp_path: Path) -> None:
    lines = [*events(), "9,9,9,pv,15"]
    source = write_file(tmp_path, lines=lines, end="")
    raw = get_dataset("userbehavior").load(source, seed=0, rows=len(lines) - 1)
    assert "cut" not in raw.notes["files"] and len(pooled(raw.splits)) == 60
    assert "cut" in get_dataset("userbehavior").load(source, seed=0, rows=len(lines)).notes["files"]
    assert int(pooled(load(source, rows=20)).shape[0]) < 60


# ------------------------------------------------------------------------------------------------------------- split
def test_split_is_at_the_user_item_level_and_seeded(tmp_path: Path) -> None:
    lines = [f"{u},{i},{c},pv,{T0}" for u in range(20) for i in range(10) for c in (1, 2)]  # 2 categories per pair
    source = write_file(tmp_path, lines=lines)
    a, b, c = load(source, seed=0), load(source, seed=0), load(source, seed=1)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["val"].equals(c["val"])
    pairs = {name: set(map(tuple, f[["user_id", "item_id"]].to_numpy().tolist())) for name, f in a.items()}
    assert [len(pairs[s]) for s in ("train", "val", "test")] == [160, 20, 20]
    assert pairs["train"].isdisjoint(pairs["val"]) and pairs["val"].isdisjoint(pairs["test"])
    assert [len(a[s]) for s in ("train", "val", "test")] == [320, 40, 40]  # both rows of a pair together


def test_too_few_pairs_empty_file_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="too few to split"):
        load(write_file(tmp_path / "few", lines=[f"1,{i},1,pv,{T0}" for i in range(5)]))
    with pytest.raises(DataError, match="is empty"):
        load(write(tmp_path / "empty" / "UserBehavior.csv", ""))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no UserBehavior"):
        load(tmp_path / "nothing")
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/userbehavior" in err.value.hint


def test_prepare_on_a_tiny_file(tmp_path: Path) -> None:
    result = prepare("userbehavior", write_file(tmp_path / "src"), tmp_path / "out", seed=0)
    assert result.schema.vocab_sizes()[2] == 5 + 2  # 5 categories + the reserved OOV and missing ids
    assert sum(result.summary[s]["rows"] for s in ("train", "val", "test")) == 60


# --------------------------------------------------------------------------------------------------------- real data
def real_dir() -> Path | None:
    """``$MTLREC_SHARED_DATA/userbehavior`` or ``<repo root>/../shared/data/userbehavior``; None if absent."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(root.parent / "shared" / "data")
    sample = "UserBehavior_head96k_time_sorted.csv"
    return next((b / "userbehavior" for b in bases if (b / "userbehavior" / sample).is_file()), None)


@pytest.fixture
def real_userbehavior() -> Path:
    folder = real_dir()
    if folder is None:
        pytest.skip(
            "real UserBehavior samples not found: set MTLREC_SHARED_DATA or put userbehavior/ in ../shared/data"
        )
    return folder


@pytest.mark.real_data
def test_real_96k_sample_drops_its_cut_line_and_prepares(real_userbehavior: Path, tmp_path: Path) -> None:
    source = real_userbehavior / "UserBehavior_head96k_time_sorted.csv"
    raw = get_dataset("userbehavior").load(source, seed=0, rows=None)
    assert "last line 96169 is cut mid-record ('301780,543546,4181361,pv,15')" in raw.notes["files"]
    assert "96168 behaviour records grouped into 94424" in raw.notes["examples"]
    frame = pd.concat(raw.splits.values())
    rates = {t: float(frame[t].mean()) for t in ("click", "buy", "cart", "fav")}
    assert rates == pytest.approx({"click": 0.8945, "buy": 0.0227, "cart": 0.0560, "fav": 0.0313}, abs=5e-4)
    assert int(((frame["buy"] == 1) & (frame["click"] == 0)).sum()) == 2006
    result = prepare("userbehavior", source, tmp_path / "out", seed=0)
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert sum(info["rows"].values()) == 94424
    assert info["rows"]["val"] == info["rows"]["test"] == round(94424 * 0.1)
    assert result.summary["train"]["tasks"]["buy"] == pytest.approx(0.0227, abs=0.003)


@pytest.mark.real_data
def test_real_folder_pools_both_samples(real_userbehavior: Path) -> None:
    raw = get_dataset("userbehavior").load(real_userbehavior, seed=0, rows=None)
    assert "106168 behaviour records grouped into 102272" in raw.notes["examples"]
