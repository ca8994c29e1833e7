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
import ctypes
import ctypes.util
import functools
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
from mtlrec.export.golden import check_golden, load_golden
from mtlrec.export.spec import ExportSpec, Platform
from mtlrec.export.triton_config import ServingOptions, build_model_config, parse, to_dict
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema
from mtlrec.serving.batcher import BatcherClosed, ClientGone, DeadlineExceeded, MicroBatcher, QueueFull
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
TIMEOUT_HEADER = "x-request-timeout-ms"
DEFAULT_MAX_QUEUE = 512
# Why 1 s: the queue drains in milliseconds on the models served here; a client that waits a second finds room.
RETRY_AFTER_S = 1


# ------------------------------------------------------------------------------------------------- errors
class HTTPProblem(Exception):  # noqa: N818  (an answer, not a bug)
    """An error answer: status, a message naming what is wrong, optional structured detail."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: list[dict[str, Any]] | None = None,
        hint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.hint = hint
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON answer ``{"error": ..., "hint"?: ..., "detail"?: [...]}``."""
        body: dict[str, Any] = {"error": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.detail is not None:
            body["detail"] = self.detail
        headers = dict(self.headers or {})
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(body, status_code=self.status, headers=headers or None)


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
    warmup_sizes: list[int] = field(default_factory=list)
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

    @functools.cached_property
    def dense_limits(self) -> np.ndarray | None:
        """Per dense column, the preprocessor's clip (``inf`` where none); None when no column is clipped."""
        limits = np.array([f.clip if f.clip is not None else np.inf for f in self.schema.dense], dtype=np.float32)
        return limits if bool(np.isfinite(limits).any()) else None

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


def _zero_feed(spec: ExportSpec, rows: int = 1) -> dict[str, np.ndarray]:
    """``rows`` all-zero rows of every input (id 0 = OOV, dense 0 = the mean, scenario 0): a valid warm-up batch."""
    dtypes = {"int64": np.int64, "float32": np.float32}
    return {t.name: np.zeros([rows, *t.shape], dtype=dtypes[t.dtype]) for t in spec.inputs}


def warmup_batch_sizes(config: dict[str, Any], batcher_max: int | None = None) -> list[int]:
    """The batch sizes a version is warmed at before it serves.

    Batch 1, every ``model_warmup`` batch size and every ``dynamic_batching.preferred_batch_size`` of the config
    (the exported config, or the one built from the schema when the file is missing), and the micro-batcher's
    largest batch; all capped by the config's ``max_batch_size``. Why: ONNX Runtime and TorchScript pay for a new
    shape on its first run (allocations, kernel selection), which must not land on a client's request.

    Example:
        >>> warmup_batch_sizes({"max_batch_size": 8, "model_warmup": [{"batch_size": 8}],
        ...                     "dynamic_batching": {"preferred_batch_size": [2, 4, 8]}}, batcher_max=256)
        [1, 2, 4, 8]
    """
    sizes = {1}
    for warmup in config.get("model_warmup") or []:
        sizes.add(int(warmup.get("batch_size", 1) or 1))
    sizes.update(int(s) for s in (config.get("dynamic_batching") or {}).get("preferred_batch_size") or [])
    if batcher_max is not None:
        sizes.add(batcher_max)
    limit = int(config.get("max_batch_size", 0) or 0)
    return sorted(s for s in sizes if s >= 1 and (limit <= 0 or s <= limit))


def _version_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of a version directory's files: changes when the version is rewritten."""
    try:
        files = sorted(p for p in path.iterdir() if p.is_file())
        return tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in files)
    except OSError:
        return ()


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
    """The served models by name; loads, warms, checks, hot-swaps and drains them.

    Args:
        repo: the model repository.
        names: models to serve; None = every servable model of ``repo`` that ``backend`` can run.
        backend: ``auto``, ``onnxruntime``, ``torchscript`` or ``triton``.
        max_batch_size: rows per runner call of the micro-batcher.
        max_delay_ms: micro-batcher delay.
        threads: intra-op threads of in-process runtimes.
        triton_url: Triton's HTTP address (backend ``triton`` only).
        metrics: where batch metrics go.
        max_queue: requests each model's queue holds before 429; None = unbounded.
        golden: replay each version's golden records before serving it (in-process backends).
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
        max_queue: int | None = DEFAULT_MAX_QUEUE,
        golden: bool = True,
    ) -> None:
        self.repo = repo
        self.fixed_names = names
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_delay_ms = max_delay_ms
        self.threads = threads
        self.triton_url = triton_url
        self.metrics = metrics
        self.max_queue = max_queue
        self.golden = golden
        self.entries: dict[str, ModelEntry] = {}
        self.failed: dict[str, str] = {}
        self.loading: set[str] = set()  # models whose first version is being opened and warmed
        self.expected: set[str] = set()  # models the server must serve to be ready
        self.loaded = False  # the start-up load has finished
        self.draining = False  # shutting down: not ready, requests still served
        self.shutting_down = False
        self.lifespans = 0
        self._refused: dict[tuple[str, int], tuple[tuple[tuple[str, int, int], ...], str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """Every model to serve is loaded and warmed, and the server is not shutting down."""
        if self.draining or self.shutting_down or not self.loaded or not self.entries:
            return False
        return self.expected <= set(self.entries)

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
        """Open, warm and check one model version; nothing is swapped in.

        Raises:
            MtlrecError: the version cannot be opened, or it answers its golden records differently.
            Exception: whatever the runtime raised on the warm-up.
        """
        if self.backend == "triton":
            if not self.triton_url:
                raise ConfigError("backend triton needs a server address", hint="pass --triton-url HOST:PORT")
            served = open_triton_model(self.repo, name, self.triton_url, version)
        else:
            served = open_model(self.repo, name, version, backend=self.backend, threads=self.threads)
        try:
            platform = _platform_of(served.path)
            config = _read_config(self.repo, name, served.spec, platform)
            request_model = build_request_model(served.schema)
            sizes = self._warm_up(served, config)
            if self.golden and self.backend != "triton":  # Triton answers from its own copy of the repository
                self._check_golden(served, request_model)
            stats = ModelStats()
            metrics = self.metrics

            def on_batch(rows: int, requests: int, seconds: float) -> None:
                stats.on_batch(rows, requests, seconds)
                metrics.batch_size.labels(name).observe(rows)
                metrics.batch_requests.labels(name).observe(requests)
                metrics.batch_latency.labels(name).observe(seconds)

            batcher = MicroBatcher(
                served.runner,
                max_batch_size=self.max_batch_size,
                max_delay_ms=self.max_delay_ms,
                on_batch=on_batch,
                max_queue=self.max_queue,
            )
            return ModelEntry(name, served, batcher, platform, config, request_model, stats, sizes)
        except Exception:
            served.close()
            raise

    def _warm_up(self, served: ServedModel, config: dict[str, Any]) -> list[int]:
        """Run the model once at every warm-up batch size (batch 1 only through Triton, which warms its own)."""
        sizes = [1] if self.backend == "triton" else warmup_batch_sizes(config, self.max_batch_size)
        start = time.perf_counter()
        for rows in sizes:
            outputs = served.runner.infer(_zero_feed(served.spec, rows))
            bad = [n for n, v in outputs.items() if v.shape != (rows,) or not bool(np.isfinite(v).all())]
            if bad:
                raise CheckpointError(f"warm-up at batch size {rows} gave no finite [{rows}] answer for {bad}")
        seconds = time.perf_counter() - start
        self.metrics.warmup.labels(served.name).observe(seconds)
        logger.info(
            "warmed %s version %s at batch sizes %s in %.0f ms", served.name, served.version, sizes, seconds * 1e3
        )
        return sizes

    def _check_golden(self, served: ServedModel, request_model: type[BaseModel]) -> None:
        """Replay the version's golden records (when it has a golden file); refuse it if any answer moved."""
        golden = load_golden(served.path)
        if golden is None:
            return
        try:
            request_model.model_validate({"records": golden["records"]})
        except ValidationError as err:
            first = err.errors(include_url=False, include_context=False, include_input=False)[0]
            raise CheckpointError(
                f"its golden records are no longer valid requests: {_loc(first['loc'])}: {first['msg']}",
                hint="the request contract changed; export the run again",
            ) from None

        def predict(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
            return served.predict_frame(records_to_frame(records, served.schema))

        problems = check_golden(golden, predict)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckpointError(
                f"golden check failed: {problems[0]}{more}",
                hint="this version answers its golden records differently than at export time "
                "(a damaged file, or another runtime or mtlrec version); export it again",
            )

    def open_newest_good(self, name: str) -> ModelEntry:
        """Open the newest version of ``name`` that loads, warms and passes its checks (refused ones are recorded).

        Raises:
            MtlrecError: no version of ``name`` can be served (the newest one's error).
        """
        versions = list_models(self.repo).get(name)
        if not versions:
            raise CheckpointError(f"model `{name}` is not in {self.repo}")
        first_error: Exception | None = None
        refusals: list[str] = []
        for version in reversed(versions):
            try:
                entry = self.open_entry(name, version)
            except Exception as err:  # this version is refused; an older one may serve
                message = self._refuse(name, version, err)
                refusals.append(f"version {version}: {message}")
                first_error = first_error or err
                continue
            if refusals:
                logger.warning("serving %s version %s; refused: %s", name, version, "; ".join(refusals))
            return entry
        assert first_error is not None
        raise first_error

    def _refuse(self, name: str, version: int, err: BaseException) -> str:
        """Record a refused version (log, metrics, ``failed``, the poller's memory); return the reason."""
        message = err.message if isinstance(err, MtlrecError) else f"{type(err).__name__}: {err}"
        self._refused[(name, version)] = (_version_signature(self.repo / name / str(version)), message)
        self.failed[name] = f"version {version}: {message}"
        self.metrics.reloads.labels(name, "failed").inc()
        serving = self.entries.get(name)
        logger.error(
            "refused %s version %s (%s): %s",
            name,
            version,
            f"still serving version {serving.version}" if serving else "not serving it",
            message,
        )
        return message

    def _known_bad(self, name: str, version: int) -> bool:
        """True when ``version`` was refused and its files have not changed since."""
        refused = self._refused.get((name, version))
        return refused is not None and refused[0] == _version_signature(self.repo / name / str(version))

    def _install(self, entry: ModelEntry) -> ModelEntry | None:
        """Swap ``entry`` in (one assignment: atomic for the event loop); return the entry it replaced."""
        old = self.entries.get(entry.name)
        self.entries[entry.name] = entry
        self._refused.pop((entry.name, entry.version), None)
        if not any(n == entry.name and v > entry.version for n, v in self._refused):
            self.failed.pop(entry.name, None)  # a newer refused version stays reported
        self.metrics.model_version.labels(entry.name).set(entry.version)
        batcher = entry.batcher
        self.metrics.queue_depth.labels(entry.name).set_function(lambda: batcher.queue_rows)
        self.metrics.queue_requests.labels(entry.name).set_function(lambda: batcher.queue_requests)
        return old

    def load_all(self) -> None:
        """Open every model to serve (at start-up, before the server accepts requests)."""
        names = self.servable()
        if not names:
            raise CheckpointError(
                f"no model in {self.repo} can be served with backend {self.backend}",
                hint="export one with `mtlrec export RUN_DIR --repo DIR`, or pick another --backend",
            )
        self.expected = set(names)
        for name in names:
            self._install(self.open_newest_good(name))
        self.loaded = True

    async def load_all_async(self) -> None:
        """:meth:`load_all` off the event loop, one model at a time: the server is live meanwhile, ready after."""
        try:
            names = await asyncio.to_thread(self.servable)
        except MtlrecError as err:
            logger.error("cannot list the models of %s: %s", self.repo, err.message)
            return
        self.expected = set(names)
        self.loading = set(names)
        for name in names:
            try:
                async with self._locks.setdefault(name, asyncio.Lock()):  # not at the same time as a load request
                    entry = await asyncio.to_thread(self.open_newest_good, name)
                    old = self._install(entry)
                if old is not None:
                    self._retire(old)
            except Exception as err:  # refused and logged; the server stays live and not ready
                logger.error("no version of %s can be served: %s", name, getattr(err, "message", err))
            finally:
                self.loading.discard(name)
        self.loaded = True
        if self.ready:
            logger.info("ready: %s", ", ".join(f"{n} v{e.version}" for n, e in sorted(self.entries.items())))

    # -- request side
    @contextlib.asynccontextmanager
    async def use(self, name: str, version: str | None = None) -> AsyncIterator[ModelEntry]:
        """The current entry of ``name``, held (not closed) until the block ends.

        Raises:
            HTTPProblem: 404 for an unknown model or a version that is not served; 503 while it is loading.
        """
        entry = self.entries.get(name)
        if entry is None:
            if name in self.loading:
                raise HTTPProblem(503, f"model '{name}' is loading (warm-up); retry", headers=_retry_after())
            raise _unknown_model(name)
        if version is not None and version != str(entry.version):
            raise _unknown_model(name, version)
        entry.in_use += 1  # no await between the lookup and this line: a swap cannot slip in between
        try:
            yield entry
        finally:
            entry.release()

    # -- reload side
    async def reload(self, name: str, *, explicit: bool = True) -> dict[str, Any]:
        """Serve the newest version of ``name`` if it is not served yet; the old one drains, then closes.

        The new version is opened, warmed and checked (golden records) before the swap; if any of it fails the
        version is refused and the old one keeps serving. The served version's directory removed, the newest
        remaining version takes over. Polling (``explicit=False``) skips versions refused before whose files have
        not changed since; an explicit load always tries the newest version again.

        Returns:
            ``{"model", "version", "previous_version", "reloaded"}``.

        Raises:
            HTTPProblem: 404 for a model that is not (and cannot be) served; 500 when the new version is refused
                (the old one keeps serving; the reason is in the answer).
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
            previous = str(current.version) if current else None
            versions = models[name]
            if not explicit:
                versions = [v for v in versions if not self._known_bad(name, v)]
            if not versions or (current is not None and versions[-1] == current.version):
                return {"model": name, "version": previous, "previous_version": previous, "reloaded": False}
            newest = versions[-1]
            if current is not None and newest < current.version:
                logger.warning("%s version %s was removed; switching to version %s", name, current.version, newest)
            try:
                entry = await asyncio.to_thread(self.open_entry, name, newest)
            except Exception as err:  # any load failure leaves the old version serving
                message = self._refuse(name, newest, err)
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
        if not self.shutting_down:
            await asyncio.to_thread(release_memory)
        logger.info("closed %s version %s", entry.name, entry.version)

    async def poll(self) -> None:
        """One polling round: every served model reloads if a newer version exists; new models are loaded."""
        try:
            names = await asyncio.to_thread(self.servable)
        except MtlrecError as err:
            logger.error("polling %s failed: %s", self.repo, err.message)
            return
        for name in sorted(set(names) | set(self.entries)):
            if name in self.loading:
                continue
            with contextlib.suppress(HTTPProblem):  # logged by reload; the old version keeps serving
                await self.reload(name, explicit=False)

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


def release_memory() -> None:
    """Give the heap freed by a closed model version back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Why: a runtime session frees its arena into the C allocator, which keeps it; without a trim, every reload leaves
    the resident size a little higher (triton #4528, #6781), which a soak over many reloads shows as a slope. No
    ``gc.collect()`` here: the session is freed by reference counting when the runner closes, and a full collection
    holds the GIL for ~0.1 s, a stall every request in flight would feel.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)}


def _queue_full(entry: ModelEntry) -> HTTPProblem:
    return HTTPProblem(
        429,
        f"model '{entry.name}' has {entry.batcher.queue_requests} requests queued, its limit; retry later",
        hint="the server is overloaded: retry after the Retry-After seconds, or add replicas",
        headers=_retry_after(),
    )


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


@dataclass
class RequestCounters:
    """HTTP requests the app accepted and answered (a response fully sent), over its life."""

    accepted: int = 0
    answered: int = 0


class LifecycleMiddleware:
    """Count accepted and answered requests; while the registry drains, ask clients to close their connections.

    ``Connection: close`` on every response of the drain makes keep-alive clients open a new connection for their
    next request, which a load balancer sends elsewhere, instead of reusing one the server is about to close.
    """

    def __init__(self, app: Any, registry: ModelRegistry, metrics: ServerMetrics, counters: RequestCounters) -> None:
        self.app = app
        self.registry = registry
        self.metrics = metrics
        self.counters = counters

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
        counters, registry = self.counters, self.registry
        counters.accepted += 1
        self.metrics.inflight.inc()

        async def tracked_send(message: MutableMapping[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start" and registry.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                counters.answered += 1

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            self.metrics.inflight.dec()


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
    timeout_us: int | None = None  # the ``timeout`` parameter (microseconds, as in Triton); None = none


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
    """Ids inside each vocabulary, a known scenario, finite dense values: a runtime never sees a bad row.

    Dense values are clipped to each field's ``clip``, as the preprocessor clips them: an extreme tensor gets the
    answer the same extreme raw value gets through the records API, finite on every runtime.
    """
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
    limits = entry.dense_limits
    if DENSE in tensors and limits is not None:
        dense = tensors[DENSE]  # [B, D], a private copy made by the decoder
        if bool((np.abs(dense) > limits).any()):
            tensors[DENSE] = np.clip(dense, -limits, limits).astype(np.float32, copy=False)
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
    return V2Request(request.id, tensors, batch, outputs, _timeout_parameter(request.parameters))


def _timeout_parameter(parameters: dict[str, Any]) -> int | None:
    """The v2 ``timeout`` request parameter in microseconds (Triton's meaning; 0 or absent = no deadline)."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HTTPProblem(400, f"parameter 'timeout' must be a non-negative integer (microseconds), got {value!r}")
    return value or None


def request_deadline(header: str | None, started: float, timeout_us: int | None = None) -> float | None:
    """The request's deadline as a ``time.perf_counter()`` value: the earlier of ``X-Request-Timeout-Ms`` and the
    v2 ``timeout`` parameter, counted from ``started`` (the request's arrival); None when it has neither.

    Raises:
        HTTPProblem: 400 for a header that is not a positive number of milliseconds.

    Example:
        >>> request_deadline("250", started=100.0, timeout_us=100_000)
        100.1
    """
    deadlines: list[float] = []
    if header is not None:
        try:
            ms = float(header)
        except ValueError:
            ms = math.nan
        if not (math.isfinite(ms) and ms > 0):
            raise HTTPProblem(
                400, f"header X-Request-Timeout-Ms must be a positive number of milliseconds, got {header!r}"
            )
        deadlines.append(started + ms / 1e3)
    if timeout_us:
        deadlines.append(started + timeout_us / 1e6)
    return min(deadlines) if deadlines else None


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
    max_queue: int | None = DEFAULT_MAX_QUEUE,
    load_in_background: bool = False,
    golden_check: bool = True,
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

    app = FastAPI(
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

    def _admit(name: str) -> None:
        """429 at once, before the body is read, when the model's queue is full (the batcher checks again)."""
        entry = registry.entries.get(name)
        if entry is not None and entry.batcher.full:
            metrics.rejected.labels(name, "queue_full").inc()
            raise _queue_full(entry)

    async def _infer(
        entry: ModelEntry,
        tensors: dict[str, np.ndarray],
        started: float,
        deadline: float | None = None,
        request: Request | None = None,
    ) -> dict[str, np.ndarray]:
        """The micro-batched runner call; a runner failure is a 503 for this request only.

        Overload answers: 429 when the queue is full, 504 when the deadline passed (no model call unless it passed
        during the call), 499 when the client went away while queued (no model call; nobody reads the answer).
        """
        entry.stats.compute_input.add(time.perf_counter() - started)
        name = entry.name
        metrics.queue_at_arrival.labels(name).observe(entry.batcher.queue_requests)
        probe = request.is_disconnected if request is not None else None
        try:
            result = await entry.batcher.submit_timed(tensors, deadline=deadline, disconnected=probe)
        except BatcherClosed:
            raise HTTPProblem(503, f"model '{entry.name}' is being unloaded; retry", headers=_retry_after()) from None
        except QueueFull:
            metrics.rejected.labels(name, "queue_full").inc()
            raise _queue_full(entry) from None
        except DeadlineExceeded as err:
            metrics.expired.labels(name, err.stage).inc()
            spent = "during the model call" if err.stage == "compute" else "before the model call, which was skipped"
            raise HTTPProblem(
                504,
                f"the request's deadline passed {spent}",
                hint="raise X-Request-Timeout-Ms (or the v2 `timeout` parameter), or retry",
            ) from None
        except ClientGone:
            metrics.abandoned.labels(name).inc()
            raise HTTPProblem(499, "the client closed the connection; the request was dropped") from None
        except Exception as err:  # the runtime failed: this batch only
            entry.stats.fail.add(time.perf_counter() - started)
            logger.error("inference on %s version %s failed: %s", entry.name, entry.version, err)
            raise HTTPProblem(503, f"inference failed on model '{entry.name}': {err}") from None
        rows = int(next(iter(tensors.values())).shape[0])
        metrics.queue_wait.labels(name).observe(result.queue_seconds)
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
            arrived = time.perf_counter()
            _authorize(request, key)
            deadline = request_deadline(request.headers.get(TIMEOUT_HEADER), arrived)
            _admit(name)
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
                outputs = await _infer(entry, tensors, started, deadline, request)
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

    async def _v2_infer(name: str, version: str | None, request: Request) -> Response:
        async def handle() -> Response:
            arrived = time.perf_counter()
            _authorize(request, key)
            header_timeout = request.headers.get(TIMEOUT_HEADER)
            request_deadline(header_timeout, arrived)  # a malformed header is refused before the body is read
            _admit(name)
            body = _decode_body(await request.body(), request.headers.get("content-encoding"), max_body_bytes)
            started = time.perf_counter()
            async with registry.use(name, version) as entry:
                header_length = request.headers.get("inference-header-content-length")
                if len(body) > _INLINE_PARSE_BYTES:  # a large body is decoded off the event loop
                    parsed = await asyncio.to_thread(parse_v2_request, entry, body, header_length)
                else:
                    parsed = parse_v2_request(entry, body, header_length)
                deadline = request_deadline(header_timeout, arrived, parsed.timeout_us)
                outputs = await _infer(entry, parsed.tensors, started, deadline, request)
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
        return document

    app.openapi = _openapi  # type: ignore[method-assign]
    return app
