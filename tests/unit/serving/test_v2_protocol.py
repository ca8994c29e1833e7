"""A real uvicorn server on 127.0.0.1 and the unchanged ``tritonclient.http`` client (plus v1 over HTTP).

The outputs must equal the in-process runtime on the same tensors, and v1 predictions ``ServedModel.predict_frame``
on the same records.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http  # type: ignore[import-untyped]
import uvicorn
from fastapi import FastAPI
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from mtlrec.serving.app import create_app
from mtlrec.serving.repository import ServedModel, open_model
from mtlrec.serving.schemas import records_to_frame

pytestmark = pytest.mark.timeout(120)


class BackgroundServer:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 in a daemon thread; stops on :meth:`stop`."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture(scope="module")
def server(exported_repo: Path) -> Iterator[BackgroundServer]:
    running = BackgroundServer(create_app(exported_repo, max_delay_ms=1.0)).start()
    try:
        yield running
    finally:
        running.stop()
    assert not running.thread.is_alive()


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[Any]:
    c = triton_http.InferenceServerClient(server.url, connection_timeout=10, network_timeout=20)
    yield c
    c.close()


@pytest.fixture(scope="module")
def served(exported_repo: Path) -> Iterator[ServedModel]:
    model = open_model(exported_repo, "mmoe")
    yield model
    model.close()


def tensors(served: ServedModel, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = served.schema.vocab_sizes()
    return {
        "sparse_ids": np.stack([rng.integers(0, s, rows) for s in sizes], axis=1).astype(np.int64),  # [B, F]
        "dense": rng.normal(size=(rows, len(served.schema.dense))).astype(np.float32),  # [B, D]
        "scenario": rng.integers(0, served.schema.num_scenarios, rows).astype(np.int64),  # [B]
    }


def infer(client: Any, model: str, feed: dict[str, np.ndarray], binary: bool, outputs: list[str]) -> Any:
    wire = []
    for name, array in feed.items():
        value = array.reshape(-1, 1) if array.ndim == 1 else array  # scenario [B] -> [B, 1] as Triton declares it
        tensor = triton_http.InferInput(name, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        wire.append(tensor)
    requested = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    return client.infer(model, wire, outputs=requested, request_id="req-1")


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mmoe")
    assert client.is_model_ready("mmoe", "1")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata()["name"] == "mtlrec"
    meta = client.get_model_metadata("mmoe")
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("sparse_ids", "INT64", [-1, 9]),
        ("dense", "FP32", [-1, 4]),
        ("scenario", "INT64", [-1, 1]),
    ]
    assert client.get_model_metadata("mmoe", "1") == meta


def test_model_config_is_the_config_pbtxt(client: Any, exported_repo: Path) -> None:
    from mtlrec.export.triton_config import parse, to_dict

    config = client.get_model_config("mmoe")
    assert config == to_dict(parse((exported_repo / "mmoe" / "config.pbtxt").read_text()))
    assert config["max_batch_size"] == 1024 and config["input"][0]["dims"] == [9]
    assert config["parameters"]["mtlrec_schema_hash"]["string_value"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("rows", [1, 37])
def test_infer_equals_the_in_process_runtime(client: Any, served: ServedModel, binary: bool, rows: int) -> None:
    feed = tensors(served, rows, seed=rows)
    result = infer(client, "mmoe", feed, binary, ["ctr", "cvr"])
    expected = served.runner.infer(feed)
    assert result.get_response()["id"] == "req-1"
    for name in ("ctr", "cvr"):
        got = result.as_numpy(name)
        assert got.shape == (rows, 1) and got.dtype == np.float32
        np.testing.assert_allclose(got.reshape(-1), expected[name], rtol=1e-6, atol=1e-7)


def test_infer_without_named_outputs_and_compressed_and_torchscript(client: Any, served: ServedModel) -> None:
    feed = tensors(served, 5, seed=3)
    expected = served.runner.infer(feed)
    wire = []
    for name, array in feed.items():
        tensor = triton_http.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array)  # scenario as [B]: accepted too
        wire.append(tensor)
    result = client.infer("mmoe", wire, request_compression_algorithm="gzip")  # all outputs, binary
    np.testing.assert_allclose(result.as_numpy("cvr").reshape(-1), expected["cvr"], rtol=1e-6, atol=1e-7)
    ts = infer(client, "mmoe_torchscript", feed, True, ["ctr__0", "cvr__1"])
    np.testing.assert_allclose(ts.as_numpy("ctr__0").reshape(-1), expected["ctr"], atol=1e-5)


def test_errors_reach_the_client_with_their_status(client: Any, served: ServedModel) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope")
    assert unknown.value.status() == "404"
    bad = tensors(served, 2)
    bad["sparse_ids"][1, 0] = 10**6
    with pytest.raises(InferenceServerException, match="outside") as err:
        infer(client, "mmoe", bad, True, ["ctr"])
    assert err.value.status() == "400"
    assert infer(client, "mmoe", tensors(served, 2), True, ["ctr"]).as_numpy("ctr").shape == (2, 1)


def test_statistics_and_repository_index(client: Any) -> None:
    stats = client.get_inference_statistics("mmoe")["model_stats"][0]
    assert stats["name"] == "mmoe" and stats["inference_count"] > 0
    assert stats["inference_stats"]["success"]["count"] > 0
    assert {s["name"] for s in client.get_inference_statistics()["model_stats"]} == {"mmoe", "mmoe_torchscript"}
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["mmoe"]["state"] == "READY" and index["mmoe_ensemble"]["state"] == "UNAVAILABLE"
    client.load_model("mmoe")  # nothing newer: a no-op that succeeds


def test_v1_over_http_equals_predict_frame(server: BackgroundServer, served: ServedModel) -> None:
    records: list[dict[str, Any]] = [
        {"user_id": "u7", "item_id": 11, "price": 3.5, "hour": 13, "scenario": "scenario_0"},
        {"item_category": "c1", "user_activity": 0.2, "scenario": "scenario_2"},
        {"user_id": None, "price": None, "scenario": "scenario_1"},
    ]
    with httpx.Client(base_url=f"http://{server.url}", timeout=20) as http:
        body = http.post("/v1/models/mmoe/predict", json={"records": records}).json()
        assert http.get("/metrics").status_code == 200
    expected = served.predict_frame(records_to_frame(records, served.schema))
    for task in ("ctr", "cvr"):
        got = np.array([p[task] for p in body["predictions"]], dtype=np.float32)
        np.testing.assert_allclose(got, expected[task], rtol=1e-6, atol=1e-7)


def test_backend_triton_forwards_to_a_v2_server(exported_repo: Path, server: BackgroundServer) -> None:
    """``--backend triton``: records are encoded here and the tensors run on a v2 server (this one stands in)."""
    records: list[dict[str, Any]] = [{"user_id": "u7", "scenario": "scenario_1"}, {"scenario": "scenario_0"}]
    proxy = create_app(exported_repo, models=["mmoe_torchscript"], backend="triton", triton_url=server.url)
    with httpx.Client(base_url=f"http://{server.url}", timeout=20) as http:
        direct = http.post("/v1/models/mmoe_torchscript/predict", json={"records": records}).json()
    from fastapi.testclient import TestClient

    with TestClient(proxy) as client:
        assert client.get("/v1/models").json()["models"][0]["runtime"].startswith("triton http://")
        answer = client.post("/v1/models/mmoe_torchscript/predict", json={"records": records})
        assert answer.status_code == 200, answer.text
        proxied = answer.json()
    assert proxied["predictions"] == direct["predictions"]
