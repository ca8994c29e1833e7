"""``mtlrec export`` (a run into a Triton model repository) and ``mtlrec repo validate`` (static checks)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtlrec.cli.common import console, err_console, user_errors


class Format(StrEnum):
    """Which artifacts to export."""

    onnx = "onnx"
    torchscript = "torchscript"
    both = "both"


class InstanceKind(StrEnum):
    """Triton instance_group kind."""

    cpu = "cpu"
    gpu = "gpu"
    auto = "auto"


class Quantize(StrEnum):
    """Quantization modes."""

    int8 = "int8"


repo_app = typer.Typer(help="Check Triton model repositories.", no_args_is_help=True)


def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `mtlrec train`")],
    repo: Annotated[
        Path, typer.Option("--repo", help="model repository to add a version to (created when missing)")
    ] = Path("model_repository"),
    name: Annotated[
        str | None, typer.Option("--name", help="base model name (default: the run's model name, e.g. mmoe)")
    ] = None,
    fmt: Annotated[
        Format, typer.Option("--format", help="onnx, torchscript, or both (TorchScript as <name>_torchscript)")
    ] = Format.onnx,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="version to add (default: one above the highest)")
    ] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, help="Triton max_batch_size")] = 1024,
    instance_kind: Annotated[
        InstanceKind, typer.Option("--instance-kind", help="cpu, gpu (GPU hosts only) or auto (GPU when present)")
    ] = InstanceKind.auto,
    instances: Annotated[int, typer.Option("--instances", min=1, help="model instances per device")] = 1,
    dynamic_batching: Annotated[
        bool, typer.Option("--dynamic-batching/--no-dynamic-batching", help="let Triton merge concurrent requests")
    ] = True,
    quantize: Annotated[
        Quantize | None, typer.Option("--quantize", help="int8: serve a dynamically quantized ONNX model")
    ] = None,
    max_auc_drop: Annotated[
        float, typer.Option("--max-auc-drop", min=0.0, help="largest validation AUC drop --quantize may cost")
    ] = 0.002,
) -> None:
    """Export a trained run (verified against PyTorch) as a new version of a Triton model repository."""
    from mtlrec.export.api import ExportOptions, export_run

    with user_errors():
        options = ExportOptions(
            name=name,
            format=fmt.value,
            version=version,
            max_batch_size=max_batch_size,
            instance_kind=instance_kind.value,
            instances=instances,
            dynamic_batching=dynamic_batching,
            quantize=quantize.value if quantize else None,
            max_auc_drop=max_auc_drop,
        )
        err_console.print(f"exporting {run_dir} ({fmt.value}) into {repo}", highlight=False)
        result = export_run(run_dir, repo, options)
    table = Table(title=f"{result.repo}: version {result.version} added")
    for column in ("model", "role", "check"):
        table.add_column(column)
    for role, model in result.models.items():
        check = "-"
        if role in result.parity:
            diffs = result.parity[role].max_abs_diff
            check = "parity max |diff| " + ", ".join(f"{k}={v:.1e}" for k, v in diffs.items())
        if role == "onnx" and result.quantization is not None:
            check += "; int8 AUC change " + ", ".join(f"{k}={v['delta']:+.4f}" for k, v in result.quantization.items())
        table.add_row(model, role, check)
    console.print(table)
    console.print(
        f"raw records in, probabilities out: `{result.models['ensemble']}`; check with `mtlrec repo validate {repo}`",
        highlight=False,
    )


@repo_app.command("validate")
def validate_cmd(
    repo: Annotated[Path, typer.Argument(help="a Triton model repository (any, not only mtlrec's)")],
    golden: Annotated[
        bool,
        typer.Option(
            "--golden",
            help="also replay every model version's golden records (golden.json) in process and report every "
            "answer that moved since export",
        ),
    ] = False,
) -> None:
    """Check a model repository against Triton's rules without a server; one line per problem, exit 1 if any."""
    from mtlrec.export.repo_validate import validate_repository

    problems = validate_repository(repo)
    if golden and repo.is_dir():
        from mtlrec.export.golden import check_repository_golden

        problems += check_repository_golden(repo)
    for problem in problems:
        console.print(problem, highlight=False, soft_wrap=True, markup=False)
    if problems:
        err_console.print(f"{len(problems)} problem(s) in {repo}", highlight=False)
        raise typer.Exit(1)
    models = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    checked = "; golden records answered as at export" if golden else ""
    console.print(f"{repo}: {len(models)} models valid ({', '.join(models)}){checked}", highlight=False)
