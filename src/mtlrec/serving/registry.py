"""The served models: loaded, warmed, checked against their golden records, hot-swapped and drained.

:class:`ModelRegistry` holds one :class:`ModelEntry` per model name (the loaded version, its micro-batcher, its
Triton config, its request model and statistics). See :mod:`mtlrec.serving.app` for what the server does with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from mtlrec.data.preprocess import Preprocessor
from mtlrec.errors import CheckpointError, ConfigError, MtlrecError
from mtlrec.export.golden import check_golden, load_golden
from mtlrec.export.spec import ExportSpec, Platform
from mtlrec.export.triton_config import ServingOptions, build_model_config, parse, to_dict
from mtlrec.schema import FeatureSchema
from mtlrec.serving.batcher import MicroBatcher, inline_rows_for
from mtlrec.serving.http import HTTPProblem, loc_text, retry_after, unknown_model
from mtlrec.serving.metrics import ModelMetrics, ServerMetrics
from mtlrec.serving.repository import ServedModel, list_models, open_model
from mtlrec.serving.runners import Runner
from mtlrec.serving.schemas import build_request_model, record_keys, records_to_frame

logger = logging.getLogger("mtlrec.serving")

Backend = Literal["auto", "onnxruntime", "torchscript", "triton"]
BACKENDS = ("auto", "onnxruntime", "torchscript", "triton")
_PLATFORMS: dict[str, Platform] = {"model.onnx": "onnxruntime_onnx", "model.pt": "pytorch_libtorch"}
DEFAULT_MAX_QUEUE = 512
# Why 1 ms: a thread hop costs ~0.1 ms of CPU and latency, under 10% of a call that long; a call that long blocks the
# event loop no longer than the parsing of a few requests would.
DEFAULT_MAX_INLINE_MS = 1.0


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
    metrics: ModelMetrics
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

    @functools.cached_property
    def vocab_sizes(self) -> np.ndarray:
        """Per sparse field, its vocabulary size: int64 [F] (an id must be below it)."""
        return np.array(self.schema.vocab_sizes(), dtype=np.int64)

    @functools.cached_property
    def record_keys(self) -> dict[str, str]:
        """Field name -> the attribute under which a validated record of :attr:`request_model` keeps its value."""
        return record_keys(self.schema)

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
        max_inline_ms: batches whose warm-up time says they take at most this long run on the event loop, longer
            ones in the batcher's worker thread (:func:`~mtlrec.serving.batcher.inline_rows_for`); 0 = always the
            worker thread.
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
        max_inline_ms: float = DEFAULT_MAX_INLINE_MS,
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
        self.max_inline_ms = max_inline_ms
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
            timings = self._warm_up(served, config)
            sizes = list(timings)
            # A remote runner (Triton) waits on the network: never on the event loop.
            limit = 0.0 if self.backend == "triton" else self.max_inline_ms / 1e3
            inline_rows = inline_rows_for(timings, limit)
            if self.golden and self.backend != "triton":  # Triton answers from its own copy of the repository
                self._check_golden(served, request_model)
            stats = ModelStats()
            metrics = self.metrics.for_model(name)

            def on_batch(rows: int, requests: int, seconds: float) -> None:
                stats.on_batch(rows, requests, seconds)
                metrics.batch_size.observe(rows)
                metrics.batch_requests.observe(requests)
                metrics.batch_latency.observe(seconds)

            batcher = MicroBatcher(
                served.runner,
                max_batch_size=self.max_batch_size,
                max_delay_ms=self.max_delay_ms,
                inline_rows=inline_rows,
                on_batch=on_batch,
                max_queue=self.max_queue,
            )
            return ModelEntry(name, served, batcher, platform, config, request_model, stats, metrics, sizes)
        except Exception:
            served.close()
            raise

    def _warm_up(self, served: ServedModel, config: dict[str, Any]) -> dict[int, float]:
        """Run the model twice at every warm-up batch size (batch 1 only through Triton, which warms its own).

        Returns:
            Seconds of the second (warm) call per batch size: what a call of that size costs when serving.
        """
        sizes = [1] if self.backend == "triton" else warmup_batch_sizes(config, self.max_batch_size)
        start = time.perf_counter()
        timings: dict[int, float] = {}
        for rows in sizes:
            feed = _zero_feed(served.spec, rows)
            outputs = served.runner.infer(feed)
            bad = [n for n, v in outputs.items() if v.shape != (rows,) or not bool(np.isfinite(v).all())]
            if bad:
                raise CheckpointError(f"warm-up at batch size {rows} gave no finite [{rows}] answer for {bad}")
            warm = time.perf_counter()
            served.runner.infer(feed)
            timings[rows] = time.perf_counter() - warm
        seconds = time.perf_counter() - start
        self.metrics.warmup.labels(served.name).observe(seconds)
        logger.info(
            "warmed %s version %s at batch sizes %s in %.0f ms (warm calls: %s)",
            served.name,
            served.version,
            sizes,
            seconds * 1e3,
            ", ".join(f"{rows}: {secs * 1e3:.2f} ms" for rows, secs in timings.items()),
        )
        return timings

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
                f"its golden records are no longer valid requests: {loc_text(first['loc'])}: {first['msg']}",
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
    def acquire(self, name: str, version: str | None = None) -> ModelEntry:
        """The current entry of ``name``, held (never closed by a reload) until the caller's ``entry.release()``.

        Raises:
            HTTPProblem: 404 for an unknown model or a version that is not served; 503 while it is loading.
        """
        entry = self.entries.get(name)
        if entry is None:
            if name in self.loading:
                raise HTTPProblem(503, f"model '{name}' is loading (warm-up); retry", headers=retry_after())
            raise unknown_model(name)
        if version is not None and version != str(entry.version):
            raise unknown_model(name, version)
        entry.in_use += 1  # no await between the lookup and this line: a swap cannot slip in between
        return entry

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
                raise unknown_model(name)
            try:
                models = await asyncio.to_thread(list_models, self.repo)
            except MtlrecError as err:
                raise HTTPProblem(500, err.message, hint=err.hint) from None
            if name not in models:
                if current is None:
                    raise unknown_model(name)
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


def queue_full(entry: ModelEntry) -> HTTPProblem:
    return HTTPProblem(
        429,
        f"model '{entry.name}' has {entry.batcher.queue_requests} requests queued, its limit; retry later",
        hint="the server is overloaded: retry after the Retry-After seconds, or add replicas",
        headers=retry_after(),
    )
