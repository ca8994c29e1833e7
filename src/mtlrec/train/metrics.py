"""Per-output and per-scenario AUC and logloss (binary) or RMSE (regression), from collected predictions.

Metrics are computed from the same predictions ``forward`` returns, on the rows each output is defined on
(``Target.mask``), so evaluation and prediction can never disagree.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def binary_metrics(label: np.ndarray, prob: np.ndarray) -> dict[str, float | int]:
    """AUC (NaN when only one class is present), logloss and row count."""
    rows = int(label.shape[0])
    if rows == 0:
        return {"auc": math.nan, "logloss": math.nan, "rows": 0}
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    has_both = 0 < label.sum() < rows
    auc = float(roc_auc_score(label, p)) if has_both else math.nan
    return {"auc": auc, "logloss": float(log_loss(label, p, labels=[0, 1])), "rows": rows}


def regression_metrics(label: np.ndarray, value: np.ndarray) -> dict[str, float | int]:
    """RMSE, MAE and row count."""
    rows = int(label.shape[0])
    if rows == 0:
        return {"rmse": math.nan, "mae": math.nan, "rows": 0}
    err = value.astype(np.float64) - label
    return {"rmse": float(np.sqrt((err**2).mean())), "mae": float(np.abs(err).mean()), "rows": rows}


def compute_metrics(
    predictions: dict[str, np.ndarray],
    targets: dict[str, tuple[np.ndarray, np.ndarray, str]],
    scenario: np.ndarray | None,
    scenario_names: list[str],
) -> dict[str, Any]:
    """Metrics per output, and per scenario and output.

    Args:
        predictions: output name -> [N] predictions.
        targets: output name -> (label [N], mask [N] bool, kind).
        scenario: [N] scenario ids, or None.
        scenario_names: the name of each scenario id.

    Returns:
        ``{"tasks": {out: {...}}, "scenarios": {name: {out: {...}}}}``.
    """

    def score(name: str, rows: np.ndarray) -> dict[str, float | int]:
        label, mask, kind = targets[name]
        keep = mask & rows
        fn = binary_metrics if kind == "binary" else regression_metrics
        return fn(label[keep], predictions[name][keep])

    everything = np.ones(len(next(iter(predictions.values()))), dtype=bool)
    result: dict[str, Any] = {"tasks": {name: score(name, everything) for name in targets}, "scenarios": {}}
    if scenario is not None:
        for i, scen in enumerate(scenario_names):
            rows = scenario == i
            result["scenarios"][scen] = {name: score(name, rows) for name in targets}
    return result


def monitor_value(metrics: dict[str, Any], metric: str, task: str | None) -> float:
    """The value early stopping watches: one task's metric, or the mean over the outputs that have it."""
    tasks: dict[str, dict[str, float]] = metrics["tasks"]
    if task is not None:
        return float(tasks[task][metric])
    values = [m[metric] for m in tasks.values() if metric in m and not math.isnan(m[metric])]
    return float(np.mean(values)) if values else math.nan
