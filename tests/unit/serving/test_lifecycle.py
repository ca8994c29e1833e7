"""A server's life on 127.0.0.1: not ready until every warm-up batch size ran (at start and on reload); reloads
that refuse a truncated model or a version whose golden answers moved while the old one keeps answering, pick up
the next good version, and fall back when the served version is removed; SIGTERM during a load test (readiness
503 first, every accepted request answered, exit status 0)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import LiveServer

import mtlrec.serving.registry as registry_module
from mtlrec.serving.app import create_app

pytestmark = pytest.mark.timeout(90)

BODY = {"records": [{"user_id": "u1", "price": 2.0, "scenario": "scenario_0"}, {"scenario": "scenario_1"}]}


class SlowRunner:
    """A runner that takes ``delay`` seconds per call and records ``(rows, start, end)`` of each."""

    def __init__(self, inner: Any, delay: float, log: list[tuple[int, float, float]]) -> None:
        self.inner, self.delay, self.log = inner, delay, log
        self.spec = inner.spec
        self.description = inner.description

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.monotonic()
        time.sleep(self.delay)
        out = dict(self.inner.infer(tensors))
        self.log.append((int(next(iter(tensors.values())).shape[0]), start, time.monotonic()))
        return out

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def slow_models(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[tuple[int, float, float]]]:
    """Every model the app opens runs 0.1 s per call; the calls are logged per version."""
    real = registry_module.open_model
    logs: dict[int, list[tuple[int, float, float]]] = {}

    def open_slow(*args: Any, **kwargs: Any) -> Any:
        served = real(*args, **kwargs)
        served.runner = SlowRunner(served.runner, 0.1, logs.setdefault(served.version, []))
        return served

    monkeypatch.setattr(registry_module, "open_model", open_slow)
    return logs


def add_version(repo: Path, version: int, change: Callable[[Path], None] | None = None) -> Path:
    """Version 1 copied as ``version``, changed by ``change``, moved into place in one rename (never half-written)."""
    staging = repo.parent / f"staging-{version}"
    shutil.copytree(repo / "mmoe" / "1", staging)
    if change is not None:
        change(staging)
    target = repo / "mmoe" / str(version)
    os.rename(staging, target)
    return target


def wait_for(what: str, check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_ready_stays_false_until_every_warm_up_batch_size_ran_at_start_and_on_reload(
    exported_repo: Path, tmp_path: Path, slow_models: dict[int, list[tuple[int, float, float]]]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    app = create_app(repo, models=["mmoe"], load_in_background=True)
    seen: list[tuple[str, int, float]] = []  # (route, status, when the answer arrived)

    def probe(http: httpx.Client, route: str) -> int:
        response = http.post(route, json=BODY) if route.endswith("predict") else http.get(route)
        seen.append((route, response.status_code, time.monotonic()))
        return response.status_code

    def probe_all(http: httpx.Client, routes: tuple[str, ...]) -> list[int]:
        return [probe(http, route) for route in routes]

    at_start = ("/v2/health/live", "/v2/health/ready", "/v2/models/mmoe/ready", "/v1/models/mmoe/predict")
    on_reload = ("/v2/models/mmoe/versions/2/ready", "/v2/health/ready", "/v2/models/mmoe/ready", at_start[-1])
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as http:
        wait_for("ready", lambda: probe_all(http, at_start)[1] == 200)
        start = len(seen)
        # A new version: the old one stays ready; the new one's ready route says yes only after its warm-up.
        add_version(repo, 2)
        reload = threading.Thread(target=lambda: http.post("/v1/models/mmoe/load"))
        reload.start()
        wait_for("version 2 ready", lambda: probe_all(http, on_reload)[0] == 200)
        reload.join(timeout=20)

    batcher_max = 256
    sizes = sorted({1, 256, 512, 1024, batcher_max})  # config warm-up (1, 1024), preferred sizes, the batcher's max
    for version, observed in ((1, seen[:start]), (2, seen[start:])):
        calls = slow_models[version]
        warm_up = [size for size in sizes for _ in range(2)]  # twice each: the second, warm call is timed
        assert [rows for rows, _, _ in calls[: len(warm_up)]] == warm_up, calls  # every warm-up batch size
        assert calls[len(warm_up)][0] == 8  # then the golden records
        checked = calls[len(warm_up)][2]  # when the warm-up and the golden check ended
        assert all(code == 200 for route, code, _ in observed if route.endswith("live"))  # live at once
        if version == 1:
            assert sum(1 for route, code, _ in observed if route.endswith("health/ready") and code == 503) >= 3
            not_yet = [(r, c) for r, c, t in observed if t < checked]
            assert not_yet and all(code == 503 for route, code in not_yet if not route.endswith("live"))
        else:  # version 1 stays ready and answers while version 2 warms up
            assert all(c == 200 for r, c, _ in observed if not r.endswith("versions/2/ready")), observed
            assert all(c == 404 for r, c, t in observed if r.endswith("versions/2/ready") and t < checked)
        assert all(
            t >= checked
            for r, c, t in observed
            if c == 200 and r.endswith(("ready", "predict")) and (version == 1 or "versions/2" in r)
        )


def test_a_truncated_or_golden_failing_version_is_refused_the_old_keeps_answering_the_next_good_one_serves(
    exported_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    app = create_app(repo, models=["mmoe"], poll_seconds=0.1)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def fire(url: str) -> None:
        with httpx.Client(base_url=url, timeout=20) as http:
            while not stop.is_set():
                r = http.post("/v1/models/mmoe/predict", json=BODY)
                seen.append((r.status_code, r.json().get("version", r.text)))

    def failures(http: httpx.Client) -> float:
        text = http.get("/metrics").text
        found = re.search(r'mtlrec_model_reloads_total\{model="mmoe",outcome="failed"\} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    def truncate(version_dir: Path) -> None:
        model = version_dir / "model.onnx"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])

    def move_golden(version_dir: Path) -> None:
        golden = json.loads((version_dir / "golden.json").read_text())
        golden["expected"][0]["ctr"] = min(1.0, golden["expected"][0]["ctr"] + 0.1)
        (version_dir / "golden.json").write_text(json.dumps(golden))

    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as http:
        firing = threading.Thread(target=fire, args=(server.url,), daemon=True)
        firing.start()
        try:
            add_version(repo, 2, truncate)
            wait_for("the poller to refuse version 2", lambda: failures(http) >= 1)
            time.sleep(0.5)  # five more polls: a refused version is not retried until its files change
            assert failures(http) == 1
            assert "version 2" in http.get("/v1/models").json()["models"][0]["load_error"]
            load = http.post("/v1/models/mmoe/load")  # an explicit load tries again and answers the reason
            assert load.status_code == 500 and "version 2" in load.json()["error"]
            assert "version 1 keeps serving" in load.json()["hint"]

            add_version(repo, 3, move_golden)
            load = http.post("/v2/repository/models/mmoe/load")
            assert load.status_code == 500 and "golden check failed" in load.json()["error"]
            assert http.post("/v1/models/mmoe/predict", json=BODY).json()["version"] == "1"

            add_version(repo, 4)  # a good version after the bad ones: the poller picks it up
            wait_for("version 4", lambda: http.get("/v2/models/mmoe").json()["versions"] == ["4"])
            count = len(seen)
            wait_for("traffic on version 4", lambda: len(seen) > count + 5)

            shutil.rmtree(repo / "mmoe" / "4")  # the served version removed: the newest good one left takes over
            wait_for("version 1 again", lambda: http.get("/v2/models/mmoe").json()["versions"] == ["1"])
            count = len(seen)
            wait_for("traffic on version 1", lambda: len(seen) > count + 5)
        finally:
            stop.set()
            firing.join(timeout=20)
    assert [s for s in seen if s[0] != 200] == []  # zero failed requests through all of it
    versions = [v for _, v in seen]
    assert versions[0] == "1" and "4" in versions and versions[-1] == "1"
    assert set(versions) == {"1", "4"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served_process(exported_repo: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``mtlrec serve`` in its own process on a free port of 127.0.0.1 (killed if a test leaves it running)."""
    port = free_port()
    command = [sys.executable, "-c", "from mtlrec.cli.app import main; main()", "serve", "--repo", str(exported_repo)]
    command += ["--model", "mmoe", "--port", str(port), "--grace-seconds", "1", "--log-level", "info"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_sigterm_during_a_load_test_answers_every_accepted_request_and_exits_0(
    served_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = served_process
    received = 0  # responses that reached a client of this test, whatever the route
    lock = threading.Lock()
    predictions: list[tuple[float, int]] = []
    errors: list[tuple[float, str]] = []
    stop = threading.Event()

    def count() -> None:
        nonlocal received
        with lock:
            received += 1

    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url, timeout=10) as http:
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            try:
                ready = http.get("/v2/health/ready").status_code
                count()
                if ready == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)

    def load() -> None:
        body = {"records": [{"price": float(i), "scenario": f"scenario_{i % 3}"} for i in range(64)]}
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/models/mmoe/predict", json=body)
                except httpx.TransportError as err:  # refused or closed before a response: not accepted
                    errors.append((time.monotonic(), type(err).__name__))
                    if isinstance(err, httpx.ConnectError):
                        return  # the listening socket is closed
                    continue
                count()
                predictions.append((time.monotonic(), r.status_code))

    workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    sigterm = time.monotonic()
    process.send_signal(signal.SIGTERM)
    not_ready_after = None
    with httpx.Client(base_url=url, timeout=10) as http:
        while not_ready_after is None and time.monotonic() - sigterm < 5:
            response = http.get("/v2/health/ready")
            count()
            if response.status_code == 503:
                not_ready_after = time.monotonic() - sigterm
    for worker in workers:
        worker.join(timeout=30)
    stop.set()
    _, stderr = process.communicate(timeout=40)

    assert process.returncode == 0, stderr[-2000:]
    assert not_ready_after is not None and not_ready_after < 1.0  # readiness says no first
    assert predictions and all(code == 200 for _, code in predictions)  # 0 failed
    assert any(t > sigterm + 0.5 for t, _ in predictions)  # still served during the grace period
    assert all(t > sigterm + 0.9 for t, _ in errors), errors  # only refused once the grace period is over
    stopped = re.search(r"stopped: (\d+) requests accepted, (\d+) answered", stderr)
    assert stopped is not None, stderr[-2000:]
    accepted, answered = int(stopped.group(1)), int(stopped.group(2))
    assert accepted == answered == received  # every request the server accepted reached its client
    assert "Traceback" not in stderr
