"""Amazon Review Data (2018): per-category review files, one category per scenario, two rating-derived tasks.

Upstream: https://nijianmo.github.io/amazon/index.html (Jianmo Ni, Jiacheng Li, Julian McAuley, EMNLP 2019),
research use with citation, no open licence: keep the files out of the repository. MMLRec (MTL, MSL, MTMSL) and
Scenario-Wise-Rec (MSL) use it with categories as scenarios.

**Format.** One JSON-lines file per category, as published: ``<Category>_5.json`` (the 5-core subsets; the full
``<Category>.json`` files have the same records), plain, ``.gz`` or ``.bz2``. A record holds ``overall`` (the
1-5 star rating), ``verified``, ``reviewerID``, ``asin``, ``vote`` (a string such as ``"1,234"``; absent when
nobody voted), ``style`` (a dict such as ``{"Size:": " Large", "Color:": " Blue"}``; optional),
``unixReviewTime`` / ``reviewTime`` (``"09 4, 2015"``), and text fields that are not used.
``--source`` is a folder (every ``*.json[.gz|.bz2]`` in it is one category) or a single file.

**Scenario.** ``category`` = the file name without ``_5`` and the extension (``AMAZON_FASHION``, ``All_Beauty``, ...);
the files are concatenated (MMLRec's ``category`` scenario; the "four-category set" is the four small categories in
``../shared/data/amazon_reviews_2018``).

**Tasks.** MMLRec's ``label``/``label2`` are rating thresholds it never documented; here, both binary, from
``overall``:

* ``like`` = ``overall >= 4`` (the usual "positive review" cut: 4 and 5 stars);
* ``five_star`` = ``overall == 5`` (the stricter cut: a model must also separate 4 from 5 stars, which ``like``
  does not ask).

Both are non-degenerate in every category of the shared files (after the cleaning below: ``like`` 82-97 %,
``five_star`` 67-91 % positive). ``overall`` is the source of both labels and never an input. A ``helpful``
task (``vote >= 1``) was rejected: ``vote`` is one of MMLRec's inputs, and a label derived from it would remove
it from the features.

**Features** (MMLRec's seven, with ``style`` split by key): sparse ``reviewer_id``, ``asin`` (the item),
``verified``, ``month`` and ``year`` (UTC, from ``unixReviewTime``, else ``reviewTime``), ``style_size``
(``Size:``/``Size Name:``), ``style_color`` (``Color:``/``Color Name:``), ``style_other`` (every other
``key value`` pair, sorted, joined by ``; `` -- e.g. ``Gift Amount: 25``, ``Format: Paperback``); dense
``vote`` (helpful votes, absent = 0, log1p-normalised: a heavy tail up to thousands).

**Cleaning.** Records whose ``overall`` is missing or null carry no label and are dropped (one such record in
the shared AMAZON_FASHION file). Copies of one review are dropped, keeping the first record: Amazon shows a
review on the page of every variant of a product (sizes, colours) and on merged product pages, so the 2018 files
repeat one review under several ``asin``/``style`` values -- the 3,176 lines of AMAZON_FASHION_5 hold 448
distinct reviews, All_Beauty_5 1,382 of 5,269, Appliances_5 161 of 2,277, Gift_Cards_5 2,214 of 2,972. A
random split would put copies of one review (same reviewer, same rating) in train and test: MMoE then reached a
val AUC of 0.98 on ``like`` by recognising them. A review is identified by (reviewerID, review time, overall,
summary, reviewText), plus ``asin`` when the record has neither summary nor text. A truncated last line (a cut
download) is dropped with a note; any other unreadable line is an error naming the file and line. ``rows`` caps
the lines read per file (before the copies are dropped).

**Split.** Seeded random 80/10/10, as MMLRec and Scenario-Wise-Rec split (random; a time-ordered split is not
offered). It is stratified by category and rating class (below 4, 4, 5 stars): every scenario gets 10 % of its
rows in val and in test, with the same label rates, so that each scenario has both classes of both tasks in val
and test whenever the category has at least 5 rows of each rating class (all four shared categories do).

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> source = Path("../shared/data/amazon_reviews_2018")
    >>> raw = get_dataset("amazon-reviews").load(source, seed=0, rows=None)  # doctest: +SKIP
    >>> sorted(raw.splits["train"]["category"].unique())  # doctest: +SKIP
    ['AMAZON_FASHION', 'All_Beauty', 'Appliances', 'Gift_Cards']
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec

SCENARIO_COLUMN = "category"
LIKE_THRESHOLD = 4.0  # like = overall >= 4
FIVE_STAR = 5.0  # five_star = overall == 5
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.1}  # the rest is train

SIZE_KEYS = ("Size:", "Size Name:")
COLOR_KEYS = ("Color:", "Color Name:")

SPARSE_FIELDS: tuple[SparseField, ...] = tuple(
    SparseField(name=n)
    for n in ("reviewer_id", "asin", "verified", "month", "year", "style_size", "style_color", "style_other")
)
DENSE_FIELDS: tuple[DenseField, ...] = (DenseField(name="vote", normalization="log1p", fill="zero"),)
TASKS: tuple[TaskSpec, ...] = (TaskSpec(name="like"), TaskSpec(name="five_star"))

_FILE_PATTERN = re.compile(r"^(?P<stem>.+?)\.json(?:\.gz|\.bz2)?$", re.IGNORECASE)
_REQUIRED_KEYS = ("reviewerID", "asin")


def amazon_schema(categories: tuple[str, ...] | None = None) -> FeatureSchema:
    """The (unfitted) schema: 8 sparse fields, 1 dense field, scenario ``category``, tasks like and five_star."""
    return FeatureSchema(
        sparse=SPARSE_FIELDS,
        dense=DENSE_FIELDS,
        scenario=ScenarioField(name=SCENARIO_COLUMN, values=categories),
        tasks=TASKS,
    )


def category_of(path: Path) -> str:
    """The category (scenario) of a file: ``Gift_Cards_5.json.gz`` -> ``Gift_Cards``."""
    match = _FILE_PATTERN.match(path.name)
    if match is None:
        raise DataError(
            f"{path} is not a JSON-lines review file",
            hint="expected <Category>_5.json, .json.gz or .json.bz2 as published (Amazon Review Data 2018)",
        )
    stem = match.group("stem")
    return stem[:-2] if stem.endswith("_5") else stem


def find_category_files(source: Path) -> dict[str, Path]:
    """Category -> file, for a folder of per-category files (or one file); two files of one category are an error."""
    if not source.exists():
        raise DataError(
            f"source not found: {source}", hint="pass --source with the folder of the <Category>_5.json files"
        )
    paths = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    found: dict[str, Path] = {}
    for path in paths:
        if _FILE_PATTERN.match(path.name) is None:
            if source.is_file():
                category_of(path)  # raises the explanatory error
            continue
        category = category_of(path)
        if category in found:
            raise DataError(
                f"two files for category {category}: {found[category].name} and {path.name} in {path.parent}",
                hint="keep one file per category (e.g. either the plain or the .gz copy, either 5-core or full)",
            )
        found[category] = path
    if not found:
        raise DataError(
            f"no review files in {source}",
            hint="expected <Category>_5.json, .json.gz or .json.bz2 files (Amazon Review Data 2018), one per category",
        )
    return found


def _open_text(path: Path) -> IO[str]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for the non-blank lines."""
    with _open_text(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if text:
                    yield number, text
        except (EOFError, OSError, UnicodeDecodeError) as err:
            raise DataError(
                f"cannot read {path}: {err}",
                hint="the file is truncated or not in the stated compression; download it again",
            ) from None


def _parse_vote(value: Any, path: Path, line: int) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        raise DataError(f"{path}:{line}: `vote` is {value!r}", hint='expected a count such as 3 or "1,234"')
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(str(value).replace(",", "").strip())
        except ValueError:
            raise DataError(
                f"{path}:{line}: `vote` is {value!r}, not a count", hint='expected a count such as 3 or "1,234"'
            ) from None
    if not math.isfinite(number) or number < 0:
        raise DataError(f"{path}:{line}: `vote` is {value!r}", hint="expected a non-negative count")
    return number


def _style_fields(value: Any, path: Path, line: int) -> tuple[str | None, str | None, str | None]:
    """(size, color, other pairs) of a ``style`` dict; None where absent."""
    if value is None:
        return None, None, None
    if not isinstance(value, dict):
        raise DataError(f"{path}:{line}: `style` is {value!r}", hint='expected an object such as {"Size:": " L"}')
    size = color = None
    other: list[str] = []
    for key in sorted(value):
        text = str(value[key]).strip()
        if not text:
            continue
        if key in SIZE_KEYS and size is None:
            size = text
        elif key in COLOR_KEYS and color is None:
            color = text
        else:
            other.append(f"{str(key).strip()} {text}")
    return size, color, "; ".join(other) or None


def _rating(value: Any, path: Path, line: int) -> float | None:
    """The star rating of a record; None where it is absent, null or NaN (an unlabeled record)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if not 1 <= number <= 5:
        raise DataError(f"{path}:{line}: `overall` is {value!r}", hint="expected a star rating from 1 to 5")
    return number


def _time_of(record: dict[str, Any], path: Path, line: int) -> tuple[str, str]:
    """(month, year) of a review: UTC from ``unixReviewTime``, else from ``reviewTime`` ("MM D, YYYY")."""
    unix = record.get("unixReviewTime")
    if isinstance(unix, int | float) and not isinstance(unix, bool) and math.isfinite(unix):
        stamp = pd.Timestamp(int(unix), unit="s", tz="UTC")
        return str(stamp.month), str(stamp.year)
    text = record.get("reviewTime")
    if isinstance(text, str):
        match = re.fullmatch(r"\s*(\d{1,2})\s+\d{1,2},\s*(\d{4})\s*", text)
        if match and 1 <= int(match.group(1)) <= 12:
            return str(int(match.group(1))), match.group(2)
    raise DataError(
        f"{path}:{line}: no review time (unixReviewTime {unix!r}, reviewTime {text!r})",
        hint='every record needs unixReviewTime (seconds) or reviewTime ("MM D, YYYY")',
    )


def _review_digest(record: dict[str, Any]) -> int:
    """A 64-bit digest of a review's identity: reviewer, time, rating, summary, text (+ asin if both are absent)."""
    summary, text = record.get("summary"), record.get("reviewText")
    key: list[Any] = [
        record.get("reviewerID"),
        record.get("unixReviewTime", record.get("reviewTime")),
        record.get("overall"),
        summary,
        text,
    ]
    if not summary and not text:
        key.append(record.get("asin"))
    blob = json.dumps(key, ensure_ascii=False, default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


def read_category_file(path: Path, category: str, rows: int | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read one category file into a frame of the schema's fields, the labels and ``category``.

    Args:
        path: the JSON-lines file (plain, .gz or .bz2).
        category: the scenario value of its rows.
        rows: read at most this many (non-blank) lines.

    Returns:
        The frame (copies of a review and unlabeled records removed) and counts: ``lines``, ``duplicates``,
        ``unlabeled``, ``truncated_last_line`` (0 or 1).

    Raises:
        DataError: a line that is not a JSON object (except a truncated last line), a record without
            reviewerID/asin/time, a rating outside 1-5, a bad vote or style value, or a file with no usable record.
    """
    columns: dict[str, list[Any]] = {
        name: [] for name in ("reviewer_id", "asin", "verified", "month", "year", "style_size", "style_color")
    }
    columns.update(style_other=[], vote=[], overall=[], digest=[])
    counts = {"lines": 0, "duplicates": 0, "unlabeled": 0, "truncated_last_line": 0}
    bad: tuple[int, str] | None = None
    for number, text in _numbered_lines(path):
        if bad is not None:  # an unreadable line followed by more lines: not a cut download
            raise DataError(
                f"{path}:{bad[0]}: not a JSON object ({bad[1]})",
                hint="each line must be one JSON review record; is this the file as published?",
            )
        if rows is not None and counts["lines"] >= rows:
            break
        counts["lines"] += 1
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            bad = (number, err.msg)
            continue
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: not a JSON object", hint="each line must be one JSON review record")
        for key in _REQUIRED_KEYS:
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise DataError(
                    f"{path}:{number}: `{key}` is missing or empty", hint="each review record needs reviewerID and asin"
                )
        month, year = _time_of(record, path, number)
        size, color, other = _style_fields(record.get("style"), path, number)
        verified = record.get("verified")
        columns["reviewer_id"].append(record["reviewerID"].strip())
        columns["asin"].append(record["asin"].strip())
        if isinstance(verified, str):
            verified = verified.strip().lower() in ("true", "1", "yes")
        columns["verified"].append(None if verified is None else ("true" if verified else "false"))
        columns["month"].append(month)
        columns["year"].append(year)
        columns["style_size"].append(size)
        columns["style_color"].append(color)
        columns["style_other"].append(other)
        columns["vote"].append(_parse_vote(record.get("vote"), path, number))
        columns["overall"].append(_rating(record.get("overall"), path, number))
        columns["digest"].append(_review_digest(record))
    if bad is not None:
        counts["lines"] -= 1
        counts["truncated_last_line"] = 1
    if counts["lines"] == 0:
        raise DataError(f"{path} holds no review record", hint="download the file again as published")
    overall = np.array([math.nan if v is None else v for v in columns.pop("overall")], dtype=np.float64)
    duplicate = pd.Series(np.array(columns.pop("digest"), dtype=np.uint64)).duplicated(keep="first").to_numpy()
    labeled = ~np.isnan(overall)
    keep = ~duplicate & labeled
    counts["duplicates"] = int(duplicate.sum())
    counts["unlabeled"] = int((~duplicate & ~labeled).sum())
    if not keep.any():
        raise DataError(f"{path}: no record has a rating (`overall`)", hint="the tasks are derived from the rating")
    strings = {name: pd.Series(values, dtype="string") for name, values in columns.items() if name != "vote"}
    frame = pd.DataFrame(strings)
    frame["vote"] = np.asarray(columns["vote"], dtype=np.float64)
    frame[SCENARIO_COLUMN] = category
    frame["like"] = (overall >= LIKE_THRESHOLD).astype(np.int8)
    frame["five_star"] = (overall == FIVE_STAR).astype(np.int8)
    frame["_rating_class"] = np.where(overall >= FIVE_STAR, 2, np.where(overall >= LIKE_THRESHOLD, 1, 0))
    return frame.loc[keep].reset_index(drop=True), counts


def stratified_split(frame: pd.DataFrame, strata: list[str], seed: int) -> dict[str, pd.DataFrame]:
    """Cut every stratum 80/10/10 at random (seeded): val and test get round(10 %) of each stratum's rows.

    Strata are visited in sorted order with one generator, so the split is a function of the rows and the seed.
    Rows keep their original order within each split.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    groups = frame.groupby(strata, sort=True).indices
    for key in sorted(groups):
        index = np.asarray(groups[key])
        perm = index[rng.permutation(len(index))]
        n_val = math.floor(len(index) * SPLIT_FRACTIONS["val"] + 0.5)
        n_test = math.floor(len(index) * SPLIT_FRACTIONS["test"] + 0.5)
        parts["val"].append(perm[:n_val])
        parts["test"].append(perm[n_val : n_val + n_test])
        parts["train"].append(perm[n_val + n_test :])
    out = {}
    for name, pieces in parts.items():
        rows = np.sort(np.concatenate(pieces)) if pieces else np.array([], dtype=np.int64)
        out[name] = frame.take(rows).reset_index(drop=True)
    return out


@register_dataset
class AmazonReviews(DatasetLoader):
    """Loader of the Amazon Review Data (2018) per-category JSON-lines files; see the module docstring."""

    info = DatasetInfo(
        name="amazon-reviews",
        description="Amazon Review Data 2018 (5-core), categories as scenarios; like (>= 4 stars), five_star",
        tasks=("like", "five_star"),
        scenario=SCENARIO_COLUMN,
        upstream_files=("<Category>_5.json[.gz|.bz2] (one per category)",),
        needs_source=True,
        source_hint=(
            "pass the folder of the per-category <Category>_5.json[.gz|.bz2] files (or one file), "
            "e.g. --source ../shared/data/amazon_reviews_2018"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read every category file, derive the labels and split 80/10/10 (stratified, seeded).

        Args:
            source: the folder of category files, or one file.
            seed: seeds the split.
            rows: cap on the lines read per file.

        Returns:
            The raw splits: the schema's fields, ``category`` and the ``like`` and ``five_star`` labels.
        """
        if source is None:
            raise DataError("dataset `amazon-reviews` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        files = find_category_files(source)
        frames = []
        per_file: list[str] = []
        truncated: list[str] = []
        for category, path in files.items():
            frame, counts = read_category_file(path, category, rows)
            frames.append(frame)
            per_file.append(
                f"{path.name}: {counts['lines']} records, {counts['duplicates']} copies of a review and "
                f"{counts['unlabeled']} without rating dropped, {len(frame)} kept"
            )
            if counts["truncated_last_line"]:
                truncated.append(path.name)
        data = pd.concat(frames, ignore_index=True)
        splits = stratified_split(data, [SCENARIO_COLUMN, "_rating_class"], seed)
        splits = {name: frame.drop(columns="_rating_class") for name, frame in splits.items()}
        notes = {
            "files": "; ".join(per_file),
            "scenario": f"category = file name without _5 and extension: {', '.join(files)}",
            "labels": "like = overall >= 4; five_star = overall == 5 (overall is never an input)",
            "split": f"random 80/10/10 seeded {seed}, stratified by category and rating class (<4, 4, 5 stars)",
            "cleaning": "copies of one review (same reviewerID, time, overall, summary, reviewText; shown on several "
            "product variants) dropped, first kept; records without `overall` dropped",
        }
        if truncated:
            notes["truncated_last_line"] = f"dropped a truncated last line in: {', '.join(truncated)}"
        return RawDataset(schema=amazon_schema(tuple(sorted(files))), splits=splits, notes=notes)
