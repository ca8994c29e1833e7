"""What every command shares: consoles, the user-error guard, metric tables."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mtlrec.errors import MtlrecError

# Piped or captured output (CI logs, `| tee`) has no terminal width; rich then assumes 80 columns and cuts the
# numbers of wide tables ("494,6…"). Such output gets 140 columns unless COLUMNS says otherwise.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
console = Console(width=_WIDTH)
err_console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print an :class:`MtlrecError` as one clear message (and its hint) and exit with status 2, no traceback."""
    try:
        yield
    except MtlrecError as err:
        err_console.print(f"[bold red]error:[/] {err.message}", highlight=False, soft_wrap=True)
        if err.hint:
            err_console.print(f"[yellow]hint:[/] {err.hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def json_safe(value: Any) -> Any:
    """Replace NaN and infinities by None so that the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON text of ``value``."""
    return json.dumps(json_safe(value), indent=1)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """One row per output (and per scenario and output): AUC, logloss (or RMSE/MAE), rows."""
    table = Table(title=title)
    for col in ("scope", "output", "auc / rmse", "logloss / mae", "rows"):
        table.add_column(col, justify="left" if col in ("scope", "output") else "right")

    def add(scope: str, per_output: dict[str, dict[str, Any]]) -> None:
        for name, m in per_output.items():
            first = m.get("auc", m.get("rmse", math.nan))
            second = m.get("logloss", m.get("mae", math.nan))
            table.add_row(scope, name, fmt(first), fmt(second), f"{m.get('rows', 0):,}")

    add("all", metrics.get("tasks", {}))
    for scenario, per_output in metrics.get("scenarios", {}).items():
        add(f"scenario {scenario}", per_output)
    return table
