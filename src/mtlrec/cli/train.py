"""``mtlrec train`` and ``mtlrec evaluate``."""

from __future__ import annotations

import json
import math
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
) -> None:
    """Train a model on a prepared data directory; select the epoch on the validation split; write RUN_DIR."""
    from mtlrec.data.dataset import open_prepared
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
        model_overrides = {"track": track, "tasks": tasks.split(",") if tasks else None}
        run_config = load_run_config(config, model, overrides, model_overrides)
        prepared = open_prepared(data)
        err_console.print(
            f"training [bold]{run_config.model_name}[/] on {data} "
            f"({prepared.info.get('rows', {}).get('train', '?'):,} train rows)",
            highlight=False,
        )
        result = train(prepared, run_config, out, progress=RichProgress())
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
