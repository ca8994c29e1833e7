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


class Backend(StrEnum):
    """In-process runtime."""

    auto = "auto"
    onnxruntime = "onnxruntime"
    torchscript = "torchscript"


def score_cmd(
    input_path: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, metavar="INPUT", help="raw rows: .csv, .csv.gz, .tsv or .parquet"),
    ],
    model: Annotated[str, typer.Option("--model", help="model name in the repository (e.g. mmoe)")],
    out: Annotated[Path, typer.Option("--out", help="output file: .csv writes CSV, anything else Parquet")],
    repo: Annotated[Path, typer.Option("--repo", help="model repository written by `mtlrec export`")] = Path(
        "model_repository"
    ),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="rows per chunk")] = 65_536,
    on_error: Annotated[
        OnError, typer.Option("--on-error", help="fail: stop at the first malformed row; skip: leave it out")
    ] = OnError.fail,
    backend: Annotated[Backend, typer.Option("--backend", help="runtime of the model")] = Backend.auto,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="intra-op threads (default: all)")] = None,
) -> None:
    """Score every row of a raw file through the run's own transform; write one probability column per task."""
    from mtlrec.serving.score import score_file

    with user_errors():
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
