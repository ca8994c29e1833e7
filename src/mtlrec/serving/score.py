"""Batch scoring: a raw CSV or Parquet file in, one probability column per model output out, in bounded memory.

``score_file`` streams the input in chunks (``pandas.read_csv(chunksize=)`` / ``pyarrow`` ``iter_batches``), turns
each chunk into tensors with THE transform of the run (:meth:`ServedModel.encode`, i.e.
``Preprocessor.transform``), runs the exported model and appends the answers to the output file. The output
holds the id column (the schema's ``id_column`` when the input has it, else ``row``: the 0-based data row number)
and one float32 column per output name (``ctr``, ``cvr``, ...). It is written to a temporary file beside the
target and renamed at the end, so a failed run leaves no partial output.

Malformed rows (a non-numeric dense value, a missing or unknown scenario, ...) are located exactly: CSV rows by
their LINE in the file (the header is line 1, the first data row line 2), Parquet rows by their 0-based row
number, each with the field at fault. ``on_error="fail"`` stops at the first one; ``"skip"`` leaves such rows out
of the output and counts them. Only a failing chunk is searched row by row: vectorised checks that mirror the
transform's find the usual errors at once, and anything else is found by bisecting the chunk with the transform
itself. Blank CSV lines are ignored (they keep their line number).

Example::

    result = score_file(Path("impressions.parquet"), Path("model_repository"), "mmoe", Path("scores.parquet"))
    print(result.rows, result.rows_per_s)
"""

from __future__ import annotations

import contextlib
import gzip
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.data.preprocess import _category_strings
from mtlrec.errors import DataError
from mtlrec.schema import FeatureSchema
from mtlrec.serving.repository import ServedModel, open_model

OnError = Literal["fail", "skip"]
ROW_COLUMN = "row"
DEFAULT_BATCH_SIZE = 65_536
MAX_REPORTED = 100  # row errors kept in the result (all are counted)

Progress = Callable[[int, int | None], None]
"""Called after each chunk with (input rows read so far, total input rows or None when unknown)."""


@dataclass(frozen=True)
class RowError:
    """One malformed input row: where it is, which field, what is wrong."""

    location: str  # "line 14" (CSV) or "row 12" (Parquet)
    number: int  # the line (CSV) or 0-based row number (Parquet)
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class ScoreResult:
    """What :func:`score_file` did."""

    rows: int  # rows scored (written)
    skipped: int  # malformed rows left out (on_error="skip")
    seconds: float
    rows_per_s: float
    out: Path
    errors: list[RowError] = field(default_factory=list)  # the first MAX_REPORTED skipped rows
    model: str = ""
    version: int = 0
    runtime: str = ""
    oov: dict[str, int] = field(default_factory=dict)  # unseen categories per field, over the whole file

    def report(self) -> str:
        """A few lines for a log: counts and the first skipped rows."""
        lines = [f"{self.rows:,} rows scored, {self.skipped:,} skipped, {self.rows_per_s:,.0f} rows/s -> {self.out}"]
        lines += [f"  skipped {e}" for e in self.errors[:10]]
        if self.skipped > 10:
            lines.append(f"  ... and {self.skipped - 10:,} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- reading
@dataclass
class _Chunk:
    frame: pd.DataFrame
    first_row: int  # 0-based data row number of the frame's first row
    numbers: np.ndarray  # per row: line (CSV) or row number (Parquet), for reports
    read_rows: int  # input rows the chunk covers (blank CSV lines included)


def _is_csv(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    return bool(suffixes) and (suffixes[-1] in (".csv", ".tsv") or suffixes[-2:] in ([".csv", ".gz"], [".tsv", ".gz"]))


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _needed(schema: FeatureSchema, header: list[str], path: Path) -> list[str]:
    features = schema.feature_names + ([schema.scenario.name] if schema.scenario else [])
    missing = [c for c in features if c not in header]
    if missing:
        raise DataError(
            f"{path} lacks the columns {', '.join(missing)}",
            hint=f"the model reads {', '.join(features)}; rename the input's columns",
        )
    if schema.id_column is not None and schema.id_column in header:
        features.append(schema.id_column)
    return features


def _read_csv(path: Path, schema: FeatureSchema, batch_size: int) -> Iterator[_Chunk]:
    sep = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    try:
        header = list(pd.read_csv(path, nrows=0, sep=sep).columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="expected a header line and data rows") from None
    columns = _needed(schema, header, path)
    text = [*schema.sparse_names, *([schema.scenario.name] if schema.scenario else [])]
    if schema.id_column in columns:
        text.append(schema.id_column)  # ids are carried as written ("007" stays "007")
    reader = pd.read_csv(
        path,
        sep=sep,
        usecols=columns,
        dtype=dict.fromkeys(text, "string"),
        chunksize=batch_size,
        skip_blank_lines=False,  # blank lines stay rows, so that row i is line i + 2
    )
    first = 0
    try:
        for frame in reader:
            n = len(frame)
            numbers = np.arange(first + 2, first + 2 + n)
            frame = frame.reset_index(drop=True)
            blank = frame.isna().all(axis=1).to_numpy()
            if blank.any():
                frame, numbers = frame[~blank].reset_index(drop=True), numbers[~blank]
            yield _Chunk(frame[columns], first, numbers, n)
            first += n
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse {path}: {err}", hint="check the CSV's quoting and field count") from None
    finally:
        reader.close()


# Text columns arrive as the "string" dtype the transform converts categories to, so it need not convert them.
_TEXT_TYPES = {pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype()}


def _parquet_rows(path: Path) -> int | None:
    """The row count of a Parquet file's footer (None when unreadable: the reader then says why)."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError):
        return None


def _read_parquet(path: Path, schema: FeatureSchema, batch_size: int) -> Iterator[_Chunk]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read {path}: {err}", hint="is it a Parquet file?") from None
    columns = _needed(schema, list(parquet.schema_arrow.names), path)
    first = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        frame = batch.to_pandas(types_mapper=_TEXT_TYPES.get)
        n = len(frame)
        yield _Chunk(frame[columns], first, np.arange(first, first + n), n)
        first += n


# ---------------------------------------------------------------------------------------------- row errors
def _screen(frame: pd.DataFrame, schema: FeatureSchema) -> dict[int, tuple[str, str]]:
    """Rows the transform would refuse, found column-wise: frame position -> (field, problem).

    Mirrors the transform's checks (non-numeric dense value, missing or unknown scenario); the first problem of
    each row is kept, in schema column order.
    """
    bad: dict[int, tuple[str, str]] = {}
    for name in schema.dense_names:
        values = frame[name]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        converted = pd.to_numeric(values, errors="coerce")
        wrong = converted.isna() & values.notna()
        wrong &= values.astype("string").str.strip().fillna("") != ""
        for i in np.flatnonzero(wrong.to_numpy()):
            bad.setdefault(int(i), (name, f"dense field `{name}` has the non-numeric value {values.iloc[i]!r}"))
    scenario = schema.scenario
    if scenario is not None:
        known = pd.Index(scenario.values or ())
        values = _category_strings(frame[scenario.name])
        missing = values.isna().to_numpy()
        unknown = ~missing & (known.get_indexer(values.to_numpy(dtype=object, na_value=None)) < 0)
        for i in np.flatnonzero(missing):
            bad.setdefault(int(i), (scenario.name, f"the scenario `{scenario.name}` is missing"))
        for i in np.flatnonzero(unknown):
            raw = frame[scenario.name].iloc[i]
            bad.setdefault(
                int(i),
                (scenario.name, f"the scenario `{scenario.name}` has the unknown value {raw!r} (known: {list(known)})"),
            )
    return bad


_AT_ROW = re.compile(r" at row \d+( \(\d+ such rows\))?")
_FIELD = re.compile(r"`([^`]+)`")


def _leaf_error(err: DataError) -> tuple[str | None, str]:
    """(field, problem) of a transform error on a one-row frame (its "at row 0" dropped)."""
    found = _FIELD.search(err.message)
    return (found.group(1) if found else None), _AT_ROW.sub("", err.message)


def _bisect(
    model: ServedModel, frame: pd.DataFrame, positions: np.ndarray, first_only: bool
) -> dict[int, tuple[str | None, str]]:
    """Rows of ``frame`` (at ``positions``) that the transform refuses, by halving the failing parts."""
    try:
        model.encode(frame)
        return {}
    except DataError as err:
        if len(frame) == 1:
            return {int(positions[0]): _leaf_error(err)}
    mid = len(frame) // 2
    found = _bisect(model, frame.iloc[:mid], positions[:mid], first_only)
    if found and first_only:
        return found
    return found | _bisect(model, frame.iloc[mid:], positions[mid:], first_only)


def _row_errors(model: ServedModel, chunk: _Chunk, where: str, first_only: bool) -> tuple[list[RowError], np.ndarray]:
    """The malformed rows of a chunk whose transform failed, and the mask of the rows to keep."""
    frame = chunk.frame
    bad: dict[int, tuple[str | None, str]] = dict(_screen(frame, model.schema))
    keep = np.ones(len(frame), dtype=bool)
    keep[list(bad)] = False
    if first_only and bad:
        # Only rows before the first screened error can hold an earlier one of another kind.
        first = min(bad)
        head = frame.iloc[:first]
        if len(head):
            bad |= _bisect(model, head, np.arange(first), first_only=True)
    else:
        rest = np.flatnonzero(keep)
        if len(rest):
            bad |= _bisect(model, frame.iloc[rest], rest, first_only)
    keep[list(bad)] = False
    errors = []
    for i in sorted(bad):
        name, problem = bad[i]
        number = int(chunk.numbers[i])
        errors.append(RowError(f"{where} {number}", number, name, problem))
    return errors, keep


# --------------------------------------------------------------------------------------------------- writing
class _Writer:
    """Appends score tables to a temporary file beside ``out``; ``commit`` renames it into place."""

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
        self.csv = _is_csv(out)
        self.sep = "\t" if ".tsv" in [s.lower() for s in out.suffixes] else ","
        self._parquet: pq.ParquetWriter | None = None
        self._text: IO[str] | None = None

    def write(self, table: pa.Table) -> None:
        if self.csv:
            if self._text is None:
                opener: Any = gzip.open if self.out.suffix.lower() == ".gz" else open
                self._text = opener(self.tmp, "wt", newline="")
                table.to_pandas().to_csv(self._text, index=False, sep=self.sep)
            else:
                table.to_pandas().to_csv(self._text, index=False, header=False, sep=self.sep)
            return
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.tmp, table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()

    def commit(self, empty: pa.Table) -> None:
        if self._parquet is None and self._text is None:
            self.write(empty)
        self._close()
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        self.tmp.unlink(missing_ok=True)


def _table(id_name: str, ids: Any, scores: dict[str, np.ndarray]) -> pa.Table:
    columns: dict[str, Any] = {id_name: ids}
    columns |= {n: pa.array(v.astype(np.float32, copy=False)) for n, v in scores.items()}
    return pa.table(columns)


# ----------------------------------------------------------------------------------------------- pipelining
_T = TypeVar("_T")
_DONE = object()


def _prefetch(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """``items``, produced by a background thread up to ``depth`` ahead (its exceptions re-raised here).

    Reading and encoding the next chunk (pandas, mostly holding the GIL) overlaps the model call on this one
    (ONNX Runtime and torch release the GIL), so the runtime is rarely idle waiting for the transform.
    """
    slots: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # handed to the consumer, which re-raises it
            put((None, err))
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()

    thread = threading.Thread(target=work, name="mtlrec-score-encode", daemon=True)
    thread.start()
    try:
        while True:
            item, err = slots.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class _Encoded:
    """One chunk ready for the model (``tensors`` None when every row was skipped)."""

    tensors: dict[str, np.ndarray] | None
    ids: pa.Array
    id_name: str
    oov: dict[str, int]
    read_rows: int  # input rows of the chunk (blank lines included)
    errors: list[RowError]


def _encode_stream(
    served: ServedModel, chunks: Iterator[_Chunk], input: Path, where: str, on_error: OnError
) -> Iterator[_Encoded]:
    """Each chunk through THE transform; malformed rows located, then raised (fail) or dropped (skip)."""
    schema = served.schema
    for chunk in chunks:
        frame = chunk.frame
        # Output row numbers: 0-based data rows (a CSV's line - 2, blank lines counted; a Parquet row number).
        row_ids = chunk.numbers - 2 if where == "line" else chunk.numbers
        errors: list[RowError] = []
        tensors: dict[str, np.ndarray] | None
        try:
            tensors, counts = served.encode(frame)
        except DataError:
            errors, keep = _row_errors(served, chunk, where, first_only=on_error == "fail")
            if on_error == "fail" or not errors:
                raise DataError(
                    f"{input}, {errors[0]}" if errors else f"{input}: rows {chunk.first_row}+ could not be encoded",
                    hint="fix the value, or pass --on-error skip to leave such rows out",
                ) from None
            frame, row_ids = frame[keep], row_ids[keep]
            tensors, counts = served.encode(frame) if len(frame) else (None, {})
        if schema.id_column is not None and schema.id_column in frame.columns:
            id_name, ids = schema.id_column, pa.array(frame[schema.id_column])
        else:
            id_name, ids = ROW_COLUMN, pa.array(row_ids.astype(np.int64))
        yield _Encoded(tensors, ids, id_name, counts, chunk.read_rows, errors)


# --------------------------------------------------------------------------------------------------- scoring
def score_file(
    input: Path,
    repo: Path,
    model: str,
    out: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_error: OnError = "fail",
    backend: str = "auto",
    threads: int | None = None,
    progress: Progress | None = None,
) -> ScoreResult:
    """Score every row of a raw CSV/Parquet file with a model of the repository; write Parquet or CSV.

    With ``threads`` below the number of cores, reading and encoding run a chunk ahead of the model in a
    background thread.

    Args:
        input: a CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet file with (at least) the schema's columns.
        repo: the model repository written by ``mtlrec export``.
        model: the model name (``mmoe``, ``mmoe_torchscript``, ...); its newest version is used.
        out: the output; ``.csv`` (or ``.csv.gz``) writes CSV, anything else Parquet.
        batch_size: rows per chunk (memory is bounded by a few chunks).
        on_error: ``fail`` stops at the first malformed row; ``skip`` leaves malformed rows out and counts them.
        backend: ``onnxruntime``, ``torchscript`` or ``auto``.
        threads: intra-op threads of the runtime (default: every core; fewer leaves a core to encode ahead).
        progress: called after each chunk with (rows read, total rows or None).

    Returns:
        Rows scored and skipped, time, throughput, the output path and the first skipped rows.

    Raises:
        DataError: the input cannot be read, lacks columns, or (``on_error="fail"``) has a malformed row; the
            message gives its line (CSV) or row (Parquet) and the field. No output is left behind.
        CheckpointError: the model is not in the repository.
    """
    if on_error not in ("fail", "skip"):
        raise DataError(f"on_error must be fail or skip, not {on_error!r}")
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, not {batch_size}")
    if not input.is_file():
        raise DataError(f"input file not found: {input}")
    if _is_csv(input):
        read, where = _read_csv, "line"
    elif _is_parquet(input):
        read, where = _read_parquet, "row"
    else:
        raise DataError(f"{input}: unknown input type", hint="use a .csv, .csv.gz, .tsv or .parquet file")
    if input.resolve() == out.resolve():
        raise DataError("the output would overwrite the input", hint="choose another --out")

    served = open_model(repo, model, backend=backend, threads=threads)
    runtime = served.runner.description
    total = _parquet_rows(input) if where == "row" else None
    outputs = served.spec.output_names
    writer = _Writer(out)
    start = time.perf_counter()
    rows = skipped = read_rows = 0
    errors: list[RowError] = []
    oov: dict[str, int] = dict.fromkeys(served.schema.sparse_names, 0)
    id_name = ROW_COLUMN
    try:
        stream = _encode_stream(served, read(input, served.schema, batch_size), input, where, on_error)
        # Overlap the transform with the model only when the runtime leaves a core free: measured on 2 cores,
        # an encoding thread beside a runtime that uses every core slows both and gains nothing.
        overlap = threads is not None and threads < (os.cpu_count() or 1)
        for item in _prefetch(stream) if overlap else stream:
            if item.tensors is not None:
                scores = served.runner.infer(item.tensors)
                id_name = item.id_name
                writer.write(_table(id_name, item.ids, scores))
                rows += len(item.ids)
            skipped += len(item.errors)
            errors += item.errors[: MAX_REPORTED - len(errors)]
            for name, count in item.oov.items():
                oov[name] = oov.get(name, 0) + count
            read_rows += item.read_rows
            if progress is not None:
                progress(read_rows, total)
        writer.commit(_table(id_name, pa.array([], type=pa.int64()), {n: np.zeros(0, np.float32) for n in outputs}))
    except BaseException:
        writer.abort()
        raise
    finally:
        served.close()
    seconds = time.perf_counter() - start
    return ScoreResult(
        rows=rows,
        skipped=skipped,
        seconds=seconds,
        rows_per_s=rows / seconds if seconds > 0 else 0.0,
        out=out,
        errors=errors,
        model=served.name,
        version=served.version,
        runtime=runtime,
        oov=oov,
    )
