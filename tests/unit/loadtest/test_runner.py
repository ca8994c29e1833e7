"""Loopback-only targets, durations, missing optional dependencies, and the CLI's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlrec.cli.app import app
from mtlrec.errors import ConfigError
from mtlrec.loadtest.runner import (
    LoadTestError,
    LoadTestOptions,
    check_loopback,
    locust_command,
    parse_duration,
    require_module,
)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "127.0.0.1:8001", "http://localhost:9", "http://[::1]:80"])
def test_loopback_hosts_are_accepted(url: str) -> None:
    check_loopback(url)


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "192.168.0.7:8001", "http://8.8.8.8", "http://0.0.0.0:8000"])
def test_other_hosts_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback"):
        check_loopback(url)


def test_cli_refuses_a_remote_url_before_sending_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["loadtest", "--url", "http://10.9.8.7:8000", "--duration", "1s", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "loopback" in result.output
    assert not (tmp_path / "report.json").exists()


def test_durations() -> None:
    assert parse_duration("30s") == 30 and parse_duration("2m") == 120 and parse_duration("1h") == 3600
    assert parse_duration("1m30s") == 90 and parse_duration("2.5") == 2.5
    for bad in ("", "soon", "0s", "-1"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_missing_optional_dependency_names_the_extra() -> None:
    with pytest.raises(LoadTestError) as info:
        require_module("no_such_module_mtlrec")
    assert "mtlrec[load]" in (info.value.hint or "")


def test_v2_needs_the_repository(tmp_path: Path) -> None:
    options = LoadTestOptions(url="http://127.0.0.1:1", model="mmoe", out=tmp_path, protocol="v2-http")
    from mtlrec.loadtest.runner import run_load_test

    with pytest.raises(ConfigError, match="needs --repo"):
        run_load_test(options)


def test_locust_command_is_bounded_and_names_the_user(tmp_path: Path) -> None:
    options = LoadTestOptions(url=None, model="m", out=tmp_path, protocol="v2-http", users=3, duration_s=4.4)
    command = locust_command(options, "http://127.0.0.1:5", tmp_path / "t.json")
    assert command[-1] == "V2HttpUser"
    assert command[command.index("--run-time") + 1] == "4s"
    assert "--headless" in command and command[command.index("--users") + 1] == "3"
    assert "--target-rps" not in command  # closed loop by default
    paced = LoadTestOptions(url=None, model="m", out=tmp_path, users=3, target_rps=250.0)
    command = locust_command(paced, "http://127.0.0.1:5", tmp_path / "t.json")
    assert command[command.index("--target-rps") + 1] == "250"


def test_a_non_positive_target_rate_is_refused(tmp_path: Path) -> None:
    from mtlrec.loadtest.runner import run_load_test

    options = LoadTestOptions(url="http://127.0.0.1:1", model="m", out=tmp_path / "out", target_rps=0.0)
    with pytest.raises(ConfigError, match="--target-rps must be positive"):
        run_load_test(options)
    assert not (tmp_path / "out").exists()
