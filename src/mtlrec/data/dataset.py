"""Encoded splits on disk (Parquet) and in memory (contiguous tensors), with batching by slicing.

A prepared data directory, written by :func:`write_prepared` (``mtlrec data prepare``), holds::

    schema.json          the fitted FeatureSchema
    preprocessor.json    the fitted Preprocessor (vocabularies, statistics)
    train.parquet, val.parquet, test.parquet   encoded splits (one column per field, ``label:<task>`` per task)
    dataset.json         name, source, seed, row counts and the summary printed at prepare time

:class:`EncodedData` keeps every column of a split as one contiguous tensor. An epoch draws one permutation,
gathers each tensor once in that order, and then yields batches as views (slices): no per-row Python and no
per-row collation.
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


# ---------------------------------------------------------------------------------------------------- parquet
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
    return pa.table(columns)


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


# ------------------------------------------------------------------------------------------------ prepared dir
@dataclass
class PreparedData:
    """A prepared data directory, opened."""

    root: Path
    schema: FeatureSchema
    preprocessor: Preprocessor
    info: dict[str, Any]

    def split(self, name: str) -> EncodedData:
        """Load one split (``train``, ``val`` or ``test``) as tensors."""
        path = self.root / f"{name}.parquet"
        if name not in SPLITS:
            raise DataError(f"unknown split `{name}`", hint=f"use one of {', '.join(SPLITS)}")
        if not path.is_file():
            raise DataError(f"split file not found: {path}", hint="run `mtlrec data prepare` for this directory")
        return EncodedData.from_encoded(self.schema, table_to_encoded(self.schema, pq.read_table(path)))


def write_prepared(
    out: Path, preprocessor: Preprocessor, splits: dict[str, EncodedFrame], info: dict[str, Any]
) -> None:
    """Write schema, preprocessor, the encoded splits and ``dataset.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    schema = preprocessor.schema
    schema.save(out / "schema.json")
    preprocessor.save(out / "preprocessor.json")
    for name, encoded in splits.items():
        pq.write_table(encoded_to_table(schema, encoded), out / f"{name}.parquet")
    payload = {**info, "schema_hash": schema.hash(), "rows": {k: v.num_rows for k, v in splits.items()}}
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
