"""Dynamic micro-batching: concurrent requests merged into one runner call, answers split back per request.

Each request is validated and encoded on its own (a bad request never reaches a batch), then its tensors are
submitted with :meth:`MicroBatcher.submit`. A worker task collects pending requests until ``max_batch_size`` rows
are waiting or ``max_delay_ms`` has passed since the oldest one arrived, concatenates their tensors along the batch
axis, runs the runner once and hands every request its own rows back, in order. A batch of up to ``inline_rows``
rows runs on the event loop itself: for a small model the call takes tens of microseconds, and a hop to a worker
thread (queue, wake-up, GIL hand-over, loop wake-up) costs more than that in CPU and latency. A larger batch runs in a
dedicated worker thread, so that the event loop keeps reading requests while the runtime computes (with the GIL
released). After each batch the worker lets the event loop run twice before it forms the next one: the first pass
reads the sockets that became readable during the call, the second runs the handlers they started up to their
submit, so the requests that arrived meanwhile join the next batch instead of trailing behind it. A request larger
than ``max_batch_size`` rows runs alone. When a runner call fails, only the requests of that batch get the error;
the worker goes on with the next batch.

Under overload nothing piles up and nothing is computed for nobody:

* the queue is bounded: with ``max_queue`` requests waiting, :meth:`MicroBatcher.submit` refuses at once with
  :class:`QueueFull` (the server answers 429 with ``Retry-After``);
* a request may carry a deadline: one that has passed is refused before queueing, and a queued request whose
  deadline passes is answered :class:`DeadlineExceeded` at that moment (not after the batch in flight) and is never
  part of a runner call;
* a request may carry a disconnect probe: when the batch is formed, a request that waited ``PROBE_AFTER_S`` or
  longer and whose client has gone away is answered :class:`ClientGone` and dropped, so it costs no model call.

Example::

    batcher = MicroBatcher(runner, max_batch_size=256)
    scores = await batcher.submit({"sparse_ids": ids, "dense": dense})   # {"ctr": [B], "cvr": [B]}
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtlrec.serving.runners import Runner

BatchHook = Callable[[int, int, float], None]
"""Called after every runner call with (rows, requests, seconds)."""


@dataclass(frozen=True)
class BatchResult:
    """One request's outputs (``[B]`` per output name) and where its time went."""

    outputs: dict[str, np.ndarray]
    queue_seconds: float
    compute_seconds: float


class BatcherClosed(RuntimeError):  # noqa: N818  (reads as a state, like asyncio.CancelledError)
    """The batcher was closed; the request should go to the model that replaced it."""


class QueueFull(RuntimeError):  # noqa: N818  (reads as a state)
    """``max_queue`` requests are waiting already; this one was refused without queueing."""


class DeadlineExceeded(RuntimeError):  # noqa: N818  (reads as an event, like asyncio.TimeoutError)
    """The request's deadline passed before its answer was ready.

    Attributes:
        stage: ``arrival`` (passed before queueing), ``queue`` (while waiting: no model call was made for it) or
            ``compute`` (while its batch ran).
    """

    def __init__(self, stage: str) -> None:
        super().__init__(f"the request's deadline passed ({stage})")
        self.stage = stage


class ClientGone(RuntimeError):  # noqa: N818  (reads as a state)
    """The client disconnected while the request was queued; it was dropped before any model call."""


# Why 2 ms: a client hardly hangs up on a request younger than that, and a probe costs ~20 µs of event loop time
# (an ASGI receive that is cancelled at once); requests that waited longer are the ones whose clients give up.
PROBE_AFTER_S = 0.002

DisconnectProbe = Callable[[], Awaitable[bool]]
"""Returns True once the client of a request has gone away (e.g. starlette's ``Request.is_disconnected``)."""


@dataclass
class _Pending:
    tensors: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    deadline: float | None = None  # time.perf_counter() value
    disconnected: DisconnectProbe | None = None
    arrived: float = field(default_factory=time.perf_counter)
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    taken: bool = False  # part of a runner call
    # Names, dtypes and per-row shapes: requests with equal signatures can be concatenated.
    signature: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.signature = tuple(sorted((k, v.dtype, v.shape[1:]) for k, v in self.tensors.items()))


def _rows(tensors: dict[str, np.ndarray]) -> int:
    sizes = {int(v.shape[0]) if v.ndim else -1 for v in tensors.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"tensors disagree on the batch size: { {k: v.shape for k, v in tensors.items()} }")
    return sizes.pop()


class MicroBatcher:
    """Merge concurrent :meth:`submit` calls into runner calls of up to ``max_batch_size`` rows.

    Args:
        runner: the runtime (``infer(tensors) -> {output: [B]}``); called from one worker thread at a time.
        max_batch_size: most rows in one runner call (a larger request runs alone).
        max_delay_ms: longest wait for more requests after the oldest pending one arrived. 0 (the default, as
            Triton's ``max_queue_delay_microseconds``) never delays a request: while a runner call is in flight the
            next requests queue up, and the next call takes all of them, so batches grow with the load by themselves.
        on_batch: optional hook called after each runner call with (rows, requests, seconds).
        max_queue: most requests waiting for a runner call (the one in flight not counted); past it
            :meth:`submit` raises :class:`QueueFull`. None = unbounded.
        inline_rows: batches of at most this many rows run on the event loop's thread, larger ones in the worker
            thread; 0 (the default) = always the worker thread. The server derives it from the model's warm-up
            timings (:func:`inline_rows_for`).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch_size: int = 256,
        max_delay_ms: float = 0.0,
        on_batch: BatchHook | None = None,
        max_queue: int | None = None,
        inline_rows: int = 0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must not be negative")
        if max_queue is not None and max_queue < 1:
            raise ValueError("max_queue must be at least 1 (or None for no bound)")
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.on_batch = on_batch
        self.max_queue = max_queue
        self.inline_rows = max(0, inline_rows)
        self.batches = 0
        self.dropped = 0  # requests answered without a runner call (deadline passed, client gone)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtlrec-runner")
        self._pending: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._busy = False

    @property
    def queue_rows(self) -> int:
        """Rows waiting for a runner call."""
        return sum(p.rows for p in self._pending)

    @property
    def queue_requests(self) -> int:
        """Requests waiting for a runner call."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        """True when a new request would be refused with :class:`QueueFull`."""
        return self.max_queue is not None and len(self._pending) >= self.max_queue

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._loop is not loop:
            # A new event loop (a test client that opens one per call) gets its own worker and event.
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="mtlrec-batcher")

    async def submit(
        self,
        tensors: dict[str, np.ndarray],
        *,
        deadline: float | None = None,
        disconnected: DisconnectProbe | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request's tensors (``[B, ...]`` each) and wait for its outputs (``[B]`` each).

        Args:
            tensors: the request's input tensors.
            deadline: a ``time.perf_counter()`` value after which the answer is of no use; None = none.
            disconnected: a probe, asked when the batch is formed, that says whether the client has gone away.

        Raises:
            BatcherClosed: the batcher is closed.
            QueueFull: ``max_queue`` requests are waiting already.
            DeadlineExceeded: the deadline passed before the answer was ready.
            ClientGone: the client went away while the request was queued.
            ValueError: the tensors disagree on the batch size.
            Exception: whatever the runner raised for the batch this request was part of.
        """
        return (await self.submit_timed(tensors, deadline=deadline, disconnected=disconnected)).outputs

    async def submit_timed(
        self,
        tensors: dict[str, np.ndarray],
        *,
        deadline: float | None = None,
        disconnected: DisconnectProbe | None = None,
    ) -> BatchResult:
        """As :meth:`submit`, with the time spent queued and in the runner call.

        Raises:
            BatcherClosed: the batcher is closed.
            QueueFull: ``max_queue`` requests are waiting already.
            DeadlineExceeded: the deadline passed before the answer was ready.
            ClientGone: the client went away while the request was queued.
            ValueError: the tensors disagree on the batch size.
            Exception: whatever the runner raised for the batch this request was part of.
        """
        if self._closed:
            raise BatcherClosed("the model was unloaded")
        rows = _rows(tensors)
        if deadline is not None and time.perf_counter() >= deadline:
            raise DeadlineExceeded("arrival")
        if self.full:
            raise QueueFull(f"{len(self._pending)} requests are queued for this model (the limit)")
        self._ensure_worker()
        assert self._wakeup is not None
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        pending = _Pending(tensors, rows, future, deadline, disconnected)
        self._pending.append(pending)
        self._wakeup.set()
        if deadline is None:
            outputs = await future
        else:
            try:
                # On timeout the future is cancelled, so the worker skips it: no model call for an expired request.
                outputs = await asyncio.wait_for(future, timeout=max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                if not pending.taken:
                    self.dropped += 1
                raise DeadlineExceeded("compute" if pending.taken else "queue") from None
        return BatchResult(outputs, pending.queue_seconds, pending.compute_seconds)

    def _take_batch(self) -> list[_Pending]:
        """Pop the next batch: the oldest request, then followers of the same signature while they fit."""
        first = self._pending.popleft()
        batch, rows = [first], first.rows
        if rows >= self.max_batch_size:
            return batch
        kept: deque[_Pending] = deque()
        while self._pending:
            item = self._pending.popleft()
            if item.signature == first.signature and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._pending.extendleft(reversed(kept))
        return batch

    async def _gather(self) -> None:
        """Wait until a batch is full or the oldest pending request has waited ``max_delay``."""
        assert self._wakeup is not None
        while self._pending:
            if self.queue_rows >= self.max_batch_size:
                return
            remaining = self._pending[0].arrived + self.max_delay - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                return

    async def _run(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
                continue
            await self._gather()
            batch = await self._admit(self._take_batch())
            if batch:
                self._busy = True
                try:
                    await self._execute(batch)
                finally:
                    self._busy = False
                await asyncio.sleep(0)  # read what arrived during the call ...
                await asyncio.sleep(0)  # ... and let its handlers reach submit (see the module docstring)

    async def _admit(self, batch: list[_Pending]) -> list[_Pending]:
        """Drop the requests nobody waits for any more: cancelled, past their deadline, or whose client left."""
        now = time.perf_counter()
        kept: list[_Pending] = []
        for p in batch:
            if p.future.done():  # the caller gave up (its deadline timer fired, or it was cancelled)
                continue
            if p.deadline is not None and now >= p.deadline:
                self.dropped += 1
                p.future.set_exception(DeadlineExceeded("queue"))
                continue
            if p.disconnected is not None and now - p.arrived >= PROBE_AFTER_S:
                try:
                    gone = await p.disconnected()
                except Exception:  # a probe that fails says nothing: keep the request
                    gone = False
                if gone and not p.future.done():
                    self.dropped += 1
                    p.future.set_exception(ClientGone("the client disconnected while the request was queued"))
                    continue
            if not p.future.done():
                p.taken = True
                kept.append(p)
        return kept

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        # Concatenate every input along the batch axis: [B_i, ...] x n -> [sum B_i, ...]
        if len(batch) == 1:
            merged = batch[0].tensors
        else:
            merged = {name: np.concatenate([p.tensors[name] for p in batch], axis=0) for name in batch[0].tensors}
        rows = sum(p.rows for p in batch)
        start = time.perf_counter()
        try:
            if rows <= self.inline_rows:
                outputs = self.runner.infer(merged)  # on the event loop: cheaper than the hop for a short call
            else:
                outputs = await loop.run_in_executor(self._executor, self.runner.infer, merged)
            for name, value in outputs.items():
                if value.shape[0] != rows:
                    raise RuntimeError(f"the runner answered {value.shape[0]} rows of `{name}` for {rows}")
        except Exception as err:  # the error belongs to the requests, not to the worker
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        finally:
            elapsed = time.perf_counter() - start
            for p in batch:
                p.queue_seconds, p.compute_seconds = start - p.arrived, elapsed
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(rows, len(batch), elapsed)
        # Split back: [sum B_i] -> [B_i] per request, in submission order.
        offset = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result({name: value[offset : offset + p.rows] for name, value in outputs.items()})
            offset += p.rows

    async def close(self) -> None:
        """Refuse new requests, answer the pending ones, stop the worker and its thread (the runner stays open)."""
        self._closed = True
        same_loop = self._loop is asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done() and same_loop:
            while self._pending or self._busy:
                await asyncio.sleep(0.001)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(BatcherClosed("the model was unloaded"))
        self._pending.clear()
        self._executor.shutdown(wait=True)


def inline_rows_for(timings: dict[int, float], limit_s: float) -> int:
    """The largest batch expected to run within ``limit_s``, from measured runner times per batch size.

    Linear between measured sizes; 0 when even the smallest measured batch takes longer (always the worker thread);
    the largest measured size when all of them fit.

    Args:
        timings: seconds of one runner call per batch size (warm calls).
        limit_s: the longest call that may run on the event loop.

    Example:
        >>> inline_rows_for({1: 0.0002, 64: 0.0025, 256: 0.008}, limit_s=0.001)
        22
        >>> inline_rows_for({1: 0.00003, 256: 0.0003}, limit_s=0.001), inline_rows_for({1: 0.002}, limit_s=0.001)
        (256, 0)
    """
    points = sorted(timings.items())
    if not points or limit_s <= 0 or points[0][1] > limit_s:
        return 0
    best = points[0][0]
    for (rows_a, secs_a), (rows_b, secs_b) in itertools.pairwise(points):
        if secs_b <= limit_s:
            best = rows_b
            continue
        span = max(secs_b - secs_a, 1e-12)
        best = rows_a + int((limit_s - secs_a) / span * (rows_b - rows_a))
        break
    return best
