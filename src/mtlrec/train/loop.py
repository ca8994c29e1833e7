"""The training loop: ``train(data, config, out) -> TrainResult``.

The loop knows nothing about the model it trains: the model returns its outputs and named loss terms
(:meth:`MultiTaskModel.compute_loss`), the trainer weighs each term with ``loss_weights`` (default 1) and sums
them. Model selection uses the validation split only; the test split is for ``evaluate``.

Determinism: the weights are initialised after ``torch.manual_seed(seed)``, the epoch permutations come from a
generator seeded with ``seed``, so a seed (and a fixed ``num_threads``) gives the same run twice.

Example::

    from mtlrec.train.config import build_run_config
    result = train(Path("data/synthetic"), build_run_config("mmoe"), Path("runs/mmoe"))
    print(result.best_epoch, result.val_metrics["tasks"]["ctr"]["auc"])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from mtlrec.data.dataset import EncodedData, PreparedData, open_prepared
from mtlrec.errors import ConfigError, DataError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.registry import build_model
from mtlrec.train.checkpoint import load_run, save_run
from mtlrec.train.config import RunConfig
from mtlrec.train.metrics import compute_metrics, monitor_value


class Progress(Protocol):
    """Callbacks the loop reports to (the CLI draws a rich progress bar with them)."""

    def epoch_start(self, epoch: int, batches: int) -> None:
        """An epoch of ``batches`` batches begins."""

    def advance(self, batches: int, rows: int) -> None:
        """``batches`` more batches (``rows`` rows) are done."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """An epoch ended; ``record`` is its history entry."""


@dataclass
class TrainResult:
    """What ``train`` produced."""

    model: MultiTaskModel
    config: RunConfig
    best_epoch: int
    val_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def samples_per_s(self) -> float:
        """Training throughput over all epochs (forward, backward, optimiser; evaluation excluded)."""
        rows = sum(h["rows"] for h in self.history)
        seconds = sum(h["train_seconds"] for h in self.history)
        return rows / seconds if seconds > 0 else math.nan


def predict(model: MultiTaskModel, data: EncodedData, batch_size: int = 8192) -> dict[str, np.ndarray]:
    """Outputs of ``model`` (eval mode) for every row of ``data``, as [N] arrays per output name."""
    model.eval()
    chunks: dict[str, list[Tensor]] = {name: [] for name in model.output_names}
    with torch.inference_mode():
        for batch in data.batches(batch_size):
            outputs = model(batch.features)
            for name in chunks:
                chunks[name].append(outputs[name])
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def evaluate_model(
    model: MultiTaskModel, data: EncodedData, scenario_names: list[str], batch_size: int = 8192
) -> dict[str, Any]:
    """Metrics per output and per scenario of ``model`` on ``data`` (which must carry labels)."""
    if not data.labels:
        raise DataError("this split has no labels to evaluate against")
    predictions = predict(model, data, batch_size)
    targets: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for name, target in model.targets(data.labels).items():
        mask = target.mask if target.mask is not None else torch.ones_like(target.label, dtype=torch.bool)
        targets[name] = (target.label.numpy(), mask.numpy(), target.kind)
    scenario = data.features.get("scenario")
    return compute_metrics(predictions, targets, scenario.numpy() if scenario is not None else None, scenario_names)


def _check_config(model: MultiTaskModel, config: RunConfig, val: EncodedData) -> None:
    """Refuse loss weights and an early-stopping task that this model does not have, before training starts."""
    probe = next(val.batches(2))
    model.eval()  # no batch-norm statistics or dropout randomness spent on the probe
    with torch.no_grad():
        _, losses = model.compute_loss(probe.features, probe.labels)
    unknown = sorted(set(config.train.loss_weights) - set(losses))
    if unknown:
        raise ConfigError(
            f"train.loss_weights names terms that `{config.model_name}` has no loss for: {', '.join(unknown)}",
            hint=f"its loss terms are: {', '.join(losses)}",
        )
    stopping = config.train.early_stopping
    if stopping is not None and stopping.task is not None:
        outputs = list(model.targets(probe.labels))
        if stopping.task not in outputs:
            raise ConfigError(
                f"train.early_stopping.task `{stopping.task}` is not an evaluated output of `{config.model_name}`",
                hint=f"use one of: {', '.join(outputs)}",
            )


def _improved(value: float, best: float, metric: str, min_delta: float) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best + min_delta if metric == "auc" else value < best - min_delta


def train(
    data: PreparedData | Path,
    config: RunConfig,
    out: Path | None = None,
    *,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``config.model_name`` on a prepared data directory; write the run to ``out`` when given.

    Args:
        data: a prepared data directory (or its path) with train and val splits.
        config: model and training config.
        out: the run directory to write (atomically); None keeps the result in memory only.
        progress: optional callbacks for progress display.

    Returns:
        The model with the best validation weights restored, its metrics and the per-epoch history.
    """
    prepared = open_prepared(data) if isinstance(data, Path) else data
    cfg = config.train
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_split, val_split = prepared.split("train"), prepared.split("val")
    if len(train_split) == 0 or len(val_split) == 0:
        raise DataError("the train or val split is empty", hint="prepare the data again with more rows")
    schema = prepared.schema
    scenario_names = list(schema.scenario.values or ()) if schema.scenario else []
    model = build_model(config.model_name, config.model, schema)
    _check_config(model, config, val_split)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    groups = [{"params": params, "lr": cfg.lr * scale} for params, scale in model.parameter_groups()]
    optimizer = optimizer_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = cfg.loss_weights
    stopping = cfg.early_stopping
    metric = stopping.metric if stopping else "auc"
    best_value, best_epoch, best_state, bad_epochs = math.nan, 0, None, 0
    best_metrics: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    n_batches = math.ceil(len(train_split) / cfg.batch_size)

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if progress:
            progress.epoch_start(epoch, n_batches)
        loss_sums: dict[str, Tensor] = {}
        start = time.perf_counter()
        rows = 0
        for batch in train_split.batches(cfg.batch_size, shuffle=True, generator=generator):
            if batch.size < 2:  # a 1-row batch breaks batch norm and says nothing
                continue
            _, losses = model.compute_loss(batch.features, batch.labels)
            total = torch.stack([weights.get(k, 1.0) * v for k, v in losses.items()]).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]
            if cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            for k, v in losses.items():
                loss_sums[k] = loss_sums.get(k, torch.zeros(())) + v.detach() * batch.size
            rows += batch.size
            if progress:
                progress.advance(1, batch.size)
        train_seconds = time.perf_counter() - start
        val_metrics = evaluate_model(model, val_split, scenario_names, cfg.eval_batch_size)
        value = monitor_value(val_metrics, metric, stopping.task if stopping else None)
        record: dict[str, Any] = {
            "epoch": epoch,
            "rows": rows,
            "train_seconds": train_seconds,
            "samples_per_s": rows / train_seconds if train_seconds > 0 else math.nan,
            "train_loss": {k: float(v) / max(rows, 1) for k, v in loss_sums.items()},
            "val": val_metrics["tasks"],
            f"val_{metric}": value,
        }
        if any(not math.isfinite(v) for v in record["train_loss"].values()):
            raise DataError(
                f"the training loss became non-finite at epoch {epoch}",
                hint="lower train.lr, or set train.grad_clip_norm",
            )
        history.append(record)
        if progress:
            progress.epoch_end(record)
        if stopping is None or _improved(value, best_value, metric, stopping.min_delta):
            best_value, best_epoch, best_metrics, bad_epochs = value, epoch, val_metrics, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            # Patience runs out only after `start_from_epoch`: the first epochs of a small dataset are warm-up.
            if stopping is not None and bad_epochs >= stopping.patience and epoch > stopping.start_from_epoch:
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result = TrainResult(model, config, best_epoch, best_metrics, history)
    if out is not None:
        info = {
            "data_dir": str(prepared.root.resolve()),
            "dataset": prepared.info.get("dataset"),
            "best_epoch": best_epoch,
            "monitor": {"metric": metric, "task": stopping.task if stopping else None, "value": best_value},
            "samples_per_s": result.samples_per_s,
            "history": history,
        }
        result.run_dir = save_run(out, model, config, prepared.preprocessor, {"val": best_metrics}, info)
    return result


def evaluate_run(run_dir: Path, split: str = "test", data_dir: Path | None = None) -> dict[str, Any]:
    """Metrics of a saved run on a split of its data directory (or ``data_dir``), checked by schema hash.

    Returns:
        ``{"split": ..., "tasks": {out: {"auc", "logloss", "rows"}}, "scenarios": {name: {out: {...}}}}``.
    """
    run = load_run(run_dir)
    root = data_dir or Path(run.info["data_dir"])
    prepared = open_prepared(root)
    if prepared.schema.hash() != run.schema.hash():
        raise DataError(
            f"the data in {root} was prepared with another schema than the run {run_dir} "
            f"({prepared.schema.hash()} != {run.schema.hash()})",
            hint="evaluate on the data directory the run was trained on (--data)",
        )
    schema = run.schema
    scenario_names = list(schema.scenario.values or ()) if schema.scenario else []
    metrics = evaluate_model(run.model, prepared.split(split), scenario_names, run.config.train.eval_batch_size)
    return {"split": split, **metrics}


def build_model_for(data: PreparedData, config: RunConfig) -> MultiTaskModel:
    """The untrained model a config describes, for a prepared dataset (benchmarks use this)."""
    torch.manual_seed(config.train.seed)
    return build_model(config.model_name, config.model, data.schema)
