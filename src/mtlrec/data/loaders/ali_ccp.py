"""Ali-CCP, Alibaba Click and Conversion Prediction (Tianchi 408): click -> purchase, field 301 as scenario.

Upstream: https://tianchi.aliyun.com/dataset/408 (released with ESMM, Ma et al., SIGIR 2018). Tianchi licence:
research use with citation, no redistribution -- keep the files out of the repository.

**Formats.** One registered name reads both forms; the format is recognised from the file names.

* **Preprocessed CSVs** (the AITM-style preprocessing of torch-rechub's and Scenario-Wise-Rec's
  ``preprocess_ali_ccp.py``): ``ali_ccp_train.csv``, ``ali_ccp_val.csv``, ``ali_ccp_test.csv`` (or the repos'
  ``ali_ccp_{train,val,test}_sample.csv``), plain, ``.gz`` or ``.bz2``, with the header ``click, purchase,
  101, 121, ..., 853, 301, 109_14, 110_14, 127_14, 150_14, D109_14, ..., D853``: 23 label-encoded field ids and
  8 normalised ``D*`` values. torch-rechub's and Scenario-Wise-Rec's copies have the same columns; they differ
  only in field 301, which torch-rechub's copy holds at the single value 1 while Scenario-Wise-Rec's keeps its
  three values -- so one loader reads both, and a torch-rechub copy simply has one scenario.
  Only the 33 known columns are read: any other column is dropped and noted. torch-rechub's issue #56 is the
  reason -- a ``ctcvr_label`` column (= purchase) left among the inputs gave AUC 1.0 -- so a label-derived column
  (``ctcvr_label``, ``ctr_label``, ...) can never become a feature. torch-rechub's in-memory names ``ctr_label``
  / ``cvr_label`` are accepted in place of ``click`` / ``purchase``.
* **Tianchi files as published**: ``sample_skeleton_{train,test}.csv`` (``sample_id, click, purchase,
  common_feature_index, num_features, feature_list``) and ``common_features_{train,test}.csv``
  (``common_feature_index, num_features, feature_list``); a feature list is ``field\\x02feature_id\\x03value``
  entries joined by ``\\x01``. The same 23 fields are kept as the preprocessing keeps them: the feature id of a
  sparse field, the value of a dense field (a field given twice keeps its last entry; the common features of the
  user override the sample's, as in torch-rechub's script; an absent dense field is 0, an absent sparse one is
  missing). Rows with a purchase but no click are skipped, as the preprocessing skips them. The whole
  training file (42 M rows) needs tens of GB of memory here; use ``--rows`` for quick runs, or the
  preprocessed CSVs.

``--source`` is a folder; the loader looks for a complete set in it, then in its subfolders in name order, and
uses the first set found (within one folder: Tianchi files, then the full CSVs, then the samples); sets it did
not use are named in the notes. ``../shared/data/ali_ccp`` holds both sample copies: the Scenario-Wise-Rec
one (``scenario_wise_rec_samples``) comes first; pass a subfolder to choose.

**Schema.** Field ids are not valid field names (they start with a digit), so they get an ``f`` prefix: 22 sparse
fields ``f101 .. f150_14``, 8 dense ``D*`` fields (min-max scaled on train; already in [0, 1] in the preprocessed
CSVs), the scenario ``f301`` (Scenario-Wise-Rec's domains: its values 1, 2, 3 map to domains 0, 1, 2, which are
the scenario ids here too; from the Tianchi files the values are field 301's raw feature ids, ordered by length
then text, and declared in the schema from all three splits). Tasks ``click`` and ``purchase``, purchase
conditioned_on click (ESMM's CVR on clicks; CTCVR is their product). The Tianchi files carry ``sample_id`` as id
column.

**Split.** The preprocessed CSVs: as given (torch-rechub cut the official test set 1:1 into val and test with
its own seed). The Tianchi files: ``sample_skeleton_train`` is train; ``sample_skeleton_test`` is shuffled with
the seed and cut 1:1 into val and test, as torch-rechub does. ``rows`` caps the rows read per file.

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> raw = get_dataset("ali-ccp").load(Path("../shared/data/ali_ccp"), seed=0, rows=None)  # doctest: +SKIP
    >>> raw.schema.scenario.values  # doctest: +SKIP
    ('1', '2', '3')
"""

from __future__ import annotations

import bz2
import gzip
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec

# AITM's process_public_dataset.py / torch-rechub's preprocess_ali_ccp.py: the fields kept, in file order.
SPARSE_IDS: tuple[str, ...] = (
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "205",
    "206",
    "207",
    "210",
    "216",
    "508",
    "509",
    "702",
    "853",
    "301",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
)
DENSE_IDS: tuple[str, ...] = ("109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853")
SCENARIO_ID = "301"
LABELS = ("click", "purchase")
LABEL_ALIASES = {"click": ("click", "ctr_label"), "purchase": ("purchase", "cvr_label")}
CSV_COLUMNS: tuple[str, ...] = (*LABELS, *SPARSE_IDS, *(f"D{i}" for i in DENSE_IDS))

SCENARIO_COLUMN = f"f{SCENARIO_ID}"
ID_COLUMN = "sample_id"
SPARSE_FIELDS: tuple[SparseField, ...] = tuple(SparseField(name=f"f{i}") for i in SPARSE_IDS if i != SCENARIO_ID)
DENSE_FIELDS: tuple[DenseField, ...] = tuple(
    DenseField(name=f"D{i}", normalization="minmax", fill="zero") for i in DENSE_IDS
)
TASKS: tuple[TaskSpec, ...] = (TaskSpec(name="click"), TaskSpec(name="purchase", conditioned_on="click"))

_SUFFIXES = ("", ".gz", ".bz2")
_RAW_ROLES = {
    "skeleton_train": "sample_skeleton_train.csv",
    "skeleton_test": "sample_skeleton_test.csv",
    "common_train": "common_features_train.csv",
    "common_test": "common_features_test.csv",
}
_FULL_ROLES = {s: f"ali_ccp_{s}.csv" for s in ("train", "val", "test")}
_SAMPLE_ROLES = {s: f"ali_ccp_{s}_sample.csv" for s in ("train", "val", "test")}
_LABEL_LIKE = re.compile(r"label|click|purchase|ctr|cvr|conversion|buy", re.IGNORECASE)


@dataclass
class FileSet:
    """One complete set of Ali-CCP files: ``kind`` is raw (Tianchi), full or sample (preprocessed CSVs)."""

    kind: str
    files: dict[str, Path]

    @property
    def folder(self) -> Path:
        """The folder the files are in."""
        return next(iter(self.files.values())).parent


def ali_ccp_schema(scenarios: tuple[str, ...] | None = None, *, with_id: bool = False) -> FeatureSchema:
    """The (unfitted) schema: 22 sparse, 8 dense fields, scenario f301, click -> purchase (id sample_id if raw)."""
    return FeatureSchema(
        sparse=SPARSE_FIELDS,
        dense=DENSE_FIELDS,
        scenario=ScenarioField(name=SCENARIO_COLUMN, values=scenarios),
        tasks=TASKS,
        id_column=ID_COLUMN if with_id else None,
    )


def _complete_set(folder: Path, roles: dict[str, str]) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for role, name in roles.items():
        hits = [folder / f"{name}{s}" for s in _SUFFIXES if (folder / f"{name}{s}").is_file()]
        if len(hits) > 1:
            raise DataError(
                f"two copies of {name} in {folder}: {', '.join(p.name for p in hits)}",
                hint="keep one copy of each file (plain, .gz or .bz2)",
            )
        if hits:
            found[role] = hits[0]
    if not found:
        return None
    if len(found) < len(roles):
        missing = [roles[r] for r in roles if r not in found]
        raise DataError(
            f"{folder} holds only part of a file set: missing {', '.join(missing)} (plain, .gz or .bz2)",
            hint=f"a set is {', '.join(roles.values())}",
        )
    return found


def find_file_sets(source: Path) -> list[FileSet]:
    """Every complete set in ``source`` then in its subfolders (name order); raw, full, sample within a folder."""
    if not source.exists():
        raise DataError(f"source not found: {source}", hint="pass --source with the folder of the Ali-CCP files")
    if not source.is_dir():
        raise DataError(f"--source {source} is a file", hint="pass the folder that holds the Ali-CCP files")
    sets: list[FileSet] = []
    for folder in [source, *sorted(p for p in source.iterdir() if p.is_dir())]:
        for kind, roles in (("raw", _RAW_ROLES), ("full", _FULL_ROLES), ("sample", _SAMPLE_ROLES)):
            files = _complete_set(folder, roles)
            if files is not None:
                sets.append(FileSet(kind, files))
    if not sets:
        raise DataError(
            f"no Ali-CCP files in {source} or its subfolders",
            hint="expected ali_ccp_{train,val,test}.csv or ali_ccp_{train,val,test}_sample.csv (torch-rechub / "
            "Scenario-Wise-Rec), or sample_skeleton_{train,test}.csv + common_features_{train,test}.csv (Tianchi)",
        )
    return sets


def _shown(value: object) -> str:
    """A value as a message shows it: 3, 2.5, 'x' (numpy scalars as plain Python values)."""
    item = getattr(value, "item", None)
    return repr(item() if callable(item) else value)


# --------------------------------------------------------------------------------------------- preprocessed CSVs
def read_preprocessed(path: Path, rows: int | None) -> tuple[pd.DataFrame, list[str]]:
    """Read one preprocessed CSV into the loader's columns; returns the frame and the dropped extra columns.

    Raises:
        DataError: the file is unreadable or empty, a known column is missing, a value is not a number, a label
            is not 0/1, or a row has a purchase without a click.
    """
    try:
        header = [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
        frame = pd.read_csv(path, nrows=rows, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="expected a header line and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(
            f"cannot read {path}: {err}", hint="expected the comma-separated preprocessed Ali-CCP file"
        ) from None
    frame.columns = header
    labels: dict[str, str] = {}
    for label, names in LABEL_ALIASES.items():
        hit = next((n for n in names if n in header), None)
        if hit is not None:
            labels[label] = hit
    missing = [c for c in CSV_COLUMNS if c not in header and c not in labels]
    if missing:
        raise DataError(
            f"{path} lacks the columns {', '.join(missing)}",
            hint="expected the torch-rechub / Scenario-Wise-Rec header: click, purchase, 101, ..., 301, ..., D853",
        )
    if len(frame) == 0:
        raise DataError(f"{path} is empty: it has no data rows", hint="expected a header line and data rows")
    used = {labels[label] for label in LABELS} | set(CSV_COLUMNS[len(LABELS) :])
    extra = [c for c in header if c not in used]
    out = pd.DataFrame(index=frame.index)
    for column in CSV_COLUMNS[len(LABELS) :]:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or bool(values.isna().any()):
            bad = pd.to_numeric(values, errors="coerce").isna().to_numpy()
            row = int(np.flatnonzero(bad)[0]) if bad.any() else 0
            raise DataError(
                f"{path}: column {column} has the value {_shown(values.iloc[row])} at line {row + 2}",
                hint="every value of the preprocessed file is a number; is this the file as written?",
            )
        name = SCENARIO_COLUMN if column == SCENARIO_ID else (column if column.startswith("D") else f"f{column}")
        out[name] = values.to_numpy()
    out[SCENARIO_COLUMN] = out[SCENARIO_COLUMN].astype(np.int64).astype(str)
    for label in LABELS:
        values = frame[labels[label]]
        bad = ~values.isin([0, 1]).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: `{labels[label]}` is {_shown(values.iloc[row])} at line {row + 2}", hint="labels are 0 or 1"
            )
        out[label] = values.to_numpy().astype(np.int8)
    bad = (out["purchase"] > out["click"]).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: purchase without click at line {row + 2} ({int(bad.sum())} such rows)",
            hint="the preprocessing drops such rows; is this the preprocessed file as written?",
        )
    return out.reset_index(drop=True), extra


# ------------------------------------------------------------------------------------------------ Tianchi files
def _open_text(path: Path) -> IO[str]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


_KEPT = set(SPARSE_IDS) | set(DENSE_IDS)


def parse_feature_list(text: str, path: Path, line: int) -> dict[str, tuple[str, str]]:
    """The kept fields of a Tianchi feature list: field -> (feature id, value); a repeated field keeps its last."""
    out: dict[str, tuple[str, str]] = {}
    for entry in text.split("\x01"):
        if not entry:
            continue
        field, sep1, rest = entry.partition("\x02")
        feature, sep2, value = rest.partition("\x03")
        if not sep1 or not sep2:
            raise DataError(
                f"{path}:{line}: malformed feature entry {entry[:40]!r}",
                hint="a feature list is field\\x02feature_id\\x03value entries joined by \\x01",
            )
        if field in _KEPT:
            out[field] = (feature, value)
    return out


class _RawLines:
    """Iterate (line number, comma fields) over a Tianchi file; a truncated last line is dropped and flagged.

    A line without the expected number of fields is an error naming it, unless no other line follows it
    (a cut download): then ``truncated`` is set and the iteration ends.
    """

    def __init__(self, path: Path, fields: int) -> None:
        self.path = path
        self.fields = fields
        self.truncated = False

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        bad: int | None = None
        try:
            with _open_text(self.path) as handle:
                for number, line in enumerate(handle, start=1):
                    text = line.rstrip("\r\n")
                    if not text:
                        continue
                    if bad is not None:
                        raise DataError(
                            f"{self.path}:{bad}: expected {self.fields} comma-separated values",
                            hint="is this the Tianchi file as published (sample_skeleton_* has 6 values per line, "
                            "common_features_* 3)?",
                        )
                    values = text.split(",", self.fields - 1)
                    if len(values) != self.fields or not values[-1]:
                        bad = number
                        continue
                    yield number, values
        except (EOFError, OSError, UnicodeDecodeError) as err:
            raise DataError(
                f"cannot read {self.path}: {err}", hint="the file is truncated or not in the stated compression"
            ) from None
        self.truncated = bad is not None


def read_raw_split(skeleton: Path, common: Path, rows: int | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Join a Tianchi skeleton file with its common features into the loader's columns.

    Args:
        skeleton: ``sample_skeleton_<split>.csv``.
        common: ``common_features_<split>.csv``.
        rows: cap on the skeleton lines read.

    Returns:
        The frame (``sample_id``, fields, scenario, labels) and counts: ``purchase_without_click`` (skipped),
        ``truncated_last_line`` (0-2, one per file).
    """
    counts = {"purchase_without_click": 0, "truncated_last_line": 0}
    samples: list[tuple[int, str, int, int, str, dict[str, tuple[str, str]]]] = []
    skeleton_lines = _RawLines(skeleton, 6)
    read = 0
    for number, (sample_id, click, purchase, common_index, _, features) in skeleton_lines:
        if rows is not None and read >= rows:
            break
        read += 1
        if click not in ("0", "1") or purchase not in ("0", "1"):
            raise DataError(
                f"{skeleton}:{number}: click {click!r} and purchase {purchase!r} must be 0 or 1",
                hint="the second and third values of a skeleton line are the click and purchase labels",
            )
        if click == "0" and purchase == "1":
            counts["purchase_without_click"] += 1
            continue
        own = parse_feature_list(features, skeleton, number)
        samples.append((number, sample_id, int(click), int(purchase), common_index, own))
    counts["truncated_last_line"] += int(skeleton_lines.truncated)
    if read == 0:
        raise DataError(f"{skeleton} holds no complete line", hint="download the file again as published")
    needed = {s[4] for s in samples}
    common_features: dict[str, dict[str, tuple[str, str]]] = {}
    common_lines = _RawLines(common, 3)
    if needed:
        for number, (index, _, features) in common_lines:
            if index in needed and index not in common_features:
                common_features[index] = parse_feature_list(features, common, number)
                if len(common_features) == len(needed):
                    break
    counts["truncated_last_line"] += int(common_lines.truncated)
    columns: dict[str, list[object]] = {ID_COLUMN: []}
    columns.update({c: [] for c in CSV_COLUMNS})
    for number, sample_id, clicked, purchased, common_index, own in samples:
        user = common_features.get(common_index)
        if user is None:
            raise DataError(
                f"{skeleton}:{number}: common_feature_index {common_index!r} is not in {common.name}",
                hint="the skeleton and common-features files of one split belong together",
            )
        merged = {**own, **user}
        if SCENARIO_ID not in merged:
            raise DataError(
                f"{skeleton}:{number}: field 301 (the scenario) is absent", hint="every Ali-CCP sample has field 301"
            )
        columns[ID_COLUMN].append(sample_id)
        columns["click"].append(clicked)
        columns["purchase"].append(purchased)
        for field in SPARSE_IDS:
            columns[field].append(merged[field][0] if field in merged else None)
        for field in DENSE_IDS:
            value = merged[field][1] if field in merged else "0"
            try:
                number_value = float(value)
            except ValueError:
                number_value = math.nan
            if not math.isfinite(number_value):
                raise DataError(f"{skeleton}:{number}: field {field} has the value {value!r}", hint="expected a number")
            columns[f"D{field}"].append(number_value)
    out = pd.DataFrame({ID_COLUMN: pd.Series(columns[ID_COLUMN], dtype="string")})
    for field in SPARSE_IDS:
        name = SCENARIO_COLUMN if field == SCENARIO_ID else f"f{field}"
        out[name] = pd.Series(columns[field], dtype="string")
    for field in DENSE_IDS:
        out[f"D{field}"] = np.asarray(columns[f"D{field}"], dtype=np.float64)
    for label in LABELS:
        out[label] = np.asarray(columns[label], dtype=np.int8)
    return out, counts


def _cut_half(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    perm = np.random.default_rng(seed).permutation(len(frame))
    half = len(frame) // 2
    return frame.iloc[perm[:half]].reset_index(drop=True), frame.iloc[perm[half:]].reset_index(drop=True)


@register_dataset
class AliCCP(DatasetLoader):
    """Loader of Ali-CCP: torch-rechub / Scenario-Wise-Rec preprocessed CSVs, or the Tianchi files."""

    info = DatasetInfo(
        name="ali-ccp",
        description="Ali-CCP (Tianchi 408) impressions; click -> purchase; scenario = field 301 (3 values)",
        tasks=("click", "purchase"),
        scenario=SCENARIO_COLUMN,
        upstream_files=(
            "ali_ccp_{train,val,test}[_sample].csv (torch-rechub / Scenario-Wise-Rec)",
            "or sample_skeleton_{train,test}.csv + common_features_{train,test}.csv (Tianchi)",
        ),
        needs_source=True,
        source_hint=(
            "pass the folder of ali_ccp_{train,val,test}[_sample].csv or of the Tianchi sample_skeleton_* and "
            "common_features_* files (plain, .gz or .bz2), e.g. --source ../shared/data/ali_ccp"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Find the first complete file set and read it; see the module docstring for the split.

        Args:
            source: the folder (searched one level deep).
            seed: seeds the val/test cut of the Tianchi test file (the CSVs come split).
            rows: cap on the rows read per file.

        Returns:
            The raw splits: the fields, ``f301``, ``click`` and ``purchase`` (and ``sample_id`` for Tianchi files).
        """
        if source is None:
            raise DataError("dataset `ali-ccp` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        sets = find_file_sets(source)
        chosen = sets[0]
        notes = {
            "files": f"{chosen.kind} set in {chosen.folder}: " + ", ".join(p.name for p in chosen.files.values()),
            "labels": "click, purchase as in the files; purchase conditioned_on click (CVR on clicks)",
            "scenario": "f301 = Ali-CCP field 301",
        }
        if len(sets) > 1:
            notes["not_used"] = "; ".join(f"{s.kind} set in {s.folder}" for s in sets[1:])
        if chosen.kind == "raw":
            train, counts_train = read_raw_split(chosen.files["skeleton_train"], chosen.files["common_train"], rows)
            held_out, counts_test = read_raw_split(chosen.files["skeleton_test"], chosen.files["common_test"], rows)
            val, test = _cut_half(held_out, seed)
            splits = {"train": train, "val": val, "test": test}
            skipped = counts_train["purchase_without_click"] + counts_test["purchase_without_click"]
            notes["split"] = f"train = sample_skeleton_train; sample_skeleton_test shuffled (seed {seed}), cut 1:1"
            notes["skipped"] = f"{skipped} rows with a purchase but no click (as the AITM preprocessing skips them)"
            truncated = counts_train["truncated_last_line"] + counts_test["truncated_last_line"]
            if truncated:
                notes["truncated_last_line"] = f"{truncated} truncated last line(s) dropped"
        else:
            splits = {}
            dropped: set[str] = set()
            for name in ("train", "val", "test"):
                splits[name], extra = read_preprocessed(chosen.files[name], rows)
                dropped.update(extra)
            notes["split"] = "as given by the files (train / val / test)"
            if dropped:
                label_like = sorted(c for c in dropped if _LABEL_LIKE.search(c))
                notes["dropped_columns"] = f"not among the 33 known columns, never inputs: {', '.join(sorted(dropped))}"
                if label_like:
                    notes["dropped_columns"] += f" (label-derived: {', '.join(label_like)})"
        values = sorted(set().union(*(set(f[SCENARIO_COLUMN].dropna().unique()) for f in splits.values())))
        scenarios = tuple(sorted(values, key=lambda v: (len(v), v)))
        notes["scenario"] += f": values {', '.join(scenarios)}" + (" (one value)" if len(scenarios) == 1 else "")
        schema = ali_ccp_schema(scenarios, with_id=chosen.kind == "raw")
        return RawDataset(schema=schema, splits=splits, notes=notes)
