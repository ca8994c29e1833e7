"""``prepare``: load a dataset, fit the preprocessor on train only, encode every split, write a data directory.

With ``shard_rows`` the splits are written as Parquet shards; a loader that yields its rows chunk by chunk
(``synthetic``) is then streamed end to end, so data far larger than memory can be prepared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mtlrec import __version__
from mtlrec.data.dataset import (
    SPLITS,
    ShardWriter,
    clear_split,
    encoded_to_table,
    write_dataset_info,
    write_prepared,
)
from mtlrec.data.loaders.base import get_dataset
from mtlrec.data.loaders.synthetic import DEFAULT_CHUNK_ROWS
from mtlrec.data.preprocess import EncodedFrame, Preprocessor
from mtlrec.data.streaming import ChunkedLoader, StreamingFit
from mtlrec.errors import DataError
from mtlrec.schema import FeatureSchema


@dataclass
class PrepareResult:
    """What ``prepare`` wrote, with the summary it printed."""

    out: Path
    schema: FeatureSchema
    summary: dict[str, Any]


class SummaryCounter:
    """Rows and label sums per split, task and scenario, added chunk by chunk; :meth:`summary` gives the rates."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.scenario_names = list(schema.scenario.values or ()) if schema.scenario else []
        # split -> key -> [label sum, rows]; keys: ("rows",), ("task", t), ("scenario", s), ("scenario", s, t)
        self.sums: dict[str, dict[tuple[str, ...], list[float]]] = {}

    def add(self, split: str, enc: EncodedFrame) -> None:
        """Count the rows of one encoded chunk of ``split``."""
        sums = self.sums.setdefault(split, {})

        def bump(key: tuple[str, ...], total: float, rows: int) -> None:
            entry = sums.setdefault(key, [0.0, 0])
            entry[0] += total
            entry[1] += rows

        bump(("rows",), 0.0, enc.num_rows)
        groups: dict[str, np.ndarray] = {}
        if enc.scenario is not None:
            groups = {name: enc.scenario == i for i, name in enumerate(self.scenario_names)}
        for name, mask in groups.items():
            bump(("scenario", name), 0.0, int(mask.sum()))
        for task in self.schema.tasks:
            label = enc.labels.get(task.name)
            if label is None:
                continue
            base = enc.labels[task.conditioned_on] > 0.5 if task.conditioned_on else np.ones(len(label), bool)
            bump(("task", task.name), float(label[base].astype(np.float64).sum()), int(base.sum()))
            for name, mask in groups.items():
                rows = mask & base
                bump(("scenario", name, task.name), float(label[rows].astype(np.float64).sum()), int(rows.sum()))

    def summary(self) -> dict[str, Any]:
        """Rows and positive rate (mean for regression) per split, task and scenario."""

        def rate(entry: list[float] | None) -> float:
            return entry[0] / entry[1] if entry and entry[1] else float("nan")

        out: dict[str, Any] = {}
        for split, sums in self.sums.items():
            entry: dict[str, Any] = {"rows": int(sums[("rows",)][1]), "tasks": {}, "scenarios": {}}
            for task in self.schema.tasks:
                if ("task", task.name) not in sums:
                    continue
                entry["tasks"][task.name] = rate(sums[("task", task.name)])
                for name in self.scenario_names:
                    scen = entry["scenarios"].setdefault(name, {"rows": int(sums[("scenario", name)][1])})
                    scen[task.name] = rate(sums.get(("scenario", name, task.name)))
            out[split] = entry
        return out


def summarize(schema: FeatureSchema, splits: dict[str, EncodedFrame]) -> dict[str, Any]:
    """Rows and positive rate (mean for regression) per split, task and scenario.

    A conditioned task's rate is computed on the rows where its parent is positive (cvr among clicks).
    """
    counter = SummaryCounter(schema)
    for split, enc in splits.items():
        counter.add(split, enc)
    return counter.summary()


def prepare(
    dataset: str,
    source: Path | None,
    out: Path,
    *,
    seed: int = 0,
    rows: int | None = None,
    shard_rows: int | None = None,
    chunk_rows: int | None = None,
) -> PrepareResult:
    """Prepare ``dataset`` from ``source`` into ``out``; see :mod:`mtlrec.data.dataset` for the layout.

    Args:
        dataset: a registered dataset name.
        source: its upstream files (None for generated datasets).
        out: the data directory to write.
        seed: seeds splitting and generation.
        rows: a cap on the rows read (or generated).
        shard_rows: write each split as Parquet shards of at most this many rows. A loader that can produce its
            rows chunk by chunk (:class:`~mtlrec.data.streaming.ChunkedLoader`, e.g. ``synthetic``) is then
            streamed: fitted on a first pass, encoded and written on a second, never holding every row.
        chunk_rows: rows per chunk of such a streamed prepare (default: ``min(shard_rows, 262144)``).
    """
    if shard_rows is not None and shard_rows < 1:
        raise DataError(f"--shard-rows must be positive, not {shard_rows}")
    loader = get_dataset(dataset)
    if shard_rows is not None and isinstance(loader, ChunkedLoader):
        return _prepare_chunked(dataset, loader, source, out, seed, rows, shard_rows, chunk_rows)
    raw = loader.load(source, seed=seed, rows=rows)
    for name in SPLITS:
        frame = raw.splits.get(name)
        if frame is None or len(frame) == 0:
            raise DataError(
                f"dataset `{dataset}`: the {name} split is empty",
                hint="check the source files (and --rows, if given: it may be too small to split)",
            )
    preprocessor = Preprocessor.fit(raw.splits["train"], raw.schema)
    encoded = {name: preprocessor.transform(raw.splits[name], with_labels=True) for name in SPLITS}
    summary = summarize(preprocessor.schema, encoded)
    info = {
        "dataset": dataset,
        "source": str(source.resolve()) if source is not None else None,
        "seed": seed,
        "rows_cap": rows,
        "mtlrec_version": __version__,
        "notes": raw.notes,
        "summary": summary,
    }
    write_prepared(out, preprocessor, encoded, info, shard_rows=shard_rows)
    return PrepareResult(out, preprocessor.schema, summary)


def _prepare_chunked(
    dataset: str,
    loader: ChunkedLoader,
    source: Path | None,
    out: Path,
    seed: int,
    rows: int | None,
    shard_rows: int,
    chunk_rows: int | None,
) -> PrepareResult:
    """Two passes over the loader's chunks: fit the preprocessor on train, then encode and write every shard."""
    chunk = chunk_rows or min(shard_rows, DEFAULT_CHUNK_ROWS)
    fit = StreamingFit(loader.chunked_schema(source), seed=seed)
    for parts in loader.iter_split_chunks(source, seed=seed, rows=rows, chunk_rows=chunk):
        if len(parts["train"]):
            fit.update(parts["train"])
    preprocessor = fit.result()
    schema = preprocessor.schema
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        clear_split(out, name)
    writers = {name: ShardWriter(out / name, shard_rows) for name in SPLITS}
    counter = SummaryCounter(schema)
    empty: pa.Table | None = None
    for parts in loader.iter_split_chunks(source, seed=seed, rows=rows, chunk_rows=chunk):
        for name in SPLITS:
            frame = parts[name]
            encoded = preprocessor.transform(frame, with_labels=True)
            table = encoded_to_table(schema, encoded)
            empty = table.slice(0, 0)
            if len(frame):
                counter.add(name, encoded)
                writers[name].write(table)
    shards = {name: [str(p.relative_to(out)) for p in w.close(empty=empty)] for name, w in writers.items()}
    counts = {name: writers[name].rows for name in SPLITS}
    for name, count in counts.items():
        if count == 0:
            raise DataError(f"dataset `{dataset}`: the {name} split is empty", hint="pass more --rows")
    schema.save(out / "schema.json")
    preprocessor.save(out / "preprocessor.json")
    summary = counter.summary()
    notes_fn = getattr(loader, "chunked_notes", None)
    info = {
        "dataset": dataset,
        "source": str(source.resolve()) if source is not None else None,
        "seed": seed,
        "rows_cap": rows,
        "mtlrec_version": __version__,
        "notes": notes_fn(source, seed=seed, rows=rows) if callable(notes_fn) else {},
        "streamed": True,
        "summary": summary,
    }
    write_dataset_info(out, schema, counts, info, shards, shard_rows)
    return PrepareResult(out, schema, summary)
