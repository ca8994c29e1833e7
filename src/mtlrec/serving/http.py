"""HTTP plumbing of the server: error answers, body limits, request accounting, API keys, deadlines.

Shared by the FastAPI routes and the raw-ASGI prediction routes (:mod:`mtlrec.serving.predict`): an error is an
:class:`HTTPProblem` (status, message naming what is wrong, optional hint and detail) answered as JSON
``{"error": ..., "hint"?: ..., "detail"?: [...]}``.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import zlib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from fastapi.responses import JSONResponse

from mtlrec.serving.metrics import ServerMetrics

if TYPE_CHECKING:
    from mtlrec.serving.registry import ModelRegistry

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

logger = logging.getLogger("mtlrec.serving")

API_KEY_ENV = "MTLREC_API_KEY"
TIMEOUT_HEADER = "x-request-timeout-ms"
# Why 1 s: the queue drains in milliseconds on the models served here; a client that waits a second finds room.
RETRY_AFTER_S = 1


# ------------------------------------------------------------------------------------------------- answers
JSON = b"application/json"


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: status, body, content type and extra headers (names lower-case)."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


async def send_answer(send: Send, answer: Answer, *, close: bool = False) -> None:
    """Write ``answer`` on a raw ASGI connection (``close``: ask the client to close the connection after it)."""
    headers = [
        (b"content-type", answer.content_type),
        (b"content-length", str(len(answer.body)).encode()),
        *answer.headers,
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


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

    def _body_and_headers(self) -> tuple[dict[str, Any], dict[str, str]]:
        body: dict[str, Any] = {"error": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.detail is not None:
            body["detail"] = self.detail
        headers = dict(self.headers or {})
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return body, headers

    def response(self) -> JSONResponse:
        """The JSON answer ``{"error": ..., "hint"?: ..., "detail"?: [...]}`` for a FastAPI route."""
        body, headers = self._body_and_headers()
        return JSONResponse(body, status_code=self.status, headers=headers or None)

    def answer(self) -> Answer:
        """The same JSON answer for a raw ASGI route."""
        body, headers = self._body_and_headers()
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return Answer(self.status, orjson.dumps(body), JSON, extra)


def unknown_model(name: str, version: str | None = None) -> HTTPProblem:
    what = f"'{name}'" if version is None else f"'{name}' version {version}"
    return HTTPProblem(404, f"Request for unknown model: {what} is not found")


def retry_after() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)}


# ------------------------------------------------------------------------------------------------- body limit
class _BodyTooLarge(Exception):  # noqa: N818
    pass


def body_too_large(limit: int, size: int | None) -> HTTPProblem:
    """The 413 answer to a body over ``limit`` bytes (``size``: what Content-Length declared, when it did)."""
    what = f"request body of {size} bytes" if size is not None else "request body"
    return HTTPProblem(
        413,
        f"{what} exceeds the limit of {limit} bytes",
        hint="send fewer records per request, or raise the server's --max-body-bytes",
    )


def _too_large(limit: int, size: int | None) -> JSONResponse:
    return body_too_large(limit, size).response()


def loc_text(loc: tuple[int | str, ...] | list[Any]) -> str:
    """A pydantic error location as a dotted path (``records.0.price``); ``body`` for the whole body."""
    return ".".join(str(part) for part in loc) or "body"


class ClientDisconnected(Exception):  # noqa: N818  (reads as an event)
    """The client went away before its request body was complete."""


def header_map(scope: Mapping[str, Any]) -> dict[str, str]:
    """A raw ASGI request's headers by lower-case name (a repeated header: its last value)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole request body, refused with 413 once it exceeds ``limit`` (declared or counted while it streams in).

    Raises:
        HTTPProblem: 413 for a body over ``limit`` bytes.
        ClientDisconnected: the client went away before the body was complete.
    """
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise body_too_large(limit, int(declared) if declared.isdigit() else None)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit, None)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
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


def authorize(headers: Mapping[str, str], api_key: str | None) -> None:
    """401 unless the request carries ``api_key`` (``x-api-key`` or ``Authorization: Bearer``); no key, no check.

    Args:
        headers: the request's headers, looked up by lower-case name.
        api_key: the key required, or None.
    """
    if api_key is None:
        return
    given = headers.get("x-api-key")
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
        raise HTTPProblem(
            401, "missing or wrong API key", hint="send the header `x-api-key: KEY` or `Authorization: Bearer KEY`"
        )


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
