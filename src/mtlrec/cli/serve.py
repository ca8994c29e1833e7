"""``mtlrec serve``: the embedded server (records API + KServe v2 / Triton protocol) on uvicorn."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mtlrec.cli.common import err_console, user_errors


class ServeBackend(StrEnum):
    """Who runs the model."""

    auto = "auto"
    onnxruntime = "onnxruntime"
    torchscript = "torchscript"
    triton = "triton"


def serve_cmd(
    repo: Annotated[Path, typer.Option("--repo", help="model repository written by `mtlrec export`")] = Path(
        "model_repository"
    ),
    model: Annotated[
        list[str] | None, typer.Option("--model", help="model to serve (repeatable; default: every servable one)")
    ] = None,
    backend: Annotated[
        ServeBackend,
        typer.Option(
            "--backend",
            help="onnxruntime or torchscript in process, triton (a Triton server runs the model; --triton-url), "
            "or auto (whatever each model version holds)",
        ),
    ] = ServeBackend.auto,
    triton_url: Annotated[
        str | None, typer.Option("--triton-url", help="Triton's HTTP address (host:port) for --backend triton")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="interface to bind (0.0.0.0 exposes the server)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port")] = 8000,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=1, help="most rows merged into one model call")
    ] = 256,
    max_delay_ms: Annotated[
        float,
        typer.Option(
            "--max-delay-ms",
            min=0.0,
            help="extra wait for more requests to merge; 0 = merge only what queued while the model was busy",
        ),
    ] = 0.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MTLREC_API_KEY",
            show_envvar=True,
            help="require this key on prediction and load routes (x-api-key or Authorization: Bearer)",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1, help="larger request bodies are refused with 413")
    ] = 1_048_576,
    poll_seconds: Annotated[
        float | None, typer.Option("--poll-seconds", min=0.01, help="look for new model versions this often")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="intra-op threads of the runtime (default: all cores)")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log", help="log every request (costs ~0.1 ms a request; /metrics counts them)"
        ),
    ] = False,
    max_inline_ms: Annotated[
        float,
        typer.Option(
            "--max-inline-ms",
            min=0.0,
            help="a model call expected (from the warm-up) to take at most this long runs on the event loop, a "
            "longer one in a worker thread; 0 = always a worker thread",
        ),
    ] = 1.0,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue",
            min=0,
            help="requests each model's queue holds; past it requests get 429 with Retry-After (0 = unbounded)",
        ),
    ] = 512,
    grace_seconds: Annotated[
        float,
        typer.Option(
            "--grace-seconds",
            min=0.0,
            help="on SIGTERM, seconds during which readiness answers 503 while requests are still served, "
            "before new connections are refused",
        ),
    ] = 5.0,
    drain_timeout_seconds: Annotated[
        float,
        typer.Option(
            "--drain-timeout-seconds", min=1.0, help="then, how long the requests already accepted may take to finish"
        ),
    ] = 30.0,
    golden: Annotated[
        bool,
        typer.Option(
            "--golden/--no-golden",
            help="replay each version's golden records before serving it; refuse a version whose answers moved",
        ),
    ] = True,
) -> None:
    """Serve a model repository over HTTP: raw records (/v1) and the Triton/KServe v2 protocol (/v2).

    The port opens at once; the models are loaded, warmed (every warm-up batch size) and checked against their
    golden records in the background, and GET /v2/health/ready answers 200 once all of them are. On SIGTERM the
    server reports not ready, keeps serving for --grace-seconds, then refuses new connections, answers every
    request it accepted and exits 0.
    """
    import logging

    from mtlrec.serving.app import create_app
    from mtlrec.serving.server import serve

    with user_errors():
        if backend is ServeBackend.triton and not triton_url:
            from mtlrec.errors import ConfigError

            raise ConfigError("--backend triton needs --triton-url", hint="e.g. --triton-url localhost:8000")
        app = create_app(
            repo,
            models=model or None,
            backend=backend.value,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            api_key=api_key,
            max_body_bytes=max_body_bytes,
            poll_seconds=poll_seconds,
            threads=threads,
            triton_url=triton_url,
            max_queue=max_queue or None,
            load_in_background=True,
            golden_check=golden,
            max_inline_ms=max_inline_ms,
        )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    library_logger = logging.getLogger("mtlrec")
    library_logger.addHandler(handler)
    library_logger.setLevel(log_level.upper() if log_level.upper() in logging.getLevelNamesMapping() else "INFO")
    names = ", ".join(app.state.registry.servable())
    err_console.print(
        f"serving {names} from {repo} on http://{host}:{port} (warming up; GET /v2/health/ready says when ready)",
        highlight=False,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print("[yellow]warning:[/] bound beyond localhost without --api-key", highlight=False)
    counters = serve(
        app,
        host=host,
        port=port,
        grace_seconds=grace_seconds,
        drain_timeout_seconds=drain_timeout_seconds,
        log_level=log_level,
        access_log=access_log,
    )
    err_console.print(f"stopped: {counters.accepted} requests accepted, {counters.answered} answered", highlight=False)
