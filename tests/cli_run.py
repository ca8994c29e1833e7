"""The mtlrec CLI run in process, for tests: its exit code and everything it printed (stdout, then stderr)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mtlrec.cli.app import app

_runner = CliRunner()


def run_cli(*args: object) -> tuple[int, str]:
    """``mtlrec ARGS...`` (each argument passed through ``str``)."""
    result = _runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + result.stderr


def tiny_mmoe_config(path: Path, train: str = "{epochs: 1, batch_size: 512}") -> Path:
    """Write a YAML run config of a tiny MMoE (2 experts of 8, towers of 4) for ``mtlrec train --config``."""
    path.write_text(
        "model: {name: mmoe, embed_dim: 4, num_experts: 2, expert: {hidden: [8]}, tower: {hidden: [4]}}\n"
        f"train: {train}\n"
    )
    return path
