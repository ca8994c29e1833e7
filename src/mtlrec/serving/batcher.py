"""Dynamic micro-batching: concurrent requests merged into one runner call, answers split back per request.

Each request is validated and encoded on its own (a bad request never reaches a batch), then its tensors are
submitted with :meth:`MicroBatcher.submit`. A worker task collects pending requests until ``max_batch_size`` rows
are waiting or ``max_delay_ms`` has passed since the oldest one arrived, concatenates their tensors along the batch
axis, runs the runner once in a dedicated worker thread (the event loop keeps accepting requests meanwhile) and
hands every request its own rows back, in order. A request larger than ``max_batch_size`` rows runs alone. When a
runner call fails, only the requests of that batch get the error; the worker goes on with the next batch.

Example::

    batcher = MicroBatcher(runner, max_batch_size=256)
    scores = await batcher.submit({"sparse_ids": ids, "dense": dense})   # {"ctr": [B], "cvr": [B]}
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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


@dataclass
class _Pending:
    tensors: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    arrived: float = field(default_factory=time.perf_counter)
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0

    @property
    def signature(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """Names, dtypes and per-row shapes: requests with equal signatures can be concatenated."""
        return tuple(sorted((k, str(v.dtype), tuple(v.shape[1:])) for k, v in self.tensors.items()))


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
    """

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch_size: int = 256,
        max_delay_ms: float = 0.0,
        on_batch: BatchHook | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must not be negative")
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.on_batch = on_batch
        self.batches = 0
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

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._loop is not loop:
            # A new event loop (a test client that opens one per call) gets its own worker and event.
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="mtlrec-batcher")

    async def submit(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one request's tensors (``[B, ...]`` each) and wait for its outputs (``[B]`` each).

        Raises:
            BatcherClosed: the batcher is closed.
            ValueError: the tensors disagree on the batch size.
            Exception: whatever the runner raised for the batch this request was part of.
        """
        return (await self.submit_timed(tensors)).outputs

    async def submit_timed(self, tensors: dict[str, np.ndarray]) -> BatchResult:
        """As :meth:`submit`, with the time spent queued and in the runner call.

        Raises:
            BatcherClosed: the batcher is closed.
            ValueError: the tensors disagree on the batch size.
            Exception: whatever the runner raised for the batch this request was part of.
        """
        if self._closed:
            raise BatcherClosed("the model was unloaded")
        rows = _rows(tensors)
        self._ensure_worker()
        assert self._wakeup is not None
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        pending = _Pending(tensors, rows, future)
        self._pending.append(pending)
        self._wakeup.set()
        outputs = await future
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
            batch = self._take_batch()
            batch = [p for p in batch if not p.future.done()]  # a caller that gave up (cancelled)
            if batch:
                self._busy = True
                try:
                    await self._execute(batch)
                finally:
                    self._busy = False

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
