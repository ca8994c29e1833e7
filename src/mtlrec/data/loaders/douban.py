"""Douban (book / movie / music ratings): a naturally multi-scenario dataset, as used by Scenario-Wise-Rec.

Upstream: the Kaggle "Douban dataset (ratings, reviews, side information)" by fengzhujoey
(https://www.kaggle.com/datasets/fengzhujoey/douban-datasetratingreviewside-information); licence as stated on
Kaggle, research use. Scenario-Wise-Rec (Xiaopengli1/Scenario-Wise-Rec, MIT, ``scripts/data/douban/``) turned it
into a CTR-style multi-domain table; its 3,000-row ``douban_sample.csv`` is in ``../shared/data/douban``.

Two layouts are read (``--source`` is the folder; a single CSV file is read as the Scenario-Wise-Rec layout):

* **Kaggle upstream files** (the folder, or its ``douban_dataset(text information)`` subfolder):
  ``users_cleaned.txt`` (columns ``UID``, ``living_place``, ``join_time``, ...) and ``bookreviews_cleaned.txt``,
  ``moviereviews_cleaned.txt``, ``musicreviews_cleaned.txt`` (columns ``user_id``, ``book_id`` / ``movie_id`` /
  ``music_id``, ``rating`` (1-5 stars), ...): tab separated, a header line, fields may be quoted; plain, ``.gz`` or
  ``.bz2``. Reviews are left-joined with the users on the user id, as Scenario-Wise-Rec's ``data_process.py`` does.
  Item ids get their domain as a prefix (``movie:1234``): the three review files number their items independently.
  Rows whose rating is missing or outside 1..5 are dropped (counted in the notes).
* **Scenario-Wise-Rec's table** (``douban_sample.csv`` or its full output ``douban.csv``): columns ``user_id``,
  ``item_id`` (already unique across domains), ``rating`` (**already binarised** 0/1), ``domain`` (``book`` /
  ``movie`` / ``music``; ``douban.csv`` has ``domain_id`` 0 / 1 / 2 for book / movie / music instead),
  ``living_place``, ``join_time`` and ``time_bin``.

Task (one): ``high_rating`` = 1 iff the rating is above 3 stars (4 or 5), the threshold of Scenario-Wise-Rec's
``data_process.py`` (``1 if x > 3 else 0``); in the Scenario-Wise-Rec table the binarised ``rating`` is taken as is.
The rating is the label's source and never an input.

Scenario: ``domain`` (book, movie, music; 3 scenarios). Features (sparse): ``user_id``, ``item_id``,
``living_place`` (free text, one category per spelling; missing in 3.5 % of the sample's rows) and
``join_month`` (``YYYY-MM`` of the user's ``join_time``; the same partition as Scenario-Wise-Rec's ``time_bin``,
which bins ``join_time`` by calendar month). ``join_time`` itself and ``time_bin`` are not inputs.

Split: no upstream split exists and the sample has no interaction time, so rows are split 80/10/10 at random with
the seed, separately within each domain (every scenario is then present in train, and its share is the same in every
split); Scenario-Wise-Rec splits 80/10/10 at random over all rows.

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> raw = get_dataset("douban").load(Path("../shared/data/douban"), seed=0, rows=None)  # doctest: +SKIP
    >>> [len(raw.splits[s]) for s in ("train", "val", "test")]  # doctest: +SKIP
    [2400, 300, 300]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.data.loaders.reading import check_columns, read_csv_file, stratified_split
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import FeatureSchema, ScenarioField, SparseField, TaskSpec

DOMAINS: tuple[str, ...] = ("book", "movie", "music")
# Scenario-Wise-Rec's data_process.py numbers the domains in this order (domain_id in its douban.csv).
DOMAIN_IDS: dict[int, str] = {0: "book", 1: "movie", 2: "music"}
RATING_THRESHOLD = 3  # high_rating = rating > 3, i.e. 4 or 5 stars (Scenario-Wise-Rec's data_process.py)
LABEL = "high_rating"
SCENARIO_COLUMN = "domain"
SPARSE_NAMES: tuple[str, ...] = ("user_id", "item_id", "living_place", "join_month")

_SUFFIXES = ("", ".gz", ".bz2")
SAMPLE_FILES: tuple[str, ...] = tuple(f"{n}{s}" for n in ("douban_sample.csv", "douban.csv") for s in _SUFFIXES)
KAGGLE_SUBFOLDER = "douban_dataset(text information)"
USERS_FILE = "users_cleaned.txt"
REVIEW_FILES: dict[str, str] = {d: f"{d}reviews_cleaned.txt" for d in DOMAINS}
SAMPLE_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "rating", "living_place", "join_time")


def douban_schema() -> FeatureSchema:
    """The (unfitted) schema: 4 sparse fields, the ``domain`` scenario, the ``high_rating`` task."""
    return FeatureSchema(
        sparse=tuple(SparseField(name=n) for n in SPARSE_NAMES),
        scenario=ScenarioField(name=SCENARIO_COLUMN),
        tasks=(TaskSpec(name=LABEL),),
    )


def _find(folder: Path, name: str) -> Path | None:
    return next((folder / f"{name}{s}" for s in _SUFFIXES if (folder / f"{name}{s}").is_file()), None)


def join_month(values: pd.Series) -> pd.Series:
    """``YYYY-MM`` of a ``join_time`` text (``2007-07-10`` or ``2007-07-10 12:00:00``); missing where unparseable."""
    text = values.astype("string").str.strip()
    month = text.str.extract(r"^(\d{4}-\d{2})", expand=False)
    return month.astype("string")


def _sample_hint() -> str:
    return (
        "expected Scenario-Wise-Rec's douban_sample.csv (user_id,item_id,rating,domain,living_place,join_time,"
        "time_bin) or the Kaggle files (users_cleaned.txt and {book,movie,music}reviews_cleaned.txt)"
    )


def read_scenario_wise_table(path: Path, rows: int | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read Scenario-Wise-Rec's ``douban_sample.csv`` / ``douban.csv`` into the loader's columns.

    Raises:
        DataError: a column is missing, a rating is not 0/1, or a domain is unknown (naming the line).
    """
    hint = _sample_hint()
    text = dict.fromkeys(("rating", "living_place", "join_time", "domain", "domain_id"), "string")
    frame = read_csv_file(path, hint, nrows=rows, dtype=text)
    domain_column = "domain" if "domain" in frame.columns else "domain_id"
    check_columns(path, list(frame.columns), (*SAMPLE_COLUMNS, domain_column), hint)
    rating = pd.to_numeric(frame["rating"].str.strip(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(rating, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {row + 2}: rating is {frame['rating'].iloc[row]!r}; this layout's rating is already 0/1",
            hint="Scenario-Wise-Rec's table holds binarised ratings; for 1-5 star ratings use the Kaggle files",
        )
    if domain_column == "domain":
        domain = frame["domain"].str.strip().str.lower()
    else:
        codes = pd.to_numeric(frame["domain_id"].str.strip(), errors="coerce")
        domain = codes.map(DOMAIN_IDS).astype("string")
    unknown = ~domain.isin(DOMAINS).fillna(False).to_numpy(dtype=bool)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{path}, line {row + 2}: {domain_column} is {frame[domain_column].iloc[row]!r}",
            hint="domain must be book, movie or music (domain_id 0, 1 or 2)",
        )
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "living_place": frame["living_place"],
            "join_month": join_month(frame["join_time"]),
            SCENARIO_COLUMN: domain,
            LABEL: rating.astype(np.int8),
        }
    )
    return out, {"layout": f"Scenario-Wise-Rec table {path} (rating already binarised)"}


def read_kaggle_files(folder: Path, rows: int | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read the Kaggle upstream files in ``folder``: join each review file with the users, binarise the rating.

    Raises:
        DataError: a file or column is missing, or a rating is not a number (naming the file and data row).
    """
    users_path = _find(folder, USERS_FILE)
    review_paths = {d: _find(folder, n) for d, n in REVIEW_FILES.items()}
    missing = [USERS_FILE] if users_path is None else []
    missing += [REVIEW_FILES[d] for d, p in review_paths.items() if p is None]
    if missing or users_path is None:
        raise DataError(
            f"Douban upstream files missing in {folder}: {', '.join(missing)}",
            hint="put users_cleaned.txt and {book,movie,music}reviews_cleaned.txt (plain, .gz or .bz2) there",
        )
    hint = "expected the Kaggle Douban files: tab separated, a header line (user_id, <domain>_id, rating, ...)"
    users = read_csv_file(
        users_path, hint, sep="\t", usecols=["UID", "living_place", "join_time"], dtype="string", low_memory=False
    )
    users = users.drop_duplicates("UID").rename(columns={"UID": "user_id"})
    users["join_month"] = join_month(users["join_time"])
    users = users[["user_id", "living_place", "join_month"]]
    frames: list[pd.DataFrame] = []
    dropped: dict[str, int] = {}
    for domain, path in review_paths.items():
        assert path is not None
        item = f"{domain}_id"
        reviews = read_csv_file(
            path, hint, sep="\t", usecols=["user_id", item, "rating"], dtype="string", nrows=rows, low_memory=False
        )
        text = reviews["rating"].str.strip().fillna("")
        rating = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        unparsed = np.isnan(rating) & (text != "").to_numpy(dtype=bool)
        if unparsed.any():
            row = int(np.flatnonzero(unparsed)[0])
            raise DataError(
                f"{path}, data row {row + 1}: rating is {reviews['rating'].iloc[row]!r}, not a number",
                hint="ratings are 1-5 stars; is this the unmodified Kaggle file?",
            )
        keep = (rating >= 1) & (rating <= 5)
        dropped[domain] = int((~keep).sum())
        reviews = reviews[keep].reset_index(drop=True)
        frame = pd.DataFrame(
            {
                "user_id": reviews["user_id"].str.strip(),
                "item_id": domain + ":" + reviews[item].str.strip(),
                SCENARIO_COLUMN: domain,
                LABEL: (rating[keep] > RATING_THRESHOLD).astype(np.int8),
            }
        )
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    users["user_id"] = users["user_id"].str.strip()
    table = table.merge(users, on="user_id", how="left", sort=False)
    notes = {
        "layout": f"Kaggle upstream files in {folder}",
        "label": f"{LABEL} = rating > {RATING_THRESHOLD} (4 or 5 stars)",
        "dropped_ratings": ", ".join(f"{d}: {n}" for d, n in dropped.items()) + " rows without a 1-5 rating dropped",
    }
    return table[["user_id", "item_id", "living_place", "join_month", SCENARIO_COLUMN, LABEL]], notes


@register_dataset
class Douban(DatasetLoader):
    """Loader of the Douban book/movie/music ratings; see the module docstring."""

    info = DatasetInfo(
        name="douban",
        description="Douban book/movie/music ratings (Scenario-Wise-Rec); 3 domains as scenarios, rating > 3",
        tasks=(LABEL,),
        scenario=SCENARIO_COLUMN,
        upstream_files=(
            "users_cleaned.txt + {book,movie,music}reviews_cleaned.txt (Kaggle)",
            "or douban_sample.csv / douban.csv (Scenario-Wise-Rec)",
        ),
        needs_source=True,
        source_hint=(
            "pass the folder of the Kaggle files (users_cleaned.txt, {book,movie,music}reviews_cleaned.txt) or of "
            "Scenario-Wise-Rec's douban_sample.csv, e.g. --source ../shared/data/douban"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read either layout, derive ``high_rating`` and split 80/10/10 within each domain.

        Args:
            source: the folder (or Scenario-Wise-Rec's CSV file).
            seed: seeds the split.
            rows: cap on the rows read from each review file (or from the table).

        Returns:
            The raw splits: the 4 sparse fields, ``domain`` and ``high_rating``.
        """
        if source is None:
            raise DataError("dataset `douban` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        if not source.exists():
            raise DataError(f"source not found: {source}", hint=self.info.source_hint)
        if source.is_file():
            frame, notes = read_scenario_wise_table(source, rows)
        else:
            kaggle = next(
                (f for f in (source, source / KAGGLE_SUBFOLDER) if any(_find(f, n) for n in REVIEW_FILES.values())),
                None,
            )
            table = next((source / n for n in SAMPLE_FILES if (source / n).is_file()), None)
            if kaggle is not None:
                frame, notes = read_kaggle_files(kaggle, rows)
            elif table is not None:
                frame, notes = read_scenario_wise_table(table, rows)
            else:
                raise DataError(f"no Douban files in {source}", hint=self.info.source_hint)
        splits = stratified_split(frame, SCENARIO_COLUMN, seed)
        notes["split"] = f"80/10/10 at random (seed {seed}) within each domain; no upstream split, no time"
        notes["removed_inputs"] = "rating (source of high_rating), join_time (kept as join_month), time_bin"
        return RawDataset(schema=douban_schema(), splits=splits, notes=notes)
