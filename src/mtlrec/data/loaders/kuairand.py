"""KuaiRand (Kuaishou short-video logs), the stand-in for MMLRec's KuaiRec: same user-feature schema.

Upstream: KuaiRand (Gao et al., CIKM 2022; https://kuairand.com/, https://github.com/chongminggao/KuaiRand), licence
CC BY-SA 4.0. KuaiRec itself (MMLRec's dataset) is not obtainable; KuaiRand has the same ``user_features`` columns.

Two layouts are read (``--source`` is the folder; a single CSV file is read as the sample layout):

* **KuaiRand upstream files** (KuaiRand-Pure / -1K / -27K): every ``log_standard_*.csv`` (e.g.
  ``log_standard_4_08_to_4_21_pure.csv``, ``log_standard_4_22_to_5_08_pure.csv``, the 27K ``_part1``/``_part2``
  files) concatenated, inner-joined on ``user_id`` with the one ``user_features_*.csv`` and, when present,
  left-joined on ``video_id`` with the one ``video_features_basic_*.csv`` (its ``video_type``, ``visible_status``,
  ``server_width``, ``server_height``; without that file those fields are missing). Plain, ``.gz`` or ``.bz2``.
  The random-exposure log ``log_random_*.csv`` is not read (it is an unbiased evaluation log of another policy).
* **Scenario-Wise-Rec's sample** (``kuairand_sample.csv``, 200 rows, in ``../shared/data/kuairand``): the same
  join already made by Scenario-Wise-Rec's ``load_data_1k.py`` from ``log_standard_4_22_to_5_08_1k.csv`` (columns
  ``user_id, video_id, is_click, play_time_ms, duration_ms, profile_stay_time, comment_stay_time, tab``),
  ``user_features_1k.csv`` (all columns) and ``video_features_basic_1k.csv`` (the four columns above), with the
  text categoricals label-encoded and missing one-hot features filled. The codes of ``user_active_degree``, the four
  ``*_range`` columns and ``video_type`` are mapped back to the upstream spellings with that script's tables, so
  both layouts give the same values (an unknown code is an error naming the line).

Tasks (two, unconditioned; KuaiRand feedback signals):

* ``is_click``: KuaiRand's click (16.0 % positive on the sample);
* ``long_view``: KuaiRand's ``long_view`` column where the log has it; the sample lacks it, so it is derived with
  KuaiRand's documented rule: 1 iff ``play_time_ms >= duration_ms`` when ``duration_ms <= 18,000`` (18 s), or
  ``play_time_ms >= 18,000`` when the video is longer (15.5 % positive on the sample; it agrees with ``is_click``
  on 82.5 % of the sample's rows, so it is a second signal, not a copy). The sample has no ``is_like`` / ``is_follow``
  (KuaiRand's other binary signals) and the ones it allows (``comment_stay_time > 0``: 1 %, ``profile_stay_time >
  0``: 0 %) are degenerate, hence ``long_view``. (MMLRec's KuaiRec tasks ``label``/``label2`` are undocumented,
  presumably watch-ratio thresholds.)

Feedback columns (``play_time_ms``, ``profile_stay_time``, ``comment_stay_time``, and in the upstream logs
``is_like``, ``is_follow``, ``is_comment``, ``is_forward``, ``is_hate``, ``is_profile_enter``) are outcomes of the
impression and never inputs. ``duration_ms`` (the video's length, known before the impression) is an input.

Scenario: ``user_active_degree`` (MMLRec's KuaiRec MSL scenario; 4 values on the sample: high_active, full_active,
middle_active, 2_14_day_new; a missing value is upstream's ``UNKNOWN``). Scenario-Wise-Rec uses ``tab`` instead;
here ``tab`` is an ordinary sparse field (the sample has only tab 1).

Features: sparse ``user_id``, ``video_id``, ``tab``, the user flags and ``*_range`` columns, ``onehot_feat0..17``
and the four video columns; dense (log1p) ``follow_user_num``, ``fans_user_num``, ``friend_user_num``,
``register_days`` and ``duration_ms``.

Split: 80/10/10 at random with the seed, within each scenario (as Scenario-Wise-Rec's random 80/10/10, stratified so
that every scenario is in train); the sample has no time column, and both layouts are split alike.

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> raw = get_dataset("kuairand").load(Path("../shared/data/kuairand"), seed=0, rows=None)  # doctest: +SKIP
    >>> [len(raw.splits[s]) for s in ("train", "val", "test")]  # doctest: +SKIP
    [160, 20, 20]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.data.loaders.reading import check_columns, read_csv_file, stratified_split
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec

SCENARIO_COLUMN = "user_active_degree"
TASKS: tuple[str, ...] = ("is_click", "long_view")
LONG_VIEW_MS = 18_000  # KuaiRand README: long_view threshold, 18 s

# The code tables of Scenario-Wise-Rec's load_data_1k.py (upstream spelling -> code in kuairand_sample.csv).
CODES: dict[str, dict[str, int]] = {
    "user_active_degree": {
        "high_active": 0,
        "full_active": 1,
        "middle_active": 2,
        "low_active": 3,
        "2_14_day_new": 4,
        "30day_retention": 5,
        "single_low_active": 6,
        "UNKNOWN": 7,
    },
    "follow_user_num_range": {
        "0": 0,
        "(0,10]": 1,
        "(10,50]": 2,
        "(100,150]": 3,
        "(150,250]": 4,
        "(250,500]": 5,
        "(50,100]": 6,
        "500+": 7,
    },
    "fans_user_num_range": {
        "0": 0,
        "[1,10)": 1,
        "[10,100)": 2,
        "[100,1k)": 3,
        "[1k,5k)": 4,
        "[5k,1w)": 5,
        "[1w,10w)": 6,
        "[10w,100w)": 7,
    },
    "friend_user_num_range": {
        "0": 0,
        "[1,5)": 1,
        "[5,30)": 2,
        "[30,60)": 3,
        "[60,120)": 4,
        "[120,250)": 5,
        "250+": 6,
    },
    "register_days_range": {
        "15-30": 0,
        "31-60": 1,
        "61-90": 2,
        "91-180": 3,
        "181-365": 4,
        "366-730": 5,
        "730+": 6,
    },
    "video_type": {"NORMAL": 0, "AD": 1, "UNKNOWN": 2},
}

USER_SPARSE: tuple[str, ...] = (
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)
USER_DENSE: tuple[str, ...] = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
USER_COLUMNS: tuple[str, ...] = (SCENARIO_COLUMN, *USER_SPARSE, *USER_DENSE)
VIDEO_COLUMNS: tuple[str, ...] = ("video_type", "visible_status", "server_width", "server_height")
LOG_COLUMNS: tuple[str, ...] = ("user_id", "video_id", "tab", "is_click", "duration_ms")

SPARSE_FIELDS: tuple[SparseField, ...] = tuple(
    SparseField(name=n) for n in ("user_id", "video_id", "tab", *USER_SPARSE, *VIDEO_COLUMNS)
)
# Counts and durations are heavy-tailed (follow counts up to thousands, fans up to millions): log1p, median fill.
DENSE_FIELDS: tuple[DenseField, ...] = tuple(
    DenseField(name=n, normalization="log1p", fill="median") for n in (*USER_DENSE, "duration_ms")
)
OUTPUT_COLUMNS: tuple[str, ...] = (
    *(f.name for f in SPARSE_FIELDS),
    *(f.name for f in DENSE_FIELDS),
    SCENARIO_COLUMN,
    *TASKS,
)

_SUFFIXES = ("", ".gz", ".bz2")
SAMPLE_FILE = "kuairand_sample.csv"
SAMPLE_COLUMNS: tuple[str, ...] = (*LOG_COLUMNS, "play_time_ms", *USER_COLUMNS, *VIDEO_COLUMNS)


def kuairand_schema() -> FeatureSchema:
    """The (unfitted) schema: 32 sparse, 5 dense fields, scenario ``user_active_degree``, 2 tasks."""
    return FeatureSchema(
        sparse=SPARSE_FIELDS,
        dense=DENSE_FIELDS,
        scenario=ScenarioField(name=SCENARIO_COLUMN),
        tasks=tuple(TaskSpec(name=t) for t in TASKS),
    )


def derive_long_view(play_ms: pd.Series, duration_ms: pd.Series) -> np.ndarray:
    """KuaiRand's ``long_view``: play >= duration for videos up to 18 s, else play >= 18 s (int8 0/1)."""
    play = play_ms.to_numpy(dtype=np.float64)
    duration = duration_ms.to_numpy(dtype=np.float64)
    long_view: np.ndarray = np.where(duration <= LONG_VIEW_MS, play >= duration, play >= LONG_VIEW_MS)
    return long_view.astype(np.int8)


def _binary(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """``frame[column]`` as int8 0/1; anything else is a :class:`DataError` naming the line (header = line 1)."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = ~values.isin([0, 1]).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {row + 2}: {column} is {str(frame[column].iloc[row])!r}, expected 0 or 1",
            hint="is this the unmodified KuaiRand file?",
        )
    labels: np.ndarray = values.to_numpy(dtype=np.int8)
    return labels


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """``frame[column]`` as numbers; a missing or non-numeric value is a :class:`DataError` naming the line."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {row + 2}: {column} is {str(frame[column].iloc[row])!r}, expected a number",
            hint="is this the unmodified KuaiRand file?",
        )
    return values


def decode_sample_codes(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Map the sample's integer codes back to the upstream spellings (Scenario-Wise-Rec's tables)."""
    out = frame.copy()
    for column, table in CODES.items():
        names = {code: name for name, code in table.items()}
        codes = pd.to_numeric(frame[column], errors="coerce")
        decoded = codes.map(names)
        bad = decoded.isna().to_numpy() & frame[column].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}, line {row + 2}: {column} has the code {str(frame[column].iloc[row])!r}, not in "
                f"Scenario-Wise-Rec's table (codes {sorted(names)})",
                hint="expected Scenario-Wise-Rec's kuairand_sample.csv; for KuaiRand's own files pass their folder",
            )
        out[column] = decoded.astype("string")
    return out


def read_sample(path: Path, rows: int | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read Scenario-Wise-Rec's ``kuairand_sample.csv``: decode the codes, derive ``long_view``."""
    hint = "expected Scenario-Wise-Rec's kuairand_sample.csv (42 columns: the log, user and video features joined)"
    frame = read_csv_file(path, hint, nrows=rows, low_memory=False)
    check_columns(path, list(frame.columns), SAMPLE_COLUMNS, hint)
    frame = decode_sample_codes(frame, path)
    frame["is_click"] = _binary(frame, "is_click", path)
    play = _numbers(frame, "play_time_ms", path)
    duration = _numbers(frame, "duration_ms", path)
    if "long_view" in frame.columns:
        frame["long_view"] = _binary(frame, "long_view", path)
        how = "long_view: the file's column"
    else:
        frame["long_view"] = derive_long_view(play, duration)
        how = "long_view derived: play_time_ms >= duration_ms if duration_ms <= 18000, else play_time_ms >= 18000"
    frame[SCENARIO_COLUMN] = frame[SCENARIO_COLUMN].fillna("UNKNOWN")
    notes = {"layout": f"Scenario-Wise-Rec sample {path} (codes mapped back to KuaiRand's spellings)", "labels": how}
    return frame[list(OUTPUT_COLUMNS)], notes


def _matches(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{prefix}*") if p.is_file() and p.name.endswith(_csv_suffixes()))


def _csv_suffixes() -> tuple[str, ...]:
    return tuple(f".csv{s}" for s in _SUFFIXES)


def _one(folder: Path, prefix: str, required: bool) -> Path | None:
    found = _matches(folder, prefix)
    if len(found) > 1:
        raise DataError(
            f"{folder} holds several {prefix}*.csv files: {', '.join(p.name for p in found)}",
            hint="keep the one of the KuaiRand version whose logs are there (pure, 1k or 27k)",
        )
    if not found and required:
        raise DataError(
            f"{folder} has KuaiRand logs but no {prefix}*.csv",
            hint=f"put the {prefix}<version>.csv of the same KuaiRand version there (plain, .gz or .bz2)",
        )
    return found[0] if found else None


def _header(path: Path, hint: str) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint=hint) from None
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}", hint=hint) from None


def read_upstream(folder: Path, logs: list[Path], rows: int | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read KuaiRand's own files: the standard logs joined with the user (and video) features."""
    hint = "expected KuaiRand's published CSV files (log_standard_*, user_features_*, video_features_basic_*)"
    users_path = _one(folder, "user_features_", required=True)
    videos_path = _one(folder, "video_features_basic_", required=False)
    assert users_path is not None
    frames: list[pd.DataFrame] = []
    derived = False
    for path in logs:
        header = _header(path, hint)
        check_columns(path, header, LOG_COLUMNS, hint)
        has_long_view = "long_view" in header
        if not has_long_view:
            check_columns(path, header, ("play_time_ms",), "without long_view, play_time_ms is needed to derive it")
        extra = ["long_view"] if has_long_view else ["play_time_ms"]
        log = read_csv_file(path, hint, usecols=[*LOG_COLUMNS, *extra], nrows=rows, low_memory=False)
        log["is_click"] = _binary(log, "is_click", path)
        duration = _numbers(log, "duration_ms", path)
        if has_long_view:
            log["long_view"] = _binary(log, "long_view", path)
        else:
            log["long_view"] = derive_long_view(_numbers(log, "play_time_ms", path), duration)
            log = log.drop(columns=["play_time_ms"])
            derived = True
        frames.append(log)
    table = pd.concat(frames, ignore_index=True)
    n_logged = len(table)

    check_columns(users_path, _header(users_path, hint), ("user_id", *USER_COLUMNS), hint)
    users = read_csv_file(users_path, hint, usecols=["user_id", *USER_COLUMNS], low_memory=False)
    users = users[["user_id", *USER_COLUMNS]].drop_duplicates("user_id")
    users[SCENARIO_COLUMN] = users[SCENARIO_COLUMN].astype("string").str.strip().fillna("UNKNOWN")
    table = table.merge(users, on="user_id", how="inner", sort=False)
    if len(table) == 0:
        raise DataError(
            f"no user_id of the logs is in {users_path}", hint="use the user_features file of the same KuaiRand version"
        )
    notes = {"layout": f"KuaiRand upstream files in {folder}: " + ", ".join(p.name for p in logs)}
    notes["users"] = f"{users_path.name}: {n_logged - len(table)} log rows without user features dropped"
    if videos_path is not None:
        # Only the columns used: the 27K file is 2.6 GB, mostly the tag and music columns.
        check_columns(videos_path, _header(videos_path, hint), ("video_id", *VIDEO_COLUMNS), hint)
        columns = ["video_id", *VIDEO_COLUMNS]
        videos = read_csv_file(videos_path, hint, usecols=columns, dtype={"video_type": "category"}, low_memory=False)
        videos = videos[columns].drop_duplicates("video_id")
        table = table.merge(videos, on="video_id", how="left", sort=False)
        notes["videos"] = f"{videos_path.name} joined on video_id"
    else:
        for column in VIDEO_COLUMNS:
            table[column] = pd.NA
        notes["videos"] = "no video_features_basic_*.csv: the video fields are missing"
    notes["labels"] = "is_click and long_view: the logs' columns" + (
        " (long_view derived from play_time_ms and duration_ms where absent)" if derived else ""
    )
    return table[list(OUTPUT_COLUMNS)], notes


@register_dataset
class KuaiRand(DatasetLoader):
    """Loader of KuaiRand logs with user features; see the module docstring."""

    info = DatasetInfo(
        name="kuairand",
        description="KuaiRand short-video logs (KuaiRec stand-in); is_click + long_view, scenario user_active_degree",
        tasks=TASKS,
        scenario=SCENARIO_COLUMN,
        upstream_files=(
            "log_standard_*.csv + user_features_*.csv [+ video_features_basic_*.csv] (KuaiRand)",
            "or kuairand_sample.csv (Scenario-Wise-Rec)",
        ),
        needs_source=True,
        source_hint=(
            "pass the folder of KuaiRand's log_standard_*.csv and user_features_*.csv (plain, .gz or .bz2) or of "
            "Scenario-Wise-Rec's kuairand_sample.csv, e.g. --source ../shared/data/kuairand"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read either layout and split 80/10/10 within each ``user_active_degree``.

        Args:
            source: the folder (or the sample CSV file).
            seed: seeds the split.
            rows: cap on the rows read from each log file (or from the sample).

        Returns:
            The raw splits: 32 sparse and 5 dense fields, the scenario and the ``is_click``/``long_view`` labels.
        """
        if source is None:
            raise DataError("dataset `kuairand` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        if not source.exists():
            raise DataError(f"source not found: {source}", hint=self.info.source_hint)
        if source.is_file():
            frame, notes = read_sample(source, rows)
        else:
            logs = _matches(source, "log_standard_")
            sample = next((p for p in (source / f"{SAMPLE_FILE}{s}" for s in _SUFFIXES) if p.is_file()), None)
            if logs:
                frame, notes = read_upstream(source, logs, rows)
            elif sample is not None:
                frame, notes = read_sample(sample, rows)
            else:
                raise DataError(f"no KuaiRand files in {source}", hint=self.info.source_hint)
        splits = stratified_split(frame, SCENARIO_COLUMN, seed)
        notes["split"] = f"80/10/10 at random (seed {seed}) within each {SCENARIO_COLUMN}"
        notes["removed_inputs"] = (
            "feedback after the impression: play_time_ms (source of long_view), profile_stay_time, "
            "comment_stay_time, is_like/is_follow/is_comment/is_forward/is_hate/is_profile_enter"
        )
        return RawDataset(schema=kuairand_schema(), splits=splits, notes=notes)
