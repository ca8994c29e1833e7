"""``mtlrec loadtest``: a bounded, loopback-only locust run against a served model, and its report.

:func:`run_load_test` (optionally) starts ``mtlrec serve`` on a free 127.0.0.1 port, runs
``locust -f loadtests/locustfile.py --headless`` as a subprocess (locust monkey-patches the standard library with
gevent on import, which must not happen inside this process), reads the raw per-request timings the locustfile
wrote, and writes ``report.json`` (:mod:`mtlrec.loadtest.report`) and the plots (:mod:`mtlrec.loadtest.plots`) into
the output folder, next to ``locust.log`` (and ``server.log``). Every process it starts is stopped, whatever
happens; the locust run has an outer deadline of its duration plus :data:`LOCUST_GRACE_S`.

Example::

    options = LoadTestOptions(url="http://127.0.0.1:8000", model="mmoe", protocol="records", users=8,
                              duration_s=20, out=Path("loadtest-out"), p99_ms=50)
    report = run_load_test(options)      # report["slo"]["passed"]
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import resource
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from mtlrec.errors import ConfigError, MtlrecError
from mtlrec.loadtest.report import (
    build_report,
    check_slo,
    host_info,
    onnxruntime_providers,
    read_timings,
    summarize,
    write_report,
)

Protocol = Literal["records", "v2-http", "v2-grpc"]
PROTOCOL_USERS: dict[str, str] = {"records": "RecordsUser", "v2-http": "V2HttpUser", "v2-grpc": "V2GrpcUser"}
LOCUST_GRACE_S = 90.0
"""Seconds a locust run may take beyond its duration (start-up, payload pool, stopping) before it is killed."""
SERVER_READY_S = 90.0
_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


class LoadTestError(MtlrecError):
    """The load test could not run (no locust, server did not start, locust failed)."""


def require_module(module: str, extra: str = "load") -> None:
    """Fail with an install hint when an optional dependency is missing.

    Raises:
        LoadTestError: ``module`` cannot be imported.
    """
    if importlib.util.find_spec(module) is None:
        raise LoadTestError(
            f"`{module}` is not installed; the load tools need it",
            hint=f"pip install 'mtlrec[{extra}]' (or: pip install locust matplotlib)",
        )


def parse_duration(text: str | float) -> float:
    """``"30s"``, ``"2m"``, ``"1m30s"``, ``"1h"`` or a number of seconds -> seconds (> 0).

    Example:
        >>> parse_duration("1m30s"), parse_duration("2.5"), parse_duration(10)
        (90.0, 2.5, 10.0)
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text.strip().lower())
        if not match or not any(match.groupdict().values()):
            raise ConfigError(f"bad duration `{text}`", hint="write e.g. 30s, 2m, 1m30s or a number of seconds")
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        seconds = parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    if seconds <= 0:
        raise ConfigError(f"the duration must be positive, got `{text}`")
    return seconds


def check_loopback(url: str) -> str:
    """The host of ``url`` when it is a loopback address (127.0.0.0/8, ::1, or a name resolving only there).

    Load tests saturate what they target; they are only ever pointed at this machine.

    Raises:
        ConfigError: the host is not loopback (or cannot be resolved).

    Example:
        >>> check_loopback("http://127.0.0.1:8000")
        '127.0.0.1'
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    hint = "load tests run against this machine only: use http://127.0.0.1:PORT (or --start-server --repo DIR)"
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except (OSError, UnicodeError, ValueError):
            raise ConfigError(f"cannot resolve the host of {url!r}", hint=hint) from None
    if not host or not addresses or not all(a.is_loopback for a in addresses):
        raise ConfigError(f"refusing to load-test {url!r}: {host or 'no host'} is not a loopback address", hint=hint)
    return host


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_locustfile() -> Path:
    """``$MTLREC_LOCUSTFILE``, else ``loadtests/locustfile.py`` of the source tree, else of the current folder."""
    if os.environ.get("MTLREC_LOCUSTFILE"):
        return Path(os.environ["MTLREC_LOCUSTFILE"])
    tree = Path(__file__).resolve().parents[3] / "loadtests" / "locustfile.py"
    return tree if tree.is_file() else Path("loadtests") / "locustfile.py"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_json(url: str, timeout_s: float = 5.0) -> Any:
    """``GET url`` as JSON (None on any failure: server information is best effort)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


# ----------------------------------------------------------------------------------------------- server
@dataclass
class ServerProcess:
    """A server subprocess and where it listens."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    command: list[str]


def wait_ready(url: str, model: str | None, deadline_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``/v2/models/{model}/ready`` (``/v2/health/ready`` without a model) until it answers 200.

    The model's own readiness is what a load test needs: a Triton server whose other models failed to load reports
    itself not ready (strict readiness) while it serves this one.

    Raises:
        LoadTestError: the deadline passed or the process exited first.
    """
    end = time.monotonic() + deadline_s
    base = url.rstrip("/")
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise LoadTestError(f"the server exited with status {process.returncode} before it was ready")
        if _http_ok(f"{base}/v2/models/{model}/ready" if model else f"{base}/v2/health/ready"):
            return
        time.sleep(0.1)
    raise LoadTestError(f"{base} was not ready within {deadline_s:g} s", hint="see the server log")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def serve_subprocess(
    repo: Path,
    model: str,
    log: Path,
    extra_args: list[str] | None = None,
    ready_s: float = SERVER_READY_S,
    command: list[str] | None = None,
) -> Iterator[ServerProcess]:
    """Run ``mtlrec serve --repo repo --model model`` on a free 127.0.0.1 port for the block; always stopped.

    Args:
        repo: the model repository.
        model: the model to serve (and to wait for).
        log: file receiving the server's stdout and stderr.
        extra_args: more ``mtlrec serve`` flags (``--max-batch-size 1``).
        ready_s: how long to wait for readiness.
        command: another server command line, ``{port}`` replaced (e.g. the baseline server of the benchmarks).

    Raises:
        LoadTestError: the server did not become ready (its log tail is in the message).
    """
    port = free_port()
    if command is None:
        command = [
            sys.executable, "-c", "from mtlrec.cli.app import main; main()", "serve",
            "--repo", str(repo), "--model", model, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning",
            # A server the load test owns is stopped once the test is over: no clients to drain, no grace period.
            "--grace-seconds", "0", *(extra_args or []),
        ]  # fmt: skip
    else:
        command = [c.replace("{port}", str(port)) for c in command]
    log.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            try:
                wait_ready(url, model, ready_s, process)
            except LoadTestError as err:
                message = f"{err.message}\n{_tail(log)}"
                raise LoadTestError(message, hint=f"server command: {shlex.join(command)}") from None
            yield ServerProcess(url, process, log, command)
        finally:
            stop_process(process)


# ----------------------------------------------------------------------------------------------- locust
@dataclass
class LoadTestOptions:
    """One load test: target, protocol, load, payloads, objectives and the output folder."""

    url: str | None
    model: str
    out: Path
    protocol: Protocol = "records"
    users: int = 1
    spawn_rate: float | None = None
    duration_s: float = 30.0
    records_per_request: int = 1
    target_rps: float | None = None
    warmup_s: float = 0.0
    scenario_mix: str = "natural"
    repo: Path | None = None
    start_server: bool = False
    server_args: list[str] = field(default_factory=list)
    server_command: list[str] | None = None
    v2_encoding: Literal["binary", "json"] = "binary"
    grpc_url: str | None = None
    payloads: int = 256
    seed: int = 0
    p99_ms: float | None = None
    max_fail_ratio: float | None = None
    plots: bool = True
    locustfile: Path | None = None
    command: str = ""
    locust_args: list[str] = field(default_factory=list)


def locust_command(options: LoadTestOptions, url: str, timings: Path) -> list[str]:
    """The headless locust command line of one run."""
    rate = options.spawn_rate if options.spawn_rate is not None else options.users
    locustfile = options.locustfile or default_locustfile()
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
        "--users", str(options.users), "--spawn-rate", f"{rate:g}",
        "--run-time", f"{max(1, round(options.duration_s))}s",
        "--host", url, "--stop-timeout", "0", "--exit-code-on-error", "0", "--loglevel", "WARNING",
        "--model", options.model, "--records-per-request", str(options.records_per_request),
        "--scenario-mix", options.scenario_mix, "--payloads", str(options.payloads),
        "--payload-seed", str(options.seed), "--v2-encoding", options.v2_encoding, "--timings-out", str(timings),
    ]  # fmt: skip
    if options.repo is not None:
        command += ["--repo", str(options.repo)]
    if options.target_rps:
        command += ["--target-rps", f"{options.target_rps:g}"]
    if options.grpc_url:
        command += ["--grpc-url", options.grpc_url]
    return [*command, *options.locust_args, PROTOCOL_USERS[options.protocol]]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def run_locust(options: LoadTestOptions, url: str, timings: Path, log: Path) -> list[str]:
    """Run locust headless to completion (killed after the duration + :data:`LOCUST_GRACE_S`).

    Returns:
        The command line that ran.

    Raises:
        LoadTestError: locust failed before measuring anything, or overran its deadline.
    """
    command = locust_command(options, url, timings)
    timings.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            process.wait(timeout=options.duration_s + LOCUST_GRACE_S)
        except subprocess.TimeoutExpired:
            stop_process(process, timeout_s=5)
            raise LoadTestError(
                f"locust overran its {options.duration_s:g} s run by {LOCUST_GRACE_S:g} s and was stopped\n{_tail(log)}"
            ) from None
        finally:
            stop_process(process, timeout_s=5)
    if not timings.is_file():
        raise LoadTestError(
            f"locust exited with status {process.returncode} without writing timings\n{_tail(log)}",
            hint=f"command: {shlex.join(command)}",
        )
    return command


def _process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a running process so far (Linux ``/proc``; None elsewhere or without a pid)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _cores_used(before: float | None, after: float | None, wall_s: float) -> float | None:
    """CPU seconds spent between two readings over the wall time: the cores a process kept busy."""
    return round((after - before) / wall_s, 2) if before is not None and after is not None and wall_s > 0 else None


def server_info(url: str, model: str) -> dict[str, Any]:
    """What the server says about ``model`` (best effort): version, runtime, platform, rows and model calls.

    ``rows`` and ``model_calls`` are the KServe statistics' ``inference_count`` and ``execution_count``.
    """
    base = url.rstrip("/")
    info: dict[str, Any] = {"url": base}
    metadata = http_json(f"{base}/v2/models/{model}")
    if isinstance(metadata, dict):
        versions = [str(v) for v in metadata.get("versions", [])]
        info["version"] = versions[-1] if versions else None
        info["platform"] = metadata.get("platform")
    listing = http_json(f"{base}/v1/models")
    if isinstance(listing, dict):
        for entry in listing.get("models", []):
            if entry.get("name") == model:
                info["runtime"] = entry.get("runtime")
                info["version"] = str(entry.get("version", info.get("version")))
    stats = http_json(f"{base}/v2/models/{model}/stats")
    if isinstance(stats, dict) and stats.get("model_stats"):
        entry = stats["model_stats"][0]
        info["rows"] = int(entry.get("inference_count", 0))
        info["model_calls"] = int(entry.get("execution_count", 0))
    return info


def _rows_per_call(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    if "rows" not in before or "rows" not in after:
        return None
    calls = after["model_calls"] - before["model_calls"]
    return round((after["rows"] - before["rows"]) / calls, 3) if calls > 0 else None


def _locust_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("locust")
    except Exception:  # not installed: reported as None
        return None


def _measure(options: LoadTestOptions, url: str, started_server: ServerProcess | None) -> dict[str, Any]:
    out = options.out
    before = server_info(url, options.model)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    timings_path = out / "timings.json"
    # CPU over the locust run: locust's from the reaped children (a started server is reaped only after this
    # returns), a started server's from /proc. A generator near one core (locust is one gevent process) or near all
    # of the host's cores measures itself as much as the server.
    pid = started_server.process.pid if started_server else None
    client_before, server_before, started = _children_cpu_s(), _process_cpu_s(pid), time.monotonic()
    command = run_locust(options, url, timings_path, out / "locust.log")
    client_after, server_after, wall_s = _children_cpu_s(), _process_cpu_s(pid), time.monotonic() - started
    after = server_info(url, options.model)
    timings, errors = read_timings(timings_path)
    summary = summarize(timings, options.warmup_s, options.target_rps)
    slo = check_slo(summary, options.p99_ms, options.max_fail_ratio)
    server = {
        **{k: v for k, v in after.items() if k not in ("rows", "model_calls")},
        "rows_per_model_call": _rows_per_call(before, after),
        "model_calls": after.get("model_calls", 0) - before.get("model_calls", 0) if "model_calls" in after else None,
        "started_by_loadtest": started_server is not None,
        "cores_used": _cores_used(server_before, server_after, wall_s),  # None for a server given by --url
        "command": shlex.join(started_server.command) if started_server else None,
    }
    runtime = str(after.get("runtime") or "")
    providers = {"server_runtime": runtime or None, **onnxruntime_providers()}
    report = build_report(
        summary,
        kind="loadtest",
        protocol=options.protocol,
        url=url,
        model=options.model,
        version=after.get("version"),
        users=options.users,
        spawn_rate=options.spawn_rate if options.spawn_rate is not None else options.users,
        records_per_request=options.records_per_request,
        scenario_mix=options.scenario_mix,
        duration_s=options.duration_s,
        warmup_s=options.warmup_s,
        errors=errors,
        client={
            "cpu_s": round(client_after - client_before, 2),
            "cores_used": _cores_used(client_before, client_after, wall_s),
            "host_cores": os.cpu_count(),
        },
        server=server,
        slo=slo,
        host=host_info(),
        providers=providers,
        command=options.command or shlex.join(sys.argv),
        started_at=started_at,
        locust={"version": _locust_version(), "command": shlex.join(command), "user": PROTOCOL_USERS[options.protocol]},
    )
    write_report(out / "report.json", report)
    if options.plots:
        from mtlrec.loadtest.plots import write_plots

        write_plots(
            timings, out, title=f"{options.model} {options.protocol}, {options.users} users", warmup_s=options.warmup_s
        )
    return report


def run_load_test(options: LoadTestOptions) -> dict[str, Any]:
    """Run one bounded load test and write ``report.json``, ``latency_over_time.png``, ``latency_histogram.png``.

    Args:
        options: what to run; ``url`` may be None with ``start_server`` (then ``repo`` is served).

    Returns:
        The report (also in ``options.out / "report.json"``); ``report["slo"]["passed"]`` says whether the
        objectives held.

    Raises:
        ConfigError: a non-loopback URL, missing ``--repo``, bad numbers.
        LoadTestError: locust or matplotlib missing, the server did not start, locust failed.
    """
    require_module("locust")
    if options.plots:
        require_module("matplotlib")
    if options.users < 1 or options.records_per_request < 1:
        raise ConfigError("--users and --records-per-request must be >= 1")
    if options.target_rps is not None and options.target_rps <= 0:
        raise ConfigError(
            f"--target-rps must be positive, got {options.target_rps:g}", hint="leave it out for closed-loop users"
        )
    if options.protocol not in PROTOCOL_USERS:
        raise ConfigError(f"unknown protocol `{options.protocol}`", hint=f"use one of {', '.join(PROTOCOL_USERS)}")
    if options.start_server and options.repo is None:
        raise ConfigError("--start-server needs --repo DIR", hint="the model repository to serve")
    if options.protocol != "records" and options.repo is None:
        raise ConfigError(
            f"--protocol {options.protocol} needs --repo DIR",
            hint="the served repository: tensors are encoded with the model's own preprocessor",
        )
    if options.protocol == "v2-grpc":
        require_module("tritonclient.grpc", extra="triton")
        if options.start_server:
            raise ConfigError(
                "mtlrec serve speaks HTTP only: --protocol v2-grpc needs a Triton server (--url host:8001)",
                hint="use --protocol v2-http with --start-server",
            )
    if options.url is None and not options.start_server:
        raise ConfigError("give --url, or --start-server --repo DIR")
    for address in (options.url, options.grpc_url):
        if address:
            check_loopback(address)
    options.out.mkdir(parents=True, exist_ok=True)
    if options.start_server:
        assert options.repo is not None
        with serve_subprocess(
            options.repo, options.model, options.out / "server.log", options.server_args, command=options.server_command
        ) as server:
            return _measure(options, server.url, server)
    assert options.url is not None
    url = options.url if "://" in options.url else f"http://{options.url}"
    if options.protocol != "v2-grpc":
        wait_ready(url, options.model, 10.0)
    return _measure(options, url, None)
