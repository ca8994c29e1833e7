"""``mtlrec loadtest`` (a bounded locust run against a served model) and ``mtlrec bench latency`` (the in-process
floor of each runtime)."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mtlrec.cli.common import console, err_console, user_errors

bench_app = typer.Typer(help="Benchmarks of exported models.", no_args_is_help=True)


class LoadProtocol(StrEnum):
    """How the load generator talks to the server."""

    records = "records"
    v2_http = "v2-http"
    v2_grpc = "v2-grpc"


class V2Encoding(StrEnum):
    """Tensor encoding of the v2 HTTP user."""

    binary = "binary"
    json = "json"


class Device(StrEnum):
    """Where the in-process runtimes run."""

    cpu = "cpu"
    cuda = "cuda"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.3f}"


def _cores(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(report: dict[str, Any]) -> Table:
    """A load test's figures, one per row (readable at any terminal width); latency in ms at µs resolution."""
    table = Table(title=f"{report['model']} v{report['version']} · {report['protocol']} · {report['url']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lat = report["latency_ms"]
    server = report.get("server") or {}
    client = report.get("client") or {}
    open_loop = report.get("open_loop")
    rows = [
        ("users", str(report["users"])),
        ("records per request", str(report["records_per_request"])),
        ("requests (failed)", f"{report['requests']:,} ({report['failures']:,})"),
        ("requests/s", f"{report['requests_per_s']:,.1f}"),
        ("records/s", f"{report['records_per_s']:,.1f}"),
        *((f"latency {k} (ms)", _ms(lat[k])) for k in ("p50", "p90", "p95", "p99", "max")),
    ]
    if open_loop:
        corrected = open_loop["latency_corrected_ms"]
        kept = "kept up" if open_loop["kept_up"] else "FELL BEHIND"
        rows += [
            ("target requests/s (sent)", f"{open_loop['target_rps']:,.1f} ({open_loop['sent_per_s']:,.1f}, {kept})"),
            *((f"from schedule {k} (ms)", _ms(corrected[k])) for k in ("p50", "p99", "max")),
        ]
    cores = [f"client {_cores(client.get('cores_used'))}"]
    if server.get("cores_used") is not None:
        cores.append(f"server {_cores(server['cores_used'])}")
    rows += [
        ("CPU cores used", f"{', '.join(cores)} of {report['host']['cores']}"),
        ("rows per model call", _ms(server.get("rows_per_model_call"))),
        ("server runtime", str(server.get("runtime") or "-")),
        ("host", f"{report['host']['cpu']} ({report['host']['cores']} cores), GPU {report['host']['gpu']}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def loadtest_cmd(
    url: Annotated[
        str | None, typer.Option("--url", help="the server, http://127.0.0.1:PORT (loopback only; gRPC: host:port)")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="served model name")] = "mmoe",
    protocol: Annotated[
        LoadProtocol, typer.Option("--protocol", help="records (/v1 raw records), v2-http or v2-grpc (tritonclient)")
    ] = LoadProtocol.records,
    users: Annotated[int, typer.Option("--users", min=1, help="concurrent users")] = 1,
    target_rps: Annotated[
        float | None,
        typer.Option(
            "--target-rps",
            min=0.001,
            help="open loop: send this many requests/s in all on a fixed schedule, latency counted from the "
            "scheduled time (default: closed loop, each user sends when its last answer is in)",
        ),
    ] = None,
    spawn_rate: Annotated[
        float | None, typer.Option("--spawn-rate", min=0.1, help="users started per second (default: all at once)")
    ] = None,
    duration: Annotated[str, typer.Option("--duration", help="run time: 30s, 2m, 1m30s")] = "30s",
    warmup: Annotated[str, typer.Option("--warmup", help="first seconds left out of the report, e.g. 2s")] = "0",
    records_per_request: Annotated[
        int, typer.Option("--records-per-request", min=1, help="records (rows) per request")
    ] = 1,
    scenario_mix: Annotated[
        str, typer.Option("--scenario-mix", help="NAME=WEIGHT,... share of each scenario; 'natural' = the data's")
    ] = "natural",
    out: Annotated[Path, typer.Option("--out", help="folder for report.json, plots and logs")] = Path("loadtest-out"),
    p99_ms: Annotated[
        float | None, typer.Option("--p99-ms", min=0.0, help="SLO: exit 1 when p99 latency exceeds this (ms)")
    ] = None,
    max_fail_ratio: Annotated[
        float | None,
        typer.Option("--max-fail-ratio", min=0.0, max=1.0, help="SLO: exit 1 when more requests than this fail"),
    ] = None,
    start_server: Annotated[
        bool, typer.Option("--start-server", help="run `mtlrec serve --repo DIR` on a free 127.0.0.1 port meanwhile")
    ] = False,
    repo: Annotated[
        Path | None,
        typer.Option("--repo", help="the served model repository (payload schema; needed by v2 and --start-server)"),
    ] = None,
    server_arg: Annotated[
        list[str] | None,
        typer.Option("--server-arg", help="extra `mtlrec serve` argument with --start-server (repeatable)"),
    ] = None,
    v2_encoding: Annotated[V2Encoding, typer.Option("--v2-encoding", help="v2 HTTP tensors")] = V2Encoding.binary,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed of the payloads")] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write the PNG plots (needs matplotlib)")] = True,
) -> None:
    """Load-test a served model with locust (headless, bounded, 127.0.0.1 only); exit 1 when an SLO is broken."""
    from mtlrec.loadtest.runner import LoadTestOptions, parse_duration, run_load_test

    with user_errors():
        options = LoadTestOptions(
            url=url,
            model=model,
            out=out,
            protocol=protocol.value,
            users=users,
            spawn_rate=spawn_rate,
            duration_s=parse_duration(duration),
            warmup_s=0.0 if warmup.strip() in ("0", "0s", "") else parse_duration(warmup),
            records_per_request=records_per_request,
            target_rps=target_rps,
            scenario_mix=scenario_mix,
            repo=repo,
            start_server=start_server,
            server_args=list(server_arg or []),
            v2_encoding=v2_encoding.value,
            seed=seed,
            p99_ms=p99_ms,
            max_fail_ratio=max_fail_ratio,
            plots=plots,
            command=shlex.join(["mtlrec", *sys.argv[1:]]),
        )
        report = run_load_test(options)
    console.print(summary_table(report))
    console.print(f"report: {out / 'report.json'}", highlight=False)
    slo = report["slo"]
    if not slo["passed"]:
        for reason in slo["broken"]:
            err_console.print(f"[bold red]SLO broken:[/] {reason}", highlight=False)
        raise typer.Exit(1)


@bench_app.command("latency")
def latency_cmd(
    repo: Annotated[Path, typer.Option("--repo", help="model repository written by `mtlrec export`")] = Path(
        "model_repository"
    ),
    model: Annotated[str, typer.Option("--model", help="model name (its TorchScript twin is <name>_torchscript)")] = (
        "mmoe"
    ),
    device: Annotated[Device, typer.Option("--device", help="cpu or cuda")] = Device.cpu,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="comma-separated batch sizes")] = "1,64,1024",
    out: Annotated[Path, typer.Option("--out", help="folder for report.json")] = Path("bench-latency"),
    seconds: Annotated[float, typer.Option("--seconds", min=0.01, help="time budget per runner and batch size")] = 2.0,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="intra-op threads (default: every core)")
    ] = None,
) -> None:
    """In-process latency of each runtime (ONNX Runtime, TorchScript, eager PyTorch): the floor of served latency."""
    from mtlrec.loadtest.latency import LatencyOptions, bench_latency, latency_table

    with user_errors():
        try:
            sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        except ValueError:
            from mtlrec.errors import ConfigError

            raise ConfigError(f"bad --batch-sizes `{batch_sizes}`", hint="e.g. 1,64,1024") from None
        report = bench_latency(
            LatencyOptions(
                repo=repo,
                model=model,
                device=device.value,
                batch_sizes=sizes,
                out=out,
                seconds=seconds,
                threads=threads,
                command=shlex.join(["mtlrec", *sys.argv[1:]]),
            )
        )
    console.print(latency_table(report))
    for note in report["notes"]:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"report: {out / 'report.json'}", highlight=False)
