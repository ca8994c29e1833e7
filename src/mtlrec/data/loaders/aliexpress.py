"""AliExpress Searching System Dataset (Tianchi 74690): click and conversion, countries as scenarios.

Upstream: https://tianchi.aliyun.com/dataset/74690 (gathered from AliExpress search logs; AITM / MetaHeac / HMoE
line of work). Tianchi licence: research, non-commercial use with citation, no redistribution -- keep the files
out of the repository.

**Formats.** ``--source`` is a folder; the loader looks in it and in its immediate subfolders for either form
of each country's files (plain, ``.gz`` or ``.bz2``):

* the **Tianchi files** as published, one set per country (unzipped from ``aliexpress_<CC>_datasets.zip`` and
  its inner zips): ``<cc>_user_train.csv``, ``<cc>_item_train.csv``, ``<cc>_user_test.csv``,
  ``<cc>_item_test.csv`` -- no header; a user file has 33 columns (search id first), an item file 49 (search id
  first, the label last: 0 impression, 1 click, 2 click and purchase). User and item rows are joined on the search
  id (inner join, as MTReclib's ``data/preprocess.py`` does; a search id repeated in a user file keeps its first
  row); the columns are then named as that script names them: ``search_id``; ``categorical_1..16`` =
  user 2-8, 32, 33 and item 19, 34, 35, 36, 40, 41, 42;
  ``numerical_1..63`` = user 9-31 and the other item columns 2-48;
* the **preprocessed files** of MTReclib / torch-rechub (the output of that script): a folder ``AliExpress_<CC>``
  with ``train.csv`` and ``test.csv``, or torch-rechub's sample ``aliexpress_train_sample.csv`` /
  ``aliexpress_test_sample.csv`` (country US, as torch-rechub's README states) -- a header ``search_id,
  categorical_1..16, numerical_1..63, click, conversion``. Any other column is dropped (noted), so a
  label-derived column added by some pipeline (``ctcvr_label``) can never become an input. Where MTReclib's
  ``train.csv``/``test.csv`` lie next to the Tianchi files they were made from, the Tianchi files are read.

**Tasks.** ``click`` = label >= 1 and ``conversion`` = label == 2 (i.e. click and purchase, as in MTReclib,
AITM and torch-rechub), ``conversion`` conditioned_on ``click``: the conversion output is scored on clicked rows;
CTCVR on all impressions is the product of the two.

**Scenario.** ``country`` (``NL``, ``ES``, ``FR``, ``US``, ``RU``): the countries found are concatenated, as in
MMLRec's AE MSL config and the HMoE setting. A single-country source (torch-rechub's US sample in
``../shared/data/aliexpress``) still gets the ``country`` column, with its one value: the schema is the same
whatever the source, and MSL models simply have one scenario.

**Features.** 16 sparse (already label-encoded by the data owner) and 63 dense ``numerical_*`` fields, already
normalised to [0, 1] by the data owner and used as they are (MTReclib and torch-rechub do the same).
``search_id`` is the id column (a search groups several impressions; the pair (country, search_id) names one).

**Split.** The upstream train/test files of each country (the upstream split is along time); 10 % of each
country's train rows, drawn with the seed, become the validation split. ``rows`` caps the rows read per file
(for the Tianchi files: the item rows; user rows are read until every capped item row has its search).

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> raw = get_dataset("aliexpress").load(Path("../shared/data/aliexpress"), seed=0, rows=None)  # doctest: +SKIP
    >>> [len(raw.splits[s]) for s in ("train", "val", "test")]  # doctest: +SKIP
    [90, 10, 20]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec

SCENARIO_COLUMN = "country"
ID_COLUMN = "search_id"
VAL_FRACTION = 0.1  # of each country's train rows
TORCH_RECHUB_COUNTRY = "US"  # torch-rechub README: the sample is from AliExpress-US

USER_COLUMNS = 33
ITEM_COLUMNS = 49
# MTReclib data/preprocess.py: which raw columns are categorical (1-based; user_1 is the search id).
CATEGORICAL_USER = (2, 3, 4, 5, 6, 7, 8, 32, 33)
CATEGORICAL_ITEM = (19, 34, 35, 36, 40, 41, 42)
NUMERICAL_USER = tuple(range(9, 32))
NUMERICAL_ITEM = tuple(i for i in range(2, 49) if i not in CATEGORICAL_ITEM)
LABEL_ITEM = 49

CATEGORICAL = tuple(f"categorical_{i}" for i in range(1, len(CATEGORICAL_USER) + len(CATEGORICAL_ITEM) + 1))
NUMERICAL = tuple(f"numerical_{i}" for i in range(1, len(NUMERICAL_USER) + len(NUMERICAL_ITEM) + 1))
LABELS = ("click", "conversion")
PREPROCESSED_COLUMNS = (ID_COLUMN, *CATEGORICAL, *NUMERICAL, *LABELS)

SPARSE_FIELDS: tuple[SparseField, ...] = tuple(SparseField(name=c) for c in CATEGORICAL)
# Already in [0, 1] (normalised by the data owner): used as is, like MTReclib and torch-rechub.
DENSE_FIELDS: tuple[DenseField, ...] = tuple(DenseField(name=c, normalization="none", fill="zero") for c in NUMERICAL)
TASKS: tuple[TaskSpec, ...] = (TaskSpec(name="click"), TaskSpec(name="conversion", conditioned_on="click"))

_SUFFIX = r"\.csv(?:\.gz|\.bz2)?"
_RAW_FILE = re.compile(rf"^(?P<cc>[a-z]{{2}})_(?P<kind>user|item)_(?P<split>train|test){_SUFFIX}$", re.IGNORECASE)
_MTRECLIB_DIR = re.compile(r"^aliexpress_(?P<cc>[a-z]{2})$", re.IGNORECASE)
_MTRECLIB_FILE = re.compile(rf"^(?P<split>train|test){_SUFFIX}$", re.IGNORECASE)
_SAMPLE_FILE = re.compile(rf"^aliexpress_(?P<split>train|test)_sample{_SUFFIX}$", re.IGNORECASE)
_USER_CHUNK_ROWS = 1_000_000


@dataclass
class CountryFiles:
    """The files of one country: ``raw`` (Tianchi: user/item x train/test) or ``preprocessed`` (train/test)."""

    country: str
    kind: str  # "raw" or "preprocessed"
    files: dict[str, Path]

    @property
    def folder(self) -> Path:
        """The folder the files are in."""
        return next(iter(self.files.values())).parent


def aliexpress_schema(countries: tuple[str, ...] | None = None) -> FeatureSchema:
    """The (unfitted) schema: 16 sparse, 63 dense fields, scenario ``country``, click -> conversion, id search_id."""
    return FeatureSchema(
        sparse=SPARSE_FIELDS,
        dense=DENSE_FIELDS,
        scenario=ScenarioField(name=SCENARIO_COLUMN, values=countries),
        tasks=TASKS,
        id_column=ID_COLUMN,
    )


def _scan_folder(folder: Path) -> list[CountryFiles]:
    """The country file sets directly in ``folder`` (incomplete Tianchi sets are an error naming what is missing)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    found: list[CountryFiles] = []
    raw: dict[str, dict[str, Path]] = {}
    for path in files:
        match = _RAW_FILE.match(path.name)
        if match:
            role = f"{match.group('kind').lower()}_{match.group('split').lower()}"
            country = match.group("cc").upper()
            if role in raw.setdefault(country, {}):
                raise DataError(
                    f"two {role} files for {country} in {folder}: {raw[country][role].name} and {path.name}",
                    hint="keep one copy of each file (plain, .gz or .bz2)",
                )
            raw[country][role] = path
    for country, roles in sorted(raw.items()):
        missing = sorted({"user_train", "item_train", "user_test", "item_test"} - set(roles))
        if missing:
            cc = country.lower()
            raise DataError(
                f"{folder} holds only part of the Tianchi files of {country}: missing "
                + ", ".join(f"{cc}_{role}.csv" for role in missing),
                hint="each country needs <cc>_user_train, <cc>_item_train, <cc>_user_test and <cc>_item_test",
            )
        found.append(CountryFiles(country, "raw", roles))
    dir_match = _MTRECLIB_DIR.match(folder.name)
    pattern = _MTRECLIB_FILE if dir_match else _SAMPLE_FILE
    country = dir_match.group("cc").upper() if dir_match else TORCH_RECHUB_COUNTRY
    splits: dict[str, Path] = {}
    for path in files:
        match = pattern.match(path.name)
        if match:
            split = match.group("split").lower()
            if split in splits:
                raise DataError(
                    f"two {split} files in {folder}: {splits[split].name} and {path.name}",
                    hint="keep one copy of each file (plain, .gz or .bz2)",
                )
            splits[split] = path
    if splits and country in raw:
        splits = {}  # MTReclib writes train.csv/test.csv next to the Tianchi files: read the upstream ones
    if splits:
        if set(splits) != {"train", "test"}:
            have = next(iter(splits.values())).name
            raise DataError(
                f"{folder} has {have} but no {'test' if 'train' in splits else 'train'} file",
                hint="the preprocessed format needs both the train and the test file",
            )
        found.append(CountryFiles(country, "preprocessed", splits))
    return found


def find_country_files(source: Path) -> list[CountryFiles]:
    """Every country's files in ``source`` and its immediate subfolders, one set per country, sorted by country."""
    if not source.exists():
        raise DataError(f"source not found: {source}", hint="pass --source with the folder of the AliExpress files")
    if not source.is_dir():
        raise DataError(f"--source {source} is a file", hint="pass the folder that holds the AliExpress files")
    folders = [source, *sorted(p for p in source.iterdir() if p.is_dir())]
    by_country: dict[str, CountryFiles] = {}
    for folder in folders:
        for entry in _scan_folder(folder):
            if entry.country in by_country:
                other = by_country[entry.country]
                raise DataError(
                    f"{entry.country} is there twice: {other.kind} files in {other.folder} and {entry.kind} files "
                    f"in {entry.folder}",
                    hint="pass the folder of one copy with --source",
                )
            by_country[entry.country] = entry
    if not by_country:
        zips = sorted(p.name for p in source.glob("*.zip"))
        hint = (
            f"unzip {', '.join(zips)} and the zips inside it first"
            if zips
            else "expected <cc>_user_train.csv, <cc>_item_train.csv, <cc>_user_test.csv, <cc>_item_test.csv "
            "(Tianchi), AliExpress_<CC>/train.csv + test.csv (MTReclib), or aliexpress_train_sample.csv + "
            "aliexpress_test_sample.csv (torch-rechub); plain, .gz or .bz2"
        )
        raise DataError(f"no AliExpress files in {source} or its subfolders", hint=hint)
    return [by_country[c] for c in sorted(by_country)]


def _shown(value: object) -> str:
    """A value as a message shows it: 3, 2.5, 'x' (numpy scalars as plain Python values)."""
    item = getattr(value, "item", None)
    return repr(item() if callable(item) else value)


def _read_csv(path: Path, rows: int | None, header: bool, columns: int | None = None) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, header=0 if header else None, nrows=rows, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="download the file again as published") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(
            f"cannot read {path}: {err}",
            hint="expected comma-separated rows with the same number of values (plain, .gz or .bz2)",
        ) from None
    if len(frame) == 0:
        raise DataError(f"{path} is empty: it has no data rows", hint="download the file again as published")
    if columns is not None and frame.shape[1] != columns:
        raise DataError(
            f"{path} has {frame.shape[1]} columns, expected {columns}",
            hint="expected the Tianchi AliExpress file as published (user files 33 columns, item files 49)",
        )
    return frame


def _check_numeric(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    for column in columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or bool(values.isna().any()):
            bad = pd.to_numeric(values, errors="coerce").isna().to_numpy()
            row = int(np.flatnonzero(bad)[0]) if bad.any() else 0
            raise DataError(
                f"{path}: column {column} has the value {_shown(values.iloc[row])} at data row {row + 1}",
                hint="every AliExpress value is a number (label-encoded or normalised); is this the file as published?",
            )


def _labels_from_raw(label: pd.Series, path: Path) -> tuple[np.ndarray, np.ndarray]:
    values = pd.to_numeric(label, errors="coerce")
    bad = ~values.isin([0, 1, 2]).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: the label (column {LABEL_ITEM}) is {_shown(label.iloc[row])} at data row {row + 1} "
            f"({int(bad.sum())} such rows)",
            hint="expected 0 (impression), 1 (click) or 2 (click and purchase)",
        )
    raw = values.to_numpy(dtype=np.int64)
    return (raw >= 1).astype(np.int8), (raw == 2).astype(np.int8)


def read_raw_split(user_path: Path, item_path: Path, rows: int | None) -> pd.DataFrame:
    """Join a Tianchi user file and item file on the search id; name the columns as MTReclib does.

    Args:
        user_path: ``<cc>_user_<split>.csv`` (33 columns, no header).
        item_path: ``<cc>_item_<split>.csv`` (49 columns, no header).
        rows: cap on the item rows read.

    Returns:
        ``search_id``, ``categorical_1..16``, ``numerical_1..63``, ``click``, ``conversion``; item rows whose
        search is not in the user file are dropped (as the inner join of MTReclib does).
    """
    item = _read_csv(item_path, rows, header=False, columns=ITEM_COLUMNS)
    item.columns = [f"item_{i}" for i in range(1, ITEM_COLUMNS + 1)]
    _check_numeric(item, [c for c in item.columns if c != f"item_{LABEL_ITEM}"], item_path)
    click, conversion = _labels_from_raw(item[f"item_{LABEL_ITEM}"], item_path)
    needed = pd.Index(item["item_1"].unique())
    if rows is None:
        user = _read_csv(user_path, None, header=False, columns=USER_COLUMNS)
        user.columns = [f"user_{i}" for i in range(1, USER_COLUMNS + 1)]
    else:
        user = _read_users_for(user_path, needed)
    _check_numeric(user, list(user.columns), user_path)
    user = user.drop_duplicates(subset="user_1", keep="first")
    item = item.assign(click=click, conversion=conversion)
    joined = item.merge(user, left_on="item_1", right_on="user_1", how="inner", sort=False)
    out = pd.DataFrame({ID_COLUMN: joined["item_1"].to_numpy()})
    names = [f"user_{i}" for i in CATEGORICAL_USER] + [f"item_{i}" for i in CATEGORICAL_ITEM]
    for name, column in zip(CATEGORICAL, names, strict=True):
        out[name] = joined[column].to_numpy()
    names = [f"user_{i}" for i in NUMERICAL_USER] + [f"item_{i}" for i in NUMERICAL_ITEM]
    for name, column in zip(NUMERICAL, names, strict=True):
        out[name] = joined[column].to_numpy(dtype=np.float64)
    out["click"] = joined["click"].to_numpy()
    out["conversion"] = joined["conversion"].to_numpy()
    if len(out) == 0:
        raise DataError(
            f"no row of {item_path.name} has its search id in {user_path.name}",
            hint="the user and item files of one country and split belong together; check the file pairs",
        )
    return out


def _read_users_for(path: Path, needed: pd.Index) -> pd.DataFrame:
    """The user rows of the searches in ``needed``, reading chunks until all are found (for capped reads)."""
    kept: list[pd.DataFrame] = []
    missing = set(needed.tolist())
    try:
        reader = pd.read_csv(path, header=None, chunksize=_USER_CHUNK_ROWS, low_memory=False)
        for chunk in reader:
            if chunk.shape[1] != USER_COLUMNS:
                raise DataError(
                    f"{path} has {chunk.shape[1]} columns, expected {USER_COLUMNS}",
                    hint="expected the Tianchi AliExpress user file as published (33 columns)",
                )
            chunk.columns = [f"user_{i}" for i in range(1, USER_COLUMNS + 1)]
            hit = chunk[chunk["user_1"].isin(needed)]
            kept.append(hit)
            missing -= set(hit["user_1"].tolist())
            if not missing:
                break
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="download the file again as published") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}", hint="expected the Tianchi user file (33 columns)") from None
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=[f"user_{i}" for i in range(1, 34)])


def read_preprocessed(path: Path, rows: int | None) -> tuple[pd.DataFrame, list[str]]:
    """Read a MTReclib / torch-rechub preprocessed file; returns the frame and the dropped extra columns.

    Raises:
        DataError: a column is missing, a value is not numeric, a label is not 0/1, or conversion > click.
    """
    frame = _read_csv(path, rows, header=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in PREPROCESSED_COLUMNS if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DataError(
            f"{path} lacks the columns {shown}",
            hint="expected the MTReclib/torch-rechub header: search_id, categorical_1..16, numerical_1..63, "
            "click, conversion",
        )
    extra = [c for c in frame.columns if c not in PREPROCESSED_COLUMNS]
    frame = frame[list(PREPROCESSED_COLUMNS)]
    _check_numeric(frame, list(PREPROCESSED_COLUMNS), path)
    for label in LABELS:
        bad = ~frame[label].isin([0, 1]).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: `{label}` is {_shown(frame[label].iloc[row])} at data row {row + 1} (line {row + 2})",
                hint="labels are 0 or 1",
            )
    bad = (frame["conversion"] > frame["click"]).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: conversion without click at data row {row + 1} (line {row + 2}); {int(bad.sum())} such rows",
            hint="conversion is click and purchase (upstream label 2); is this the preprocessed file as written?",
        )
    frame = frame.astype(dict.fromkeys(LABELS, np.int8))
    return frame, extra


@register_dataset
class AliExpress(DatasetLoader):
    """Loader of the AliExpress files (Tianchi per-country files or the MTReclib/torch-rechub CSVs)."""

    info = DatasetInfo(
        name="aliexpress",
        description="AliExpress search logs (Tianchi 74690), countries as scenarios; click -> conversion",
        tasks=("click", "conversion"),
        scenario=SCENARIO_COLUMN,
        upstream_files=(
            "<cc>_{user,item}_{train,test}.csv[.gz|.bz2] per country (Tianchi)",
            "or AliExpress_<CC>/{train,test}.csv (MTReclib), aliexpress_{train,test}_sample.csv (torch-rechub, US)",
        ),
        needs_source=True,
        source_hint=(
            "pass the folder of the unzipped Tianchi per-country files, of AliExpress_<CC>/ folders, or of "
            "torch-rechub's aliexpress_*_sample.csv, e.g. --source ../shared/data/aliexpress"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read every country found, cut 10 % of each country's train rows into val, concatenate.

        Args:
            source: the folder with the files (searched one level deep).
            seed: seeds the val cut.
            rows: cap on the rows read per file.

        Returns:
            The raw splits: ``search_id``, ``country``, the 79 fields and the two labels.
        """
        if source is None:
            raise DataError("dataset `aliexpress` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        countries = find_country_files(source)
        rng = np.random.default_rng(seed)
        parts: dict[str, list[pd.DataFrame]] = {"train": [], "val": [], "test": []}
        described: list[str] = []
        dropped: list[str] = []
        for entry in countries:
            if entry.kind == "raw":
                train = read_raw_split(entry.files["user_train"], entry.files["item_train"], rows)
                test = read_raw_split(entry.files["user_test"], entry.files["item_test"], rows)
            else:
                train, extra_train = read_preprocessed(entry.files["train"], rows)
                test, extra_test = read_preprocessed(entry.files["test"], rows)
                extra = sorted(set(extra_train) | set(extra_test))
                if extra:
                    dropped.append(f"{entry.country}: {', '.join(extra)}")
            perm = rng.permutation(len(train))
            n_val = round(len(train) * VAL_FRACTION)
            rows_val, rows_train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            for name, frame in (("train", train.take(rows_train)), ("val", train.take(rows_val)), ("test", test)):
                frame = frame.reset_index(drop=True)
                frame.insert(1, SCENARIO_COLUMN, entry.country)
                parts[name].append(frame)
            files = ", ".join(p.name for _, p in sorted(entry.files.items(), key=lambda kv: ("test" in kv[0], kv[0])))
            described.append(f"{entry.country} ({entry.kind}, {entry.folder}): {files}")
        splits = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
        names = tuple(e.country for e in countries)
        notes = {
            "files": "; ".join(described),
            "scenario": f"country = {', '.join(names)}"
            + (" (one country: the scenario column has one value)" if len(names) == 1 else ""),
            "labels": "click = label >= 1, conversion = label == 2 (click and purchase); "
            "conversion conditioned_on click",
            "split": f"upstream train/test files per country; {VAL_FRACTION:.0%} of each country's train rows "
            f"drawn with seed {seed} form val",
        }
        if dropped:
            notes["dropped_columns"] = "columns not in the MTReclib layout, never inputs: " + "; ".join(dropped)
        if any(e.kind == "raw" for e in countries):
            notes["join"] = "Tianchi user and item files joined on the search id (inner join, as MTReclib)"
        return RawDataset(schema=aliexpress_schema(names), splits=splits, notes=notes)
