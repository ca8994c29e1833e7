"""MicroBatcher: concurrent submissions merged into fewer runner calls, answers split back in order, failures
confined to their batch, the event loop free while the runner works."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from mtlrec.export.spec import ExportSpec, TensorSpec
from mtlrec.serving.batcher import BatcherClosed, ClientGone, DeadlineExceeded, MicroBatcher, QueueFull

SPEC = ExportSpec(
    model="fake",
    schema_hash="0" * 16,
    inputs=[TensorSpec(name="dense", dtype="float32", shape=[2])],
    outputs=[TensorSpec(name="out", dtype="float32", shape=[1])],
    atol={"out": 1e-6},
)


class FakeRunner:
    """``out = dense[:, 0] * 10 + dense[:, 1]``; counts calls; fails a call holding a row with dense[0] < 0."""

    spec = SPEC
    description = "fake"

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.sleep_s = sleep_s
        self.threads: set[str] = set()

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        dense = tensors["dense"]
        self.calls.append(int(dense.shape[0]))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if bool((dense[:, 0] < 0).any()):
            raise RuntimeError("poisoned batch")
        return {"out": (dense[:, 0] * 10 + dense[:, 1]).astype(np.float32)}

    def close(self) -> None:
        pass


def rows(first: int, n: int) -> dict[str, np.ndarray]:
    """``n`` rows whose output is ``10 * i + 1`` for row ids ``first..first+n-1``."""
    ids = np.arange(first, first + n, dtype=np.float32)
    return {"dense": np.stack([ids, np.ones_like(ids)], axis=1)}  # [n, 2]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_concurrent_requests_are_merged_and_split_back_in_order() -> None:
    runner = FakeRunner()

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = MicroBatcher(runner, max_batch_size=64, max_delay_ms=50)
        results = await asyncio.gather(*(batcher.submit(rows(3 * i, 3)) for i in range(20)))
        await batcher.close()
        return list(results)

    results = run(main())
    assert sum(runner.calls) == 60
    assert len(runner.calls) < 20  # merged: 20 requests, fewer runner calls (one or two)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["out"], 10 * np.arange(3 * i, 3 * i + 3, dtype=np.float32) + 1)
    assert all(name.startswith("mtlrec-runner") for name in runner.threads)  # never on the event loop


def test_batches_respect_max_batch_size_and_a_large_request_runs_alone() -> None:
    runner = FakeRunner()

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = MicroBatcher(runner, max_batch_size=8, max_delay_ms=20)
        sizes = [3, 3, 3, 20, 3, 3, 1]
        starts = np.cumsum([0, *sizes[:-1]])
        results = await asyncio.gather(*(batcher.submit(rows(int(s), n)) for s, n in zip(starts, sizes, strict=True)))
        await batcher.close()
        return list(results)

    results = run(main())
    assert 20 in runner.calls  # the oversize request alone
    assert all(c <= 8 for c in runner.calls if c != 20)
    assert sum(runner.calls) == 36
    flat = np.concatenate([r["out"] for r in results])
    np.testing.assert_array_equal(flat, 10 * np.arange(36, dtype=np.float32) + 1)


def test_a_failing_runner_call_fails_only_its_batch() -> None:
    runner = FakeRunner()

    async def main() -> tuple[list[Any], list[Any]]:
        batcher = MicroBatcher(runner, max_batch_size=64, max_delay_ms=20)
        bad = rows(0, 2)
        bad["dense"][1, 0] = -1.0
        first = await asyncio.gather(batcher.submit(rows(0, 2)), batcher.submit(bad), return_exceptions=True)
        second = await asyncio.gather(*(batcher.submit(rows(i, 1)) for i in range(4)), return_exceptions=True)
        await batcher.close()
        return list(first), list(second)

    first, second = run(main())
    assert all(isinstance(r, RuntimeError) for r in first)  # the poisoned batch
    assert all(isinstance(r, dict) for r in second)  # the worker goes on
    assert [float(r["out"][0]) for r in second] == [1.0, 11.0, 21.0, 31.0]


def test_the_event_loop_keeps_running_while_the_runner_works() -> None:
    runner = FakeRunner(sleep_s=0.3)

    async def main() -> int:
        batcher = MicroBatcher(runner, max_batch_size=8, max_delay_ms=0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit(rows(0, 1))
        task.cancel()
        await batcher.close()
        return ticks

    assert run(main()) >= 10


def test_requests_queued_during_a_call_form_the_next_batch() -> None:
    runner = FakeRunner(sleep_s=0.1)

    async def main() -> None:
        batcher = MicroBatcher(runner, max_batch_size=256, max_delay_ms=0)
        first = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.03)  # the first call is running now
        assert batcher.queue_requests == 0
        await asyncio.gather(first, *(batcher.submit(rows(i, 1)) for i in range(1, 11)))
        await batcher.close()

    run(main())
    assert runner.calls == [1, 10]


def test_close_answers_pending_requests_and_refuses_new_ones() -> None:
    runner = FakeRunner(sleep_s=0.05)

    async def main() -> None:
        batcher = MicroBatcher(runner, max_batch_size=4, max_delay_ms=1)
        pending = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.close()
        assert [float(t.result()["out"][0]) for t in pending] == [10.0 * i + 1 for i in range(6)]
        with pytest.raises(BatcherClosed):
            await batcher.submit(rows(0, 1))

    run(main())


def test_mismatched_tensors_are_refused_before_batching() -> None:
    async def main() -> None:
        batcher = MicroBatcher(FakeRunner(), max_batch_size=4)
        with pytest.raises(ValueError, match="batch size"):
            await batcher.submit({"dense": np.zeros((2, 2), np.float32), "other": np.zeros(3, np.int64)})
        await batcher.close()

    run(main())


def test_a_full_queue_refuses_at_once_and_takes_requests_again_once_it_drains() -> None:
    runner = FakeRunner(sleep_s=0.2)

    async def main() -> list[Any]:
        batcher = MicroBatcher(runner, max_batch_size=1, max_queue=2)
        busy = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.05)  # the first request is in the runner; the queue is empty
        queued = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.full
        start = time.perf_counter()
        with pytest.raises(QueueFull):
            await batcher.submit(rows(3, 1))
        assert time.perf_counter() - start < 0.05  # refused without waiting for the busy runner
        answers = await asyncio.gather(busy, *queued)
        assert not batcher.full and (await batcher.submit(rows(4, 1)))["out"].tolist() == [41.0]
        await batcher.close()
        return answers

    answers = run(main())
    assert [a["out"].tolist() for a in answers] == [[1.0], [11.0], [21.0]]
    assert runner.calls == [1, 1, 1, 1]


def test_a_deadline_passing_in_the_queue_answers_at_once_and_never_reaches_the_runner() -> None:
    runner = FakeRunner(sleep_s=0.3)

    async def main() -> None:
        batcher = MicroBatcher(runner, max_batch_size=8)
        busy = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded) as queued:
            await batcher.submit(rows(1, 2), deadline=time.perf_counter() + 0.05)
        assert time.perf_counter() - start < 0.2  # at the deadline, not after the batch in flight
        assert queued.value.stage == "queue"
        with pytest.raises(DeadlineExceeded) as arrival:
            await batcher.submit(rows(3, 1), deadline=time.perf_counter() - 1)
        assert arrival.value.stage == "arrival"
        await busy
        ok = await batcher.submit(rows(4, 1), deadline=time.perf_counter() + 5)
        assert ok["out"].tolist() == [41.0]
        assert batcher.dropped == 1
        await batcher.close()

    run(main())
    assert runner.calls == [1, 1]  # the busy request and the last one: no expired row was computed


def test_a_request_whose_client_left_is_dropped_when_its_batch_forms() -> None:
    runner = FakeRunner(sleep_s=0.1)

    async def main() -> None:
        batcher = MicroBatcher(runner, max_batch_size=8)
        busy = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.02)

        async def gone() -> bool:
            return True

        async def here() -> bool:
            return False

        left = asyncio.create_task(batcher.submit(rows(1, 2), disconnected=gone))
        stayed = asyncio.create_task(batcher.submit(rows(3, 1), disconnected=here))
        await busy
        with pytest.raises(ClientGone):
            await left
        assert (await stayed)["out"].tolist() == [31.0]
        await batcher.close()

    run(main())
    assert runner.calls == [1, 1]


def test_small_batches_run_on_the_event_loop_and_larger_ones_in_the_worker_thread() -> None:
    runner = FakeRunner()

    async def main() -> tuple[list[dict[str, np.ndarray]], str]:
        batcher = MicroBatcher(runner, max_batch_size=64, inline_rows=4)
        small = await batcher.submit(rows(0, 4))  # 4 rows: within inline_rows
        large = await batcher.submit(rows(0, 5))  # 5 rows: the worker thread
        await batcher.close()
        return [small, large], threading.current_thread().name

    (small, large), loop_thread = run(main())
    assert small["out"].tolist() == [1, 11, 21, 31] and large["out"].tolist() == [1, 11, 21, 31, 41]
    assert loop_thread in runner.threads
    assert any(name.startswith("mtlrec-runner") for name in runner.threads)


def test_requests_that_arrive_during_an_inline_call_join_the_next_batch() -> None:
    # Why: an inline call holds the event loop; the worker lets the loop run before it forms the next batch, so the
    # requests submitted meanwhile (here: by tasks that were waiting to run) share one call instead of trailing.
    runner = FakeRunner(sleep_s=0.01)

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = MicroBatcher(runner, max_batch_size=64, inline_rows=64)
        first = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0)  # the first request is queued, its batch starts
        later = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in range(1, 6)]
        out = [await first, *[await t for t in later]]
        await batcher.close()
        return out

    outputs = run(main())
    assert [o["out"].tolist() for o in outputs] == [[10 * i + 1] for i in range(6)]
    assert runner.calls == [1, 5]
