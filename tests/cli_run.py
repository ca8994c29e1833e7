"""The mtlrec CLI run in process, for tests: its exit code and everything it printed (stdout, then stderr)."""

from __future__ import annotations

from typer.testing import CliRunner

from mtlrec.cli.app import app

_runner = CliRunner()


def run_cli(*args: object) -> tuple[int, str]:
    """``mtlrec ARGS...`` (each argument passed through ``str``)."""
    result = _runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + result.stderr
