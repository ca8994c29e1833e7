"""Encoded splits on disk (Parquet) and in memory (contiguous tensors), with batching by slicing.

A prepared data directory, written by :func:`write_prepared` (``mtlrec data prepare``), holds::

    schema.json          the fitted FeatureSchema
    preprocessor.json    the fitted Preprocessor (vocabularies, statistics)
    train.parquet, val.parquet, test.parquet   encoded splits (one column per field, ``label:<task>`` per task)
    dataset.json         name, source, seed, row counts and the summary printed at prepare time

or, prepared with ``--shard-rows N``, one folder of Parquet shards per split (at most N rows each)::

    train/part-00000.parquet, train/part-00001.parquet, ...   val/part-00000.parquet, ...   test/...

Either way a split is a list of shards (:meth:`PreparedData.shards`; a single file is one shard).
:class:`EncodedData` keeps every column of a split as one contiguous tensor. An epoch draws one permutation,
gathers each tensor once in that order, and then yields batches as views (slices): no per-row Python and no
per-row collation. Data larger than memory is read shard by shard instead (:mod:`mtlrec.data.streaming`), with
the same :class:`Batch` type.

Ranks of a distributed run own a contiguous slice of every shard (:func:`owned_slices`): rank ``r`` of ``W`` reads
rows ``[r * n // W, (r + 1) * n // W)`` of a shard of ``n`` rows, so each rank reads about ``1 / W`` of the data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from mtlrec.data.preprocess import EncodedFrame, Preprocessor
from mtlrec.errors import DataError
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema

SPLITS = ("train", "val", "test")
LABEL_PREFIX = "label:"


@dataclass
class Batch:
    """Model inputs keyed by the schema's tensor names, and labels keyed by task name."""

    features: dict[str, Tensor]
    labels: dict[str, Tensor]

    @property
    def size(self) -> int:
        """Number of rows."""
        return int(next(iter(self.features.values())).shape[0])


class EncodedData:
    """One split as contiguous tensors.

    Args:
        features: ``sparse_ids`` int64 [N, F], ``dense`` float32 [N, D], ``scenario`` int64 [N] (as the schema has).
        labels: float32 [N] per task.
    """

    def __init__(self, features: dict[str, Tensor], labels: dict[str, Tensor]) -> None:
        self.features = {k: v.contiguous() for k, v in features.items()}
        self.labels = {k: v.contiguous() for k, v in labels.items()}
        sizes = {int(t.shape[0]) for t in [*self.features.values(), *self.labels.values()]}
        if len(sizes) > 1:
            raise DataError(f"columns of one split have different lengths: {sorted(sizes)}")

    def __len__(self) -> int:
        return int(next(iter(self.features.values())).shape[0])

    @classmethod
    def from_encoded(cls, schema: FeatureSchema, encoded: EncodedFrame) -> EncodedData:
        """Wrap the arrays of an :class:`EncodedFrame` without copying."""
        features: dict[str, Tensor] = {}
        if schema.sparse:
            features[SPARSE_IDS] = torch.from_numpy(np.ascontiguousarray(encoded.sparse))
        if schema.dense:
            features[DENSE] = torch.from_numpy(np.ascontiguousarray(encoded.dense))
        if encoded.scenario is not None:
            features[SCENARIO] = torch.from_numpy(np.ascontiguousarray(encoded.scenario))
        labels = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in encoded.labels.items()}
        return cls(features, labels)

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` rows (the last may be smaller).

        With ``shuffle``, one permutation per call: every tensor is gathered once, then sliced.
        """
        n = len(self)
        if shuffle:
            perm = torch.randperm(n, generator=generator)
            features = {k: v.index_select(0, perm) for k, v in self.features.items()}
            labels = {k: v.index_select(0, perm) for k, v in self.labels.items()}
        else:
            features, labels = self.features, self.labels
        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            yield Batch(
                {k: v[start:end] for k, v in features.items()},
                {k: v[start:end] for k, v in labels.items()},
            )

    def subset(self, rows: Tensor) -> EncodedData:
        """The rows at ``rows`` (a LongTensor of indices or a bool mask) as a new split."""
        return EncodedData({k: v[rows] for k, v in self.features.items()}, {k: v[rows] for k, v in self.labels.items()})

    def head(self, n: int) -> EncodedData:
        """The first ``n`` rows (views, no copy)."""
        return EncodedData({k: v[:n] for k, v in self.features.items()}, {k: v[:n] for k, v in self.labels.items()})

    @classmethod
    def concat(cls, parts: list[EncodedData]) -> EncodedData:
        """The rows of ``parts`` one after the other, as new contiguous tensors (one part is returned as is)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(
            {k: torch.cat([p.features[k] for p in parts]) for k in first.features},
            {k: torch.cat([p.labels[k] for p in parts]) for k in first.labels},
        )


# ---------------------------------------------------------------------------------------------------- parquet
SCHEMA_HASH_KEY = "mtlrec.schema_hash"
"""Parquet key-value metadata of every encoded split file: the hash of the schema that encoded it."""


def encoded_to_table(schema: FeatureSchema, encoded: EncodedFrame) -> pa.Table:
    """One Parquet column per field (ids int64, dense float32, scenario int64) and ``label:<task>`` per task."""
    columns: dict[str, Any] = {}
    for j, name in enumerate(schema.sparse_names):
        columns[name] = encoded.sparse[:, j]
    for j, name in enumerate(schema.dense_names):
        columns[name] = encoded.dense[:, j]
    if schema.scenario is not None and encoded.scenario is not None:
        columns[schema.scenario.name] = encoded.scenario
    for task, values in encoded.labels.items():
        columns[LABEL_PREFIX + task] = values
    # Every file says which schema encoded it, so a shard copied in from another preparation is refused by name.
    return pa.table(columns, metadata={SCHEMA_HASH_KEY: schema.hash()})


def check_schema_hash(path: Path, expected: str) -> None:
    """Refuse a Parquet split file encoded under another schema (files without the key, from older versions, pass).

    Raises:
        DataError: the file's ``mtlrec.schema_hash`` differs from ``expected``, or the file cannot be read.
    """
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read {path}: {err}", hint="prepare the data again") from None
    found = metadata.get(SCHEMA_HASH_KEY.encode())
    if found is not None and found.decode() != expected:
        raise DataError(
            f"{path} was encoded with schema {found.decode()}, but this directory's schema.json is {expected}",
            hint="a shard from another preparation was mixed in; prepare the data again into an empty directory",
        )


def table_to_encoded(schema: FeatureSchema, table: pa.Table) -> EncodedFrame:
    """Inverse of :func:`encoded_to_table`."""
    missing = [c for c in schema.feature_names if c not in table.column_names]
    if missing:
        raise DataError(
            f"encoded split lacks the columns {', '.join(missing)}",
            hint="it was written for another schema; run `mtlrec data prepare` again",
        )

    def stack(names: list[str], dtype: type) -> np.ndarray:
        if not names:
            return np.zeros((table.num_rows, 0), dtype=dtype)
        return np.stack([table.column(n).to_numpy() for n in names], axis=1).astype(dtype, copy=False)

    scenario = None
    if schema.scenario is not None:
        # np.array copies: Arrow buffers are read-only, and torch tensors over them would be too.
        scenario = np.array(table.column(schema.scenario.name).to_numpy(), dtype=np.int64)
    labels = {
        t: np.array(table.column(LABEL_PREFIX + t).to_numpy(), dtype=np.float32)
        for t in schema.task_names
        if LABEL_PREFIX + t in table.column_names
    }
    return EncodedFrame(stack(schema.sparse_names, np.int64), stack(schema.dense_names, np.float32), scenario, labels)


# ---------------------------------------------------------------------------------------------------- shards
SHARD_PATTERN = "part-{:05d}.parquet"
# Rows per Parquet row group in the shards: the unit a streaming reader loads (and shuffles) at once.
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True)
class ShardSlice:
    """Rows ``[start, stop)`` of one Parquet shard."""

    path: Path
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """Number of rows of the slice."""
        return self.stop - self.start


def shard_rows(path: Path) -> int:
    """Row count of a Parquet shard, from its footer."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read {path}: {err}", hint="prepare the data again") from None


def owned_slices(shards: list[Path], rank: int = 0, world: int = 1) -> list[ShardSlice]:
    """The slice of every shard that rank ``rank`` of ``world`` reads: rows ``[r*n//W, (r+1)*n//W)`` of each.

    Slices of different ranks never overlap and cover every row; their sizes differ by at most one per shard.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    slices = []
    for path in shards:
        n = shard_rows(path)
        start, stop = rank * n // world, (rank + 1) * n // world
        if stop > start:
            slices.append(ShardSlice(path, start, stop))
    return slices


def iter_slice_tables(piece: ShardSlice, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The rows of ``piece`` as tables of at most one row group each (memory bounded by a row group)."""
    parquet = pq.ParquetFile(piece.path)
    meta = parquet.metadata
    offset = 0
    for group in range(meta.num_row_groups):
        n = meta.row_group(group).num_rows
        lo, hi = max(piece.start, offset), min(piece.stop, offset + n)
        if hi > lo:
            table = parquet.read_row_group(group, columns=columns)
            yield table.slice(lo - offset, hi - lo)
        offset += n
        if offset >= piece.stop:
            break


def read_slices(schema: FeatureSchema, slices: list[ShardSlice]) -> EncodedData:
    """Every row of ``slices``, in order, as one in-memory split."""
    parts = [
        EncodedData.from_encoded(schema, table_to_encoded(schema, table))
        for piece in slices
        for table in iter_slice_tables(piece)
    ]
    if not parts:
        raise DataError("no rows to read: every shard slice is empty")
    return EncodedData.concat(parts)


class ShardWriter:
    """Writes the tables of one split into ``folder/part-NNNNN.parquet`` files of at most ``shard_rows`` rows."""

    def __init__(self, folder: Path, shard_rows: int) -> None:
        if shard_rows < 1:
            raise DataError(f"shard_rows must be positive, not {shard_rows}")
        self.folder = folder
        self.shard_rows = shard_rows
        self.paths: list[Path] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("part-*.parquet"):
            stale.unlink()

    def write(self, table: pa.Table) -> None:
        """Append ``table``'s rows, starting a new shard whenever the current one is full."""
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._in_shard >= self.shard_rows:
                self._roll(table.schema)
            assert self._writer is not None
            take = min(self.shard_rows - self._in_shard, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take), row_group_size=min(self.shard_rows, ROW_GROUP_ROWS))
            self._in_shard += take
            self.rows += take
            offset += take

    def _roll(self, schema: pa.Schema) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.folder / SHARD_PATTERN.format(len(self.paths))
        self._writer = pq.ParquetWriter(path, schema)
        self.paths.append(path)
        self._in_shard = 0

    def close(self, empty: pa.Table | None = None) -> list[Path]:
        """Finish the last shard (an empty split still gets one shard, from ``empty``); return the shard paths."""
        if self._writer is None and empty is not None:
            self._roll(empty.schema)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.paths


def clear_split(out: Path, name: str) -> None:
    """Remove a split's previous files (``name.parquet`` and ``name/part-*.parquet``) before it is written again."""
    (out / f"{name}.parquet").unlink(missing_ok=True)
    folder = out / name
    if folder.is_dir():
        for stale in folder.glob("part-*.parquet"):
            stale.unlink()


# ------------------------------------------------------------------------------------------------ prepared dir
@dataclass
class PreparedData:
    """A prepared data directory, opened."""

    root: Path
    schema: FeatureSchema
    preprocessor: Preprocessor
    info: dict[str, Any]

    def shards(self, name: str) -> list[Path]:
        """The Parquet files of a split, in order: ``name.parquet``, or the shards of the folder ``name/``."""
        if name not in SPLITS:
            raise DataError(f"unknown split `{name}`", hint=f"use one of {', '.join(SPLITS)}")
        path = self.root / f"{name}.parquet"
        if path.is_file():
            found = [path]
        else:
            found = sorted((self.root / name).glob("part-*.parquet")) if (self.root / name).is_dir() else []
        if not found:
            raise DataError(
                f"split `{name}` not found in {self.root} (neither {name}.parquet nor {name}/part-*.parquet)",
                hint="run `mtlrec data prepare` for this directory",
            )
        expected = self.schema.hash()
        for shard in found:
            check_schema_hash(shard, expected)
        return found

    def num_rows(self, name: str) -> int:
        """Rows of a split, from the shards' footers (nothing is loaded)."""
        return sum(shard_rows(p) for p in self.shards(name))

    def split(self, name: str, rank: int = 0, world: int = 1) -> EncodedData:
        """Load one split (``train``, ``val`` or ``test``) as tensors; with ``world > 1``, rank ``rank``'s slices."""
        shards = self.shards(name)
        if world == 1 and len(shards) == 1:
            return EncodedData.from_encoded(self.schema, table_to_encoded(self.schema, pq.read_table(shards[0])))
        return read_slices(self.schema, owned_slices(shards, rank, world))


def write_prepared(
    out: Path,
    preprocessor: Preprocessor,
    splits: dict[str, EncodedFrame],
    info: dict[str, Any],
    shard_rows: int | None = None,
) -> None:
    """Write schema, preprocessor, the encoded splits and ``dataset.json`` into ``out``.

    Args:
        out: the data directory (created).
        preprocessor: the fitted preprocessor.
        splits: encoded rows per split name.
        info: what ``dataset.json`` records besides the schema hash and the row counts.
        shard_rows: None writes ``<split>.parquet``; a number writes ``<split>/part-NNNNN.parquet`` shards of at
            most that many rows.
    """
    out.mkdir(parents=True, exist_ok=True)
    schema = preprocessor.schema
    schema.save(out / "schema.json")
    preprocessor.save(out / "preprocessor.json")
    shards: dict[str, list[str]] = {}
    for name, encoded in splits.items():
        clear_split(out, name)
        table = encoded_to_table(schema, encoded)
        if shard_rows is None:
            pq.write_table(table, out / f"{name}.parquet")
            continue
        writer = ShardWriter(out / name, shard_rows)
        writer.write(table)
        shards[name] = [str(p.relative_to(out)) for p in writer.close(empty=table)]
    write_dataset_info(out, schema, {k: v.num_rows for k, v in splits.items()}, info, shards, shard_rows)


def write_dataset_info(
    out: Path,
    schema: FeatureSchema,
    rows: dict[str, int],
    info: dict[str, Any],
    shards: dict[str, list[str]] | None = None,
    shard_rows: int | None = None,
) -> None:
    """Write ``dataset.json``: ``info`` plus the schema hash, rows per split and (when sharded) the shard files."""
    payload = {**info, "schema_hash": schema.hash(), "rows": rows}
    if shards:
        payload |= {"shard_rows": shard_rows, "shards": shards}
    (out / "dataset.json").write_text(json.dumps(payload, indent=1, default=str))


def open_prepared(root: Path) -> PreparedData:
    """Open a directory written by :func:`write_prepared`, checking that its files agree."""
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}", hint="run `mtlrec data prepare DATASET --out DIR` first")
    for name in ("schema.json", "preprocessor.json"):
        if not (root / name).is_file():
            raise DataError(
                f"{root} has no {name}", hint="it is not a prepared data directory; run `mtlrec data prepare`"
            )
    schema = FeatureSchema.load(root / "schema.json")
    preprocessor = Preprocessor.load(root / "preprocessor.json")
    if preprocessor.schema.hash() != schema.hash():
        raise DataError(f"{root}: schema.json and preprocessor.json disagree", hint="prepare the data again")
    info_path = root / "dataset.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return PreparedData(root, schema, preprocessor, info)
