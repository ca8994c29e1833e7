"""The training loop: ``train(data, config, out) -> TrainResult``.

The loop knows nothing about the model it trains: the model returns its outputs and named loss terms
(:meth:`MultiTaskModel.compute_loss`), the trainer weighs each term with ``loss_weights`` (default 1) and sums
them. Model selection uses the validation split only; the test split is for ``evaluate``.

Determinism: the weights are initialised after ``torch.manual_seed(seed)``, the epoch permutations come from a
generator seeded with ``seed``, so a seed (and a fixed ``num_threads``) gives the same run twice.

Beyond one machine (same model contract, same checkpoint): a split larger than the memory budget is streamed from
its Parquet shards (:mod:`mtlrec.data.streaming`), and a run launched by ``torchrun`` (or ``mtlrec train --nproc``)
trains with DistributedDataParallel, rank 0 writing the run (:mod:`mtlrec.train.distributed`).

Example::

    from mtlrec.train.config import build_run_config
    result = train(Path("data/synthetic"), build_run_config("mmoe"), Path("runs/mmoe"))
    print(result.best_epoch, result.val_metrics["tasks"]["ctr"]["auc"])
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model
from torch import Tensor

from mtlrec.data.dataset import Batch, EncodedData, PreparedData, ShardSlice, open_prepared, owned_slices
from mtlrec.data.streaming import DEFAULT_BUFFER_ROWS, StreamingData, open_split, use_streaming
from mtlrec.errors import CheckpointError, ConfigError, DataError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.registry import build_model
from mtlrec.train import distributed
from mtlrec.train.checkpoint import load_run, save_run
from mtlrec.train.config import RunConfig
from mtlrec.train.distributed import DistContext
from mtlrec.train.metrics import compute_metrics, monitor_value

Split = EncodedData | StreamingData


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


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device`` (the same tensors on the CPU)."""
    if device.type == "cpu":
        return batch
    return Batch(
        {k: v.to(device, non_blocking=True) for k, v in batch.features.items()},
        {k: v.to(device, non_blocking=True) for k, v in batch.labels.items()},
    )


# One split's evaluation inputs: predictions per output, labels per task, scenario ids (or None), all [N] arrays.
_Collected = tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]


def _collect(model: MultiTaskModel, data: Split, batch_size: int) -> _Collected:
    """Predictions, labels and scenario ids of every row of ``data``, batch by batch (streamed splits too)."""
    model.eval()
    device = next(model.parameters()).device
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in model.output_names}
    labels: dict[str, list[np.ndarray]] = {}
    scenario: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in data.batches(batch_size):
            answer = model(_to_device(batch, device).features)
            for name in outputs:
                outputs[name].append(answer[name].float().cpu().numpy())
            for name, label in batch.labels.items():
                labels.setdefault(name, []).append(label.numpy())
            if "scenario" in batch.features:
                scenario.append(batch.features["scenario"].numpy())

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return (
        {k: cat(v, np.float32) for k, v in outputs.items()},
        {k: cat(v, np.float32) for k, v in labels.items()},
        cat(scenario, np.int64) if scenario else None,
    )


def evaluate_model(
    model: MultiTaskModel,
    data: Split,
    scenario_names: list[str],
    batch_size: int = 8192,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """Metrics per output and per scenario of ``model`` on ``data`` (which must carry labels).

    In a distributed run (``ctx`` of several ranks) each rank predicts its own rows; the predictions and labels
    are gathered on rank 0, which computes the metrics over all rows and returns them; other ranks return {}.
    """
    predictions, labels, scenario = _collect(model, data, batch_size)
    if ctx is not None and ctx.enabled:
        parts = distributed.gather_to_main((predictions, labels, scenario), ctx)
        if parts is None:
            return {}
        predictions = {k: np.concatenate([p[0][k] for p in parts]) for k in predictions}
        labels = {k: np.concatenate([p[1][k] for p in parts]) for k in labels}
        scenario = np.concatenate([p[2] for p in parts if p[2] is not None]) if scenario is not None else None
    if not labels:
        raise DataError("this split has no labels to evaluate against")
    targets: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for name, target in model.targets({k: torch.from_numpy(v) for k, v in labels.items()}).items():
        mask = target.mask if target.mask is not None else torch.ones_like(target.label, dtype=torch.bool)
        targets[name] = (target.label.numpy(), mask.numpy(), target.kind)
    return compute_metrics(predictions, targets, scenario, scenario_names)


def _check_config(model: MultiTaskModel, config: RunConfig, val: Split) -> None:
    """Refuse loss weights and an early-stopping task that this model does not have, before training starts."""
    probe = _to_device(next(iter(val.batches(2))), next(model.parameters()).device)
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


def load_init_weights(model: MultiTaskModel, path: Path, schema_hash: str) -> None:
    """Load a safetensors file into ``model`` (every weight, exact shapes), refusing another schema's weights."""
    if not path.is_file():
        raise CheckpointError(f"initial weights not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        stored_hash = (handle.metadata() or {}).get("schema_hash")
    if stored_hash is not None and stored_hash != schema_hash:
        raise CheckpointError(
            f"{path} holds weights for schema {stored_hash}, not {schema_hash}",
            hint="use weights written for this data directory",
        )
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the model ({str(err).splitlines()[0]})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the weights do not fit the model (missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})",
            hint="the weights were written for another architecture",
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
    init_weights: Path | None = None,
    streaming: bool | None = None,
    shuffle: bool = True,
    memory_budget: int | None = None,
    buffer_rows: int = DEFAULT_BUFFER_ROWS,
    dist_backend: str | None = None,
) -> TrainResult:
    """Train ``config.model_name`` on a prepared data directory; write the run to ``out`` when given.

    Args:
        data: a prepared data directory (or its path) with train and val splits.
        config: model and training config.
        out: the run directory to write (atomically); None keeps the result in memory only.
        progress: optional callbacks for progress display.
        init_weights: a safetensors file of this exact model's weights to start from (e.g. the weights a
            search inherited from its supernet); None = the seeded random initialisation.
        streaming: True reads the splits shard by shard (bounded memory), False loads them, None (default)
            streams a split whose in-memory size would exceed ``memory_budget``.
        shuffle: draw a new row order every epoch (False: file order, e.g. to compare streamed and in-memory runs).
        memory_budget: bytes a rank's share of a split may take in memory (default: a quarter of the RAM, or
            ``MTLREC_MEMORY_BUDGET_MB``).
        buffer_rows: rows mixed at once by the streamed shuffle.
        dist_backend: ``gloo`` or ``nccl`` when launched by torchrun (default: NCCL with CUDA, else gloo).

    Returns:
        The model with the best validation weights restored, its metrics and the per-epoch history. In a
        distributed run every rank returns it; only rank 0 writes ``out``.
    """
    prepared = open_prepared(data) if isinstance(data, Path) else data
    ctx = distributed.setup(dist_backend)
    try:
        result = _train(
            prepared, config, out, ctx, progress, init_weights, streaming, shuffle, memory_budget, buffer_rows
        )
    except BaseException:
        if ctx.owns_group:  # no barrier: the other ranks may never reach it
            torch.distributed.destroy_process_group()
        raise
    distributed.teardown(ctx)
    return result


def _train(
    prepared: PreparedData,
    config: RunConfig,
    out: Path | None,
    ctx: DistContext,
    progress: Progress | None,
    init_weights: Path | None,
    streaming: bool | None,
    shuffle: bool,
    memory_budget: int | None,
    buffer_rows: int,
) -> TrainResult:
    """The loop of :func:`train`, on one rank of ``ctx``."""
    cfg = config.train
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    elif ctx.enabled:
        torch.set_num_threads(distributed.default_threads(ctx))
    torch.manual_seed(cfg.seed)
    # Rank 0 draws the row order a single-process run draws; rank r > 0 its own stream of (seed, r).
    row_seed = cfg.seed if ctx.rank == 0 else int(np.random.SeedSequence((cfg.seed, ctx.rank)).generate_state(1)[0])
    generator = torch.Generator().manual_seed(row_seed)
    per_rank_batch = cfg.batch_size // ctx.world
    if per_rank_batch < 1:
        raise ConfigError(
            f"train.batch_size {cfg.batch_size} is smaller than the {ctx.world} ranks",
            hint="batch_size is the global batch, split among the ranks: raise it",
        )
    stream = streaming if streaming is not None else use_streaming(prepared, "train", ctx.world, memory_budget)
    # Every rank must run the same number of steps: each keeps as many rows as the rank that owns the fewest.
    own_rows = sum(s.rows for s in _owned(prepared, "train", ctx))
    limit = distributed.all_min(own_rows, ctx) if ctx.enabled else None
    train_split: Split = open_split(
        prepared, "train", rank=ctx.rank, world=ctx.world, streaming=stream, buffer_rows=buffer_rows, limit=limit
    )
    val_split: Split = open_split(
        prepared, "val", rank=ctx.rank, world=ctx.world, streaming=stream, buffer_rows=buffer_rows
    )
    if len(train_split) == 0 or len(val_split) == 0:
        raise DataError("the train or val split is empty", hint="prepare the data again with more rows")
    schema = prepared.schema
    scenario_names = list(schema.scenario.values or ()) if schema.scenario else []
    model = build_model(config.model_name, config.model, schema)
    if init_weights is not None:
        load_init_weights(model, init_weights, schema.hash())
    model.to(ctx.device)
    _check_config(model, config, val_split)
    if ctx.rank > 0:  # dropout and other training randomness differ across ranks, reproducibly
        torch.manual_seed(row_seed)
    step = distributed.wrap(model, ctx)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    groups = [{"params": params, "lr": cfg.lr * scale} for params, scale in model.parameter_groups()]
    optimizer = optimizer_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = cfg.loss_weights
    stopping = cfg.early_stopping
    metric = stopping.metric if stopping else "auc"
    best_value, best_epoch, best_state, bad_epochs = math.nan, 0, None, 0
    best_metrics: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    n_batches = math.ceil(len(train_split) / per_rank_batch)

    for epoch in range(1, cfg.epochs + 1):
        step.train()
        if progress:
            progress.epoch_start(epoch, n_batches)
        loss_sums: dict[str, Tensor] = {}
        start = time.perf_counter()
        rows = 0
        for batch in train_split.batches(per_rank_batch, shuffle=shuffle, generator=generator):
            if batch.size < 2:  # a 1-row batch breaks batch norm and says nothing
                continue
            on_device = _to_device(batch, ctx.device)
            losses = step(on_device.features, on_device.labels)
            total = torch.stack([weights.get(k, 1.0) * v for k, v in losses.items()]).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]
            if cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            for k, v in losses.items():
                loss_sums[k] = loss_sums.get(k, torch.zeros((), device=ctx.device)) + v.detach() * batch.size
            rows += batch.size
            if progress:
                progress.advance(1, batch.size)
        train_seconds = time.perf_counter() - start
        # Losses and rows summed over the ranks (a rank's own numbers when alone).
        *summed, total_rows = distributed.all_reduce_sum([float(v) for v in loss_sums.values()] + [rows], ctx)
        loss_sums = {k: torch.tensor(v) for k, v in zip(loss_sums, summed, strict=True)}
        rows = int(total_rows)
        # Rank 0 computes the metrics on the gathered predictions and decides; every rank follows its decision.
        decision: tuple[dict[str, Any], float, bool] | None = None
        val_metrics = evaluate_model(model, val_split, scenario_names, cfg.eval_batch_size, ctx)
        if ctx.is_main:
            value = monitor_value(val_metrics, metric, stopping.task if stopping else None)
            improved = stopping is None or _improved(value, best_value, metric, stopping.min_delta)
            decision = (val_metrics, value, improved)
        decision = distributed.broadcast_from_main(decision, ctx)
        assert decision is not None
        val_metrics, value, improved = decision
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
        if improved:
            best_value, best_epoch, best_metrics, bad_epochs = value, epoch, val_metrics, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            # Patience runs out only after `start_from_epoch`: the first epochs of a small dataset are warm-up.
            if stopping is not None and bad_epochs >= stopping.patience and epoch > stopping.start_from_epoch:
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu")
    model.eval()
    result = TrainResult(model, config, best_epoch, best_metrics, history)
    engine = {
        "world_size": ctx.world,
        "backend": ctx.backend or None,
        "batch_size_per_rank": per_rank_batch,
        "streaming": stream,
        "shuffle": shuffle,
    }
    if out is not None and not ctx.is_main:
        result.run_dir = out.resolve()
    elif out is not None:
        info = {
            "data_dir": str(prepared.root.resolve()),
            "dataset": prepared.info.get("dataset"),
            "best_epoch": best_epoch,
            "monitor": {"metric": metric, "task": stopping.task if stopping else None, "value": best_value},
            "samples_per_s": result.samples_per_s,
            "init_weights": str(init_weights.resolve()) if init_weights is not None else None,
            "engine": engine,
            "history": history,
        }
        result.run_dir = save_run(out, model, config, prepared.preprocessor, {"val": best_metrics}, info)
    return result


def _owned(prepared: PreparedData, name: str, ctx: DistContext) -> list[ShardSlice]:
    """This rank's slices of a split's shards."""
    return owned_slices(prepared.shards(name), ctx.rank, ctx.world)


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
    # A split over the memory budget is streamed: only the predictions and labels are held.
    metrics = evaluate_model(run.model, open_split(prepared, split), scenario_names, run.config.train.eval_batch_size)
    return {"split": split, **metrics}


def build_model_for(data: PreparedData, config: RunConfig) -> MultiTaskModel:
    """The untrained model a config describes, for a prepared dataset (benchmarks use this)."""
    torch.manual_seed(config.train.seed)
    return build_model(config.model_name, config.model, data.schema)


class EpochLog:
    """A plain progress reporter: one line per epoch on stderr (what rank 0 of a launched run prints)."""

    def epoch_start(self, epoch: int, batches: int) -> None:
        """Nothing to draw."""

    def advance(self, batches: int, rows: int) -> None:
        """Nothing to draw."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """Print the epoch's throughput, losses and validation metrics."""
        losses = " ".join(f"{k}={v:.4f}" for k, v in record["train_loss"].items())
        val = " ".join(f"{k}={m.get('auc', m.get('rmse', math.nan)):.4f}" for k, m in record["val"].items())
        sys.stderr.write(
            f"epoch {record['epoch']:>3}  {record['samples_per_s']:>9,.0f} rows/s  loss {losses}  val {val}\n"
        )
        sys.stderr.flush()


def _launched_rank(data: Path, config: RunConfig, out: Path, options: dict[str, Any], log: bool) -> dict[str, Any]:
    """One rank of :func:`train_distributed` (a spawned process): train, return a summary (picklable)."""
    rank = int(os.environ.get("RANK", "0"))
    progress = EpochLog() if log and rank == 0 else None
    result = train(data, config, out, progress=progress, **options)
    return {"best_epoch": result.best_epoch, "val_metrics": result.val_metrics, "history": result.history}


def train_distributed(
    data: Path,
    config: RunConfig,
    out: Path,
    nproc: int,
    *,
    log: bool = False,
    **options: Any,
) -> TrainResult:
    """:func:`train` in ``nproc`` local processes (DDP, gloo on CPU), launched by torch's elastic launcher.

    Args:
        data: the prepared data directory.
        config: model and training config.
        out: the run directory rank 0 writes (required: it is how the model comes back).
        nproc: number of processes.
        log: rank 0 prints one line per epoch on stderr.
        options: keyword arguments of :func:`train` (``streaming``, ``init_weights``, ``dist_backend``, ...).

    Returns:
        The run written to ``out``, loaded back, with rank 0's history.
    """
    summary = distributed.launch(nproc, _launched_rank, data.resolve(), config, out.resolve(), options, log)
    run = load_run(out)
    return TrainResult(
        run.model, config, summary["best_epoch"], summary["val_metrics"], summary["history"], run_dir=run.root
    )
