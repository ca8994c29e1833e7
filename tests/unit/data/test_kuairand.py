"""The kuairand loader on tiny files in both layouts (KuaiRand's CSVs, Scenario-Wise-Rec's sample) and real data."""

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
from mtlrec.data.loaders.kuairand import (
    CODES,
    SAMPLE_COLUMNS,
    USER_DENSE,
    USER_SPARSE,
    VIDEO_COLUMNS,
    derive_long_view,
)
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError

DEGREES = ("high_active", "full_active", "middle_active", "2_14_day_new")
OUTCOMES = ("play_time_ms", "profile_stay_time", "comment_stay_time", "is_like", "is_follow", "is_profile_enter")
# (duration_ms, play_time_ms) -> long_view by KuaiRand's rule; cycled over the rows
WATCH = (
    (12_000, 12_000, 1),  # short video watched to the end
    (12_000, 11_999, 0),
    (18_000, 18_000, 1),  # exactly 18 s: the short-video rule
    (30_000, 18_000, 1),  # long video: 18 s are enough
    (30_000, 17_999, 0),
    (0, 500, 1),  # zero duration: play >= duration
)


def write(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as CSV, compressed as the file name says."""
    data = frame.to_csv(index=False).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".bz2"):
        data = bz2.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def user_features(n_users: int) -> pd.DataFrame:
    """KuaiRand's user_features with upstream spellings; user u has degree DEGREES[u % 4]."""
    u = np.arange(n_users)
    names = {column: list(table) for column, table in CODES.items()}
    frame = pd.DataFrame({"user_id": u, "user_active_degree": [DEGREES[k % 4] for k in u]})
    frame["is_lowactive_period"] = 0
    frame["is_live_streamer"] = np.where(u % 2 == 0, -124, 1)
    frame["is_video_author"] = u % 2
    for column in USER_DENSE:
        frame[column] = (u * 37) % 900
    for column in ("follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range"):
        frame[column] = [names[column][k % len(names[column])] for k in u]
    for i in range(18):
        frame[f"onehot_feat{i}"] = np.where(u % 5 == 0, np.nan, (u + i) % 3)
    return frame


def log_rows(n: int, n_users: int, offset: int = 0) -> pd.DataFrame:
    """KuaiRand's log_standard columns; row i: user i % n_users, click iff i % 4 == 0, watch WATCH[i % 6]."""
    i = np.arange(offset, offset + n)
    watch = np.array([WATCH[k % len(WATCH)] for k in i])
    return pd.DataFrame(
        {
            "user_id": i % n_users,
            "video_id": 100 + i % 7,
            "date": 20220422,
            "hourmin": 1000,
            "time_ms": 1650600000000 + i,
            "is_click": (i % 4 == 0).astype(int),
            "is_like": (i % 9 == 0).astype(int),
            "is_follow": 0,
            "is_comment": 0,
            "is_forward": 0,
            "is_hate": 0,
            "long_view": watch[:, 2],
            "play_time_ms": watch[:, 1],
            "duration_ms": watch[:, 0],
            "profile_stay_time": 0,
            "comment_stay_time": i % 2,
            "is_profile_enter": 0,
            "is_rand": 0,
            "tab": i % 3,
        }
    )


def videos() -> pd.DataFrame:
    v = np.arange(100, 106)  # video 106 has no features
    return pd.DataFrame(
        {
            "video_id": v,
            "author_id": v * 3,
            "video_type": np.where(v % 2 == 0, "NORMAL", "AD"),
            "upload_dt": "2020-07-08",
            "upload_type": "ShortImport",
            "visible_status": 1,
            "video_duration": 17200.0,
            "server_width": 720,
            "server_height": 1280,
            "music_id": 989,
            "music_type": 4,
            "tag": "12,65",
        }
    )


def write_upstream(folder: Path, suffix: str = "", n_users: int = 40, with_videos: bool = True) -> Path:
    write(folder / f"log_standard_4_08_to_4_21_pure.csv{suffix}", log_rows(60, n_users + 2))
    write(folder / f"log_standard_4_22_to_5_08_pure.csv{suffix}", log_rows(40, n_users + 2, offset=60))
    write(folder / f"user_features_pure.csv{suffix}", user_features(n_users))  # users n, n+1 have no features
    if with_videos:
        write(folder / f"video_features_basic_pure.csv{suffix}", videos())
    return folder


def sample_frame(n: int = 120) -> pd.DataFrame:
    """Scenario-Wise-Rec's sample layout: the join made, text categoricals as its codes, no long_view column."""
    logs = log_rows(n, 40)
    users = user_features(40)
    for column in USER_SPARSE:
        if column.startswith("onehot"):
            users[column] = users[column].fillna(2)  # Scenario-Wise-Rec fills missing one-hot features
    frame = logs.merge(users, on="user_id").merge(videos(), on="video_id", how="left")
    frame = frame.fillna({"visible_status": 2, "server_width": 0, "server_height": 0, "video_type": "UNKNOWN"})
    for column, table in CODES.items():
        frame[column] = frame[column].map(table)
    return frame[list(dict.fromkeys([*SAMPLE_COLUMNS, "profile_stay_time", "comment_stay_time"]))]


def write_sample(folder: Path, frame: pd.DataFrame | None = None, name: str = "kuairand_sample.csv") -> Path:
    write(folder / name, sample_frame() if frame is None else frame)
    return folder


def load(source: Path | None, seed: int = 0, rows: int | None = None) -> dict[str, pd.DataFrame]:
    return get_dataset("kuairand").load(source, seed=seed, rows=rows).splits


def pooled(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(splits.values(), ignore_index=True).sort_values("user_id", kind="stable")


# ------------------------------------------------------------------------------------------------------------ sample
def test_sample_schema_columns_and_no_outcome_inputs(tmp_path: Path) -> None:
    raw = get_dataset("kuairand").load(write_sample(tmp_path), seed=0, rows=None)
    schema = raw.schema
    assert schema.task_names == ["is_click", "long_view"]
    assert all(t.conditioned_on is None for t in schema.tasks)
    assert schema.scenario is not None and schema.scenario.name == "user_active_degree"
    assert len(schema.sparse) == 32 and schema.dense_names == [*USER_DENSE, "duration_ms"]
    assert {"user_id", "video_id", "tab", *VIDEO_COLUMNS} <= set(schema.sparse_names)
    for outcome in OUTCOMES:
        assert outcome not in schema.feature_names
    for frame in raw.splits.values():
        assert sorted(frame.columns) == sorted([*schema.feature_names, "user_active_degree", "is_click", "long_view"])
    assert "play_time_ms" in raw.notes["removed_inputs"]


def test_sample_codes_are_mapped_back_and_long_view_derived(tmp_path: Path) -> None:
    frame = pd.concat(load(write_sample(tmp_path)).values()).sort_values("user_id")
    expected = user_features(40).set_index("user_id")
    got = frame.drop_duplicates("user_id").set_index("user_id").sort_index()
    assert got["user_active_degree"].tolist() == expected.loc[got.index, "user_active_degree"].tolist()
    assert got["fans_user_num_range"].tolist() == expected.loc[got.index, "fans_user_num_range"].tolist()
    assert set(frame["video_type"]) == {"NORMAL", "AD", "UNKNOWN"}
    raw_rows = sample_frame()
    assert int(frame["is_click"].sum()) == int(raw_rows["is_click"].sum())
    assert int(frame["long_view"].sum()) == int(log_rows(120, 40)["long_view"].sum())  # derived = KuaiRand's rule


def test_long_view_rule() -> None:
    duration = pd.Series([d for d, _, _ in WATCH])
    play = pd.Series([p for _, p, _ in WATCH])
    assert derive_long_view(play, duration).tolist() == [lv for _, _, lv in WATCH]


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_sample_compressed_and_as_a_file(tmp_path: Path, suffix: str) -> None:
    write_sample(tmp_path, name=f"kuairand_sample.csv{suffix}")
    assert len(pooled(load(tmp_path))) == 120
    assert len(pooled(load(tmp_path / f"kuairand_sample.csv{suffix}"))) == 120


def test_sample_rows_cap(tmp_path: Path) -> None:
    assert len(pooled(load(write_sample(tmp_path), rows=50))) == 50


def test_unknown_code_in_the_sample_is_an_error_naming_the_line(tmp_path: Path) -> None:
    frame = sample_frame()
    frame.loc[6, "user_active_degree"] = 9
    with pytest.raises(DataError, match=r"line 8: user_active_degree has the code '9'"):
        load(write_sample(tmp_path, frame))


def test_bad_click_label_is_an_error_naming_the_line(tmp_path: Path) -> None:
    frame = sample_frame()
    frame.loc[3, "is_click"] = 2
    with pytest.raises(DataError, match=r"kuairand_sample\.csv, line 5: is_click is '2', expected 0 or 1"):
        load(write_sample(tmp_path, frame))


def test_missing_sample_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="lacks the columns play_time_ms"):
        load(write_sample(tmp_path, sample_frame().drop(columns=["play_time_ms"])))


# ---------------------------------------------------------------------------------------------------------- upstream
@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_upstream_logs_joined_with_user_and_video_features(tmp_path: Path, suffix: str) -> None:
    raw = get_dataset("kuairand").load(write_upstream(tmp_path, suffix), seed=0, rows=None)
    frame = pooled(raw.splits)
    logs = pd.concat([log_rows(60, 42), log_rows(40, 42, offset=60)])
    kept = logs[logs["user_id"] < 40]  # users 40 and 41 have no features: inner join
    assert len(frame) == len(kept)
    assert int(frame["is_click"].sum()) == int(kept["is_click"].sum())
    assert int(frame["long_view"].sum()) == int(kept["long_view"].sum())
    assert set(frame["user_active_degree"]) == set(DEGREES)
    assert frame.loc[frame["video_id"] == 106, "video_type"].isna().all()  # no video features: left join
    assert set(frame.loc[frame["video_id"] != 106, "video_type"]) == {"NORMAL", "AD"}
    assert f"{len(logs) - len(kept)} log rows without user features dropped" in raw.notes["users"]
    assert "log_standard_4_08_to_4_21_pure" in raw.notes["layout"]


def test_upstream_long_view_column_is_used_as_published(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    logs = log_rows(60, 42)
    logs["long_view"] = 1 - logs["long_view"]  # disagrees with the rule: the column must win
    write(tmp_path / "log_standard_4_08_to_4_21_pure.csv", logs)
    frame = pooled(load(tmp_path))
    first = logs[logs["user_id"] < 40]
    second = log_rows(40, 42, offset=60)
    second = second[second["user_id"] < 40]
    assert int(frame["long_view"].sum()) == int(first["long_view"].sum() + second["long_view"].sum())


def test_upstream_without_long_view_derives_it(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    for name in ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv"):
        path = tmp_path / name
        write(path, pd.read_csv(path).drop(columns=["long_view"]))
    raw = get_dataset("kuairand").load(tmp_path, seed=0, rows=None)
    logs = pd.concat([log_rows(60, 42), log_rows(40, 42, offset=60)])
    assert int(pooled(raw.splits)["long_view"].sum()) == int(logs.loc[logs["user_id"] < 40, "long_view"].sum())
    assert "derived" in raw.notes["labels"]


def test_upstream_without_video_features(tmp_path: Path) -> None:
    raw = get_dataset("kuairand").load(write_upstream(tmp_path, with_videos=False), seed=0, rows=None)
    assert pooled(raw.splits)[list(VIDEO_COLUMNS)].isna().all().all()
    assert "no video_features_basic" in raw.notes["videos"]


def test_upstream_rows_cap_each_log_file(tmp_path: Path) -> None:
    frame = pooled(load(write_upstream(tmp_path, n_users=200), rows=10))
    assert len(frame) == 20


def test_upstream_bad_label_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    logs = log_rows(40, 42, offset=60)
    logs["is_click"] = logs["is_click"].astype(str)
    logs.loc[9, "is_click"] = "yes"
    write(tmp_path / "log_standard_4_22_to_5_08_pure.csv", logs)
    with pytest.raises(DataError, match=r"log_standard_4_22_to_5_08_pure\.csv, line 11: is_click is 'yes'"):
        load(tmp_path)


def test_upstream_missing_or_ambiguous_user_features(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    write(tmp_path / "user_features_1k.csv", user_features(3))
    with pytest.raises(DataError, match="several user_features_"):
        load(tmp_path)
    for path in tmp_path.glob("user_features_*"):
        path.unlink()
    with pytest.raises(DataError, match="no user_features_"):
        load(tmp_path)


def test_upstream_log_lacking_a_column_is_named(tmp_path: Path) -> None:
    write_upstream(tmp_path)
    write(tmp_path / "log_standard_4_22_to_5_08_pure.csv", log_rows(5, 42).drop(columns=["tab"]))
    with pytest.raises(DataError, match=r"log_standard_4_22_to_5_08_pure\.csv lacks the columns tab"):
        load(tmp_path)


def test_no_source_and_no_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --source") as err:
        load(None)
    assert err.value.hint is not None and "../shared/data/kuairand" in err.value.hint
    with pytest.raises(DataError, match="no KuaiRand files"):
        load(tmp_path)


# ------------------------------------------------------------------------------------------------------------- split
def test_split_is_seeded_and_within_each_scenario(tmp_path: Path) -> None:
    source = write_sample(tmp_path, sample_frame(200))
    a, b, c = load(source, seed=0), load(source, seed=0), load(source, seed=1)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["test"].equals(c["test"])
    assert [len(a[s]) for s in ("train", "val", "test")] == [160, 20, 20]
    for degree in DEGREES:
        assert [int((a[s]["user_active_degree"] == degree).sum()) for s in ("train", "val", "test")] == [40, 5, 5]


def test_prepare_on_upstream_files(tmp_path: Path) -> None:
    result = prepare("kuairand", write_upstream(tmp_path / "src", n_users=60), tmp_path / "out", seed=0)
    assert result.schema.scenario is not None
    assert set(result.schema.scenario.values or ()) == set(DEGREES)
    assert set(result.summary["train"]["tasks"]) == {"is_click", "long_view"}


# --------------------------------------------------------------------------------------------------------- real data
def real_dir() -> Path | None:
    """``$MTLREC_SHARED_DATA/kuairand`` or ``<repo root>/../shared/data/kuairand``; None if absent."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(root.parent / "shared" / "data")
    return next((b / "kuairand" for b in bases if (b / "kuairand" / "kuairand_sample.csv").is_file()), None)


@pytest.fixture
def real_kuairand() -> Path:
    folder = real_dir()
    if folder is None:
        pytest.skip("real KuaiRand sample not found: set MTLREC_SHARED_DATA or put kuairand/ in ../shared/data")
    return folder


@pytest.mark.real_data
def test_real_kuairand_sample_prepares_with_the_documented_counts(real_kuairand: Path, tmp_path: Path) -> None:
    raw = get_dataset("kuairand").load(real_kuairand, seed=0, rows=None)
    frame = pd.concat(raw.splits.values())
    assert len(frame) == 200 and int(frame["is_click"].sum()) == 32  # PROVENANCE.md: 32 positive
    assert int(frame["long_view"].sum()) == 31
    assert frame["user_active_degree"].value_counts().to_dict() == {
        "full_active": 125,
        "high_active": 58,
        "middle_active": 11,
        "2_14_day_new": 6,
    }
    result = prepare("kuairand", real_kuairand, tmp_path / "out", seed=0)
    assert result.schema.num_scenarios == 4
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["rows"] == {"train": 160, "val": 20, "test": 20}
    train = result.summary["train"]
    assert train["tasks"]["is_click"] == pytest.approx(0.16, abs=0.02)
    assert train["tasks"]["long_view"] == pytest.approx(0.155, abs=0.02)
