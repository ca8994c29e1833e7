"""Overload on a real server on 127.0.0.1: a bounded queue (429 with Retry-After past it, never a 5xx), deadlines
(an expired request is answered 504 and never reaches the model, even while a batch runs), clients that hang up
(their queued request costs no model call), all counted in /metrics. The model is held busy by a gated runner, so
the queue fills deterministically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import GatedRunner, LiveServer

from mtlrec.serving.app import create_app

pytestmark = pytest.mark.timeout(60)

BODY = {"records": [{"user_id": "u1", "price": 2.0, "scenario": "scenario_0"}, {"scenario": "scenario_1"}]}
BUSY = {"records": [{"scenario": "scenario_2"}] * 3}  # 3 rows: the call that keeps the model busy


def v2_body(dense: float = 0.0, timeout_us: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "sparse_ids", "shape": [1, 9], "datatype": "INT64", "data": [0] * 9},
            {"name": "dense", "shape": [1, 4], "datatype": "FP32", "data": [dense] * 4},
            {"name": "scenario", "shape": [1, 1], "datatype": "INT64", "data": [0]},
        ]
    }
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return body


@pytest.fixture
def gated(exported_repo: Path) -> Iterator[tuple[LiveServer, GatedRunner]]:
    """A live server of ``mmoe`` with a queue of 3 requests, its runner gated."""
    app = create_app(exported_repo, models=["mmoe"], max_queue=3)
    batcher = app.state.registry.entries["mmoe"].batcher
    runner = GatedRunner(batcher.runner)
    batcher.runner = runner
    batcher.inline_rows = 0  # the gate makes a slow model: its calls run in the worker thread, as a slow model's do
    with LiveServer(app) as server:
        yield server, runner


async def occupy(http: httpx.AsyncClient, runner: GatedRunner) -> asyncio.Task[httpx.Response]:
    """Send a request that enters the model and waits at the closed gate; return its task."""
    runner.close_gate()
    busy = asyncio.create_task(http.post("/v1/models/mmoe/predict", json=BUSY))
    assert await asyncio.to_thread(runner.entered.wait, 10), "the busy request never reached the model"
    return busy


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            got = sample[len(name) :].strip("{}")
            if ",".join(sorted(got.split(","))) == wanted:
                return float(value)
    return 0.0


def test_past_the_queue_limit_requests_get_429_at_once_with_retry_after_and_never_a_5xx(
    gated: tuple[LiveServer, GatedRunner],
) -> None:
    server, runner = gated

    async def main() -> tuple[list[httpx.Response], float, str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            busy = await occupy(http, runner)
            start = time.monotonic()
            pending = [asyncio.create_task(http.post("/v1/models/mmoe/predict", json=BODY)) for _ in range(4)]
            pending += [asyncio.create_task(http.post("/v2/models/mmoe/infer", json=v2_body())) for _ in range(4)]
            # Three wait in the queue; the five others are refused while the model is still busy.
            while sum(t.done() for t in pending) < 5:
                assert time.monotonic() - start < 10, "no 429 while the queue was full"
                await asyncio.sleep(0.01)
            waited = time.monotonic() - start
            runner.gate.set()
            answers = [await busy, *(await asyncio.gather(*pending))]
            metrics = (await http.get("/metrics")).text
            return answers, waited, metrics

    answers, waited, metrics = asyncio.run(asyncio.wait_for(main(), timeout=40))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 4 + [429] * 5, codes
    assert waited < 5  # answered while the model was still busy, not after it
    for response in answers:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert "queued" in response.json()["error"]
    assert metric(metrics, "mtlrec_rejected_requests_total", model="mmoe", reason="queue_full") == 5
    assert metric(metrics, "mtlrec_queue_depth_at_arrival_requests_bucket", model="mmoe", le="+Inf") >= 3
    assert "mtlrec_queue_depth_requests" in metrics and "mtlrec_queue_wait_seconds_bucket" in metrics


def test_an_expired_deadline_is_answered_504_without_a_model_call_and_counted(
    gated: tuple[LiveServer, GatedRunner],
) -> None:
    server, runner = gated

    async def main() -> tuple[list[tuple[int, float]], httpx.Response, str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            busy = await occupy(http, runner)

            async def timed(coro: Any) -> tuple[int, float]:
                start = time.monotonic()
                response = await coro
                return response.status_code, time.monotonic() - start

            expiring = await asyncio.gather(
                timed(http.post("/v1/models/mmoe/predict", json=BODY, headers={"X-Request-Timeout-Ms": "150"})),
                timed(http.post("/v2/models/mmoe/infer", json=v2_body(timeout_us=150_000))),
                timed(http.post("/v2/models/mmoe/infer", json=v2_body(), headers={"X-Request-Timeout-Ms": "150"})),
            )
            runner.gate.set()
            done = await busy
            assert done.status_code == 200
            bad = await http.post("/v1/models/mmoe/predict", json=BODY, headers={"X-Request-Timeout-Ms": "soon"})
            fine = await http.post("/v1/models/mmoe/predict", json=BODY, headers={"X-Request-Timeout-Ms": "5000"})
            assert fine.status_code == 200
            return expiring, bad, (await http.get("/metrics")).text

    expiring, bad, metrics = asyncio.run(asyncio.wait_for(main(), timeout=40))
    assert [code for code, _ in expiring] == [504, 504, 504]
    # Answered at the deadline, while the batch in flight was still held (not after it, triton #7512).
    assert all(0.1 < seconds < 3 for _, seconds in expiring), expiring
    assert runner.calls == [3, 2]  # the busy request and the last good one: no expired row ever reached the model
    assert bad.status_code == 400 and "X-Request-Timeout-Ms" in bad.json()["error"]
    assert metric(metrics, "mtlrec_expired_requests_total", model="mmoe", stage="queue") == 3
    assert metric(metrics, "mtlrec_requests_total", route="v2_infer", model="mmoe", code="504") == 2


def test_a_client_that_hangs_up_while_queued_costs_no_model_call(gated: tuple[LiveServer, GatedRunner]) -> None:
    server, runner = gated

    async def main() -> str:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            busy = await occupy(http, runner)
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
                await http.post("/v1/models/mmoe/predict", json=BODY, timeout=0.3)
            await asyncio.sleep(0.2)  # the server sees the connection close
            runner.gate.set()
            assert (await busy).status_code == 200
            deadline = time.monotonic() + 10
            while True:
                text = (await http.get("/metrics")).text
                if metric(text, "mtlrec_abandoned_requests_total", model="mmoe") or time.monotonic() > deadline:
                    return text
                await asyncio.sleep(0.05)

    metrics = asyncio.run(asyncio.wait_for(main(), timeout=40))
    assert metric(metrics, "mtlrec_abandoned_requests_total", model="mmoe") == 1
    assert runner.calls == [3]  # the abandoned request never reached the model


def test_v2_extreme_dense_values_are_clipped_like_the_records_api(exported_repo: Path) -> None:
    app = create_app(exported_repo, models=["mmoe"])
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as http:
        extreme = http.post("/v2/models/mmoe/infer", json=v2_body(dense=3e38))
        clipped = http.post("/v2/models/mmoe/infer", json=v2_body(dense=50.0))  # the schema's clip
        assert extreme.status_code == clipped.status_code == 200
    for a, b in zip(extreme.json()["outputs"], clipped.json()["outputs"], strict=True):
        assert all(v is not None and 0.0 <= v <= 1.0 for v in a["data"])
        np.testing.assert_allclose(a["data"], b["data"], atol=1e-7)
