"""``prepare``: load a dataset, fit the preprocessor on train only, encode every split, write a data directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec import __version__
from mtlrec.data.dataset import SPLITS, write_prepared
from mtlrec.data.loaders.base import get_dataset
from mtlrec.data.preprocess import EncodedFrame, Preprocessor
from mtlrec.errors import DataError
from mtlrec.schema import FeatureSchema


@dataclass
class PrepareResult:
    """What ``prepare`` wrote, with the summary it printed."""

    out: Path
    schema: FeatureSchema
    summary: dict[str, Any]


def summarize(schema: FeatureSchema, splits: dict[str, EncodedFrame]) -> dict[str, Any]:
    """Rows and positive rate (mean for regression) per split, task and scenario.

    A conditioned task's rate is computed on the rows where its parent is positive (cvr among clicks).
    """
    scenario_names = list(schema.scenario.values or ()) if schema.scenario else []
    summary: dict[str, Any] = {}
    for split, enc in splits.items():
        entry: dict[str, Any] = {"rows": enc.num_rows, "tasks": {}, "scenarios": {}}
        groups: dict[str, np.ndarray] = {}
        if enc.scenario is not None:
            groups = {name: enc.scenario == i for i, name in enumerate(scenario_names)}
        for task in schema.tasks:
            label = enc.labels.get(task.name)
            if label is None:
                continue
            base = enc.labels[task.conditioned_on] > 0.5 if task.conditioned_on else np.ones(len(label), bool)
            entry["tasks"][task.name] = float(label[base].mean()) if base.any() else float("nan")
            for name, mask in groups.items():
                rows = mask & base
                scen = entry["scenarios"].setdefault(name, {"rows": int(mask.sum())})
                scen[task.name] = float(label[rows].mean()) if rows.any() else float("nan")
        summary[split] = entry
    return summary


def prepare(dataset: str, source: Path | None, out: Path, *, seed: int = 0, rows: int | None = None) -> PrepareResult:
    """Prepare ``dataset`` from ``source`` into ``out``; see :mod:`mtlrec.data.dataset` for the layout."""
    loader = get_dataset(dataset)
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
    write_prepared(out, preprocessor, encoded, info)
    return PrepareResult(out, preprocessor.schema, summary)
