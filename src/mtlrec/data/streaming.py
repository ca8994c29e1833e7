"""Data larger than memory: streamed training splits, a streamed preprocessor fit, and the memory budget.

:class:`StreamingData` reads the Parquet shards of a split (or a rank's slices of them, see
:func:`mtlrec.data.dataset.owned_slices`) one row group at a time and yields the same :class:`Batch` of contiguous
tensors as :class:`EncodedData`, so the training loop and the model cannot tell the two apart. With shuffling, each
epoch visits the row groups in a new order and mixes rows in a bounded buffer (``buffer_rows``): memory is bounded
by about twice the buffer, whatever the split's size. Without shuffling, rows come in file order and the batches
are exactly those of :meth:`EncodedData.batches` on the same rows, so both paths train the same model.

:class:`StreamingFit` learns the preprocessor from chunks of the training split (vocabulary counts, dense sums,
a bounded uniform sample per dense field for the median fill) and gives the same state as
:meth:`Preprocessor.fit` on the concatenated chunks: exactly so for vocabularies, means and spreads (up to
float rounding), and for medians while the sample holds every value (``sample_values``, 1M by default).

Example::

    data = StreamingData(schema, owned_slices(prepared.shards("train")), buffer_rows=1 << 20)
    for batch in data.batches(1024, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from mtlrec.data.dataset import (
    Batch,
    EncodedData,
    PreparedData,
    ShardSlice,
    iter_slice_tables,
    owned_slices,
    table_to_encoded,
)
from mtlrec.data.preprocess import (
    DenseStats,
    Preprocessor,
    PreprocessorState,
    _category_strings,
    _numeric,
    _transform_dense,
    fitted_schema,
)
from mtlrec.errors import DataError
from mtlrec.schema import FIRST_VALUE_ID, FeatureSchema

DEFAULT_BUFFER_ROWS = 1 << 20
DEFAULT_SAMPLE_VALUES = 1 << 20
# The in-memory path holds a split twice during an epoch (the tensors and their shuffled gather).
IN_MEMORY_COPIES = 2


# ------------------------------------------------------------------------------------------- memory budget
def physical_memory_bytes() -> int:
    """Physical memory of this machine (0 when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def default_memory_budget() -> int:
    """Bytes a split may take in memory before training streams it: ``MTLREC_MEMORY_BUDGET_MB``, else 1/4 of RAM."""
    env = os.environ.get("MTLREC_MEMORY_BUDGET_MB")
    if env:
        return int(float(env) * 2**20)
    total = physical_memory_bytes()
    return total // 4 if total else 4 * 2**30


def bytes_per_row(schema: FeatureSchema) -> int:
    """In-memory bytes of one encoded row: int64 ids, float32 dense values, an int64 scenario, float32 labels."""
    return 8 * len(schema.sparse) + 4 * len(schema.dense) + (8 if schema.scenario else 0) + 4 * len(schema.tasks)


def in_memory_bytes(schema: FeatureSchema, rows: int) -> int:
    """What the in-memory path needs for ``rows`` rows during an epoch (tensors plus their shuffled copy)."""
    return IN_MEMORY_COPIES * rows * bytes_per_row(schema)


# ------------------------------------------------------------------------------------------- streamed split
class StreamingData:
    """A split read from Parquet shard slices, batch by batch, in bounded memory.

    Args:
        schema: the fitted schema of the data.
        slices: the shard slices to read, in file order.
        buffer_rows: rows mixed at once when shuffling (memory ~ 2 x buffer_rows x bytes per row).
        limit: read at most this many rows per epoch (distributed ranks read equal counts); None = all.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        slices: list[ShardSlice],
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        limit: int | None = None,
    ) -> None:
        if buffer_rows < 1:
            raise DataError(f"the shuffle buffer must hold at least one row, not {buffer_rows}")
        self.schema = schema
        self.slices = slices
        self.buffer_rows = buffer_rows
        total = sum(s.rows for s in slices)
        self._rows = total if limit is None else min(limit, total)
        # Units of reading (and of shard-order shuffling): the row-group pieces of every slice.
        self._units = [_Unit(piece, group) for piece in slices for group in _row_groups(piece)]

    def __len__(self) -> int:
        return self._rows

    def _pieces(self, order: list[int]) -> Iterator[EncodedData]:
        """The units in ``order``, as tensors, stopping after ``len(self)`` rows."""
        left = self._rows
        for index in order:
            if left <= 0:
                return
            unit = self._units[index]
            for table in iter_slice_tables(ShardSlice(unit.piece.path, unit.start, unit.stop)):
                part = EncodedData.from_encoded(self.schema, table_to_encoded(self.schema, table))
                if len(part) > left:
                    part = part.head(left)
                left -= len(part)
                yield part

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` rows (the last may be smaller), as :meth:`EncodedData.batches` does.

        With ``shuffle``, the row groups are visited in a random order and rows are mixed in the buffer: whenever it
        holds ``buffer_rows`` rows, it is permuted and all but about half of it is emitted, the rest staying to mix
        with what is read next.
        """
        order = list(range(len(self._units)))
        if shuffle:
            order = torch.randperm(len(order), generator=generator).tolist()
        pending: list[EncodedData] = []
        held = 0
        keep = self.buffer_rows // 2 if shuffle else 0
        threshold = self.buffer_rows if shuffle else batch_size
        for part in self._pieces(order):
            pending.append(part)
            held += len(part)
            if held < threshold:
                continue
            buffer = EncodedData.concat(pending)
            if shuffle:
                perm = torch.randperm(held, generator=generator)
                buffer = EncodedData(
                    {k: v.index_select(0, perm) for k, v in buffer.features.items()},
                    {k: v.index_select(0, perm) for k, v in buffer.labels.items()},
                )
            emit = ((held - keep) // batch_size) * batch_size
            yield from buffer.head(emit).batches(batch_size)
            rest = EncodedData(
                {k: v[emit:] for k, v in buffer.features.items()}, {k: v[emit:] for k, v in buffer.labels.items()}
            )
            pending, held = ([rest], len(rest)) if len(rest) else ([], 0)
        if held:
            yield from EncodedData.concat(pending).batches(batch_size, shuffle=shuffle, generator=generator)


class _Unit:
    """One row group's share of a shard slice."""

    def __init__(self, piece: ShardSlice, bounds: tuple[int, int]) -> None:
        self.piece = piece
        self.start, self.stop = bounds


def _row_groups(piece: ShardSlice) -> list[tuple[int, int]]:
    """``[start, stop)`` of the slice's rows, cut at the shard's row-group boundaries."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(piece.path).metadata
    bounds = []
    offset = 0
    for group in range(meta.num_row_groups):
        n = meta.row_group(group).num_rows
        lo, hi = max(piece.start, offset), min(piece.stop, offset + n)
        if hi > lo:
            bounds.append((lo, hi))
        offset += n
    return bounds


# ------------------------------------------------------------------------------------------ streamed fitting
class StreamingFit:
    """Fit a :class:`Preprocessor` from chunks of the training split, in memory bounded by the vocabularies.

    Args:
        schema: the unfitted schema.
        sample_values: per dense field, the most values kept to compute a median fill (a uniform sample).
        seed: seeds the sample.

    Example::

        fit = StreamingFit(schema)
        for chunk in chunks:
            fit.update(chunk)
        preprocessor = fit.result()
    """

    def __init__(self, schema: FeatureSchema, sample_values: int = DEFAULT_SAMPLE_VALUES, seed: int = 0) -> None:
        self.schema = schema
        self.rows = 0
        self.sample_values = sample_values
        self._rng = np.random.default_rng(seed)
        self._counts: dict[str, pd.Series] = {f.name: pd.Series(dtype="int64") for f in schema.sparse}
        self._scenarios: set[str] = set()
        # Per dense field: present count, sums of raw x and of f(x), f(x)^2, min/max f(x), the sample and its rate.
        self._dense: dict[str, dict[str, Any]] = {
            d.name: {"n": 0, "sum_raw": 0.0, "sum": 0.0, "sum_sq": 0.0, "min": math.inf, "max": -math.inf}
            for d in schema.dense
        }
        self._samples: dict[str, list[np.ndarray]] = {d.name: [] for d in schema.dense}
        self._sampled: dict[str, int] = {d.name: 0 for d in schema.dense}
        self._rate = {d.name: 1.0 for d in schema.dense}

    def update(self, frame: pd.DataFrame) -> None:
        """Add the rows of one chunk of the training split."""
        schema = self.schema
        required = schema.feature_names + ([schema.scenario.name] if schema.scenario else [])
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(
                f"columns declared in the schema are missing from the data: {', '.join(missing)}",
                hint="fix the field names in the schema, or the data's header",
            )
        self.rows += len(frame)
        for spec in schema.sparse:
            counts = _category_strings(frame[spec.name]).value_counts(dropna=True)
            counts.index = counts.index.astype(object)
            self._counts[spec.name] = self._counts[spec.name].add(counts.astype("int64"), fill_value=0)
        for dspec in schema.dense:
            raw = _numeric(frame[dspec.name], dspec.name)
            present = raw[~np.isnan(raw)]
            acc = self._dense[dspec.name]
            transformed = _transform_dense(present, dspec)
            acc["n"] += len(present)
            acc["sum_raw"] += float(present.sum())
            acc["sum"] += float(transformed.sum())
            acc["sum_sq"] += float(np.square(transformed).sum())
            if len(transformed):
                acc["min"] = min(acc["min"], float(transformed.min()))
                acc["max"] = max(acc["max"], float(transformed.max()))
            if dspec.fill == "median":
                self._sample(dspec.name, present)
        scenario = schema.scenario
        if scenario is not None:
            values = _category_strings(frame[scenario.name])
            if bool(values.isna().any()):
                row = int(np.flatnonzero(values.isna().to_numpy())[0])
                raise DataError(
                    f"scenario column `{scenario.name}` is missing at row {self.rows - len(frame) + row}",
                    hint="every row needs a scenario; drop or fill those rows",
                )
            self._scenarios |= {str(v) for v in values.unique().tolist()}

    def _sample(self, name: str, present: np.ndarray) -> None:
        """Keep each value with the current rate; halve the sample and the rate whenever it outgrows its cap."""
        rate = self._rate[name]
        kept = present if rate >= 1.0 else present[self._rng.random(len(present)) < rate]
        self._samples[name].append(kept)
        self._sampled[name] += len(kept)
        while self._sampled[name] > self.sample_values:
            pool = np.concatenate(self._samples[name])
            pool = pool[self._rng.random(len(pool)) < 0.5]
            self._samples[name] = [pool]
            self._sampled[name] = len(pool)
            self._rate[name] /= 2

    def result(self) -> Preprocessor:
        """The fitted preprocessor (the same rules as :meth:`Preprocessor.fit`)."""
        schema = self.schema
        if self.rows == 0:
            raise DataError("the training split is empty", hint="check the source files and the --rows option")
        vocabularies: dict[str, list[str]] = {}
        sparse_fields = []
        for spec in schema.sparse:
            counts = self._counts[spec.name]
            counts = counts[counts >= spec.min_count]
            # Most frequent first (ties by value), as Preprocessor.fit orders them.
            ordered = sorted(((str(v), int(c)) for v, c in counts.items()), key=lambda kv: (-kv[1], kv[0]))
            vocabularies[spec.name] = [value for value, _ in ordered]
            sparse_fields.append(spec.model_copy(update={"vocab_size": FIRST_VALUE_ID + len(ordered)}))
        dense_stats: dict[str, DenseStats] = {}
        for dspec in schema.dense:
            acc = self._dense[dspec.name]
            n_present, n_missing = acc["n"], self.rows - acc["n"]
            if dspec.fill == "zero" or n_present == 0:
                fill = 0.0
            elif dspec.fill == "median":
                fill = float(np.median(np.concatenate(self._samples[dspec.name])))
            else:
                fill = acc["sum_raw"] / n_present
            filled = float(_transform_dense(np.array([fill]), dspec)[0])
            total = acc["sum"] + n_missing * filled
            total_sq = acc["sum_sq"] + n_missing * filled * filled
            mean = total / self.rows
            if dspec.normalization in ("standardize", "log1p"):
                center, scale = mean, math.sqrt(max(total_sq / self.rows - mean * mean, 0.0))
            elif dspec.normalization == "minmax":
                low = min(acc["min"], filled) if n_missing else acc["min"]
                high = max(acc["max"], filled) if n_missing else acc["max"]
                center, scale = low, high - low
            else:
                center, scale = 0.0, 1.0
            dense_stats[dspec.name] = DenseStats(fill_value=fill, center=center, scale=scale if scale > 0 else 1.0)
        fitted = fitted_schema(schema, sparse_fields, tuple(sorted(self._scenarios)))
        return Preprocessor(PreprocessorState(schema=fitted, vocabularies=vocabularies, dense_stats=dense_stats))


# ---------------------------------------------------------------------------------------- chunked loaders
@runtime_checkable
class ChunkedLoader(Protocol):
    """A dataset loader that can also produce its raw splits chunk by chunk (``prepare --shard-rows`` streams it).

    ``iter_split_chunks`` must yield the same rows, split the same way, every time it is called with the same
    arguments: ``prepare`` reads it twice (to fit, then to encode).
    """

    def chunked_schema(self, source: Path | None) -> FeatureSchema:
        """The (unfitted) schema of the chunks."""

    def iter_split_chunks(
        self, source: Path | None, *, seed: int, rows: int | None, chunk_rows: int
    ) -> Iterator[dict[str, pd.DataFrame]]:
        """Raw rows, chunk by chunk, each chunk already divided into split frames (``train``/``val``/``test``)."""


# ------------------------------------------------------------------------------------------ opening a split
def open_split(
    prepared: PreparedData,
    name: str,
    *,
    rank: int = 0,
    world: int = 1,
    streaming: bool | None = None,
    memory_budget: int | None = None,
    buffer_rows: int = DEFAULT_BUFFER_ROWS,
    limit: int | None = None,
) -> EncodedData | StreamingData:
    """A split of ``prepared`` (rank ``rank``'s slices of it), in memory or streamed.

    Args:
        prepared: the data directory.
        name: ``train``, ``val`` or ``test``.
        rank: this process's rank; world: the number of ranks.
        streaming: True streams, False loads, None (auto) streams when the rank's share of the split would take
            more than ``memory_budget`` bytes in memory (:func:`in_memory_bytes`).
        memory_budget: bytes (default :func:`default_memory_budget`).
        buffer_rows: the shuffle buffer of a streamed split.
        limit: keep the first ``limit`` rows of the rank's share (equal step counts across ranks).
    """
    if streaming is None:
        streaming = use_streaming(prepared, name, world, memory_budget)
    shards = prepared.shards(name)
    if streaming:
        return StreamingData(prepared.schema, owned_slices(shards, rank, world), buffer_rows, limit)
    split = prepared.split(name, rank, world)
    return split.head(limit) if limit is not None and limit < len(split) else split


def use_streaming(prepared: PreparedData, name: str, world: int = 1, memory_budget: int | None = None) -> bool:
    """Whether one rank's share of a split is over the memory budget (so that training streams it)."""
    budget = default_memory_budget() if memory_budget is None else memory_budget
    rows = math.ceil(prepared.num_rows(name) / max(world, 1))
    return in_memory_bytes(prepared.schema, rows) > budget
