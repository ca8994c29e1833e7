"""The app in process: v1 routes and their errors, API key, body limit, v2 errors, metrics, batching, failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mtlrec.serving.app import create_app
from mtlrec.serving.repository import open_model
from mtlrec.serving.schemas import records_to_frame

RECORDS: list[dict[str, Any]] = [
    {"user_id": "u1", "item_id": 3, "price": 12.5, "scenario": "scenario_0"},
    {"user_id": "never-seen", "device": "ios", "item_rating": 4, "scenario": "scenario_1"},
    {"scenario": "scenario_2"},
]


@pytest.fixture(scope="module")
def app(exported_repo: Path) -> FastAPI:
    return create_app(exported_repo, max_delay_ms=1.0)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def good(client: TestClient) -> None:
    response = client.post("/v1/models/mmoe/predict", json={"records": RECORDS[:1]})
    assert response.status_code == 200, response.text


def test_model_list_and_request_schema(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert {m["name"]: m["version"] for m in models} == {"mmoe": "1", "mmoe_torchscript": "1"}
    described = client.get("/v1/models/mmoe").json()
    assert described["tasks"] == ["ctr", "cvr"]
    assert described["scenario"]["name"] == "scenario" and described["scenario"]["required"] is True
    kinds = {f["name"]: f["kind"] for f in described["fields"]}
    assert kinds["user_id"] == "categorical" and kinds["price"] == "numeric"
    assert client.get("/v1/models/nope").status_code == 404


def test_predictions_equal_the_served_model_in_request_order(client: TestClient, exported_repo: Path) -> None:
    response = client.post("/v1/models/mmoe/predict", json={"records": RECORDS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "mmoe" and body["version"] == "1"
    assert body["oov"]["user_id"] >= 1  # "never-seen" at least
    served = open_model(exported_repo, "mmoe")
    try:
        expected = served.predict_frame(records_to_frame(RECORDS, served.schema))
    finally:
        served.close()
    for task in ("ctr", "cvr"):
        got = np.array([p[task] for p in body["predictions"]], dtype=np.float32)
        np.testing.assert_allclose(got, expected[task], rtol=1e-6, atol=1e-7)


def test_torchscript_twin_answers_the_same(client: TestClient) -> None:
    onnx = client.post("/v1/models/mmoe/predict", json={"records": RECORDS}).json()["predictions"]
    ts = client.post("/v1/models/mmoe_torchscript/predict", json={"records": RECORDS}).json()["predictions"]
    for a, b in zip(onnx, ts, strict=True):
        assert a.keys() == b.keys()
        for task in a:
            assert abs(a[task] - b[task]) < 1e-5


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"records": [{"price": "cheap", "scenario": "scenario_0"}]}, 422, "records.0.price"),  # wrong type
        ({"records": [{"user_id": [1], "scenario": "scenario_0"}]}, 422, "records.0.user_id"),  # wrong type
        ({"records": [{"colour": "red", "scenario": "scenario_0"}]}, 422, "records.0.colour"),  # unknown field
        ({"records": [{"user_id": "u1"}]}, 422, "records.0.scenario"),  # missing required field
        ({"records": []}, 422, "records"),  # empty list
        ({"rows": [{"scenario": "scenario_0"}]}, 422, "rows"),  # wrong envelope
        ({"records": [{"scenario": "mars"}]}, 422, "scenario"),  # unknown scenario value
        ({"records": [{"price": 1e400, "scenario": "scenario_0"}]}, 422, "records.0.price"),  # infinity
    ],
)
def test_bad_records_get_4xx_naming_the_field(client: TestClient, body: Any, status: int, named: str) -> None:
    response = client.post("/v1/models/mmoe/predict", content=json.dumps(body).replace("Infinity", "1e400"))
    assert response.status_code == status, response.text
    assert named in response.json()["error"]
    good(client)


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff\xfe", b'{"records": [}', b"[" * 5000 + b"]" * 5000, b"null"])
def test_malformed_json_is_4xx_never_5xx(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/models/mmoe/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]
    good(client)


def test_body_over_the_limit_is_413(exported_repo: Path) -> None:
    with TestClient(create_app(exported_repo, models=["mmoe"], max_body_bytes=2_000)) as small:
        records = [{"user_id": f"user-{i}", "scenario": "scenario_0"} for i in range(200)]
        response = small.post("/v1/models/mmoe/predict", json={"records": records})
        assert response.status_code == 413
        assert "exceeds the limit of 2000 bytes" in response.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            yield b'{"records": ['
            for _ in range(300):
                yield b'{"scenario": "scenario_0"},'
            yield b'{"scenario": "scenario_0"}]}'

        assert small.post("/v1/models/mmoe/predict", content=chunks()).status_code == 413
        assert small.post("/v1/models/mmoe/predict", json={"records": RECORDS}).status_code == 200


def test_api_key_is_required_on_prediction_routes(exported_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLREC_API_KEY", "s3cret")
    with TestClient(create_app(exported_repo, models=["mmoe"])) as secured:
        body = {"records": RECORDS}
        assert secured.post("/v1/models/mmoe/predict", json=body).status_code == 401
        assert secured.post("/v1/models/mmoe/predict", json=body, headers={"x-api-key": "wrong"}).status_code == 401
        assert secured.post("/v1/models/mmoe/predict", json=body, headers={"x-api-key": "s3cret"}).status_code == 200
        bearer = {"Authorization": "Bearer s3cret"}
        assert secured.post("/v1/models/mmoe/predict", json=body, headers=bearer).status_code == 200
        assert secured.post("/v2/models/mmoe/infer", json={"inputs": []}).status_code == 401
        assert secured.post("/v1/models/mmoe/load").status_code == 401
        assert secured.get("/v1/models").status_code == 200  # discovery stays open
        assert secured.get("/v2/health/ready").status_code == 200


def v2_body(rows: int = 2, **override: Any) -> dict[str, Any]:
    inputs = {
        "sparse_ids": {"name": "sparse_ids", "shape": [rows, 9], "datatype": "INT64", "data": [[2] * 9] * rows},
        "dense": {"name": "dense", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * (4 * rows)},
        "scenario": {"name": "scenario", "shape": [rows, 1], "datatype": "INT64", "data": list(range(rows))},
    }
    for name, change in override.items():
        if change is None:
            inputs.pop(name)
        else:
            inputs[name] = {**inputs[name], **change}
    return {"inputs": list(inputs.values())}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (v2_body(dense={"datatype": "FP64"}), "datatype"),
        (v2_body(sparse_ids={"data": [[999] * 9] * 2}), "outside [0,"),
        (v2_body(sparse_ids={"data": [[-1] * 9] * 2}), "outside [0,"),
        (v2_body(scenario={"data": [0, 7]}), "scenario"),
        (v2_body(dense={"shape": [2, 5]}), "shape"),
        (v2_body(dense={"data": [0.5] * 7}), "values for shape"),
        (v2_body(dense={"data": ["a"] * 8}), "dense"),
        (v2_body(sparse_ids={"data": [[1.5] * 9] * 2}), "sparse_ids"),
        (v2_body(scenario=None), "inputs"),
        (v2_body(scenario={"shape": [3, 1], "data": [0, 1, 2]}), "batch size"),
        ({**v2_body(), "outputs": [{"name": "nope"}]}, "nope"),
        ({"inputs": "x"}, "inputs"),
    ],
)
def test_v2_bad_tensors_get_400_in_the_v2_error_shape(client: TestClient, body: Any, needle: str) -> None:
    response = client.post("/v2/models/mmoe/infer", json=body)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]
    assert client.post("/v2/models/mmoe/infer", json=v2_body()).status_code == 200


def test_v2_errors_for_unknown_models_and_bad_binary_framing(client: TestClient) -> None:
    response = client.post("/v2/models/nope/infer", json=v2_body())
    assert response.status_code == 404
    assert response.json() == {"error": "Request for unknown model: 'nope' is not found"}
    assert client.get("/v2/models/mmoe/versions/7").status_code == 404
    assert client.get("/v2/models/nope/ready").status_code == 404
    bad_length = {"Inference-Header-Content-Length": "99999"}
    assert client.post("/v2/models/mmoe/infer", content=b"{}", headers=bad_length).status_code == 400
    assert client.post("/v2/models/mmoe/infer", content=b"{oops").status_code == 400


def test_v2_scenario_may_come_as_b_or_b1_and_torchscript_outputs_use_backend_names(client: TestClient) -> None:
    flat = v2_body(scenario={"shape": [2]})
    a = client.post("/v2/models/mmoe/infer", json=flat).json()
    b = client.post("/v2/models/mmoe/infer", json=v2_body()).json()
    assert a["outputs"] == b["outputs"]
    assert [o["shape"] for o in a["outputs"]] == [[2, 1], [2, 1]]
    ts = client.post("/v2/models/mmoe_torchscript/infer", json=v2_body()).json()
    assert [o["name"] for o in ts["outputs"]] == ["ctr__0", "cvr__1"]
    np.testing.assert_allclose(ts["outputs"][0]["data"], b["outputs"][0]["data"], atol=1e-5)


def test_a_runner_failure_fails_only_that_request_and_the_server_keeps_serving(
    app: FastAPI, client: TestClient
) -> None:
    entry = app.state.registry.entries["mmoe"]
    real = entry.batcher.runner

    class Broken:
        spec = real.spec
        description = "broken"

        def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise RuntimeError("device lost")

        def close(self) -> None:
            pass

    entry.batcher.runner = Broken()
    try:
        response = client.post("/v1/models/mmoe/predict", json={"records": RECORDS})
        assert response.status_code == 503
        assert "device lost" in response.json()["error"]
        assert client.post("/v1/models/mmoe_torchscript/predict", json={"records": RECORDS}).status_code == 200
    finally:
        entry.batcher.runner = real
    good(client)


def test_concurrent_requests_share_runner_calls(exported_repo: Path) -> None:
    app = create_app(exported_repo, models=["mmoe"], max_delay_ms=30.0)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=20) as http:
            v1 = [http.post("/v1/models/mmoe/predict", json={"records": RECORDS}) for _ in range(12)]
            v2 = [http.post("/v2/models/mmoe/infer", json=v2_body()) for _ in range(12)]
            return list(await asyncio.gather(*v1, *v2))

    responses = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert all(r.status_code == 200 for r in responses)
    entry = app.state.registry.entries["mmoe"]
    assert entry.batcher.batches < 24  # 24 requests, fewer runner calls
    assert entry.stats.inference_count == 12 * 3 + 12 * 2


def test_metrics_and_stats_and_openapi(client: TestClient) -> None:
    good(client)
    client.post("/v1/models/mmoe/predict", json={"records": []})
    text = client.get("/metrics").text
    for metric in (
        "mtlrec_request_latency_seconds_bucket",
        "mtlrec_batch_size_rows_bucket",
        "mtlrec_requests_total",
        "mtlrec_request_errors_total",
        "mtlrec_oov_values_total",
        "mtlrec_queue_depth_rows",
    ):
        assert metric in text
    assert 'code="422"' in text
    stats = client.get("/v2/models/mmoe/stats").json()["model_stats"][0]
    assert stats["inference_count"] > 0 and stats["inference_stats"]["success"]["count"] > 0
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/models/mmoe/predict" in paths and "/v2/models/{name}/infer" in paths


def test_server_predictions_equal_batch_scoring_of_the_same_records(
    client: TestClient, exported_repo: Path, tmp_path: Path
) -> None:
    from mtlrec.data.loaders.synthetic import generate_impressions
    from mtlrec.serving.score import score_file

    raw = generate_impressions(40, seed=21)
    raw.loc[:4, "price"] = None  # missing values take the same fill online and offline
    raw.to_csv(tmp_path / "rows.csv", index=False)
    score_file(tmp_path / "rows.csv", exported_repo, "mmoe", tmp_path / "scores.parquet")
    offline = pd.read_parquet(tmp_path / "scores.parquet")

    fields = json.loads(client.get("/v1/models/mmoe").text)["fields"]
    names = [f["name"] for f in fields] + ["scenario"]
    records = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items() if k in names}
        for row in pd.read_csv(tmp_path / "rows.csv").to_dict(orient="records")
    ]
    response = client.post("/v1/models/mmoe/predict", json={"records": records})
    assert response.status_code == 200, response.text
    online = response.json()["predictions"]
    for task in ("ctr", "cvr"):
        np.testing.assert_allclose([p[task] for p in online], offline[task].to_numpy(), rtol=1e-6, atol=1e-7)
