"""``mtlrec score``: batch scoring of a raw CSV/Parquet file with a model of the repository."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mtlrec.cli.common import console, err_console, user_errors


class OnError(StrEnum):
    """What to do with a malformed row."""

    fail = "fail"
    skip = "skip"


class Engine(StrEnum):
    """Where scoring runs."""

    local = "local"
    ray = "ray"


class Backend(StrEnum):
    """In-process runtime."""

    auto = "auto"
    onnxruntime = "onnxruntime"
    torchscript = "torchscript"


def score_cmd(
    input_path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            metavar="INPUT",
            help="raw rows: .csv, .csv.gz, .tsv or .parquet (with --engine ray also a folder of them)",
        ),
    ],
    model: Annotated[str, typer.Option("--model", help="model name in the repository (e.g. mmoe)")],
    out: Annotated[
        Path,
        typer.Option("--out", help="output file: .csv writes CSV, anything else Parquet (--engine ray: a folder)"),
    ],
    repo: Annotated[Path, typer.Option("--repo", help="model repository written by `mtlrec export`")] = Path(
        "model_repository"
    ),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="rows per chunk")] = 65_536,
    on_error: Annotated[
        OnError, typer.Option("--on-error", help="fail: stop at the first malformed row; skip: leave it out")
    ] = OnError.fail,
    backend: Annotated[Backend, typer.Option("--backend", help="runtime of the model")] = Backend.auto,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="intra-op threads (default: all)")] = None,
    engine: Annotated[
        Engine, typer.Option("--engine", help="local: this process, streaming; ray: Ray Data over an actor pool")
    ] = Engine.local,
    num_workers: Annotated[
        int, typer.Option("--num-workers", min=1, help="--engine ray: actors, each holding one runner")
    ] = 2,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="--engine ray: join this cluster (default: start Ray locally)")
    ] = None,
    triton_url: Annotated[
        str | None,
        typer.Option("--triton-url", help="--engine ray: score through this Triton server (host:port) instead"),
    ] = None,
) -> None:
    """Score every row of a raw file through the run's own transform; write one probability column per task."""
    from mtlrec.serving.score import score_file

    if engine is Engine.ray:
        _score_ray(
            input_path, model, out, repo, batch_size, on_error, backend, threads, num_workers, ray_address, triton_url
        )
        return
    with user_errors():
        if input_path.is_dir():
            from mtlrec.errors import DataError

            raise DataError(f"{input_path} is a folder", hint="score a folder with --engine ray, or pass one file")
        columns = (TextColumn("[bold]scoring[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("score", total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            result = score_file(
                input_path,
                repo,
                model,
                out,
                batch_size=batch_size,
                on_error=on_error.value,
                backend=backend.value,
                threads=threads,
                progress=progress,
            )
    console.print(
        f"{result.model} v{result.version} ({result.runtime}): {result.rows:,} rows scored, "
        f"{result.skipped:,} skipped, {result.rows_per_s:,.0f} rows/s -> {result.out}",
        highlight=False,
        soft_wrap=True,
    )
    for error in result.errors[:10]:
        err_console.print(f"skipped {error}", highlight=False, markup=False, soft_wrap=True)
    if result.skipped > 10:
        err_console.print(f"... and {result.skipped - 10:,} more skipped rows", highlight=False)


def _score_ray(
    input_path: Path,
    model: str,
    out: Path,
    repo: Path,
    batch_size: int,
    on_error: OnError,
    backend: Backend,
    threads: int | None,
    num_workers: int,
    ray_address: str | None,
    triton_url: str | None,
) -> None:
    """``--engine ray``: the same transform and outputs, on Ray Data."""
    from mtlrec.errors import ConfigError
    from mtlrec.scoring.ray_engine import score_with_ray

    with user_errors():
        if on_error is OnError.skip:
            raise ConfigError("--on-error skip is not supported by --engine ray", hint="use --engine local for it")
        err_console.print(f"scoring on Ray with {num_workers} workers ...", highlight=False)
        result = score_with_ray(
            input_path,
            repo,
            model,
            out,
            num_workers=num_workers,
            batch_size=batch_size,
            threads=threads or 1,
            backend=backend.value,
            triton_url=triton_url,
            address=ray_address,
        )
    console.print(
        f"{result.model} v{result.version} ({result.runtime}, {result.workers} Ray workers): {result.rows:,} rows "
        f"scored, {result.rows_per_s:,.0f} rows/s -> {result.out} ({result.files} Parquet files)",
        highlight=False,
        soft_wrap=True,
    )
