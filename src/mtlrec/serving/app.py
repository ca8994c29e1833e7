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
(:class:`~mtlrec.serving.batcher.MicroBatcher`), so a bad request never fails its neighbours. A new version is
opened and warmed completely before it replaces the old one; in-flight requests finish on the old model, which is
closed once they have drained. Errors are JSON ``{"error": "..."}`` (v1 validation errors add pydantic's
``detail`` with the field's ``loc``); ``GET /metrics`` exposes Prometheus histograms and counters.

Example::

    app = create_app(Path("model_repository"), max_batch_size=256, max_delay_ms=0.0)
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mtlrec import __version__
from mtlrec.data.preprocess import SMALL_FRAME_ROWS, Preprocessor
from mtlrec.errors import CheckpointError, ConfigError, DataError, MtlrecError
from mtlrec.export.spec import ExportSpec, Platform
from mtlrec.export.triton_config import ServingOptions, build_model_config, parse, to_dict
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema
from mtlrec.serving.batcher import BatcherClosed, MicroBatcher
from mtlrec.serving.metrics import ServerMetrics
from mtlrec.serving.repository import ServedModel, list_models, open_model
from mtlrec.serving.runners import Runner
from mtlrec.serving.schemas import PredictResponse, build_request_model, records_to_frame, request_schema_json

logger = logging.getLogger("mtlrec.serving")

API_KEY_ENV = "MTLREC_API_KEY"
Backend = Literal["auto", "onnxruntime", "torchscript", "triton"]
BACKENDS = ("auto", "onnxruntime", "torchscript", "triton")
_PLATFORMS: dict[str, Platform] = {"model.onnx": "onnxruntime_onnx", "model.pt": "pytorch_libtorch"}
_V2_DATATYPES = {"int64": "INT64", "float32": "FP32"}
_NUMPY_WIRE: dict[str, np.dtype[Any]] = {"INT64": np.dtype("<i8"), "FP32": np.dtype("<f4")}  # little-endian
_NATIVE: dict[str, np.dtype[Any]] = {"INT64": np.dtype(np.int64), "FP32": np.dtype(np.float32)}
_SERVER_NAME = "mtlrec"
_INLINE_PARSE_BYTES = 65_536
_EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


# ------------------------------------------------------------------------------------------------- errors
class HTTPProblem(Exception):  # noqa: N818  (an answer, not a bug)
    """An error answer: status, a message naming what is wrong, optional structured detail."""

    def __init__(
        self, status: int, message: str, detail: list[dict[str, Any]] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.hint = hint

    def response(self) -> JSONResponse:
        """The JSON answer ``{"error": ..., "hint"?: ..., "detail"?: [...]}``."""
        body: dict[str, Any] = {"error": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.detail is not None:
            body["detail"] = self.detail
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _unknown_model(name: str, version: str | None = None) -> HTTPProblem:
    what = f"'{name}'" if version is None else f"'{name}' version {version}"
    return HTTPProblem(404, f"Request for unknown model: {what} is not found")


# ------------------------------------------------------------------------------------------------- stats
@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Triton-style statistics of one served model version (``GET /v2/models/{name}/stats``)."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)

    def on_batch(self, rows: int, _requests: int, seconds: float) -> None:
        """Batcher hook: one runner call of ``rows`` rows took ``seconds``."""
        self.execution_count += 1
        self.batches.setdefault(rows, _Duration()).add(seconds)

    def as_dict(self, name: str, version: int) -> dict[str, Any]:
        """The ``model_stats`` entry of this model."""
        zero = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": zero,
                    "compute_infer": d.as_dict(),
                    "compute_output": zero,
                }
                for size, d in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


# ------------------------------------------------------------------------------------------------- models
@dataclass
class ModelEntry:
    """One served model version: the loaded model, its batcher, its Triton config and request model."""

    name: str
    served: ServedModel
    batcher: MicroBatcher
    platform: Platform
    config: dict[str, Any]
    request_model: type[BaseModel]
    stats: ModelStats
    in_use: int = 0
    retired: bool = False
    _drained: asyncio.Event | None = None

    @property
    def version(self) -> int:
        """The version number."""
        return self.served.version

    @property
    def spec(self) -> ExportSpec:
        """The export spec."""
        return self.served.spec

    @property
    def schema(self) -> FeatureSchema:
        """The fitted feature schema."""
        return self.served.schema

    @property
    def max_batch_size(self) -> int:
        """The config's ``max_batch_size``: the most rows one v2 request may carry."""
        return int(self.config.get("max_batch_size", 0) or 0)

    def wire_output(self, output: str) -> str:
        """The v2 tensor name of spec output ``output`` (``ctr__0`` for a TorchScript model)."""
        return self.spec.backend_output_name(output, self.platform)

    def wire_dims(self, tensor: str) -> list[int]:
        """Per-row dims of an input as the config declares them (a per-row scalar is ``[1]``)."""
        for t in self.spec.inputs:
            if t.name == tensor:
                return list(t.shape) or [1]
        raise KeyError(tensor)

    async def wait_drained(self) -> None:
        """Return once no request uses this entry any more."""
        if self.in_use == 0:
            return
        self._drained = self._drained or asyncio.Event()
        await self._drained.wait()

    def release(self) -> None:
        """One request is done with this entry."""
        self.in_use -= 1
        if self.in_use == 0 and self._drained is not None:
            self._drained.set()


def _platform_of(version_dir: Path) -> Platform:
    for filename, platform in _PLATFORMS.items():
        if (version_dir / filename).is_file():
            return platform
    return "onnxruntime_onnx"


def _read_config(repo: Path, name: str, spec: ExportSpec, platform: Platform) -> dict[str, Any]:
    """The model's config.pbtxt as Triton's JSON (or one built from the spec when the file is missing)."""
    path = repo / name / "config.pbtxt"
    cfg = parse(path.read_text()) if path.is_file() else build_model_config(spec, platform, name, ServingOptions())
    return to_dict(cfg)


def _zero_feed(spec: ExportSpec) -> dict[str, np.ndarray]:
    """One all-zero row of every input (id 0 = OOV, dense 0 = the mean, scenario 0): a valid warm-up batch."""
    dtypes = {"int64": np.int64, "float32": np.float32}
    return {t.name: np.zeros([1, *t.shape], dtype=dtypes[t.dtype]) for t in spec.inputs}


class ThreadLocalRunner:
    """A runner opened once per calling thread, behind the runner interface.

    ``tritonclient.http``'s client runs on gevent and fails when used from another thread than the one that made
    it ("Cannot switch to a different thread"); the warm-up and the batcher's worker thread each get their own.

    Args:
        factory: opens one runner (called in the thread that will use it).
    """

    def __init__(self, factory: Callable[[], Runner]) -> None:
        self._factory = factory
        self._local = threading.local()
        self._opened: list[Runner] = []
        self._lock = threading.Lock()
        self.spec = self._get().spec

    def _get(self) -> Runner:
        runner: Runner | None = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._factory()
            self._local.runner = runner
            with self._lock:
                self._opened.append(runner)
        return runner

    @property
    def description(self) -> str:
        """The description of the underlying runner."""
        return self._opened[0].description

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch with this thread's runner."""
        return self._get().infer(tensors)

    def close(self) -> None:
        """Close every runner opened (best effort: a client may refuse to close from a foreign thread)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for runner in opened:
            with contextlib.suppress(Exception):
                runner.close()


def open_triton_model(repo: Path, name: str, url: str, version: int | None = None) -> ServedModel:
    """A repository model whose runner is a Triton server serving the same repository (preprocessing stays here).

    Args:
        repo: the model repository (read for the spec, schema and preprocessor).
        name: the model name (the same on the Triton server).
        url: Triton's HTTP address, ``host:port``.
        version: the version; None = the newest in ``repo``.
    """
    import json as _json

    from mtlrec.serving.runners import TritonRunner

    models = list_models(repo)
    if name not in models:
        raise CheckpointError(f"model `{name}` is not in {repo}", hint=f"servable models: {', '.join(models)}")
    chosen = version if version is not None else models[name][-1]
    path = repo / name / str(chosen)
    spec = ExportSpec.load(path / "export_spec.json")
    schema = FeatureSchema.load(path / "schema.json")
    preprocessor = Preprocessor.load(path / "preprocessor.json")
    runner = ThreadLocalRunner(lambda: TritonRunner(url, name, spec, version=str(chosen)))
    manifest_path = path / "manifest.json"
    manifest = _json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return ServedModel(name, chosen, path, spec, schema, preprocessor, runner, manifest)


class ModelRegistry:
    """The served models by name; loads, hot-swaps and drains them.

    Args:
        repo: the model repository.
        names: models to serve; None = every servable model of ``repo`` that ``backend`` can run.
        backend: ``auto``, ``onnxruntime``, ``torchscript`` or ``triton``.
        max_batch_size: rows per runner call of the micro-batcher.
        max_delay_ms: micro-batcher delay.
        threads: intra-op threads of in-process runtimes.
        triton_url: Triton's HTTP address (backend ``triton`` only).
        metrics: where batch metrics go.
    """

    def __init__(
        self,
        repo: Path,
        names: list[str] | None,
        *,
        backend: Backend,
        max_batch_size: int,
        max_delay_ms: float,
        threads: int | None,
        triton_url: str | None,
        metrics: ServerMetrics,
    ) -> None:
        self.repo = repo
        self.fixed_names = names
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_delay_ms = max_delay_ms
        self.threads = threads
        self.triton_url = triton_url
        self.metrics = metrics
        self.entries: dict[str, ModelEntry] = {}
        self.failed: dict[str, str] = {}
        self.shutting_down = False
        self.lifespans = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # -- discovery and loading (synchronous: also run in worker threads)
    def servable(self) -> list[str]:
        """Names this registry should serve (the fixed list, or what ``backend`` can run in the repository)."""
        models = list_models(self.repo)
        if self.fixed_names is not None:
            return list(self.fixed_names)
        wanted = {"onnxruntime": "model.onnx", "torchscript": "model.pt"}.get(self.backend)
        if wanted is None:
            return list(models)
        return [n for n, versions in models.items() if (self.repo / n / str(versions[-1]) / wanted).is_file()]

    def open_entry(self, name: str, version: int | None = None) -> ModelEntry:
        """Open, check and warm one model version; nothing is swapped in."""
        if self.backend == "triton":
            if not self.triton_url:
                raise ConfigError("backend triton needs a server address", hint="pass --triton-url HOST:PORT")
            served = open_triton_model(self.repo, name, self.triton_url, version)
        else:
            served = open_model(self.repo, name, version, backend=self.backend, threads=self.threads)
        try:
            served.runner.infer(_zero_feed(served.spec))  # warm-up before the first request sees it
            platform = _platform_of(served.path)
            config = _read_config(self.repo, name, served.spec, platform)
            stats = ModelStats()
            metrics = self.metrics

            def on_batch(rows: int, requests: int, seconds: float) -> None:
                stats.on_batch(rows, requests, seconds)
                metrics.batch_size.labels(name).observe(rows)
                metrics.batch_requests.labels(name).observe(requests)
                metrics.batch_latency.labels(name).observe(seconds)

            batcher = MicroBatcher(
                served.runner, max_batch_size=self.max_batch_size, max_delay_ms=self.max_delay_ms, on_batch=on_batch
            )
            return ModelEntry(name, served, batcher, platform, config, build_request_model(served.schema), stats)
        except Exception:
            served.close()
            raise

    def _install(self, entry: ModelEntry) -> ModelEntry | None:
        """Swap ``entry`` in (one assignment: atomic for the event loop); return the entry it replaced."""
        old = self.entries.get(entry.name)
        self.entries[entry.name] = entry
        self.failed.pop(entry.name, None)
        self.metrics.model_version.labels(entry.name).set(entry.version)
        batcher = entry.batcher
        self.metrics.queue_depth.labels(entry.name).set_function(lambda: batcher.queue_rows)
        return old

    def load_all(self) -> None:
        """Open every model to serve (at start-up, before the server accepts requests)."""
        names = self.servable()
        if not names:
            raise CheckpointError(
                f"no model in {self.repo} can be served with backend {self.backend}",
                hint="export one with `mtlrec export RUN_DIR --repo DIR`, or pick another --backend",
            )
        for name in names:
            self._install(self.open_entry(name))

    # -- request side
    @contextlib.asynccontextmanager
    async def use(self, name: str, version: str | None = None) -> AsyncIterator[ModelEntry]:
        """The current entry of ``name``, held (not closed) until the block ends.

        Raises:
            HTTPProblem: 404 for an unknown model or a version that is not served.
        """
        entry = self.entries.get(name)
        if entry is None:
            raise _unknown_model(name)
        if version is not None and version != str(entry.version):
            raise _unknown_model(name, version)
        entry.in_use += 1  # no await between the lookup and this line: a swap cannot slip in between
        try:
            yield entry
        finally:
            entry.release()

    # -- reload side
    async def reload(self, name: str) -> dict[str, Any]:
        """Serve the newest version of ``name`` if it is not served yet; the old one drains, then closes.

        Returns:
            ``{"model", "version", "previous_version", "reloaded"}``.

        Raises:
            HTTPProblem: 404 for a model that is not (and cannot be) served; 500 when the new version fails to
                load (the old one keeps serving).
        """
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            current = self.entries.get(name)
            if current is None and (self.fixed_names is not None and name not in self.fixed_names):
                raise _unknown_model(name)
            try:
                models = await asyncio.to_thread(list_models, self.repo)
            except MtlrecError as err:
                raise HTTPProblem(500, err.message, hint=err.hint) from None
            if name not in models:
                if current is None:
                    raise _unknown_model(name)
                raise HTTPProblem(500, f"model `{name}` has disappeared from {self.repo}; still serving the old one")
            newest = models[name][-1]
            previous = str(current.version) if current else None
            if current is not None and newest == current.version:
                return {"model": name, "version": previous, "previous_version": previous, "reloaded": False}
            try:
                entry = await asyncio.to_thread(self.open_entry, name, newest)
            except Exception as err:  # any load failure leaves the old version serving
                message = err.message if isinstance(err, MtlrecError) else f"{type(err).__name__}: {err}"
                self.failed[name] = f"version {newest}: {message}"
                self.metrics.reloads.labels(name, "failed").inc()
                logger.error("loading %s version %s failed, still serving %s: %s", name, newest, previous, message)
                raise HTTPProblem(
                    500,
                    f"loading {name} version {newest} failed: {message}",
                    hint=f"version {previous} keeps serving" if previous else None,
                ) from None
            old = self._install(entry)
            self.metrics.reloads.labels(name, "loaded").inc()
            logger.info("serving %s version %s (was %s)", name, entry.version, previous)
            if old is not None:
                self._retire(old)
            return {"model": name, "version": str(entry.version), "previous_version": previous, "reloaded": True}

    def _retire(self, old: ModelEntry) -> None:
        old.retired = True
        task = asyncio.get_running_loop().create_task(self._close_when_drained(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_drained(self, entry: ModelEntry) -> None:
        await entry.wait_drained()
        await entry.batcher.close()
        await asyncio.to_thread(entry.served.close)
        logger.info("closed %s version %s", entry.name, entry.version)

    async def poll(self) -> None:
        """One polling round: every served model reloads if a newer version exists; new models are loaded."""
        try:
            names = await asyncio.to_thread(self.servable)
        except MtlrecError as err:
            logger.error("polling %s failed: %s", self.repo, err.message)
            return
        for name in sorted(set(names) | set(self.entries)):
            with contextlib.suppress(HTTPProblem):  # logged by reload; the old version keeps serving
                await self.reload(name)

    async def poll_forever(self, seconds: float) -> None:
        """Call :meth:`poll` every ``seconds`` until cancelled."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.poll()
            except Exception:  # the poller must survive anything
                logger.exception("model repository poll failed")

    async def close(self) -> None:
        """Drain and close every model."""
        self.shutting_down = True
        entries, self.entries = list(self.entries.values()), {}
        for entry in entries:
            await self._close_when_drained(entry)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


# ------------------------------------------------------------------------------------------------- body limit
class _BodyTooLarge(Exception):  # noqa: N818
    pass


def _too_large(limit: int, size: int | None) -> JSONResponse:
    what = f"request body of {size} bytes" if size is not None else "request body"
    return JSONResponse(
        {
            "error": f"{what} exceeds the limit of {limit} bytes",
            "hint": "send fewer records per request, or raise the server's --max-body-bytes",
        },
        status_code=413,
    )


class BodyLimitMiddleware:
    """Answer 413 to a body over ``max_bytes`` (declared by Content-Length, or counted while it streams in)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                declared = int(value) if value.isdigit() else None
                if declared is None or declared > self.max_bytes:
                    await _too_large(self.max_bytes, declared)(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await _too_large(self.max_bytes, None)(scope, receive, send)


def _decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a ``Content-Encoding`` of gzip or deflate (tritonclient's request compression), within ``limit``."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    kind = encoding.strip().lower()
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(kind)
    if wbits is None:
        raise HTTPProblem(415, f"unsupported Content-Encoding `{encoding}`", hint="use gzip, deflate or none")
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as err:
        raise HTTPProblem(400, f"the {kind} body cannot be decompressed: {err}") from None
    if len(out) > limit:
        raise HTTPProblem(413, f"the decompressed request body exceeds the limit of {limit} bytes")
    return out


# ------------------------------------------------------------------------------------------------- auth
def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else ``$MTLREC_API_KEY``, else None (no key required)."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return key or None


def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
        raise HTTPProblem(
            401, "missing or wrong API key", hint="send the header `x-api-key: KEY` or `Authorization: Bearer KEY`"
        )


# ------------------------------------------------------------------------------------------------- v1
def _loc(loc: tuple[int | str, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _validate_records(entry: ModelEntry, body: bytes) -> BaseModel:
    """The body as the model's request (400 for malformed JSON, 422 naming the field otherwise)."""
    try:
        return entry.request_model.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_context=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise HTTPProblem(
                400, f"malformed JSON body: {errors[0]['msg']}", hint='send {"records": [{FIELD: VALUE, ...}]}'
            ) from None
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        message = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors[:5])
        if len(errors) > 5:
            message += f"; ... ({len(errors)} errors)"
        raise HTTPProblem(
            422, message, detail=detail, hint=f"GET /v1/models/{entry.name} describes the fields"
        ) from None


def _predictions(outputs: dict[str, np.ndarray], names: list[str]) -> list[dict[str, float | None]]:
    """Per-output [N] arrays -> one ``{output: probability}`` per row, in row order."""
    # [N] per output -> [N, T]
    table = np.stack([np.asarray(outputs[n], dtype=np.float32) for n in names], axis=1).tolist()
    return [{n: (v if math.isfinite(v) else None) for n, v in zip(names, row, strict=True)} for row in table]


# ------------------------------------------------------------------------------------------------- v2
class _V2Input(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class _V2Output(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class _V2Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    inputs: list[_V2Input]
    outputs: list[_V2Output] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


@dataclass
class V2Request:
    """A decoded v2 inference request: the model's tensors and the outputs asked for."""

    id: str | None
    tensors: dict[str, np.ndarray]
    rows: int
    outputs: list[tuple[str, bool]]  # (spec output name, binary)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise HTTPProblem(
            400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes"
        )
    n = int(header_length)
    return body[:n], body[n:]


def _json_tensor(item: _V2Input, expected: str) -> np.ndarray:
    """The ``data`` of a JSON tensor (flat or nested lists) as a flat array of the expected datatype."""
    if item.data is None:
        raise HTTPProblem(400, f"input '{item.name}' has no data (neither `data` nor `binary_data_size`)")
    try:
        values = np.asarray(item.data)
    except (ValueError, OverflowError, RecursionError, TypeError):
        raise HTTPProblem(400, f"input '{item.name}' has ragged or invalid data") from None
    allowed = "iu" if expected == "INT64" else "iuf"
    if values.dtype.kind not in allowed:
        raise HTTPProblem(
            400, f"input '{item.name}' holds {values.dtype.kind!r}-kind values; expected {expected} numbers"
        )
    try:
        flat: np.ndarray = values.astype(_NATIVE[expected], casting="same_kind").reshape(-1)
        return flat
    except (TypeError, OverflowError):
        raise HTTPProblem(400, f"input '{item.name}' has values that do not fit {expected}") from None


def _check_ranges(entry: ModelEntry, tensors: dict[str, np.ndarray]) -> None:
    """Ids inside each vocabulary, a known scenario, finite dense values: a runtime never sees a bad row."""
    schema = entry.schema
    if SPARSE_IDS in tensors:
        ids = tensors[SPARSE_IDS]  # [B, F]
        for j, (name, size) in enumerate(zip(schema.sparse_names, schema.vocab_sizes(), strict=True)):
            column = ids[:, j]
            bad = (column < 0) | (column >= size)
            if bool(bad.any()):
                row = int(np.flatnonzero(bad)[0])
                raise HTTPProblem(
                    400,
                    f"input 'sparse_ids' column {j} (field `{name}`) has id {int(column[row])} at row {row}, "
                    f"outside [0, {size})",
                    hint="ids come from the model's preprocessor; 0 is the out-of-vocabulary id",
                )
    if DENSE in tensors and not bool(np.isfinite(tensors[DENSE]).all()):
        row = int(np.flatnonzero(~np.isfinite(tensors[DENSE]).all(axis=1))[0])
        raise HTTPProblem(400, f"input 'dense' has a non-finite value at row {row}")
    if SCENARIO in tensors:
        scenario = tensors[SCENARIO]
        count = schema.num_scenarios
        bad = (scenario < 0) | (scenario >= count)
        if bool(bad.any()):
            row = int(np.flatnonzero(bad)[0])
            raise HTTPProblem(400, f"input 'scenario' has id {int(scenario[row])} at row {row}, outside [0, {count})")


def parse_v2_request(entry: ModelEntry, body: bytes, header_length: str | None) -> V2Request:
    """Decode a v2 inference body (JSON, or JSON header + binary tensors) into the model's tensors.

    Raises:
        HTTPProblem: 400 naming the input for anything the model cannot run.
    """
    header, binary = _split_body(body, header_length)
    try:
        raw = json.loads(header)
    except (ValueError, RecursionError) as err:
        raise HTTPProblem(400, f"malformed JSON in the inference request: {err}") from None
    try:
        request = _V2Request.model_validate(raw)
    except ValidationError as err:
        first = err.errors(include_url=False, include_context=False, include_input=False)[0]
        raise HTTPProblem(400, f"invalid inference request: {_loc(first['loc'])}: {first['msg']}") from None
    spec = entry.spec
    given = [i.name for i in request.inputs]
    unknown = [n for n in given if n not in spec.input_names]
    if unknown:
        raise HTTPProblem(
            400, f"unexpected inference input '{unknown[0]}' for model '{entry.name}'; inputs are {spec.input_names}"
        )
    if len(set(given)) != len(given) or set(given) != set(spec.input_names):
        raise HTTPProblem(400, f"expected the inputs {spec.input_names} once each, got {given}")
    offset = 0
    tensors: dict[str, np.ndarray] = {}
    rows: set[int] = set()
    for item in request.inputs:
        tspec = next(t for t in spec.inputs if t.name == item.name)
        expected = _V2_DATATYPES[tspec.dtype]
        if item.datatype != expected:
            raise HTTPProblem(
                400, f"input '{item.name}' has datatype {item.datatype}; model '{entry.name}' expects {expected}"
            )
        dims = entry.wire_dims(item.name)
        shape = item.shape
        ok = (
            len(shape) >= 1
            and all(d >= 0 for d in shape)
            and (shape[1:] == dims or (not tspec.shape and len(shape) == 1))
        )
        if not ok:
            raise HTTPProblem(
                400, f"input '{item.name}' has shape {shape}; expected [batch, {', '.join(map(str, dims))}]"
            )
        count = math.prod(shape)
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise HTTPProblem(400, f"input '{item.name}': binary_data_size {size!r} overruns the body")
            dtype = _NUMPY_WIRE[expected]
            if size != count * dtype.itemsize:
                raise HTTPProblem(400, f"input '{item.name}': {size} bytes do not hold shape {shape} of {expected}")
            flat = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).astype(_NATIVE[expected])
            offset += size
        else:
            flat = _json_tensor(item, expected)
            if flat.size != count:
                raise HTTPProblem(400, f"input '{item.name}' has {flat.size} values for shape {shape}")
        rows.add(shape[0])
        if tspec.shape:
            tensors[item.name] = flat.reshape(shape)  # [B, F] or [B, D]
        else:
            tensors[item.name] = flat.reshape(shape[0])  # [B, 1] or [B] -> [B]
    if offset != len(binary):
        raise HTTPProblem(400, f"the body carries {len(binary) - offset} bytes that no input claims")
    if len(rows) != 1:
        raise HTTPProblem(400, f"inputs disagree on the batch size: {sorted(rows)}")
    batch = rows.pop()
    if batch < 1:
        raise HTTPProblem(400, "the inference request has no rows (batch size 0)")
    if entry.max_batch_size and batch > entry.max_batch_size:
        raise HTTPProblem(
            400, f"batch size {batch} exceeds the max_batch_size {entry.max_batch_size} of model '{entry.name}'"
        )
    _check_ranges(entry, tensors)
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wire_to_spec = {entry.wire_output(n): n for n in spec.output_names}
    outputs: list[tuple[str, bool]] = []
    for out in request.outputs if request.outputs is not None else []:
        if out.name not in wire_to_spec:
            raise HTTPProblem(
                400,
                f"unexpected inference output '{out.name}' for model '{entry.name}'; outputs are {list(wire_to_spec)}",
            )
        if out.parameters.get("classification"):
            raise HTTPProblem(400, "the classification extension is not supported")
        outputs.append((wire_to_spec[out.name], bool(out.parameters.get("binary_data", default_binary))))
    if request.outputs is None:
        outputs = [(n, default_binary) for n in spec.output_names]
    return V2Request(request.id, tensors, batch, outputs)


def v2_response(entry: ModelEntry, request: V2Request, outputs: dict[str, np.ndarray]) -> Response:
    """The v2 answer: JSON, or a JSON header followed by the binary outputs (``[B, 1]`` FP32 each)."""
    head: dict[str, Any] = {"model_name": entry.name, "model_version": str(entry.version), "outputs": []}
    if request.id is not None:
        head["id"] = request.id
    blobs: list[bytes] = []
    for name, binary in request.outputs:
        values = np.ascontiguousarray(outputs[name], dtype="<f4").reshape(request.rows, 1)  # [B] -> [B, 1]
        item: dict[str, Any] = {"name": entry.wire_output(name), "datatype": "FP32", "shape": [request.rows, 1]}
        if binary:
            blob = values.tobytes()
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = [v if math.isfinite(v) else None for v in values.reshape(-1).tolist()]
        head["outputs"].append(item)
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(text))},
    )


def _model_metadata(entry: ModelEntry) -> dict[str, Any]:
    inputs = [
        {"name": t.name, "datatype": _V2_DATATYPES[t.dtype], "shape": [-1, *entry.wire_dims(t.name)]}
        for t in entry.spec.inputs
    ]
    outputs = [
        {"name": entry.wire_output(t.name), "datatype": _V2_DATATYPES[t.dtype], "shape": [-1, *(t.shape or [1])]}
        for t in entry.spec.outputs
    ]
    return {
        "name": entry.name,
        "versions": [str(entry.version)],
        "platform": entry.platform,
        "inputs": inputs,
        "outputs": outputs,
    }


# ------------------------------------------------------------------------------------------------- the app
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
) -> FastAPI:
    """The server of a model repository (models are opened and warmed here, before the app is returned).

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

    Raises:
        ConfigError: an invalid option.
        CheckpointError: the repository or a model cannot be opened.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend `{backend}`", hint=f"use one of {', '.join(BACKENDS)}")
    if max_batch_size < 1 or max_delay_ms < 0 or max_body_bytes < 1:
        raise ConfigError("max_batch_size and max_body_bytes must be positive, max_delay_ms not negative")
    if poll_seconds is not None and poll_seconds <= 0:
        raise ConfigError("poll_seconds must be positive", hint="leave it out to reload only on request")
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
    )
    registry.load_all()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Lifespans may nest or repeat (test clients): the first one in starts, the last one out closes.
        if registry.lifespans == 0 and registry.shutting_down:
            await asyncio.to_thread(registry.load_all)  # started again after a shutdown: reopen the models
            registry.shutting_down = False
        registry.lifespans += 1
        poller = asyncio.create_task(registry.poll_forever(poll_seconds)) if poll_seconds else None
        try:
            yield
        finally:
            registry.lifespans -= 1
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            if registry.lifespans == 0:
                registry.shutting_down = True  # readiness answers 503 while the models drain
                await registry.close()

    app = FastAPI(
        title="mtlrec serving",
        version=__version__,
        description="Multi-task recommender predictions: raw records (v1) and KServe v2 / Triton tensors (v2).",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)

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

    async def _observed(route: str, name: str, handler: Callable[[], Awaitable[Response]]) -> Response:
        """Run a prediction handler; count it, time it, and turn its errors into JSON answers."""
        start = time.perf_counter()
        label = name if name in registry.entries else "-"
        try:
            response = await handler()
        except HTTPProblem as err:
            response = err.response()
        except MtlrecError as err:
            response = HTTPProblem(400, err.message, hint=err.hint).response()
        code = response.status_code
        metrics.requests.labels(route, label, str(code)).inc()
        if code >= 400:
            metrics.errors.labels(route, label, str(code)).inc()
        metrics.request_latency.labels(route, label).observe(time.perf_counter() - start)
        return response

    async def _infer(entry: ModelEntry, tensors: dict[str, np.ndarray], started: float) -> dict[str, np.ndarray]:
        """The micro-batched runner call; a runner failure is a 503 for this request only."""
        entry.stats.compute_input.add(time.perf_counter() - started)
        try:
            result = await entry.batcher.submit_timed(tensors)
        except BatcherClosed:
            raise HTTPProblem(503, f"model '{entry.name}' is being unloaded; retry") from None
        except Exception as err:  # the runtime failed: this batch only
            entry.stats.fail.add(time.perf_counter() - started)
            logger.error("inference on %s version %s failed: %s", entry.name, entry.version, err)
            raise HTTPProblem(503, f"inference failed on model '{entry.name}': {err}") from None
        rows = int(next(iter(tensors.values())).shape[0])
        entry.stats.inference_count += rows
        entry.stats.queue.add(result.queue_seconds)
        entry.stats.compute_infer.add(result.compute_seconds)
        entry.stats.success.add(time.perf_counter() - started)
        entry.stats.last_inference = int(time.time() * 1000)
        metrics.rows.labels(entry.name).inc(rows)
        return result.outputs

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
            raise _unknown_model(name)
        description = request_schema_json(entry.schema, entry.spec.output_names)
        return {"model": name, "version": str(entry.version), **description}

    @app.post(
        "/v1/models/{name}/predict",
        summary="Score raw records",
        response_model=PredictResponse,
        include_in_schema=False,  # documented per model by `_openapi` with the model's own request schema
    )
    async def v1_predict(name: str, request: Request) -> Response:
        async def handle() -> Response:
            _authorize(request, key)
            body = await request.body()
            started = time.perf_counter()
            async with registry.use(name) as entry:
                records = _validate_records(entry, body)
                frame = records_to_frame(records, entry.schema)
                try:
                    if len(frame) <= SMALL_FRAME_ROWS:  # ~0.3 ms inline beats a thread hop for a few records
                        tensors, oov = entry.served.encode(frame)
                    else:  # a large request is encoded off the event loop
                        tensors, oov = await asyncio.to_thread(entry.served.encode, frame)
                except DataError as err:
                    raise HTTPProblem(422, err.message, hint=err.hint) from None
                outputs = await _infer(entry, tensors, started)
                version = str(entry.version)
            for field_name, count in oov.items():
                if count:
                    metrics.oov.labels(name, field_name).inc(count)
            answer = {
                "model": name,
                "version": version,
                "predictions": _predictions(outputs, entry.spec.output_names),
                "oov": oov,
            }
            return JSONResponse(answer)

        return await _observed("v1_predict", name, handle)

    @app.post("/v1/models/{name}/load", summary="Serve the newest version of a model now")
    async def v1_load(name: str, request: Request) -> dict[str, Any]:
        _authorize(request, key)
        return await registry.reload(name)

    # ----------------------------------------------------------------------------------------- v2
    @app.get("/v2/health/live", summary="KServe v2: the server is live")
    async def v2_live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready", summary="KServe v2: the server is ready")
    async def v2_ready() -> Response:
        ready = not registry.shutting_down and bool(registry.entries)
        return Response(status_code=200 if ready else 503)

    @app.get("/v2", summary="KServe v2: server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": _SERVER_NAME, "version": __version__, "extensions": _EXTENSIONS}

    @app.get("/v2/models/stats", summary="KServe v2: statistics of every model")
    async def v2_all_stats() -> dict[str, Any]:
        return {"model_stats": [e.stats.as_dict(n, e.version) for n, e in sorted(registry.entries.items())]}

    def _entry(name: str, version: str | None = None) -> ModelEntry:
        entry = registry.entries.get(name)
        if entry is None:
            raise _unknown_model(name)
        if version is not None and version != str(entry.version):
            raise _unknown_model(name, version)
        return entry

    @app.get("/v2/models/{name}", summary="KServe v2: model metadata")
    async def v2_model(name: str) -> dict[str, Any]:
        return _model_metadata(_entry(name))

    @app.get("/v2/models/{name}/versions/{version}", summary="KServe v2: model metadata of a version")
    async def v2_model_version(name: str, version: str) -> dict[str, Any]:
        return _model_metadata(_entry(name, version))

    @app.get("/v2/models/{name}/ready", summary="KServe v2: the model is ready")
    async def v2_model_ready(name: str) -> Response:
        _entry(name)
        return Response(status_code=200)

    @app.get("/v2/models/{name}/versions/{version}/ready", summary="KServe v2: the model version is ready")
    async def v2_model_version_ready(name: str, version: str) -> Response:
        _entry(name, version)
        return Response(status_code=200)

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

    async def _v2_infer(name: str, version: str | None, request: Request) -> Response:
        async def handle() -> Response:
            _authorize(request, key)
            body = _decode_body(await request.body(), request.headers.get("content-encoding"), max_body_bytes)
            started = time.perf_counter()
            async with registry.use(name, version) as entry:
                header_length = request.headers.get("inference-header-content-length")
                if len(body) > _INLINE_PARSE_BYTES:  # a large body is decoded off the event loop
                    parsed = await asyncio.to_thread(parse_v2_request, entry, body, header_length)
                else:
                    parsed = parse_v2_request(entry, body, header_length)
                outputs = await _infer(entry, parsed.tensors, started)
                out_start = time.perf_counter()
                response = v2_response(entry, parsed, outputs)
                entry.stats.compute_output.add(time.perf_counter() - out_start)
                return response

        return await _observed("v2_infer", name, handle)

    @app.post("/v2/models/{name}/infer", summary="KServe v2: inference (JSON or binary tensors)")
    async def v2_infer(name: str, request: Request) -> Response:
        return await _v2_infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="KServe v2: inference on a version")
    async def v2_infer_version(name: str, version: str, request: Request) -> Response:
        return await _v2_infer(name, version, request)

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
        _authorize(request, key)
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
        return document

    app.openapi = _openapi  # type: ignore[method-assign]
    return app
