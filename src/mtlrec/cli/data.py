"""``mtlrec data list`` and ``mtlrec data prepare``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtlrec.cli.common import console, err_console, fmt, user_errors

app = typer.Typer(help="List datasets and prepare them (fit the preprocessor on train, encode all splits).")


@app.command("list")
def list_cmd() -> None:
    """Show every dataset with its tasks, scenario field and expected upstream files."""
    from mtlrec.data.loaders import list_datasets

    table = Table(title="datasets")
    for col in ("name", "tasks", "scenario", "upstream files", "description"):
        table.add_column(col)
    for info in list_datasets():
        files = ", ".join(info.upstream_files) if info.needs_source else "(none: generated)"
        table.add_row(info.name, ", ".join(info.tasks), info.scenario or "-", files, info.description)
    console.print(table)


@app.command("prepare")
def prepare_cmd(
    dataset: Annotated[str, typer.Argument(help="dataset name (see `mtlrec data list`)")],
    out: Annotated[Path, typer.Option("--out", help="directory to write the encoded splits into")],
    source: Annotated[
        Path | None, typer.Option("--source", help="upstream files: a folder, or the YAML spec for `tabular`")
    ] = None,
    seed: Annotated[int, typer.Option(help="seeds splitting and generation", min=0)] = 0,
    rows: Annotated[int | None, typer.Option(help="cap on rows read per file (or generated)", min=1)] = None,
    shard_rows: Annotated[
        int | None,
        typer.Option(
            "--shard-rows",
            min=1,
            help="write each split as Parquet shards of at most N rows (synthetic is then generated and encoded "
            "chunk by chunk, never all in memory)",
        ),
    ] = None,
) -> None:
    """Load DATASET from its upstream files, fit the preprocessor on train only, write train/val/test Parquet."""
    from mtlrec.data.loaders import get_dataset
    from mtlrec.data.prepare import prepare

    with user_errors():
        loader = get_dataset(dataset)
        if loader.info.needs_source and source is None:
            from mtlrec.errors import DataError

            raise DataError(
                f"dataset `{dataset}` needs --source", hint=loader.info.source_hint or "pass the upstream folder"
            )
        with err_console.status(f"preparing {dataset} ..."):
            result = prepare(dataset, source, out, seed=seed, rows=rows, shard_rows=shard_rows)
    schema = result.schema
    table = Table(title=f"{dataset} -> {out}")
    table.add_column("split")
    table.add_column("scope")
    table.add_column("rows", justify="right")
    for task in schema.tasks:
        on = f" (on {task.conditioned_on}=1)" if task.conditioned_on else ""
        table.add_column(f"{task.name} {'pos. rate' if task.kind == 'binary' else 'mean'}{on}", justify="right")
    for split, entry in result.summary.items():
        table.add_row(
            split, "all", f"{entry['rows']:,}", *(fmt(entry["tasks"].get(t, math.nan)) for t in schema.task_names)
        )
        for scen, values in entry["scenarios"].items():
            table.add_row(
                "",
                f"scenario {scen}",
                f"{values['rows']:,}",
                *(fmt(values.get(t, math.nan)) for t in schema.task_names),
            )
    console.print(table)
    console.print(
        f"schema {schema.hash()}: {len(schema.sparse)} sparse, {len(schema.dense)} dense fields"
        + (f", scenario `{schema.scenario.name}` ({schema.num_scenarios})" if schema.scenario else ""),
        highlight=False,
    )
