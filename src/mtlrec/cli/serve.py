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
) -> None:
    """Serve a model repository over HTTP: raw records (/v1) and the Triton/KServe v2 protocol (/v2)."""
    import uvicorn

    from mtlrec.serving.app import create_app

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
        )
    served = ", ".join(f"{n} v{e.version}" for n, e in sorted(app.state.registry.entries.items()))
    err_console.print(f"serving {served} from {repo} on http://{host}:{port}", highlight=False)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print("[yellow]warning:[/] bound beyond localhost without --api-key", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
