"""The prediction routes on raw ASGI, answered ahead of FastAPI's routing: records (v1) and v2 inference.

* ``POST /v1/models/{name}/predict``: ``{"records": [{field: raw value}, ...]}``, validated by the model's generated
  pydantic request model (400 for malformed JSON, 422 naming the field), encoded by the run's own preprocessor
  (:meth:`~mtlrec.data.preprocess.Preprocessor.transform_records`: the same rules as for a frame, without one),
  answered ``{"model", "version", "predictions": [{task: p}, ...], "oov": {field: count}}``.
* ``POST /v2/models/{name}[/versions/{version}]/infer``: KServe v2 / Triton tensors, JSON or binary
  (:mod:`mtlrec.serving.v2`).

Both go through the model's micro-batcher (:class:`~mtlrec.serving.batcher.MicroBatcher`) after validation, so a
bad request never fails its neighbours; overload answers 429 (queue full), 504 (deadline passed; no model call),
499 (client gone while queued; no model call) and 503 (runtime failure of that batch only).

Why raw ASGI: on a 2-core host, FastAPI's routing, middleware stack, request objects and dependency solving cost
~65 us of server CPU per request (a POST answered through FastAPI on uvicorn took 101 us, the same answer from a
raw ASGI callable 35 us), as much as the whole model call of a census-size model. These two routes carry all the
traffic, so they skip it; everything else (metadata, health, metrics, loads, OpenAPI) stays on FastAPI. What
FastAPI's stack gave them is done here: the body limit (413), request accounting and ``Connection: close`` while
draining, errors as JSON, Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from mtlrec.errors import DataError, MtlrecError
from mtlrec.serving.batcher import BatcherClosed, ClientGone, DeadlineExceeded, QueueFull
from mtlrec.serving.http import (
    TIMEOUT_HEADER,
    Answer,
    ClientDisconnected,
    HTTPProblem,
    Receive,
    RequestCounters,
    Send,
    authorize,
    decode_body,
    header_map,
    loc_text,
    read_body,
    request_deadline,
    retry_after,
    send_answer,
)
from mtlrec.serving.metrics import ServerMetrics
from mtlrec.serving.registry import ModelEntry, ModelRegistry, queue_full
from mtlrec.serving.v2 import parse_v2_request, v2_response

logger = logging.getLogger("mtlrec.serving")

# Bodies larger than this are decoded and encoded in a worker thread, off the event loop, so that a request of
# thousands of records does not stall every other connection; smaller ones cost less than the thread hop.
INLINE_PARSE_BYTES = 65_536


@dataclass(frozen=True)
class Route:
    """A matched prediction route: its metrics label, the model name and the version asked for (or None)."""

    kind: str  # "v1_predict" or "v2_infer"
    name: str
    version: str | None = None


def match_route(path: str) -> Route | None:
    """The prediction route of ``path``, or None for any other path.

    Example:
        >>> match_route("/v2/models/mmoe/versions/3/infer")
        Route(kind='v2_infer', name='mmoe', version='3')
        >>> match_route("/v2/models/mmoe") is None
        True
    """
    parts = path.split("/")
    if len(parts) == 5 and parts[0] == "" and parts[2] == "models" and parts[3]:
        if parts[1] == "v1" and parts[4] == "predict":
            return Route("v1_predict", parts[3])
        if parts[1] == "v2" and parts[4] == "infer":
            return Route("v2_infer", parts[3])
    versioned = len(parts) == 7 and parts[:3] == ["", "v2", "models"] and parts[4] == "versions"
    if versioned and parts[6] == "infer" and parts[3] and parts[5]:
        return Route("v2_infer", parts[3], parts[5])
    return None


# ------------------------------------------------------------------------------------------------- v1 helpers
def validate_records(entry: ModelEntry, body: bytes) -> BaseModel:
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
        message = "; ".join(f"{loc_text(e['loc'])}: {e['msg']}" for e in errors[:5])
        if len(errors) > 5:
            message += f"; ... ({len(errors)} errors)"
        raise HTTPProblem(
            422, message, detail=detail, hint=f"GET /v1/models/{entry.name} describes the fields"
        ) from None


def encode_request(entry: ModelEntry, body: bytes) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """A records body -> the model's input tensors and the OOV counts per field (400/422 for a bad request)."""
    request = validate_records(entry, body)
    records = [r.__dict__ for r in getattr(request, "records")]  # noqa: B009  (a generated model)
    try:
        return entry.served.encode_records(records, entry.record_keys)
    except DataError as err:
        raise HTTPProblem(422, err.message, hint=err.hint) from None


def predictions(outputs: Mapping[str, np.ndarray], names: list[str]) -> list[dict[str, float]]:
    """Per-output [N] arrays -> one ``{output: probability}`` per row, in row order (non-finite: JSON null)."""
    table = np.stack([np.asarray(outputs[n], dtype=np.float32) for n in names], axis=1).tolist()  # [N, T]
    return [dict(zip(names, row, strict=True)) for row in table]


# ------------------------------------------------------------------------------------------------- the routes
class PredictionRoutes:
    """The raw-ASGI prediction routes of one server (see the module docstring).

    Args:
        registry: the served models.
        metrics: the server's Prometheus metrics.
        counters: the server's accepted/answered request counters.
        api_key: the key these routes require, or None.
        max_body_bytes: larger bodies (declared, streamed or decompressed) get 413.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        counters: RequestCounters,
        api_key: str | None,
        max_body_bytes: int,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.counters = counters
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self._request_metrics: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send, route: Route) -> None:
        """Answer one request of ``route``; never raises (errors are answers)."""
        arrived = time.perf_counter()
        self.counters.accepted += 1
        self.metrics.inflight.inc()
        try:
            answer = await self._answer(scope, receive, route, arrived)
            await send_answer(send, answer, close=self.registry.draining)
            self.counters.answered += 1
            self._observe(route, answer.status, time.perf_counter() - arrived)
        finally:
            self.metrics.inflight.dec()

    async def _answer(self, scope: MutableMapping[str, Any], receive: Receive, route: Route, arrived: float) -> Answer:
        try:
            if scope["method"] != "POST":
                return HTTPProblem(405, "Method Not Allowed", headers={"Allow": "POST"}).answer()
            headers = header_map(scope)
            authorize(headers, self.api_key)
            handler = self._predict if route.kind == "v1_predict" else self._infer_v2
            return await handler(scope, receive, headers, route, arrived)
        except HTTPProblem as err:
            return err.answer()
        except MtlrecError as err:
            return HTTPProblem(400, err.message, hint=err.hint).answer()
        except ClientDisconnected:
            return HTTPProblem(499, "the client closed the connection before its request was complete").answer()
        except Exception as err:  # a bug: logged with its traceback, answered without it
            logger.exception("unexpected error", exc_info=err)
            return HTTPProblem(500, f"internal error: {type(err).__name__}").answer()

    def _observe(self, route: Route, status: int, seconds: float) -> None:
        label = route.name if route.name in self.registry.entries else "-"
        key = (route.kind, label, status)
        children = self._request_metrics.get(key)
        if children is None:  # label lookups take a lock: done once per (route, model, status)
            code = str(status)
            metrics = self.metrics
            errors = metrics.errors.labels(route.kind, label, code) if status >= 400 else None
            children = (
                metrics.requests.labels(route.kind, label, code),
                errors,
                metrics.request_latency.labels(route.kind, label),
            )
            self._request_metrics[key] = children
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def _admit(self, name: str) -> None:
        """429 at once, before the body is read, when the model's queue is full (the batcher checks again)."""
        entry = self.registry.entries.get(name)
        if entry is not None and entry.batcher.full:
            self.metrics.rejected.labels(name, "queue_full").inc()
            raise queue_full(entry)

    # -------------------------------------------------------------------------------------------- v1
    async def _predict(
        self, scope: MutableMapping[str, Any], receive: Receive, headers: dict[str, str], route: Route, arrived: float
    ) -> Answer:
        name = route.name
        deadline = request_deadline(headers.get(TIMEOUT_HEADER), arrived)
        self._admit(name)
        body = await read_body(receive, headers, self.max_body_bytes)
        started = time.perf_counter()
        entry = self.registry.acquire(name)
        try:
            if len(body) > INLINE_PARSE_BYTES:
                tensors, oov = await asyncio.to_thread(encode_request, entry, body)
            else:
                tensors, oov = encode_request(entry, body)
            outputs = await self._run(entry, tensors, started, deadline, scope, receive)
        finally:
            entry.release()
        for field_name, count in oov.items():
            if count:
                self.metrics.oov.labels(name, field_name).inc(count)
        answer = {
            "model": name,
            "version": str(entry.version),
            "predictions": predictions(outputs, entry.spec.output_names),
            "oov": oov,
        }
        return Answer(200, orjson.dumps(answer))

    # -------------------------------------------------------------------------------------------- v2
    async def _infer_v2(
        self, scope: MutableMapping[str, Any], receive: Receive, headers: dict[str, str], route: Route, arrived: float
    ) -> Answer:
        header_timeout = headers.get(TIMEOUT_HEADER)
        request_deadline(header_timeout, arrived)  # a malformed header is refused before the body is read
        self._admit(route.name)
        raw = await read_body(receive, headers, self.max_body_bytes)
        body = decode_body(raw, headers.get("content-encoding"), self.max_body_bytes)
        started = time.perf_counter()
        entry = self.registry.acquire(route.name, route.version)
        try:
            header_length = headers.get("inference-header-content-length")
            if len(body) > INLINE_PARSE_BYTES:
                parsed = await asyncio.to_thread(parse_v2_request, entry, body, header_length)
            else:
                parsed = parse_v2_request(entry, body, header_length)
            deadline = request_deadline(header_timeout, arrived, parsed.timeout_us)
            outputs = await self._run(entry, parsed.tensors, started, deadline, scope, receive)
            out_start = time.perf_counter()
            answer = v2_response(entry, parsed, outputs)
            entry.stats.compute_output.add(time.perf_counter() - out_start)
            return answer
        finally:
            entry.release()

    # -------------------------------------------------------------------------------------------- the model
    async def _run(
        self,
        entry: ModelEntry,
        tensors: dict[str, np.ndarray],
        started: float,
        deadline: float | None,
        scope: MutableMapping[str, Any],
        receive: Receive,
    ) -> dict[str, np.ndarray]:
        """The micro-batched runner call; a runner failure is a 503 for this request only.

        Overload answers: 429 when the queue is full, 504 when the deadline passed (no model call unless it passed
        during the call), 499 when the client went away while queued (no model call; nobody reads the answer).
        """
        stats, metrics = entry.stats, entry.metrics
        stats.compute_input.add(time.perf_counter() - started)
        metrics.queue_at_arrival.observe(entry.batcher.queue_requests)

        async def disconnected() -> bool:  # asked only of a request that waited (see batcher.PROBE_AFTER_S)
            return await Request(scope, receive).is_disconnected()

        name = entry.name
        try:
            result = await entry.batcher.submit_timed(tensors, deadline=deadline, disconnected=disconnected)
        except BatcherClosed:
            raise HTTPProblem(503, f"model '{name}' is being unloaded; retry", headers=retry_after()) from None
        except QueueFull:
            self.metrics.rejected.labels(name, "queue_full").inc()
            raise queue_full(entry) from None
        except DeadlineExceeded as err:
            self.metrics.expired.labels(name, err.stage).inc()
            spent = "during the model call" if err.stage == "compute" else "before the model call, which was skipped"
            raise HTTPProblem(
                504,
                f"the request's deadline passed {spent}",
                hint="raise X-Request-Timeout-Ms (or the v2 `timeout` parameter), or retry",
            ) from None
        except ClientGone:
            self.metrics.abandoned.labels(name).inc()
            raise HTTPProblem(499, "the client closed the connection; the request was dropped") from None
        except Exception as err:  # the runtime failed: this batch only
            stats.fail.add(time.perf_counter() - started)
            logger.error("inference on %s version %s failed: %s", name, entry.version, err)
            raise HTTPProblem(503, f"inference failed on model '{name}': {err}") from None
        rows = int(next(iter(tensors.values())).shape[0])
        metrics.queue_wait.observe(result.queue_seconds)
        metrics.rows.inc(rows)
        stats.inference_count += rows
        stats.queue.add(result.queue_seconds)
        stats.compute_infer.add(result.compute_seconds)
        stats.success.add(time.perf_counter() - started)
        stats.last_inference = int(time.time() * 1000)
        return result.outputs
