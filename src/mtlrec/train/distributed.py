"""Data-parallel training with ``torch.distributed``: process groups, gathered metrics, the launcher.

:func:`train` (``mtlrec.train.loop``) trains with DistributedDataParallel whenever it runs inside a process group
of more than one rank, which any ``torchrun`` launch sets up through the environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ...)::

    # one machine, 4 processes (what `mtlrec train --nproc 4` does through the same launcher)
    torchrun --standalone --nproc-per-node 4 -m mtlrec.train --data data/big --model mmoe --out runs/big
    # two machines, 8 GPUs each: run on every node with its own --node-rank
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint head:29400 \\
        -m mtlrec.train --data /shared/data/big --model mmoe --out /shared/runs/big

The rules a distributed run follows:

* the backend is NCCL when CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo on CPU;
* ``train.batch_size`` stays the global batch: each of ``W`` ranks takes ``batch_size // W`` rows per step and
  DDP averages the gradients, so a config means the same optimisation whatever the world size;
* each rank reads its own slice of every shard (:func:`mtlrec.data.dataset.owned_slices`) and all ranks run the
  same number of steps (the shortest rank's rows);
* validation predictions are gathered from every rank to rank 0, which computes the metrics on all rows (an AUC
  of the whole split, never an average of per-rank AUCs) and decides early stopping; the decision and the
  metrics are broadcast so every rank stops at the same epoch with the same best weights;
* only rank 0 writes the run directory, in the same format as a single-process run;
* the same seed and world size give the same run (initial weights on every rank come from the seed; the row
  order of rank ``r`` from ``(seed, r)``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from mtlrec.errors import MtlrecError

T = TypeVar("T")


class DistributedError(MtlrecError):
    """A distributed run could not start, or one of its ranks failed."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run (world 1: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this module created the process group and destroys it at the end

    @property
    def enabled(self) -> bool:
        """More than one rank."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that writes and reports."""
        return self.rank == 0


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def default_backend() -> str:
    """NCCL when CUDA is available to this process, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def setup(backend: str | None = None) -> DistContext:
    """Join the process group that torchrun's environment describes (or the one already initialised).

    Returns a world-1 context when this process was not launched with more than one rank.

    Raises:
        DistributedError: the backend is unknown or unusable here (NCCL without CUDA).
    """
    if dist.is_available() and dist.is_initialized():
        world, rank, owns = dist.get_world_size(), dist.get_rank(), False
        chosen = str(dist.get_backend())
    else:
        world = launched_world_size()
        if world <= 1:
            return DistContext()
        chosen = backend or os.environ.get("MTLREC_DIST_BACKEND") or default_backend()
        if chosen not in ("gloo", "nccl"):
            raise DistributedError(f"unknown distributed backend `{chosen}`", hint="use gloo (CPU) or nccl (GPU)")
        if chosen == "nccl" and not torch.cuda.is_available():
            raise DistributedError("the nccl backend needs CUDA", hint="use --dist-backend gloo on CPU")
        rank = int(os.environ.get("RANK", "0"))
        if chosen == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=chosen)
        owns = True
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = torch.device("cuda", local_rank) if chosen == "nccl" else torch.device("cpu")
    return DistContext(rank, world, local_rank, local_world, chosen, device, owns)


def teardown(ctx: DistContext) -> None:
    """Wait for every rank, then destroy the process group if :func:`setup` created it."""
    if ctx.enabled:
        dist.barrier()
        if ctx.owns_group:
            dist.destroy_process_group()


def default_threads(ctx: DistContext) -> int:
    """Intra-op threads per rank when the config sets none: the cores shared among the ranks of this node."""
    return max(1, (os.cpu_count() or 1) // max(ctx.local_world, 1))


class LossModule(nn.Module):
    """``forward(features, labels) -> losses`` of a model: what DDP wraps, so its gradient hooks see every step.

    DDP synchronises gradients for what runs through its own ``forward``; the model's training entry point is
    ``compute_loss``, so this thin module makes it the forward. Its state dict is the model's under ``model.``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's loss terms for one batch."""
        _, losses = self.model.compute_loss(features, labels)  # type: ignore[operator]
        return dict(losses)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """The model's :class:`LossModule`, inside DistributedDataParallel when the run has several ranks.

    ``find_unused_parameters``: a batch may leave some parameters out of the loss (a scenario or task with no
    row in it, a gate closed), and DDP must not wait for their gradients.
    """
    module = LossModule(model)
    if not ctx.enabled:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (the values themselves on one rank)."""
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def all_min(value: int, ctx: DistContext) -> int:
    """The smallest ``value`` over the ranks."""
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def gather_to_main(value: T, ctx: DistContext) -> list[T] | None:
    """Every rank's ``value`` on rank 0 (in rank order); None on the other ranks."""
    if not ctx.enabled:
        return [value]
    out: list[T] | None = [value] * ctx.world if ctx.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def broadcast_from_main(value: T, ctx: DistContext) -> T:
    """Rank 0's ``value`` on every rank."""
    if not ctx.enabled:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]
    return result


def launch(nproc: int, entry: Callable[..., T], *args: Any) -> T:
    """Run ``entry(*args)`` in ``nproc`` local processes through torch's elastic launcher; return rank 0's result.

    This is what ``torchrun --standalone --nproc-per-node N`` does (``torch.distributed.run`` builds the same
    :class:`~torch.distributed.launcher.api.LaunchConfig`), with the rendezvous on 127.0.0.1 and no restarts.
    ``entry`` and ``args`` must be picklable: the workers are spawned.

    Raises:
        DistributedError: a worker failed (the message carries its error).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, not {nproc}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"mtlrec-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        local_addr="127.0.0.1",
    )
    try:
        results = elastic_launch(config, entry)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raw = failure.message
        message = str(raw.get("message", raw)) if isinstance(raw, dict) else str(raw)
        raise DistributedError(
            f"distributed training failed on rank {rank}: {message.strip().splitlines()[-1] if message else err}",
            hint="the rank's full traceback is above",
        ) from None
    result: T = results[0]
    return result
