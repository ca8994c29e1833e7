"""``mtlrec models list``."""

from __future__ import annotations

import typer
from rich.table import Table

from mtlrec.cli.common import console

app = typer.Typer(help="The model registry.")


@app.command("list")
def list_cmd() -> None:
    """Show every registered model, the tracks it supports and its config keys."""
    from mtlrec.models import list_models

    table = Table(title="models")
    for col in ("name", "tracks", "config keys", "summary"):
        table.add_column(col)
    for info in list_models():
        table.add_row(info.name, ", ".join(info.tracks), ", ".join(info.config_class.model_fields), info.summary)
    console.print(table)
