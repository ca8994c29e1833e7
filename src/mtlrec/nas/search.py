"""PD-DARTS: the AutoMTL search loop (automtl.md §2), with the defects of the release fixed (§7).

Schedule, for W warm-up and S search epochs::

    epoch 1..W       weights only; masks all 1, blocks mix all candidates with softmax(α) (α ≈ uniform)
    epoch W+1..W+S   weights and architecture (α of every block, log α of every mask):
                       joint:   both stepped from the same training minibatch (the release's schedule)
                       bilevel: α, log α stepped on a validation minibatch first (first-order DARTS), then
                                the weights on the training minibatch
                     architecture loss = Σ_t BCE_t + feature_cost · E[number of open feature masks]
                                                   + expert_cost · E[number of open routing masks]
                     softmax temperature τ annealed from temperature_start to temperature_end
                     after the epoch: fix the most confident ⌈free / (epochs left)⌉ blocks and mask entries,
                     so the network is discrete after the last search epoch
    then             derive the architecture (repair empty choices, prune unread experts) and copy the chosen
                     parts' weights into the discrete ``automtl`` model

Training the derived architecture is ``mtlrec train --model automtl --arch FILE`` (from scratch by default, or
from these weights with ``--init-from-supernet``).

What differs from the release, and why (automtl.md §7):

* the masks act during the search (hard-concrete samples with an L0 cost) instead of staying 1 until export;
* the share of choices fixed per epoch adapts to the number of search epochs (the release fixes an absolute 10
  per epoch, so a larger space still has free blocks at export and a smaller one is discrete after one epoch);
* the temperature anneal and a higher architecture learning rate sharpen softmax(α) before a block is fixed, so
  fixing it to its argmax changes the network less (the release's fixes dropped validation AUC sharply);
* the bi-level mode is offered (the release is single-level only); its architecture steps leave batch-norm
  running statistics alone;
* gradient clipping is applied (configured but never applied in the release); there is no extra pass over the
  data; a fixed block computes its chosen candidate only (the release keeps stepping the others' stale state);
* empty routing rows are repaired and experts nothing reads are pruned at derivation (the release computes them).

Example::

    config = load_search_config(Path("configs/synthetic/automtl-search.yaml"))
    result = search(Path("data/synthetic"), config)
    write_search(result, Path("arch.json"))
    print(result.architecture.summary())
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from safetensors import safe_open
from safetensors.torch import save_model
from torch import Tensor

from mtlrec.config import StrictModel, read_yaml, validate
from mtlrec.data.dataset import Batch, EncodedData, PreparedData, open_prepared
from mtlrec.errors import CheckpointError, DataError
from mtlrec.models.automtl import AutoMTL
from mtlrec.nas.architecture import Architecture
from mtlrec.nas.supernet import SearchSpace, Supernet, frozen_batch_norm_statistics
from mtlrec.train.loop import Progress, evaluate_model
from mtlrec.train.metrics import monitor_value


class SearchSchedule(StrictModel):
    """The PD-DARTS schedule and optimisers.

    Defaults: the release's where it is sound (automtl.md §2.3: warm-up 2, search 3, batch 2048, weight Adam 1e-3
    with weight decay 1e-5, clip 5); ours where the release is defective: an architecture learning rate of 3e-2
    (at 1e-3 the release's α barely move in 3 epochs, so its argmax is close to a coin toss), a temperature
    annealed from 1 to 0.3, and L0 costs per open mask of 2e-4 (features) and 1e-3 (routing) (the release has no mask
    pressure at all; on Census-Income 2e-4 keeps the fields that matter, 1e-3 dropped too many, see
    configs/census-income/automtl-search.yaml).

    ``mode`` defaults to ``bilevel``, our choice: decided on held-out rows, a field or connection that only helps
    the network fit the training rows (a pure-noise field) does not lower the architecture loss, and the L0 cost
    closes it; decided on the training minibatch (``joint``, the release's schedule), such fields look useful. On
    12,000 generated rows with 6 planted noise fields (the setting of tests/unit/nas/test_search.py, seeds 0-2),
    the bi-level search dropped 83-89 % of the (expert, noise field) pairs against 42-54 % of the others; the
    joint one dropped 33-44 % of both, i.e. could not tell noise from signal. It costs a second
    forward/backward per step.
    """

    mode: Literal["joint", "bilevel"] = Field(
        default="bilevel",
        description="bilevel: α and mask log α stepped on validation minibatches (first-order DARTS), the weights "
        "on training minibatches; joint: both stepped on the same training minibatch (the AutoMTL release)",
    )
    warmup_epochs: int = Field(default=2, ge=0, description="epochs on the weights only (release: 2)")
    search_epochs: int = Field(default=3, ge=1, description="epochs updating the architecture too (release: 3)")
    batch_size: int = Field(default=2048, ge=2, description="release: 2048")
    eval_batch_size: int = Field(default=8192, ge=1)
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate of the weights (release: 1e-3)")
    weight_decay: float = Field(default=1e-5, ge=0, description="release: 1e-5")
    arch_lr: float = Field(default=3e-2, gt=0, description="Adam learning rate of α and the mask log α")
    arch_weight_decay: float = Field(default=0.0, ge=0, description="release: 1e-6")
    temperature_start: float = Field(default=1.0, gt=0, description="softmax temperature τ of the first search epoch")
    temperature_end: float = Field(default=0.3, gt=0, description="τ of the last search epoch (linear anneal)")
    feature_cost: float = Field(
        default=2e-4,
        ge=0,
        description="loss (nats) charged per open feature mask (expert, field, raw or FM), in expectation: a field "
        "an expert reads must lower the architecture loss by more than this",
    )
    expert_cost: float = Field(
        default=1e-3, ge=0, description="loss charged per open routing connection (consumer, expert), in expectation"
    )
    train_rows: int | None = Field(
        default=None, ge=2, description="search on a seeded sample of this many training rows; None = all"
    )
    grad_clip_norm: float | None = Field(default=5.0, gt=0, description="release: 5 (configured, never applied)")
    seed: int = Field(default=0, ge=0)
    num_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (fixed = reproducible)")


class SearchConfig(StrictModel):
    """A search config file: the ``space`` (:class:`SearchSpace`) and the ``search`` schedule."""

    space: SearchSpace = Field(default_factory=SearchSpace)
    search: SearchSchedule = Field(default_factory=SearchSchedule)

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if self.space.num_experts < 2 and self.space.search_routing:
            raise ValueError("routing search needs 2 or more experts per level (set space.search_routing: false)")
        return self


def load_search_config(path: Path | None, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Read a search config (or the defaults) and apply ``search`` overrides (None values ignored)."""
    values = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "search config"
    search_values = dict(values.get("search") or {})
    search_values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate(SearchConfig, {**values, "search": search_values}, where)


@dataclass
class SearchResult:
    """What :func:`search` produced."""

    architecture: Architecture
    model: AutoMTL  # the derived discrete model with the supernet's weights of the chosen parts
    supernet: Supernet
    config: SearchConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _val_batches(split: EncodedData, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffled validation batches, forever (a fresh permutation per pass)."""
    while True:
        for batch in split.batches(batch_size, shuffle=True, generator=generator):
            if batch.size >= 2:
                yield batch


def _temperature(schedule: SearchSchedule, search_epoch: int) -> float:
    """τ of search epoch ``search_epoch`` (1-based), linear from start to end."""
    if schedule.search_epochs == 1:
        return schedule.temperature_end
    share = (search_epoch - 1) / (schedule.search_epochs - 1)
    return schedule.temperature_start + share * (schedule.temperature_end - schedule.temperature_start)


def _arch_loss(net: Supernet, losses: dict[str, Tensor], schedule: SearchSchedule) -> tuple[Tensor, dict[str, float]]:
    penalties = net.mask_penalties()
    costs = {"features": schedule.feature_cost, "experts": schedule.expert_cost}
    total = torch.stack(list(losses.values())).sum()
    for name, value in penalties.items():
        total = total + costs[name] * value
    return total, {name: float(v.detach()) for name, v in penalties.items()}


def search(data: PreparedData | Path, config: SearchConfig, *, progress: Progress | None = None) -> SearchResult:
    """Run warm-up, search with progressive discretisation, and derivation on a prepared data directory.

    Args:
        data: a prepared data directory (or its path) with train and val splits.
        config: the search space and schedule.
        progress: optional callbacks (``epoch_start``, ``advance``, ``epoch_end`` with the epoch's log record).

    Returns:
        The architecture, the derived model with inherited weights, the supernet and the per-epoch log.
    """
    started = time.perf_counter()
    prepared = open_prepared(data) if isinstance(data, Path) else data
    s = config.search
    if s.num_threads is not None:
        torch.set_num_threads(s.num_threads)
    torch.manual_seed(s.seed)
    generator = torch.Generator().manual_seed(s.seed)
    train_split, val_split = prepared.split("train"), prepared.split("val")
    if len(train_split) < 2 or len(val_split) < 2:
        raise DataError("the train or val split is empty", hint="prepare the data again with more rows")
    if s.train_rows is not None and s.train_rows < len(train_split):
        train_split = train_split.subset(torch.randperm(len(train_split), generator=generator)[: s.train_rows])
    schema = prepared.schema
    scenario_names = list(schema.scenario.values or ()) if schema.scenario else []
    net = Supernet(config.space, schema)
    arch_params, weight_params = net.arch_parameters(), net.weight_parameters()
    w_opt = torch.optim.Adam(weight_params, lr=s.lr, weight_decay=s.weight_decay)
    a_opt = torch.optim.Adam(arch_params, lr=s.arch_lr, weight_decay=s.arch_weight_decay)
    val_stream = _val_batches(val_split, s.batch_size, torch.Generator().manual_seed(s.seed + 1))
    n_epochs = s.warmup_epochs + s.search_epochs
    n_batches = math.ceil(len(train_split) / s.batch_size)
    history: list[dict[str, Any]] = []
    fixed_order: list[dict[str, Any]] = []

    for epoch in range(1, n_epochs + 1):
        searching = epoch > s.warmup_epochs
        temperature = _temperature(s, epoch - s.warmup_epochs) if searching else s.temperature_start
        net.set_phase("search" if searching else "warmup", temperature)
        net.train()
        if progress:
            progress.epoch_start(epoch, n_batches)
        joint = searching and s.mode == "joint"
        loss_sums: dict[str, float] = {}
        penalty_sums: dict[str, float] = {}
        rows, steps = 0, 0
        epoch_start = time.perf_counter()
        for batch in train_split.batches(s.batch_size, shuffle=True, generator=generator):
            if batch.size < 2:  # a 1-row batch breaks batch norm and says nothing
                continue
            penalties: dict[str, float] = {}
            if searching and s.mode == "bilevel":
                val_batch = next(val_stream)
                with frozen_batch_norm_statistics(net):
                    _, val_losses = net.compute_loss(val_batch.features, val_batch.labels)
                    arch_loss, penalties = _arch_loss(net, val_losses, s)
                a_opt.zero_grad(set_to_none=True)
                torch.autograd.backward(arch_loss, inputs=arch_params)
                a_opt.step()
            _, losses = net.compute_loss(batch.features, batch.labels)
            if joint:
                total, penalties = _arch_loss(net, losses, s)
            else:
                total = torch.stack(list(losses.values())).sum()
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            torch.autograd.backward(total, inputs=weight_params + arch_params if joint else weight_params)
            if s.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(weight_params, s.grad_clip_norm)
            w_opt.step()
            if joint:
                a_opt.step()
            for k, v in losses.items():
                loss_sums[k] = loss_sums.get(k, 0.0) + float(v.detach()) * batch.size
            if searching:
                for k, p in penalties.items():
                    penalty_sums[k] = penalty_sums.get(k, 0.0) + p
            rows += batch.size
            steps += 1
            if progress:
                progress.advance(1, batch.size)
        train_seconds = time.perf_counter() - epoch_start
        fixed: dict[str, Any] = {"ops": 0, "masks": 0, "fixed_ops": []}
        if searching:  # fix ⌈free / epochs left⌉: after the last search epoch nothing is free
            fixed = net.discretize(1.0 / (n_epochs - epoch + 1))
            fixed_order += [{**f, "epoch": epoch} for f in fixed["fixed_ops"]]
        val = evaluate_model(net, val_split, scenario_names, s.eval_batch_size)
        record: dict[str, Any] = {
            "epoch": epoch,
            "phase": "search" if searching else "warmup",
            "temperature": temperature,
            "rows": rows,
            "train_seconds": train_seconds,
            "samples_per_s": rows / train_seconds if train_seconds > 0 else math.nan,
            "train_loss": {k: v / max(rows, 1) for k, v in loss_sums.items()},
            "expected_open_masks": {k: v / max(steps, 1) for k, v in penalty_sums.items()},
            "val": val["tasks"],
            "val_auc": monitor_value(val, "auc", None),
            "fixed_now": {"ops": fixed["ops"], "masks": fixed["masks"]},
            "architecture": net.state_summary(),
        }
        if any(not math.isfinite(v) for v in record["train_loss"].values()):
            raise DataError(f"the search loss became non-finite at epoch {epoch}", hint="lower search.lr or arch_lr")
        history.append(record)
        if progress:
            progress.epoch_end(record)

    arch, repairs = net.derive()
    seconds = time.perf_counter() - started
    final = {
        name: {n: round(float(p), 4) for n, p in zip(op.names, op.probabilities().detach(), strict=True)}
        for name, op in net.mixed_ops()
    }
    meta = {
        "dataset": prepared.info.get("dataset"),
        "data_dir": str(prepared.root.resolve()),
        "train_rows": len(train_split),
        "seconds": seconds,
        "val": history[-1]["val"],
        "val_auc": history[-1]["val_auc"],
        "repairs": repairs,
        "discretisation_order": fixed_order,
        "final_op_probabilities": final,
        "space": config.space.model_dump(mode="json"),
        "schedule": s.model_dump(mode="json"),
    }
    arch = arch.model_copy(update={"search": meta})
    model = net.to_discrete(arch)
    return SearchResult(arch, model, net, config, history, seconds)


@dataclass(frozen=True)
class SearchFiles:
    """The files :func:`write_search` wrote."""

    architecture: Path
    log: Path
    weights: Path


def search_files(out: Path) -> SearchFiles:
    """Where the files of a search written to ``out`` (the architecture JSON) are: ``<stem>.search.jsonl`` (the
    per-epoch log) and ``<stem>.supernet.safetensors`` (the derived model's weights inherited from the supernet)."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return SearchFiles(out, out.with_name(f"{stem}.search.jsonl"), out.with_name(f"{stem}.supernet.safetensors"))


def write_search(result: SearchResult, out: Path) -> SearchFiles:
    """Write the architecture JSON, the per-epoch log (JSON lines) and the inherited weights (safetensors)."""
    files = search_files(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.architecture.save(files.architecture)
    files.log.write_text("".join(json.dumps(record, default=str) + "\n" for record in result.history))
    metadata = {
        "schema_hash": result.model.schema.hash(),
        "architecture_digest": result.architecture.digest(),
        "what": "automtl weights inherited from the supernet (mtlrec train --init-from-supernet)",
    }
    save_model(result.model, str(files.weights), metadata=metadata)
    return files


def supernet_weights(arch_path: Path, architecture: Architecture) -> Path:
    """The inherited-weights file of the search that wrote ``arch_path``, checked against ``architecture``.

    Raises:
        CheckpointError: the file is missing, or was written for another architecture.
    """
    path = search_files(arch_path).weights
    if not path.is_file():
        raise CheckpointError(
            f"no supernet weights next to {arch_path} (expected {path.name})",
            hint="`mtlrec search --out` writes them; train from scratch without --init-from-supernet",
        )
    with safe_open(str(path), framework="pt") as handle:
        digest = (handle.metadata() or {}).get("architecture_digest")
    if digest != architecture.digest():
        raise CheckpointError(
            f"{path.name} holds the weights of another architecture than {arch_path.name} ({digest} != "
            f"{architecture.digest()})",
            hint="the architecture file was edited after the search; train from scratch",
        )
    return path
