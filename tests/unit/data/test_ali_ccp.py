"""The ali-ccp loader on tiny files in the preprocessed (torch-rechub / Scenario-Wise-Rec) and Tianchi formats."""

from __future__ import annotations

import bz2
import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.dataset import open_prepared
from mtlrec.data.loaders import get_dataset
from mtlrec.data.loaders.ali_ccp import CSV_COLUMNS, DENSE_IDS, SPARSE_IDS, AliCCP
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError

SPARSE_NAMES = [f"f{i}" for i in SPARSE_IDS if i != "301"]
DENSE_NAMES = [f"D{i}" for i in DENSE_IDS]
USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "109_14", "110_14", "127_14", "150_14")
AD_FIELDS = ("205", "206", "207", "210", "216", "508", "509", "702", "853", "301")


def write_bytes(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.name.endswith(".bz2"):
        path.write_bytes(bz2.compress(data))
    else:
        path.write_bytes(data)
    return path


# -------------------------------------------------------------------------------------------- preprocessed CSVs
def csv_frame(n: int, offset: int = 0, scenarios: int = 3) -> pd.DataFrame:
    """A preprocessed split: row i clicks iff i % 4 == 0 and buys iff i % 8 == 0; 301 cycles through 1..scenarios."""
    rng = np.random.default_rng(offset)
    i = np.arange(n)
    data: dict[str, np.ndarray] = {"click": (i % 4 == 0).astype(int), "purchase": (i % 8 == 0).astype(int)}
    for field in SPARSE_IDS:
        data[field] = 1 + (i % scenarios) if field == "301" else rng.integers(0, 6, n)
    for field in DENSE_IDS:
        data[f"D{field}"] = rng.random(n).round(4)
    return pd.DataFrame(data)[list(CSV_COLUMNS)]


def write_csvs(folder: Path, sizes: tuple[int, int, int] = (40, 20, 20), sample: bool = True, **kw: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for (split, n), offset in zip(zip(("train", "val", "test"), sizes, strict=True), (0, 100, 200), strict=True):
        name = f"ali_ccp_{split}_sample.csv" if sample else f"ali_ccp_{split}.csv"
        csv_frame(n, offset, **kw).to_csv(folder / name, index=False)
    return folder


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("ali-ccp").load(source, seed=seed, rows=rows).splits


def test_preprocessed_csvs_are_read_as_split(tmp_path: Path) -> None:
    raw = AliCCP().load(write_csvs(tmp_path / "ccp"), seed=0, rows=None)
    splits = raw.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [40, 20, 20]
    for frame in splits.values():
        assert list(frame.columns) == [
            *SPARSE_NAMES[:18],
            "f301",
            *SPARSE_NAMES[18:],
            *DENSE_NAMES,
            "click",
            "purchase",
        ]
    schema = raw.schema
    assert schema.sparse_names == SPARSE_NAMES and schema.dense_names == DENSE_NAMES
    assert schema.scenario is not None and schema.scenario.name == "f301"
    assert schema.scenario.values == ("1", "2", "3")
    assert schema.task("purchase").conditioned_on == "click" and schema.id_column is None
    expected = csv_frame(20, 100)
    assert splits["val"]["click"].tolist() == expected["click"].tolist()
    assert splits["val"]["f101"].tolist() == expected["101"].tolist()
    np.testing.assert_allclose(splits["val"]["D853"], expected["D853"])
    assert raw.notes["split"] == "as given by the files (train / val / test)"


def test_torch_rechub_copy_has_one_scenario(tmp_path: Path) -> None:
    raw = AliCCP().load(write_csvs(tmp_path / "trh", scenarios=1), seed=0, rows=None)
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("1",)
    assert "(one value)" in raw.notes["scenario"]


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_compressed_full_csvs(tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "full"
    folder.mkdir()
    for split, n in (("train", 30), ("val", 10), ("test", 12)):
        csv_frame(n).to_csv(folder / f"ali_ccp_{split}.csv{suffix}", index=False)
    assert [len(f) for f in load(folder).values()] == [30, 10, 12]


def test_label_derived_columns_never_become_inputs(tmp_path: Path) -> None:
    """torch-rechub issue #56: a ctcvr_label column (= purchase) left among the features gave AUC 1.0."""
    folder = tmp_path / "leak"
    folder.mkdir()
    for split, n in (("train", 40), ("val", 16), ("test", 16)):
        frame = csv_frame(n)
        frame["ctcvr_label"] = frame["click"] * frame["purchase"]
        frame["ctr_label"] = frame["click"]
        frame["extra_field"] = 7
        frame.to_csv(folder / f"ali_ccp_{split}.csv", index=False)
    raw = AliCCP().load(folder, seed=0, rows=None)
    for frame in raw.splits.values():
        assert not {"ctcvr_label", "ctr_label", "extra_field"} & set(frame.columns)
    names = [*raw.schema.feature_names, raw.schema.scenario.name if raw.schema.scenario else ""]
    assert not {"ctcvr_label", "ctr_label", "extra_field"} & set(names)
    note = raw.notes["dropped_columns"]
    assert "ctcvr_label, ctr_label, extra_field" in note and "label-derived: ctcvr_label, ctr_label" in note
    prepare("ali-ccp", folder, tmp_path / "out", seed=0)
    data = open_prepared(tmp_path / "out")
    assert data.schema.feature_names == SPARSE_NAMES + DENSE_NAMES
    assert data.split("train").features["sparse_ids"].shape == (40, 22)


def test_torch_rechub_label_names_are_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "renamed"
    folder.mkdir()
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        csv_frame(n).rename(columns={"click": "ctr_label", "purchase": "cvr_label"}).to_csv(
            folder / f"ali_ccp_{split}_sample.csv", index=False
        )
    splits = load(folder)
    assert splits["train"]["click"].sum() == 6 and splits["train"]["purchase"].sum() == 3


def test_bad_values_name_file_and_line(tmp_path: Path) -> None:
    folder = write_csvs(tmp_path / "bad")
    frame = csv_frame(20, 100).astype({"205": object})
    frame.loc[3, "205"] = "abc"
    frame.to_csv(folder / "ali_ccp_val_sample.csv", index=False)
    with pytest.raises(DataError, match=r"ali_ccp_val_sample\.csv: column 205 has the value 'abc' at line 5"):
        load(folder)
    frame = csv_frame(20, 100)
    frame.loc[6, "click"] = 2
    frame.to_csv(folder / "ali_ccp_val_sample.csv", index=False)
    with pytest.raises(DataError, match=r"`click` is 2 at line 8"):
        load(folder)
    frame = csv_frame(20, 100)
    frame.loc[5, ["click", "purchase"]] = [0, 1]
    frame.to_csv(folder / "ali_ccp_val_sample.csv", index=False)
    with pytest.raises(DataError, match=r"purchase without click at line 7 \(1 such rows\)"):
        load(folder)
    csv_frame(20, 100).drop(columns=["301", "D509"]).to_csv(folder / "ali_ccp_val_sample.csv", index=False)
    with pytest.raises(DataError, match="lacks the columns 301, D509"):
        load(folder)
    (folder / "ali_ccp_val_sample.csv").write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(DataError, match="has no data rows"):
        load(folder)
    (folder / "ali_ccp_val_sample.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load(folder)


def test_rows_caps_each_csv(tmp_path: Path) -> None:
    assert [len(f) for f in load(write_csvs(tmp_path / "c"), rows=7).values()] == [7, 7, 7]


def test_which_set_is_used(tmp_path: Path) -> None:
    source = tmp_path / "ali_ccp"
    write_csvs(source / "torch_rechub_samples", scenarios=1)
    write_csvs(source / "scenario_wise_rec_samples")
    raw = AliCCP().load(source, seed=0, rows=None)
    assert "scenario_wise_rec_samples" in raw.notes["files"]
    assert "torch_rechub_samples" in raw.notes["not_used"]
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("1", "2", "3")
    write_csvs(source, sizes=(12, 6, 6), sample=False)  # full CSVs in the folder itself come first
    raw = AliCCP().load(source, seed=0, rows=None)
    assert raw.notes["files"].startswith("full set") and len(raw.splits["train"]) == 12
    write_csvs(source, sizes=(9, 6, 6), sample=True)
    assert len(load(source)["train"]) == 12  # full before sample within a folder


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/ali_ccp" in err.value.hint
    with pytest.raises(DataError, match="source not found"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Ali-CCP files"):
        load(tmp_path / "empty")
    folder = write_csvs(tmp_path / "partial")
    (folder / "ali_ccp_test_sample.csv").unlink()
    with pytest.raises(DataError, match=r"only part of a file set: missing ali_ccp_test_sample\.csv"):
        load(folder)
    folder = write_csvs(tmp_path / "two")
    write_bytes(folder / "ali_ccp_val_sample.csv.gz", (folder / "ali_ccp_val_sample.csv").read_text())
    with pytest.raises(DataError, match=r"two copies of ali_ccp_val_sample\.csv"):
        load(folder)
    with pytest.raises(DataError, match="is a file"):
        load(folder / "ali_ccp_train_sample.csv")


# ------------------------------------------------------------------------------------------------ Tianchi files
def features(fields: dict[str, tuple[str, str]]) -> str:
    return "\x01".join(f"{f}\x02{fid}\x03{value}" for f, (fid, value) in fields.items())


def user_features(u: int) -> dict[str, tuple[str, str]]:
    return {f: (f"{900 + u * 10 + k}", f"{(u + k) % 5 / 4:.3f}") for k, f in enumerate(USER_FIELDS)}


def ad_features(i: int) -> dict[str, tuple[str, str]]:
    out = {f: (f"{500 + (i * 3 + k) % 11}", "1.0") for k, f in enumerate(AD_FIELDS)}
    out["301"] = (f"{9000 + i % 3}", "1.0")
    out["508"] = (f"{600 + i % 4}", f"{i % 7 / 2:.2f}")
    return out


def skeleton_line(
    i: int, click: int, purchase: int, user: int, fields: dict[str, tuple[str, str]] | None = None
) -> str:
    fields = ad_features(i) if fields is None else fields
    return f"s{i},{click},{purchase},c{user},{len(fields)},{features(fields)}"


def write_tianchi(folder: Path, n_train: int = 40, n_test: int = 20, users: int = 5, suffix: str = "") -> Path:
    """Row i clicks iff i % 3 == 0, buys iff i % 6 == 0; row 7 of each split buys without a click (skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for i in range(n):
            click, purchase = int(i % 3 == 0), int(i % 6 == 0)
            if i == 7:
                click, purchase = 0, 1
            lines.append(skeleton_line(i, click, purchase, i % users))
        write_bytes(folder / f"sample_skeleton_{split}.csv{suffix}", "\n".join(lines) + "\n")
        common = [f"c{u},{len(USER_FIELDS)},{features(user_features(u))}" for u in range(users)]
        write_bytes(folder / f"common_features_{split}.csv{suffix}", "\n".join(common) + "\n")
    return folder


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_tianchi_files_are_joined_and_split(tmp_path: Path, suffix: str) -> None:
    raw = AliCCP().load(write_tianchi(tmp_path / "raw", suffix=suffix), seed=0, rows=None)
    splits = raw.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [39, 9, 10]  # row 7 skipped in both files
    assert raw.schema.id_column == "sample_id"
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("9000", "9001", "9002")
    train = splits["train"].set_index("sample_id")
    row = train.loc["s4"]  # user 4
    assert row["f101"] == user_features(4)["101"][0] and row["f150_14"] == user_features(4)["150_14"][0]
    assert row["f205"] == ad_features(4)["205"][0] and row["f301"] == "9001"
    assert row["D508"] == pytest.approx(float(ad_features(4)["508"][1]))
    assert row["D109_14"] == pytest.approx(float(user_features(4)["109_14"][1]))
    assert "s7" not in train.index and "skipped" in raw.notes and raw.notes["skipped"].startswith("2 rows")
    assert train["click"].tolist() == [int(i % 3 == 0) for i in range(40) if i != 7]
    assert train["purchase"].tolist() == [int(i % 6 == 0) for i in range(40) if i != 7]
    held_out = sorted(pd.concat([splits["val"], splits["test"]])["sample_id"])
    assert held_out == sorted(f"s{i}" for i in range(20) if i != 7)


def test_tianchi_val_test_cut_is_seeded(tmp_path: Path) -> None:
    source = write_tianchi(tmp_path / "raw", n_test=40)
    a, b, c = load(source, seed=0), load(source, seed=0), load(source, seed=1)
    pd.testing.assert_frame_equal(a["val"], b["val"])
    assert not a["val"].equals(c["val"])


def test_tianchi_field_rules(tmp_path: Path) -> None:
    """Common (user) features override the sample's, a repeated field keeps its last entry, absent fields."""
    folder = write_tianchi(tmp_path / "raw", n_train=6, n_test=4)
    fields = ad_features(0)
    del fields["206"], fields["702"]  # absent: sparse missing, dense 0
    text = features(fields) + "\x01205\x02LAST\x031.0" + "\x01101\x02OWN\x031.0" + "\x01999\x02x\x031.0"
    lines = [f"s0,1,0,c1,{len(fields) + 3},{text}"] + [skeleton_line(i, 0, 0, 1) for i in range(1, 6)]
    write_bytes(folder / "sample_skeleton_train.csv", "\n".join(lines) + "\n")
    row = load(folder)["train"].set_index("sample_id").loc["s0"]
    assert row["f205"] == "LAST"
    assert row["f101"] == user_features(1)["101"][0]  # the user's common feature wins
    assert pd.isna(row["f206"]) and row["D702"] == 0.0


def test_tianchi_rows_cap_and_truncated_last_line(tmp_path: Path) -> None:
    folder = write_tianchi(tmp_path / "raw")
    splits = load(folder, rows=5)
    assert len(splits["train"]) == 5 and len(splits["val"]) + len(splits["test"]) == 5
    text = (folder / "sample_skeleton_test.csv").read_text()
    (folder / "sample_skeleton_test.csv").write_text(text + "s99,1,0,c1")
    raw = AliCCP().load(folder, seed=0, rows=None)
    assert len(raw.splits["val"]) + len(raw.splits["test"]) == 19
    assert raw.notes["truncated_last_line"] == "1 truncated last line(s) dropped"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("s3,1,0,c1", r"sample_skeleton_train\.csv:4: expected 6 comma-separated values"),
        ("s3,yes,0,c1,1,101\x02a\x031", r"sample_skeleton_train\.csv:4: click 'yes' and purchase '0'"),
        ("s3,1,0,c1,1,101-a-1", r"sample_skeleton_train\.csv:4: malformed feature entry"),
        ("s3,1,0,c77,1,205\x02a\x031", r"sample_skeleton_train\.csv:4: common_feature_index 'c77' is not in"),
        ("s3,1,0,c1,1,205\x02a\x031", r"sample_skeleton_train\.csv:4: field 301 \(the scenario\) is absent"),
        ("s3,1,0,c1,2,301\x02a\x031\x01508\x02b\x03high", r"sample_skeleton_train\.csv:4: field 508 has the value"),
    ],
)
def test_tianchi_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    folder = write_tianchi(tmp_path / "raw", n_train=6)
    lines = [skeleton_line(i, 0, 0, 1) for i in range(6)]
    lines[3] = line
    write_bytes(folder / "sample_skeleton_train.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        load(folder)


def test_tianchi_files_come_before_csvs_in_one_folder(tmp_path: Path) -> None:
    folder = write_tianchi(tmp_path / "both")
    write_csvs(folder)
    raw = AliCCP().load(folder, seed=0, rows=None)
    assert raw.notes["files"].startswith("raw set")
    assert "sample set" in raw.notes["not_used"]


def test_prepare_tianchi_end_to_end(tmp_path: Path) -> None:
    result = prepare("ali-ccp", write_tianchi(tmp_path / "raw", n_train=60, n_test=30), tmp_path / "out", seed=0)
    data = open_prepared(tmp_path / "out")
    assert data.schema.num_scenarios == 3 and data.schema.id_column == "sample_id"
    assert result.summary["train"]["tasks"]["purchase"] == pytest.approx(0.5)  # among clicks: i % 6 == 0
    assert {d.normalization for d in data.schema.dense} == {"minmax"}


# ------------------------------------------------------------------------------------------------ real data
def shared_ali_ccp() -> Path | None:
    """``$MTLREC_SHARED_DATA`` or ``<repo root>/../shared/data``, folder ali_ccp; None if absent."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(root.parent / "shared" / "data")
    for base in bases:
        folder = base / "ali_ccp"
        if (folder / "scenario_wise_rec_samples").is_dir() and (folder / "torch_rechub_samples").is_dir():
            return folder
    return None


@pytest.fixture
def real_ali_ccp() -> Path:
    folder = shared_ali_ccp()
    if folder is None:
        pytest.skip(
            "Ali-CCP samples not found: set MTLREC_SHARED_DATA or put them in ../shared/data/ali_ccp "
            "(scenario_wise_rec_samples/ and torch_rechub_samples/)"
        )
    return folder


@pytest.mark.real_data
def test_real_samples_of_both_repos(real_ali_ccp: Path) -> None:
    raw = get_dataset("ali-ccp").load(real_ali_ccp, seed=0, rows=None)
    assert "scenario_wise_rec_samples" in raw.notes["files"]
    splits = raw.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert [int(splits[s]["click"].sum()) for s in ("train", "val", "test")] == [7, 3, 6]
    assert [int(splits[s]["purchase"].sum()) for s in ("train", "val", "test")] == [1, 1, 1]
    assert splits["train"]["f301"].value_counts().to_dict() == {"1": 69, "2": 19, "3": 12}
    assert raw.schema.scenario is not None and raw.schema.scenario.values == ("1", "2", "3")
    torch_rechub = get_dataset("ali-ccp").load(real_ali_ccp / "torch_rechub_samples", seed=0, rows=None)
    assert torch_rechub.schema.scenario is not None and torch_rechub.schema.scenario.values == ("1",)
    assert [int(torch_rechub.splits[s]["click"].sum()) for s in ("train", "val", "test")] == [7, 3, 2]


@pytest.mark.real_data
def test_prepare_real_samples(real_ali_ccp: Path, tmp_path: Path) -> None:
    result = prepare("ali-ccp", real_ali_ccp, tmp_path / "prep", seed=0)
    data = open_prepared(tmp_path / "prep")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [100, 50, 50]
    assert data.schema.feature_names == SPARSE_NAMES + DENSE_NAMES and data.schema.num_scenarios == 3
    assert result.summary["train"]["tasks"]["click"] == pytest.approx(0.07)
    assert result.summary["train"]["tasks"]["purchase"] == pytest.approx(1 / 7)
    assert result.summary["train"]["scenarios"]["2"]["rows"] == 19
    prepare("ali-ccp", real_ali_ccp / "torch_rechub_samples", tmp_path / "trh", seed=0)
    assert open_prepared(tmp_path / "trh").schema.num_scenarios == 1
