"""The embedded server: records API (v1), KServe v2 / Triton HTTP protocol, metrics, micro-batching, hot reload.

``create_app(repo)`` serves the models of a repository written by ``mtlrec export`` (``mtlrec serve`` runs it on
uvicorn). Two ways in, one batcher per model behind both:

* **v1, raw records**: ``POST /v1/models/{name}/predict`` with ``{"records": [{field: value}, ...]}``, validated by
  the pydantic model generated from the model's schema (:mod:`mtlrec.serving.schemas`); the run's own preprocessor
  encodes the records, so the server cannot skew from training. ``GET /v1/models``, ``GET /v1/models/{name}`` (what
  a request looks like), ``POST /v1/models/{name}/load`` (pick up a new version now).
* **v2, tensors**: the KServe v2 / Triton HTTP routes that ``tritonclient.http`` calls (health, server and model
  metadata, config, ready, infer with JSON or binary tensors, statistics, repository index and load), so the same
  client code talks to this server and to a real Triton.

Every request is validated and encoded on its own; only then are concurrent requests merged into one runner call
(:class:`~mtlrec.serving.batcher.MicroBatcher`), so a bad request never fails its neighbours. Errors are JSON
``{"error": "..."}`` (v1 validation errors add pydantic's ``detail`` with the field's ``loc``); ``GET /metrics``
exposes Prometheus histograms and counters.

Under faults and load:

* **Overload**: each model's queue holds at most ``max_queue`` requests; past it a request is answered 429 with
  ``Retry-After`` at once. A request may carry a deadline (header ``X-Request-Timeout-Ms``; on v2 also the
  ``timeout`` parameter, in microseconds as in Triton): once it has passed, the request is answered 504 and never
  reaches the model. A queued request whose client disconnected is dropped before its model call.
* **Warm-up before ready**: every version runs its warm-up (each batch size of the config's ``model_warmup`` and
  ``preferred_batch_size``, and the micro-batcher's largest batch) and replays its golden records
  (:mod:`mtlrec.export.golden`) before it serves; ``/v2/health/ready`` and the model's ready route answer 503 until
  then (with ``load_in_background``, the port opens at once and reports live while the models warm up).
* **Reloads**: a new version is opened, warmed and checked completely before it replaces the old one; in-flight
  requests finish on the old model, which is closed once they have drained. A version that fails any of this is
  refused (the reason is logged, answered by the load API and shown by the repository index) and the old one keeps
  serving; polling skips a refused version until its files change. Removing the served version makes the newest
  remaining one serve, after the same checks, and the removed one drains.
* **Shutdown**: once :attr:`ModelRegistry.draining` is set (SIGTERM in :mod:`mtlrec.serving.server`), readiness
  answers 503 and every response carries ``Connection: close`` while requests keep being served; the server then
  stops accepting connections and answers what it accepted.

Example::

    app = create_app(Path("model_repository"), max_batch_size=256, max_delay_ms=0.0)
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from mtlrec import __version__
from mtlrec.errors import CheckpointError, ConfigError, MtlrecError
from mtlrec.serving.http import (
    BodyLimitMiddleware,
    HTTPProblem,
    LifecycleMiddleware,
    RequestCounters,
    authorize,
    resolve_api_key,
    unknown_model,
)
from mtlrec.serving.metrics import ServerMetrics
from mtlrec.serving.predict import PredictionRoutes, match_route
from mtlrec.serving.registry import (
    BACKENDS,
    DEFAULT_MAX_INLINE_MS,
    DEFAULT_MAX_QUEUE,
    Backend,
    ModelEntry,
    ModelRegistry,
)
from mtlrec.serving.repository import list_models
from mtlrec.serving.schemas import PredictResponse, request_schema_json
from mtlrec.serving.v2 import model_metadata, v2_request_schema

logger = logging.getLogger("mtlrec.serving")

_SERVER_NAME = "mtlrec"
_EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


# ------------------------------------------------------------------------------------------------- the app
class ServingApp(FastAPI):
    """FastAPI, with the prediction routes answered ahead of its routing and middleware.

    ``POST /v1/models/{name}/predict`` and ``POST /v2/models/{name}[/versions/{v}]/infer`` go to
    :attr:`predictions` (:class:`~mtlrec.serving.predict.PredictionRoutes`, raw ASGI: see there why); every other
    request, and the lifespan, to FastAPI.
    """

    predictions: PredictionRoutes | None = None

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and self.predictions is not None:
            route = match_route(scope["path"])
            if route is not None:
                await self.predictions(scope, receive, send, route)
                return
        await super().__call__(scope, receive, send)


def create_app(
    repo: Path,
    *,
    models: list[str] | None = None,
    backend: str = "auto",
    max_batch_size: int = 256,
    max_delay_ms: float = 0.0,
    api_key: str | None = None,
    max_body_bytes: int = 1_048_576,
    poll_seconds: float | None = None,
    threads: int | None = None,
    triton_url: str | None = None,
    max_queue: int | None = DEFAULT_MAX_QUEUE,
    load_in_background: bool = False,
    golden_check: bool = True,
    max_inline_ms: float = DEFAULT_MAX_INLINE_MS,
) -> FastAPI:
    """The server of a model repository (models are opened, warmed and checked here, before the app is returned,
    unless ``load_in_background``).

    Args:
        repo: a repository written by ``mtlrec export``.
        models: names to serve; None = every model ``backend`` can run.
        backend: ``auto`` (what each version holds), ``onnxruntime``, ``torchscript``, or ``triton`` (a Triton
            server at ``triton_url`` runs the model; records are still encoded here).
        max_batch_size: most rows in one runner call of the micro-batcher.
        max_delay_ms: extra wait of the micro-batcher for more requests; 0 (default, as Triton's dynamic
            batcher) merges what queued while the model was busy and never delays a lone request.
        api_key: key required on prediction and load routes (``x-api-key`` or ``Authorization: Bearer``);
            None = ``$MTLREC_API_KEY``, and no key when that is unset.
        max_body_bytes: larger request bodies get 413.
        poll_seconds: look for new versions this often (None: only on ``POST /v1/models/{name}/load``).
        threads: intra-op threads of in-process runtimes.
        triton_url: Triton's HTTP address for backend ``triton``.
        max_queue: requests each model's queue holds; past it requests get 429 with ``Retry-After``.
            None = unbounded.
        load_in_background: open and warm the models when the app starts (lifespan), off the event loop, so that
            the server is live at once and ready when every model is warm; False = before returning.
        golden_check: replay each version's golden records before serving it; a version whose answers moved is
            refused.
        max_inline_ms: a batch expected (from the warm-up timings) to take at most this long runs on the event loop,
            a longer one in a worker thread; 0 = always a worker thread.

    Raises:
        ConfigError: an invalid option.
        CheckpointError: the repository or a model cannot be opened (with ``load_in_background``: no model of the
            repository can be served by ``backend``).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend `{backend}`", hint=f"use one of {', '.join(BACKENDS)}")
    if max_batch_size < 1 or max_delay_ms < 0 or max_body_bytes < 1:
        raise ConfigError("max_batch_size and max_body_bytes must be positive, max_delay_ms not negative")
    if poll_seconds is not None and poll_seconds <= 0:
        raise ConfigError("poll_seconds must be positive", hint="leave it out to reload only on request")
    if max_inline_ms < 0:
        raise ConfigError("max_inline_ms must not be negative", hint="0 runs every batch in a worker thread")
    if max_queue is not None and max_queue < 1:
        raise ConfigError("max_queue must be at least 1", hint="leave it out (None) for an unbounded queue")
    key = resolve_api_key(api_key)
    metrics = ServerMetrics()
    registry = ModelRegistry(
        repo,
        models,
        backend=cast(Backend, backend),  # checked against BACKENDS above
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        threads=threads,
        triton_url=triton_url,
        metrics=metrics,
        max_queue=max_queue,
        golden=golden_check,
        max_inline_ms=max_inline_ms,
    )
    if load_in_background:
        if not registry.servable():
            raise CheckpointError(
                f"no model in {repo} can be served with backend {backend}",
                hint="export one with `mtlrec export RUN_DIR --repo DIR`, or pick another --backend",
            )
    else:
        registry.load_all()
    metrics.ready.set_function(lambda: float(registry.ready))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Lifespans may nest or repeat (test clients): the first one in starts, the last one out closes.
        if registry.lifespans == 0 and registry.shutting_down:
            registry.loaded = registry.draining = False
            await asyncio.to_thread(registry.load_all)  # started again after a shutdown: reopen the models
            registry.shutting_down = False
        registry.lifespans += 1
        tasks: list[asyncio.Task[None]] = []
        if not registry.loaded and registry.lifespans == 1:
            tasks.append(asyncio.create_task(registry.load_all_async()))
        if poll_seconds:
            tasks.append(asyncio.create_task(registry.poll_forever(poll_seconds)))
        try:
            yield
        finally:
            registry.lifespans -= 1
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if registry.lifespans == 0:
                registry.shutting_down = True  # readiness answers 503 while the models drain
                await registry.close()
                lifecycle = app.state.lifecycle
                logger.info(
                    "stopped: %d requests accepted, %d answered, %d unanswered",
                    lifecycle.accepted,
                    lifecycle.answered,
                    lifecycle.accepted - lifecycle.answered,
                )

    app = ServingApp(
        title="mtlrec serving",
        version=__version__,
        description="Multi-task recommender predictions: raw records (v1) and KServe v2 / Triton tensors (v2).",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    lifecycle = RequestCounters()
    app.add_middleware(LifecycleMiddleware, registry=registry, metrics=metrics, counters=lifecycle)
    app.state.lifecycle = lifecycle
    app.predictions = PredictionRoutes(registry, metrics, lifecycle, key, max_body_bytes)

    @app.exception_handler(HTTPProblem)
    async def _problem(_request: Request, err: HTTPProblem) -> JSONResponse:
        return err.response()

    @app.exception_handler(MtlrecError)
    async def _user_error(_request: Request, err: MtlrecError) -> JSONResponse:
        return HTTPProblem(400, err.message, hint=err.hint).response()

    @app.exception_handler(Exception)
    async def _bug(_request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=err)
        return HTTPProblem(500, f"internal error: {type(err).__name__}").response()

    # ----------------------------------------------------------------------------------------- v1
    @app.get("/v1/models", summary="Served models and their versions")
    async def v1_models() -> dict[str, Any]:
        available = await asyncio.to_thread(list_models, repo)
        return {
            "models": [
                {
                    "name": name,
                    "version": str(entry.version),
                    "versions": [str(v) for v in available.get(name, [entry.version])],
                    "runtime": entry.served.runner.description,
                    "platform": entry.platform,
                    **({"load_error": registry.failed[name]} if name in registry.failed else {}),
                }
                for name, entry in sorted(registry.entries.items())
            ]
        }

    @app.get("/v1/models/{name}", summary="What a request to this model looks like")
    async def v1_model(name: str) -> dict[str, Any]:
        entry = registry.entries.get(name)
        if entry is None:
            raise unknown_model(name)
        description = request_schema_json(entry.schema, entry.spec.output_names)
        return {"model": name, "version": str(entry.version), **description}

    @app.post("/v1/models/{name}/load", summary="Serve the newest version of a model now")
    async def v1_load(name: str, request: Request) -> dict[str, Any]:
        authorize(request.headers, key)
        return await registry.reload(name)

    # ----------------------------------------------------------------------------------------- v2
    @app.get("/v2/health/live", summary="KServe v2: the server is live")
    async def v2_live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready", summary="KServe v2: the server is ready (every model warm, not draining)")
    async def v2_ready() -> Response:
        return Response(status_code=200 if registry.ready else 503)

    @app.get("/v2", summary="KServe v2: server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": _SERVER_NAME, "version": __version__, "extensions": _EXTENSIONS}

    @app.get("/v2/models/stats", summary="KServe v2: statistics of every model")
    async def v2_all_stats() -> dict[str, Any]:
        return {"model_stats": [e.stats.as_dict(n, e.version) for n, e in sorted(registry.entries.items())]}

    def _entry(name: str, version: str | None = None) -> ModelEntry:
        entry = registry.entries.get(name)
        if entry is None:
            raise unknown_model(name)
        if version is not None and version != str(entry.version):
            raise unknown_model(name, version)
        return entry

    @app.get("/v2/models/{name}", summary="KServe v2: model metadata")
    async def v2_model(name: str) -> dict[str, Any]:
        return model_metadata(_entry(name))

    @app.get("/v2/models/{name}/versions/{version}", summary="KServe v2: model metadata of a version")
    async def v2_model_version(name: str, version: str) -> dict[str, Any]:
        return model_metadata(_entry(name, version))

    def _model_ready(name: str, version: str | None = None) -> Response:
        if name in registry.loading and name not in registry.entries:
            return Response(status_code=503)  # known, warming up
        _entry(name, version)
        return Response(status_code=503 if registry.draining or registry.shutting_down else 200)

    @app.get("/v2/models/{name}/ready", summary="KServe v2: the model is ready (warm, not draining)")
    async def v2_model_ready(name: str) -> Response:
        return _model_ready(name)

    @app.get("/v2/models/{name}/versions/{version}/ready", summary="KServe v2: the model version is ready")
    async def v2_model_version_ready(name: str, version: str) -> Response:
        return _model_ready(name, version)

    @app.get("/v2/models/{name}/config", summary="Triton: the model's config.pbtxt as JSON")
    async def v2_config(name: str) -> dict[str, Any]:
        return _entry(name).config

    @app.get("/v2/models/{name}/versions/{version}/config", summary="Triton: the config of a version")
    async def v2_config_version(name: str, version: str) -> dict[str, Any]:
        return _entry(name, version).config

    @app.get("/v2/models/{name}/stats", summary="Triton: statistics of a model")
    async def v2_stats(name: str) -> dict[str, Any]:
        entry = _entry(name)
        return {"model_stats": [entry.stats.as_dict(name, entry.version)]}

    @app.get("/v2/models/{name}/versions/{version}/stats", summary="Triton: statistics of a model version")
    async def v2_stats_version(name: str, version: str) -> dict[str, Any]:
        entry = _entry(name, version)
        return {"model_stats": [entry.stats.as_dict(name, entry.version)]}

    @app.post("/v2/repository/index", summary="Triton: the models of the repository and their state")
    async def v2_index() -> list[dict[str, Any]]:
        available = await asyncio.to_thread(list_models, repo)
        index: list[dict[str, Any]] = []
        others = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
        for name in others:
            entry = registry.entries.get(name)
            if entry is not None:
                index.append({"name": name, "version": str(entry.version), "state": "READY"})
            elif name in available:
                reason = registry.failed.get(name, "not loaded (see --model and --backend)")
                index.append(
                    {"name": name, "version": str(available[name][-1]), "state": "UNAVAILABLE", "reason": reason}
                )
            else:
                index.append({"name": name, "state": "UNAVAILABLE", "reason": "not a model this server runs"})
        return index

    @app.post("/v2/repository/models/{name}/load", summary="Triton: (re)load a model")
    async def v2_load(name: str, request: Request) -> Response:
        authorize(request.headers, key)
        await registry.reload(name)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{name}/unload", summary="Triton: unload a model (not supported)")
    async def v2_unload(name: str) -> Response:
        raise HTTPProblem(400, f"unloading is not supported by mtlrec serve (model '{name}')")

    # ----------------------------------------------------------------------------------------- metrics
    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def _openapi() -> dict[str, Any]:
        """The OpenAPI document, with one concrete predict path per served model and its request schema."""
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        response_schema = PredictResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components["PredictResponse"] = response_schema
        error = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        components["Error"] = error
        for name, entry in sorted(registry.entries.items()):
            prefix = f"{name}__"
            schema = entry.request_model.model_json_schema(ref_template=f"#/components/schemas/{prefix}{{model}}")
            for def_name, definition in schema.pop("$defs", {}).items():
                components[prefix + def_name] = definition
            components[prefix + "PredictRequest"] = schema
            errors = {
                str(code): {
                    "description": text,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                for code, text in (
                    (400, "malformed JSON"),
                    (401, "missing API key"),
                    (413, "body too large"),
                    (422, "invalid records"),
                    (429, "the model's queue is full; retry after Retry-After seconds"),
                    (503, "the model is loading or being unloaded; retry"),
                    (504, "the deadline of X-Request-Timeout-Ms passed"),
                )
            }
            document.setdefault("paths", {})[f"/v1/models/{name}/predict"] = {
                "post": {
                    "summary": f"Score raw records with {name}",
                    "operationId": f"predict_{name}",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{prefix}PredictRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "one prediction per record, in order",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}
                            },
                        },
                        **errors,
                    },
                }
            }
        v2_errors = {
            str(code): {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            for code, text in (
                (400, "an input the model cannot run (named)"),
                (404, "unknown model or version"),
                (413, "body too large"),
                (429, "the model's queue is full"),
                (504, "the deadline passed"),
            )
        }
        components["V2InferenceRequest"] = v2_request_schema()
        for path, parameters in (
            ("/v2/models/{name}/infer", ["name"]),
            ("/v2/models/{name}/versions/{version}/infer", ["name", "version"]),
        ):
            document.setdefault("paths", {})[path] = {
                "post": {
                    "summary": "KServe v2: inference (JSON tensors, or a JSON header and binary tensors)",
                    "operationId": "v2_infer" if len(parameters) == 1 else "v2_infer_version",
                    "parameters": [
                        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in parameters
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}}
                        },
                    },
                    "responses": {"200": {"description": "the outputs asked for"}, **v2_errors},
                }
            }
        return document

    app.openapi = _openapi  # type: ignore[method-assign]
    return app
