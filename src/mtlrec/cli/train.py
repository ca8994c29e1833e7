"""``mtlrec train`` and ``mtlrec evaluate``."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mtlrec.cli.common import console, dumps, err_console, fmt, metrics_table, user_errors


class RichProgress:
    """Draws the loop's progress on stderr: a bar per epoch with throughput, then one line per epoch."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.task: Any = None
        self.rows = 0
        self.batches = 0
        self.started = 0.0

    def epoch_start(self, epoch: int, batches: int) -> None:
        """Start a bar for this epoch."""
        self.bar.start()
        self.rows = self.batches = 0
        self.started = time.perf_counter()
        self.task = self.bar.add_task("train", total=batches, epoch=epoch, rate="-")

    def advance(self, batches: int, rows: int) -> None:
        """Advance the bar (the rate is recomputed every 20 batches to keep drawing cheap)."""
        self.rows += rows
        self.batches += batches
        if self.batches % 20 == 0:
            rate = self.rows / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.task, advance=20, rate=f"{rate:,.0f}")

    def epoch_end(self, record: dict[str, Any]) -> None:
        """Print the epoch's losses and validation metrics."""
        self.bar.remove_task(self.task)
        self.bar.stop()
        losses = " ".join(f"{k}={v:.4f}" for k, v in record["train_loss"].items())
        val = " ".join(f"{k}={fmt(m.get('auc', m.get('rmse', math.nan)))}" for k, m in record["val"].items())
        err_console.print(
            f"epoch {record['epoch']:>3}  {record['samples_per_s']:>9,.0f} rows/s  loss {losses}  val {val}",
            highlight=False,
        )


def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="a prepared data directory (`mtlrec data prepare`)")],
    out: Annotated[Path, typer.Option("--out", help="run directory to write (replaced atomically)")],
    model: Annotated[str | None, typer.Option("--model", help="model name (see `mtlrec models list`)")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML with `model` and `train` sections", dir_okay=False)
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="override train.epochs", min=1)] = None,
    lr: Annotated[float | None, typer.Option(help="override train.lr")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override train.batch_size", min=1)] = None,
    weight_decay: Annotated[float | None, typer.Option(help="override train.weight_decay")] = None,
    seed: Annotated[int | None, typer.Option(help="override train.seed", min=0)] = None,
    threads: Annotated[int | None, typer.Option(help="override train.num_threads", min=1)] = None,
    track: Annotated[
        str | None, typer.Option(help="override model.track: mtl (a head per task), msl (per scenario), mtmsl")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="override model.tasks: comma-separated tasks to learn (msl needs one)")
    ] = None,
    arch: Annotated[
        Path | None,
        typer.Option("--arch", help="an AutoMTL architecture file (`mtlrec search --out`); implies --model automtl"),
    ] = None,
    init_from_supernet: Annotated[
        bool,
        typer.Option(
            "--init-from-supernet",
            help="with --arch: start from the weights the search inherited from its supernet "
            "(ARCH's .supernet.safetensors) instead of a random initialisation",
        ),
    ] = False,
    streaming: Annotated[
        bool | None,
        typer.Option(
            "--streaming/--in-memory",
            help="read the splits shard by shard in bounded memory, or load them; default: stream a split "
            "larger than --memory-budget-mb",
        ),
    ] = None,
    memory_budget_mb: Annotated[
        float | None,
        typer.Option(
            "--memory-budget-mb", min=1, help="memory a split may take before it is streamed (default: 1/4 of RAM)"
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="train with DDP in N local processes (torch's launcher; gloo on CPU, NCCL on GPU). On a cluster "
            "run `torchrun ... -m mtlrec.train` instead",
        ),
    ] = 1,
    dist_backend: Annotated[
        str | None, typer.Option("--dist-backend", help="gloo or nccl (default: nccl with CUDA, else gloo)")
    ] = None,
) -> None:
    """Train a model on a prepared data directory; select the epoch on the validation split; write RUN_DIR."""
    from mtlrec.data.dataset import open_prepared
    from mtlrec.errors import ConfigError
    from mtlrec.train.config import load_run_config
    from mtlrec.train.loop import train

    overrides = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "seed": seed,
        "num_threads": threads,
    }
    with user_errors():
        cpus = os.cpu_count() or 1
        if nproc > cpus:
            raise ConfigError(
                f"--nproc {nproc} is above this machine's {cpus} CPUs",
                hint=f"use --nproc {cpus} or fewer; for more processes run torchrun on a cluster (see the README)",
            )
        model_overrides: dict[str, Any] = {"track": track, "tasks": tasks.split(",") if tasks else None}
        if init_from_supernet and arch is None:
            raise ConfigError("--init-from-supernet needs --arch", hint="pass the architecture file of the search")
        architecture = None
        if arch is not None:
            from mtlrec.nas.architecture import Architecture

            if model not in (None, "automtl"):
                raise ConfigError(f"--arch describes an automtl network, but --model is `{model}`")
            model = "automtl"
            architecture = Architecture.load(arch)
            model_overrides["architecture"] = architecture.model_dump(mode="json")
            model_overrides["embed_dim"] = architecture.embed_dim
        run_config = load_run_config(config, model, overrides, model_overrides)
        prepared = open_prepared(data)
        init_weights = None
        if arch is not None and architecture is not None:
            from mtlrec.nas.search import supernet_weights

            if architecture.schema_hash not in (None, prepared.schema.hash()):
                raise ConfigError(
                    f"{arch} was searched on data with schema {architecture.schema_hash}, but {data} has schema "
                    f"{prepared.schema.hash()}",
                    hint="train on the data directory the architecture was searched on, or search again",
                )
            if init_from_supernet:
                init_weights = supernet_weights(arch, architecture)
        err_console.print(
            f"training [bold]{run_config.model_name}[/] on {data} "
            f"({prepared.info.get('rows', {}).get('train', '?'):,} train rows)"
            + (f", from {init_weights.name}" if init_weights is not None else ""),
            highlight=False,
        )
        options: dict[str, Any] = {"init_weights": init_weights, "streaming": streaming, "dist_backend": dist_backend}
        if memory_budget_mb is not None:
            options["memory_budget"] = int(memory_budget_mb * 2**20)
        from mtlrec.train.distributed import launched_world_size

        if nproc > 1 and launched_world_size() > 1:
            raise ConfigError("--nproc is for a local launch; this process was already launched by torchrun")
        if nproc > 1:
            from mtlrec.train.loop import train_distributed

            err_console.print(f"launching {nproc} processes (DistributedDataParallel)", highlight=False)
            result = train_distributed(data, run_config, out, nproc, log=True, **options)
        else:
            rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only rank 0 draws and reports
            result = train(prepared, run_config, out, progress=RichProgress() if rank0 else None, **options)
            if not rank0:
                return
    console.print(metrics_table(result.val_metrics, f"validation, best epoch {result.best_epoch}"))
    console.print(f"run written to {result.run_dir}  ({result.samples_per_s:,.0f} rows/s)", highlight=False)


def evaluate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `mtlrec train`")],
    split: Annotated[str, typer.Option(help="val or test")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print exactly one JSON object on stdout")] = False,
    data: Annotated[Path | None, typer.Option("--data", help="data directory (default: the run's)")] = None,
) -> None:
    """Evaluate a run on a split: AUC and logloss per task, and per scenario."""
    from mtlrec.errors import ConfigError
    from mtlrec.train.loop import evaluate_run

    with user_errors():
        if split not in ("val", "test"):
            raise ConfigError(f"--split must be val or test, not `{split}`", hint="the train split is not evaluated")
        metrics = evaluate_run(run_dir, split, data)
    if as_json:
        typer.echo(json.dumps(json.loads(dumps(metrics)), separators=(",", ":")))
    else:
        console.print(metrics_table(metrics, f"{run_dir}: {split} split"))
