"""The root ``mtlrec`` command: one sub-app or command per module, each a thin call into the library."""

from __future__ import annotations

from typing import Annotated

import typer

from mtlrec import __version__
from mtlrec.cli import data, deploy, models
from mtlrec.cli.export import export_cmd, repo_app
from mtlrec.cli.loadtest import bench_app, loadtest_cmd
from mtlrec.cli.predict import predict_cmd
from mtlrec.cli.score import score_cmd
from mtlrec.cli.search import search_cmd
from mtlrec.cli.serve import serve_cmd
from mtlrec.cli.train import evaluate_cmd, train_cmd

app = typer.Typer(
    name="mtlrec",
    help="Train, export, serve and load-test multi-task and multi-scenario recommendation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.command("search")(search_cmd)
app.command("train")(train_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("export")(export_cmd)
app.add_typer(repo_app, name="repo")
app.command("score")(score_cmd)
app.command("predict")(predict_cmd)
app.command("serve")(serve_cmd)
app.command("loadtest")(loadtest_cmd)
app.add_typer(bench_app, name="bench")
app.add_typer(deploy.app, name="deploy")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtlrec {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """mtlrec: multi-task recommenders from raw logs to served predictions."""


def main() -> None:
    """Console-script entry point."""
    app()
