"""MIND (Microsoft News) clicks as a multi-scenario CTR dataset, as in Scenario-Wise-Rec.

Upstream: MIND (Wu et al., ACL 2020; https://msnews.github.io/), released under the Microsoft Research License Terms
(non-commercial research use; do not redistribute). Scenario-Wise-Rec (Xiaopengli1/Scenario-Wise-Rec, MIT,
``examples/multi_domain_ranking/data/mind/data_process.py``) expands the impressions to one row per shown news,
joins the news category and keeps 4 categories; its 8,000-row ``mind_sample.csv`` is in ``../shared/data/mind``.

Two layouts are read (``--source`` is the folder; a single CSV file is read as the Scenario-Wise-Rec layout):

* **MIND upstream files**: a folder holding the train and dev folders of one MIND version (``train``/``dev``,
  ``MINDsmall_train``/``MINDsmall_dev`` or ``MINDlarge_train``/``MINDlarge_dev``), each with ``behaviors.tsv``
  (tab separated, no header: impression id, user id, time, click history, impressions ``N123-1 N456-0 ...``) and
  ``news.tsv`` (tab separated, no header: news id, category, subcategory, title, abstract, URL, entities); plain,
  ``.gz`` or ``.bz2``. Every impression token becomes one row (user, news, click = the token's ``-1``/``-0``) and
  the news' category and subcategory are joined, as Scenario-Wise-Rec's script does. The layout is MIND's published
  one and the one that script reads; ``../shared/data/mind/PROVENANCE.md`` documents only the sample, so this
  path is tested on small files written in that format, not on real MIND files. MINDlarge's test split has no
  click labels and is refused with an error naming the line.
* **Scenario-Wise-Rec's table** (``mind_sample.csv`` or its full output ``mind_all.csv``): columns ``User_ID``,
  ``News_ID``, ``label`` (click 0/1), ``Category``, ``SubCategory``.

Task (one): ``click`` (the impression token's label; 4.5 % positive on the sample).
Scenario: the news ``category``; as in Scenario-Wise-Rec only the 4 categories news, lifestyle, sports and finance
are kept (rows of other categories, or of news missing from ``news.tsv``, are dropped and counted in the notes).
Features (sparse): ``user_id``, ``news_id``, ``subcategory``. The click history, the time and the news text are not
used (Scenario-Wise-Rec does not use them either).

Split: upstream files: train = the train folder; the dev folder's impressions are shuffled with the seed and cut
1:1 into val and test (all rows of an impression stay together). Scenario-Wise-Rec's table (a random row sample of
train + dev, no impression ids): 80/10/10 at random with the seed within each category.

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> raw = get_dataset("mind").load(Path("../shared/data/mind"), seed=0, rows=None)  # doctest: +SKIP
    >>> [len(raw.splits[s]) for s in ("train", "val", "test")]  # doctest: +SKIP
    [6402, 799, 799]
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.data.loaders.reading import check_columns, read_csv_file, stratified_split
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import FeatureSchema, ScenarioField, SparseField, TaskSpec

CATEGORIES: tuple[str, ...] = ("news", "lifestyle", "sports", "finance")  # Scenario-Wise-Rec's selection
SCENARIO_COLUMN = "category"
LABEL = "click"
SPARSE_NAMES: tuple[str, ...] = ("user_id", "news_id", "subcategory")
OUTPUT_COLUMNS: tuple[str, ...] = (*SPARSE_NAMES, SCENARIO_COLUMN, LABEL)

_SUFFIXES = ("", ".gz", ".bz2")
TABLE_FILES: tuple[str, ...] = tuple(f"{n}{s}" for n in ("mind_sample.csv", "mind_all.csv") for s in _SUFFIXES)
TABLE_COLUMNS: dict[str, str] = {
    "User_ID": "user_id",
    "News_ID": "news_id",
    "SubCategory": "subcategory",
    "Category": SCENARIO_COLUMN,
    "label": LABEL,
}
SPLIT_FOLDERS: tuple[tuple[str, str], ...] = (
    ("train", "dev"),
    ("MINDsmall_train", "MINDsmall_dev"),
    ("MINDlarge_train", "MINDlarge_dev"),
)
BEHAVIOR_COLUMNS: tuple[str, ...] = ("impression_id", "user_id", "time", "history", "impressions")


def mind_schema() -> FeatureSchema:
    """The (unfitted) schema: 3 sparse fields, the ``category`` scenario, the ``click`` task."""
    return FeatureSchema(
        sparse=tuple(SparseField(name=n) for n in SPARSE_NAMES),
        scenario=ScenarioField(name=SCENARIO_COLUMN),
        tasks=(TaskSpec(name=LABEL),),
    )


def _find(folder: Path, name: str) -> Path | None:
    return next((folder / f"{name}{s}" for s in _SUFFIXES if (folder / f"{name}{s}").is_file()), None)


def read_table(path: Path, rows: int | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read Scenario-Wise-Rec's ``mind_sample.csv`` / ``mind_all.csv`` into the loader's columns.

    Raises:
        DataError: a column is missing or a label is not 0/1 (naming the line).
    """
    hint = "expected Scenario-Wise-Rec's mind_sample.csv (User_ID,News_ID,label,Category,SubCategory)"
    frame = read_csv_file(path, hint, nrows=rows, dtype="string")
    check_columns(path, list(frame.columns), tuple(TABLE_COLUMNS), hint)
    frame = frame[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)
    label = pd.to_numeric(frame[LABEL].str.strip(), errors="coerce")
    bad = ~label.isin([0, 1]).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}, line {row + 2}: label is {frame[LABEL].iloc[row]!r}, expected 0 or 1", hint=hint)
    frame[LABEL] = label.to_numpy().astype(np.int8)
    return frame, {"layout": f"Scenario-Wise-Rec table {path}"}


def read_tsv(path: Path, names: tuple[str, ...], usecols: list[int], rows: int | None) -> pd.DataFrame:
    """A headerless MIND TSV file; blank lines are kept as all-missing rows so that row i is line i + 1."""
    hint = f"expected MIND's {path.name.split('.')[0]}.tsv: tab separated, no header, {len(names)} leading columns"
    frame = read_csv_file(
        path,
        hint,
        sep="\t",
        header=None,
        usecols=usecols,
        dtype="string",
        quoting=csv.QUOTE_NONE,
        skip_blank_lines=False,
        nrows=rows,
        keep_default_na=False,
        na_values=[""],
    )
    frame.columns = [names[i] for i in usecols]
    return frame


def expand_impressions(path: Path, rows: int | None) -> pd.DataFrame:
    """One row per impression token of ``behaviors.tsv``: impression id, user id, news id, click.

    Raises:
        DataError: a line lacks its impressions, or a token has no ``-0``/``-1`` click label (naming the line).
    """
    behaviors = read_tsv(path, BEHAVIOR_COLUMNS, [0, 1, 4], rows)
    behaviors["line"] = np.arange(1, len(behaviors) + 1)
    blank = behaviors[["impression_id", "user_id", "impressions"]].isna().all(axis=1).to_numpy()
    behaviors = behaviors[~blank]
    missing = behaviors["impressions"].isna() | behaviors["user_id"].isna()
    if missing.any():
        line = int(behaviors.loc[missing, "line"].iloc[0])
        raise DataError(
            f"{path}, line {line}: the user id or the impressions (5th column) are missing",
            hint="each line of behaviors.tsv is: impression id, user id, time, history, impressions",
        )
    tokens = behaviors["impressions"].str.strip().str.split(r"\s+", regex=True)
    rows_of = behaviors.drop(columns=["impressions"]).assign(token=tokens).explode("token", ignore_index=True)
    parts = rows_of["token"].str.rsplit("-", n=1, expand=True)
    if parts.shape[1] < 2:
        parts[1] = pd.NA
    bad = ~parts[1].isin(["0", "1"]).fillna(False).to_numpy(dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {int(rows_of['line'].iloc[row])}: impression {rows_of['token'].iloc[row]!r} has no "
            "click label (expected NEWSID-0 or NEWSID-1)",
            hint="MIND's test split is unlabelled; use the train and dev folders",
        )
    return pd.DataFrame(
        {
            "impression_id": rows_of["impression_id"].to_numpy(),
            "user_id": rows_of["user_id"].to_numpy(),
            "news_id": parts[0].to_numpy(),
            LABEL: (parts[1] == "1").to_numpy().astype(np.int8),
        }
    )


def read_split_folder(folder: Path, rows: int | None) -> pd.DataFrame:
    """Expand ``behaviors.tsv`` and join ``news.tsv`` (category, subcategory) of one MIND split folder."""
    behaviors_path, news_path = _find(folder, "behaviors.tsv"), _find(folder, "news.tsv")
    if behaviors_path is None or news_path is None:
        missing = [n for n, p in (("behaviors.tsv", behaviors_path), ("news.tsv", news_path)) if p is None]
        raise DataError(
            f"{folder} lacks {', '.join(missing)}", hint="each MIND split folder holds behaviors.tsv and news.tsv"
        )
    clicks = expand_impressions(behaviors_path, rows)
    news = read_tsv(news_path, ("news_id", SCENARIO_COLUMN, "subcategory"), [0, 1, 2], None)
    news = news.dropna(subset=["news_id"]).drop_duplicates("news_id")
    return clicks.merge(news, on="news_id", how="left", sort=False)


def _split_folders(source: Path) -> tuple[Path, Path] | None:
    for train, dev in SPLIT_FOLDERS:
        if (source / train).is_dir() and (source / dev).is_dir():
            return source / train, source / dev
    return None


def split_dev_by_impression(dev: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle the dev impressions with ``seed`` and cut them 1:1 into val and test (rows keep file order)."""
    impressions = dev["impression_id"].unique()
    perm = np.random.default_rng(seed).permutation(len(impressions))
    val_ids = set(impressions[perm[: len(impressions) // 2]].tolist())
    in_val = dev["impression_id"].isin(val_ids).to_numpy()
    return dev[in_val].reset_index(drop=True), dev[~in_val].reset_index(drop=True)


def _keep_categories(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    category = frame[SCENARIO_COLUMN].astype("string").str.strip()
    keep = category.isin(CATEGORIES).fillna(False).to_numpy(dtype=bool)
    out = frame[keep].copy()
    out[SCENARIO_COLUMN] = category[keep]
    return out.reset_index(drop=True), int((~keep).sum())


@register_dataset
class Mind(DatasetLoader):
    """Loader of MIND clicks with the news category as scenario; see the module docstring."""

    info = DatasetInfo(
        name="mind",
        description="MIND news clicks (Scenario-Wise-Rec); 4 news categories as scenarios",
        tasks=(LABEL,),
        scenario=SCENARIO_COLUMN,
        upstream_files=(
            "{train,dev}/behaviors.tsv + news.tsv (MIND, e.g. MINDsmall_train/, MINDsmall_dev/)",
            "or mind_sample.csv / mind_all.csv (Scenario-Wise-Rec)",
        ),
        needs_source=True,
        source_hint=(
            "pass the folder holding MIND's train and dev folders (behaviors.tsv, news.tsv) or Scenario-Wise-Rec's "
            "mind_sample.csv, e.g. --source ../shared/data/mind"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read either layout, keep the 4 categories and split (see the module docstring).

        Args:
            source: the folder (or Scenario-Wise-Rec's CSV file).
            seed: seeds the split.
            rows: cap on the lines read from each ``behaviors.tsv`` (impressions), or on the table's rows.

        Returns:
            The raw splits: ``user_id``, ``news_id``, ``subcategory``, ``category`` and ``click``.
        """
        if source is None:
            raise DataError("dataset `mind` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        if not source.exists():
            raise DataError(f"source not found: {source}", hint=self.info.source_hint)
        folders = _split_folders(source) if source.is_dir() else None
        table = None if source.is_dir() else source
        if source.is_dir() and folders is None:
            table = next((source / n for n in TABLE_FILES if (source / n).is_file()), None)
            if table is None:
                raise DataError(f"no MIND files in {source}", hint=self.info.source_hint)
        if folders is not None:
            train_dir, dev_dir = folders
            train, dropped_train = _keep_categories(read_split_folder(train_dir, rows))
            dev, dropped_dev = _keep_categories(read_split_folder(dev_dir, rows))
            val, test = split_dev_by_impression(dev, seed)
            splits = {"train": train, "val": val, "test": test}
            notes = {
                "layout": f"MIND upstream files: {train_dir} (train), {dev_dir} (dev)",
                "split": f"train = {train_dir.name}; {dev_dir.name} impressions shuffled (seed {seed}), cut 1:1 "
                "into val and test",
                "dropped": f"{dropped_train} train and {dropped_dev} dev rows outside {', '.join(CATEGORIES)}",
            }
        else:
            assert table is not None
            frame, notes = read_table(table, rows)
            frame, dropped = _keep_categories(frame)
            splits = stratified_split(frame, SCENARIO_COLUMN, seed)
            notes["split"] = f"80/10/10 at random (seed {seed}) within each category (the table has no impression ids)"
            notes["dropped"] = f"{dropped} rows outside {', '.join(CATEGORIES)}"
        for name, frame in splits.items():
            if len(frame) == 0:
                raise DataError(
                    f"mind: the {name} split has no rows of the categories {', '.join(CATEGORIES)}",
                    hint="check the files (and --rows, if given)",
                )
        splits = {name: frame[list(OUTPUT_COLUMNS)] for name, frame in splits.items()}
        notes["label"] = "click: the impression token's -1/-0 (Scenario-Wise-Rec's `label`)"
        return RawDataset(schema=mind_schema(), splits=splits, notes=notes)
