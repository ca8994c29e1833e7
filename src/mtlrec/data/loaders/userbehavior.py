"""Taobao UserBehavior (Alibaba, Tianchi dataset 649) as four behaviour tasks per (user, item), after AutoMTL.

Upstream: https://tianchi.aliyun.com/dataset/649 (about 1 M users, 100 M behaviours, 2017-11-25 .. 2017-12-03); Tianchi
licence, research use only, cite Zhu et al., "Learning Tree-based Deep Model for Recommender Systems", KDD 2018; do
not redistribute. ``../shared/data/userbehavior`` holds two real samples of the file (see its PROVENANCE.md).

Format: ``UserBehavior.csv``: no header, 5 comma-separated values per line: ``user_id, item_id, category_id,
behavior_type, timestamp``; ``behavior_type`` is ``pv`` (page view), ``buy``, ``cart`` or ``fav``. Plain, ``.gz``,
``.bz2`` or ``.zip`` (as Tianchi ships it). ``--source`` is a file, or a folder: its ``UserBehavior.csv[.gz|.bz2|.zip]``
if there is one, else every ``UserBehavior*.csv[...]`` in it, read in name order and pooled (the shared folder's two
samples are both rows of the same upstream file; a row held twice changes nothing, see below).

A malformed line (wrong field count, a non-integer id or timestamp, an unknown behaviour) is a :class:`DataError` naming
the file and the line. The one exception is a **last line cut mid-record** (the 96k sample ends in
``301780,543546,4181361,pv,15``, a 2-digit timestamp): it is dropped and the notes say so. A last line counts as cut
when it is the beginning of a valid record but not a whole one (fewer than 5 fields, or a last field that is only the
beginning of a value, or a timestamp below 1e9, shorter than any real one); any other malformed last line is an
error. Blank lines are skipped.

Derivation (AutoMTL, ``src/datasets/preprocess/userbehavior.ipynb``): the rows are grouped by (user, item, category)
and each group becomes one example whose four binary labels say which behaviours occur in it:

* ``click`` = ``pv`` occurs; ``buy``, ``cart``, ``fav`` = that behaviour occurs.

The four tasks are independent: none is ``conditioned_on`` another. A buy/cart/fav without a page view of the pair in
the log window is common (2,006 of the 96k sample's 94,424 pairs buy without a pv: the pv came before the window), so
"buy among clicks" would throw away real buys and is not the task AutoMTL learns.

Features: ``user_id``, ``item_id``, ``category_id`` (sparse), as in AutoMTL. No count or recency feature is derived:
any statistic of the pair's rows would be computed from the very behaviours that make the labels.

Deviation from AutoMTL: it drops users and items with fewer than 10 buy-positive pairs; that filter is not applied
(on the samples it leaves almost nothing, and it selects heavy buyers).

Split: 80/10/10 at random with the seed, at the (user, item) level (all rows of a pair are in one split), as AutoMTL
(random 80/10/10, there unseeded). Not time-ordered: an example pools behaviours over the whole window, so it has no
single time.

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> source = Path("../shared/data/userbehavior/UserBehavior_head96k_time_sorted.csv")
    >>> raw = get_dataset("userbehavior").load(source, seed=0, rows=None)  # doctest: +SKIP
    >>> sum(len(f) for f in raw.splits.values())  # doctest: +SKIP
    94424
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import FeatureSchema, SparseField, TaskSpec

COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
KEYS: tuple[str, ...] = ("user_id", "item_id", "category_id")
# label -> behaviour
TASK_BEHAVIORS: dict[str, str] = {"click": "pv", "buy": "buy", "cart": "cart", "fav": "fav"}
BEHAVIORS: tuple[str, ...] = tuple(TASK_BEHAVIORS.values())
MIN_TIMESTAMP = 1_000_000_000  # 2001-09-09; the data is from 2017 (1.51e9): a shorter value is a cut-off line
CHUNK_ROWS = 2_000_000
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}

_SUFFIXES = ("", ".gz", ".bz2", ".zip")
UPSTREAM_NAMES: tuple[str, ...] = tuple(f"UserBehavior.csv{s}" for s in _SUFFIXES)


def userbehavior_schema() -> FeatureSchema:
    """The (unfitted) schema: 3 sparse fields, 4 independent binary tasks, no scenario."""
    return FeatureSchema(
        sparse=tuple(SparseField(name=k) for k in KEYS),
        tasks=tuple(TaskSpec(name=t) for t in TASK_BEHAVIORS),
    )


def _hint() -> str:
    return "expected UserBehavior.csv as published: no header, 5 values per line (user,item,category,behavior,time)"


# The fast read: typed columns straight from the C parser. Anything it cannot type (a bad value, a blank line, a
# header, a cut last line with missing fields) sends the file to the checked read, which finds and names the line.
_TYPED = {
    "user_id": "int64",
    "item_id": "int64",
    "category_id": "int64",
    "behavior_type": "category",
    "timestamp": "int64",
}
_CODES = {b: i for i, b in enumerate(BEHAVIORS)}


class _NotCleanError(Exception):
    """The typed read met a line it cannot type; the checked read takes over."""


def _chunks(path: Path, rows: int | None, typed: bool) -> Iterator[pd.DataFrame]:
    # Read one row more than the cap: then the last row read is the file's last line only if fewer came back.
    try:
        reader = pd.read_csv(
            path,
            header=None,
            names=list(COLUMNS),
            dtype=_TYPED if typed else "string",
            skip_blank_lines=False,
            keep_default_na=False,
            na_values=[""],
            chunksize=CHUNK_ROWS,
            nrows=None if rows is None else rows + 1,
        )
        with reader:
            yield from reader
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint=_hint()) from None
    except (ValueError, TypeError, OverflowError) as err:  # ParserError names the line: "Expected 5 fields in line 7"
        if typed:
            raise _NotCleanError from None
        raise DataError(f"cannot read {path}: {err}", hint=_hint()) from None
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}", hint=_hint()) from None


def _capped(chunks: Iterator[pd.DataFrame], rows: int | None) -> Iterator[tuple[pd.DataFrame, bool]]:
    """Each chunk with whether its last row is the file's last line (the extra row read past the cap removed)."""
    current = next(chunks, None)
    read = 0
    while current is not None:
        following = next(chunks, None)
        read += len(current)
        at_end = following is None
        if rows is not None and at_end and read > rows:
            current = current.iloc[: len(current) - (read - rows)]  # the extra row: the file goes on
            at_end = False
        yield current, at_end
        current = following


def _behavior_codes(values: pd.Series) -> np.ndarray:
    """Index of each behaviour in BEHAVIORS, -1 for anything else (int8)."""
    codes: np.ndarray = values.map(_CODES).astype("float64").fillna(-1).to_numpy(dtype=np.int8)
    return codes


def _compact(keys: pd.DataFrame, codes: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({k: keys[k].to_numpy(dtype=np.int64) for k in KEYS})
    out["behavior"] = codes
    return out


def _cut_note(path: Path, line: int, row: pd.Series) -> str:
    return f"{path.name}: last line {line} is cut mid-record ({_raw_text(row)!r}), dropped"


def _read_typed(path: Path, rows: int | None) -> tuple[list[pd.DataFrame], list[str]]:
    parts: list[pd.DataFrame] = []
    notes: list[str] = []
    first_line = 1
    for chunk, at_end in _capped(_chunks(path, rows, typed=True), rows):
        codes = _behavior_codes(chunk["behavior_type"])
        keep = len(chunk)
        if at_end and keep and is_cut_record(chunk.iloc[-1]):
            notes.append(_cut_note(path, first_line + keep - 1, chunk.iloc[-1]))
            keep -= 1
        if (codes[:keep] < 0).any():
            raise _NotCleanError
        parts.append(_compact(chunk.iloc[:keep], codes[:keep]))
        first_line += len(chunk)
    return parts, notes


def _parse_chunk(chunk: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Numeric ids and behaviour codes of a raw text chunk, the blank-line mask and the malformed-line mask."""
    blank = chunk.isna().all(axis=1).to_numpy(dtype=bool, copy=True)
    numbers = {c: pd.to_numeric(chunk[c].str.strip(), errors="coerce") for c in (*KEYS, "timestamp")}
    codes = _behavior_codes(chunk["behavior_type"].str.strip())
    bad = codes < 0
    for values in numbers.values():
        array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad |= np.isnan(array) | (array != np.round(array))
    bad &= ~blank
    parsed = pd.DataFrame({c: numbers[c] for c in KEYS})
    parsed["behavior"] = codes
    return parsed, blank, bad


def _read_checked(path: Path, rows: int | None) -> tuple[list[pd.DataFrame], list[str]]:
    parts: list[pd.DataFrame] = []
    notes: list[str] = []
    first_line = 1  # line number of the chunk's first row
    for chunk, at_end in _capped(_chunks(path, rows, typed=False), rows):
        parsed, blank, bad = _parse_chunk(chunk)
        if first_line == 1 and len(parsed) and bad[0] and _looks_like_header(chunk.iloc[0]):
            bad[0], blank[0] = False, True
            notes.append(f"{path.name}: line 1 is a header, skipped (the upstream file has none)")
        last = _last_content_row(blank)
        if at_end and last is not None and is_cut_record(chunk.iloc[last]):
            notes.append(_cut_note(path, first_line + last, chunk.iloc[last]))
            bad[last], blank[last] = False, True
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}, line {first_line + row}: malformed record {_raw_text(chunk.iloc[row])!r}",
                hint="each line is user_id,item_id,category_id,behavior_type,timestamp with integer ids and "
                f"behavior_type one of {', '.join(BEHAVIORS)}; fix or delete that line",
            )
        kept = parsed[~blank]
        parts.append(_compact(kept, kept["behavior"].to_numpy(dtype=np.int8)))
        first_line += len(chunk)
    return parts, notes


def read_userbehavior(path: Path, rows: int | None) -> tuple[pd.DataFrame, list[str]]:
    """Read one UserBehavior file into ``user_id, item_id, category_id`` (int64) and ``behavior`` (int8 code).

    ``behavior`` is the index of the behaviour in :data:`BEHAVIORS` (pv, buy, cart, fav); the timestamp is checked
    but not kept. A clean file is read by the C parser with typed columns; a file with anything to look at (a bad
    value, a blank line, a header, a cut last line) is read again as text and checked line by line.

    Args:
        path: the file (plain, .gz, .bz2 or .zip).
        rows: read at most this many lines.

    Returns:
        The rows, and notes (a dropped cut-off last line, a skipped header).

    Raises:
        DataError: a malformed line other than a cut-off last one (naming the file and the line), or no rows.
    """
    try:
        parts, notes = _read_typed(path, rows)
    except _NotCleanError:
        parts, notes = _read_checked(path, rows)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*KEYS, "behavior"])
    if len(frame) == 0:
        raise DataError(f"{path} is empty: it has no records", hint=_hint())
    return frame, notes


def _raw_text(row: pd.Series) -> str:
    """The fields of a raw line joined by commas, as in the file (missing trailing fields left out)."""
    return ",".join(str(v) for v in row if not pd.isna(v))


def _looks_like_header(row: pd.Series) -> bool:
    first = str(row.iloc[0]).strip().lower()
    return first in {"user_id", "userid", "user"}


def _last_content_row(blank: np.ndarray) -> int | None:
    rows = np.flatnonzero(~blank)
    return int(rows[-1]) if len(rows) else None


def is_cut_record(row: pd.Series) -> bool:
    """True when a raw line is the beginning of a valid record but not a whole one (a file cut mid-record).

    Its fields, read left to right, are valid up to the last one present, which is the beginning of a valid value
    (``p`` of ``pv``, the first digits of an id); a line with all 5 fields is cut when its timestamp has fewer digits
    than any real one (below 1e9). A wrong value (``zz``, ``1.5``, ``-3``) is not a cut: it stays an error.
    """
    values = [None if pd.isna(v) else str(v).strip() for v in row]
    present = [v for v in values if v]
    if not present or values[: len(present)] != present:
        return False
    last = len(present) - 1
    for i, value in enumerate(present):
        if COLUMNS[i] == "behavior_type":
            ok = any(b.startswith(value) for b in BEHAVIORS) if i == last else value in BEHAVIORS
        else:
            ok = value.isdigit()
        if not ok:
            return False
    return len(present) < len(COLUMNS) or int(present[-1]) < MIN_TIMESTAMP


def group_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item, category) with 0/1 ``click``/``buy``/``cart``/``fav`` (which behaviours occur).

    ``events`` has the columns of :func:`read_userbehavior`. Rows are ordered by (user, item, category); a
    duplicated event changes nothing.
    """
    flags = pd.DataFrame({k: events[k].to_numpy() for k in KEYS})
    behavior = events["behavior"].to_numpy()
    for task, name in TASK_BEHAVIORS.items():
        flags[task] = (behavior == _CODES[name]).astype(np.int8)
    grouped = flags.groupby(list(KEYS), sort=True).max().reset_index()
    return grouped


def split_pairs(pairs: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """80/10/10 at random with ``seed`` over the (user, item) pairs; every row of a pair goes to one split."""
    pair = pairs.groupby(["user_id", "item_id"], sort=True).ngroup().to_numpy()
    n_pairs = int(pair.max()) + 1 if len(pair) else 0
    n_val, n_test = round(n_pairs * SPLIT_FRACTIONS["val"]), round(n_pairs * SPLIT_FRACTIONS["test"])
    if min(n_val, n_test, n_pairs - n_val - n_test) < 1:
        raise DataError(
            f"userbehavior: {n_pairs} (user, item) pairs are too few to split 80/10/10",
            hint="give more rows (at least 10 distinct pairs; check --rows)",
        )
    rank = np.empty(n_pairs, dtype=np.int64)
    rank[np.random.default_rng(seed).permutation(n_pairs)] = np.arange(n_pairs)
    position = rank[pair]
    masks = {
        "val": position < n_val,
        "test": (position >= n_val) & (position < n_val + n_test),
        "train": position >= n_val + n_test,
    }
    return {name: pairs[masks[name]].reset_index(drop=True) for name in ("train", "val", "test")}


def find_files(source: Path) -> list[Path]:
    """The file, or the folder's ``UserBehavior.csv[...]``, else every ``UserBehavior*.csv[...]`` in it."""
    if source.is_file():
        return [source]
    upstream = [source / n for n in UPSTREAM_NAMES if (source / n).is_file()]
    if upstream:
        return upstream[:1]
    suffixes = tuple(f".csv{s}" for s in _SUFFIXES)
    found = sorted(p for p in source.glob("UserBehavior*") if p.is_file() and p.name.endswith(suffixes))
    if not found:
        raise DataError(
            f"no UserBehavior*.csv in {source}",
            hint="pass the folder (or the file) of Tianchi's UserBehavior.csv (plain, .gz, .bz2 or .zip)",
        )
    return found


@register_dataset
class UserBehavior(DatasetLoader):
    """Loader of Taobao UserBehavior as 4 behaviour tasks per (user, item, category); see the module docstring."""

    info = DatasetInfo(
        name="userbehavior",
        description="Taobao UserBehavior (Tianchi 649), AutoMTL tasks click(pv)/buy/cart/fav per (user, item)",
        tasks=tuple(TASK_BEHAVIORS),
        scenario=None,
        upstream_files=("UserBehavior.csv[.gz|.bz2|.zip] (or UserBehavior*.csv samples)",),
        needs_source=True,
        source_hint=(
            "pass UserBehavior.csv or its folder (plain, .gz, .bz2 or .zip), e.g. --source ../shared/data/userbehavior"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read the file(s), group by (user, item, category) into the 4 labels, split the pairs 80/10/10.

        Args:
            source: a file or a folder (see the module docstring).
            seed: seeds the split.
            rows: cap on the lines read from each file.

        Returns:
            The raw splits: ``user_id``, ``item_id``, ``category_id`` and the ``click``/``buy``/``cart``/``fav``
            labels.
        """
        if source is None:
            raise DataError("dataset `userbehavior` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        if not source.exists():
            raise DataError(f"source not found: {source}", hint=self.info.source_hint)
        files = find_files(source)
        events: list[pd.DataFrame] = []
        file_notes: list[str] = []
        for path in files:
            frame, read_notes = read_userbehavior(path, rows)
            events.append(frame)
            file_notes += [f"{path.name}: {len(frame)} records", *read_notes]
        all_events = pd.concat(events, ignore_index=True) if len(events) > 1 else events[0]
        pairs = group_pairs(all_events)
        splits = split_pairs(pairs, seed)
        notes = {
            "files": "; ".join(file_notes),
            "examples": f"{len(all_events)} behaviour records grouped into {len(pairs)} (user, item, category) rows",
            "labels": "click = 'pv' occurs for the (user, item, category); buy, cart, fav = that behaviour occurs; "
            "independent tasks (a buy often has no pv in the window, so buy is not conditioned on click)",
            "split": f"80/10/10 of the (user, item) pairs by a permutation seeded {seed}",
            "not_applied": "AutoMTL's filter of users and items with < 10 buy-positive pairs",
        }
        return RawDataset(schema=userbehavior_schema(), splits=splits, notes=notes)
