"""Clients: the records API over an httpx MockTransport, the Triton ensemble over a fake tritonclient, the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from mtlrec.cli.app import app
from mtlrec.serving import client as client_module
from mtlrec.serving.client import (
    ClientError,
    TritonRecordsClient,
    ensemble_inputs,
    post_records,
    predict_records,
    predict_url,
)
from mtlrec.serving.runners import RunnerError

FakeInstaller = Callable[[dict[str, dict[str, Any]]], Any]  # the fake_triton fixture
RECORDS: list[dict[str, Any]] = [{"user_id": "u1", "price": 9.5, "scenario": "scenario_0"}, {"scenario": "scenario_1"}]


def _server(seen: list[httpx.Request], status: int = 200, body: Any = None) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if body is not None:
            return httpx.Response(status, json=body)
        records = json.loads(request.content)["records"]
        predictions = [{"ctr": 0.1 * (i + 1), "cvr": 0.01} for i in range(len(records))]
        return httpx.Response(200, json={"model": "mmoe", "version": "1", "predictions": predictions, "oov": None})

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_predict_records_posts_records_with_the_api_key() -> None:
    seen: list[httpx.Request] = []
    out = predict_records("localhost:8080/", "mmoe", RECORDS, api_key="s3cret", http_client=_server(seen))
    assert out == [{"ctr": 0.1, "cvr": 0.01}, {"ctr": 0.2, "cvr": 0.01}]
    (request,) = seen
    assert str(request.url) == "http://localhost:8080/v1/models/mmoe/predict"
    assert request.method == "POST" and request.headers["x-api-key"] == "s3cret"
    assert json.loads(request.content) == {"records": RECORDS}


def test_predict_records_without_key_sends_no_header() -> None:
    seen: list[httpx.Request] = []
    predict_records("http://h:1", "mmoe", RECORDS, http_client=_server(seen))
    assert "x-api-key" not in seen[0].headers
    assert predict_url("https://h:1/", "m") == "https://h:1/v1/models/m/predict"


def test_post_records_error_names_the_field_and_hints() -> None:
    detail = [{"loc": ["body", "records", 0, "price"], "msg": "Input should be a valid number", "type": "x"}]
    client = _server([], status=422, body={"detail": detail})
    with pytest.raises(ClientError, match=r"answered 422: records\.0\.price: Input should be a valid number") as e:
        post_records("http://h:1", "mmoe", RECORDS, client=client)
    assert "GET /v1/models" in (e.value.hint or "")
    with pytest.raises(ClientError, match="answered 401: bad key") as e:
        post_records("http://h:1", "mmoe", RECORDS, client=_server([], status=401, body={"detail": "bad key"}))
    assert "--api-key" in (e.value.hint or "")


def test_post_records_unreachable_server_is_a_client_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ClientError, match="cannot reach http://h:1/v1/models/mmoe/predict"):
        post_records("http://h:1", "mmoe", RECORDS, client=httpx.Client(transport=httpx.MockTransport(refuse)))


def test_predict_records_refuses_empty_input_and_unknown_protocols() -> None:
    with pytest.raises(ClientError, match="no records"):
        predict_records("h:1", "mmoe", [])
    with pytest.raises(ClientError, match="unknown protocol"):
        predict_records("h:1", "mmoe", RECORDS, protocol="smoke-signals")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ Triton ensemble
ENSEMBLE_INPUTS = [
    {"name": "user_id", "datatype": "BYTES", "shape": [-1, 1]},
    {"name": "hour", "datatype": "BYTES", "shape": [-1, 1]},
    {"name": "price", "datatype": "FP32", "shape": [-1, 1]},
    {"name": "scenario", "datatype": "BYTES", "shape": [-1, 1]},
]


def test_ensemble_inputs_fill_missing_values_and_normalise_numbers() -> None:
    records: list[dict[str, Any]] = [
        {"user_id": "u1", "hour": 12.0, "price": 3, "scenario": "s0"},
        {"hour": 7, "price": None, "scenario": "s1"},
        {"user_id": None, "price": " ", "scenario": "s0"},
    ]
    tensors = ensemble_inputs(records, ENSEMBLE_INPUTS)
    assert tensors["user_id"].shape == (3, 1) and tensors["user_id"].dtype == object
    assert tensors["user_id"][:, 0].tolist() == [b"u1", b"", b""]
    assert tensors["hour"][:, 0].tolist() == [b"12", b"7", b""]
    assert tensors["price"].dtype == np.float32 and tensors["price"][0, 0] == 3.0
    assert math.isnan(tensors["price"][1, 0]) and math.isnan(tensors["price"][2, 0])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"scenario": "s0", "colour": "red"}, "record 0 has fields the model does not take: colour"),
        ({"scenario": "s0", "price": "cheap"}, "field `price` has the non-numeric value 'cheap'"),
        ({"scenario": "s0", "price": True}, "field `price` has the value True"),
        ({"scenario": "s0", "user_id": ["a"]}, "field `user_id` has the value"),
    ],
)
def test_ensemble_inputs_refuse_bad_records(record: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientError, match=message):
        ensemble_inputs([record], ENSEMBLE_INPUTS)


def _ensemble_model(max_batch_size: int = 1024) -> dict[str, Any]:
    def answer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        price = np.nan_to_num(inputs["price"], nan=-1.0)
        return {"ctr": price / 10, "cvr": price / 100}

    return {
        "platform": "ensemble",
        "inputs": ENSEMBLE_INPUTS,
        "outputs": ["ctr", "cvr"],
        "answer": answer,
        "max_batch_size": max_batch_size,
    }


@pytest.mark.parametrize("protocol", ["triton-http", "triton-grpc"])
def test_predict_records_on_triton_calls_the_ensemble_of_the_base_name(
    fake_triton: FakeInstaller, protocol: str
) -> None:
    fake = fake_triton({"mmoe_ensemble": _ensemble_model(max_batch_size=2), "mmoe": _ensemble_model()})
    records = [{"price": float(i), "scenario": "s0"} for i in range(5)]
    out = predict_records("localhost:8000", "mmoe", records, protocol=protocol)  # type: ignore[arg-type]
    assert [name for name, _, _ in fake.requests] == ["mmoe_ensemble"] * 3  # 5 records, max_batch_size 2
    assert fake.requests[0][2] == {"user_id": "BYTES", "hour": "BYTES", "price": "FP32", "scenario": "BYTES"}
    assert out == [{"ctr": pytest.approx(i / 10), "cvr": pytest.approx(i / 100)} for i in range(5)]


def test_triton_records_client_uses_a_given_raw_model_name(fake_triton: FakeInstaller) -> None:
    fake = fake_triton({"my_pipeline": _ensemble_model()})
    triton = TritonRecordsClient("grpc://localhost:8001", "my_pipeline", protocol="grpc")
    assert triton.model == "my_pipeline" and triton.outputs == ["ctr", "cvr"]
    assert triton.predict([{"scenario": "s0"}]) == [{"ctr": pytest.approx(-0.1), "cvr": pytest.approx(-0.01)}]
    assert triton.predict([]) == [] and len(fake.requests) == 1


def test_triton_server_error_is_reported(fake_triton: FakeInstaller) -> None:
    fake_triton({})
    with pytest.raises(RunnerError, match="unknown model: 'nope'"):
        predict_records("localhost:8000", "nope", RECORDS, protocol="triton-http")


# ------------------------------------------------------------------------------------------------------ CLI
def test_predict_cli_prints_a_table_and_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_predict(url: str, model: str, records: list[Any], protocol: str, api_key: str | None) -> Any:
        calls.append((url, model, records, protocol, api_key))
        return [{"ctr": 0.25, "cvr": 0.125} for _ in records]

    monkeypatch.setattr(client_module, "predict_records", fake_predict)
    base = ["predict", "--url", "http://h:8080", "--model", "mmoe"]
    table = CliRunner().invoke(app, [*base, "--record", json.dumps(RECORDS[0]), "--api-key", "k"])
    assert table.exit_code == 0, table.output
    assert "0.250000" in table.output and "cvr" in table.output
    assert calls[0] == ("http://h:8080", "mmoe", [RECORDS[0]], "records", "k")
    lines = tmp_path / "records.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    as_json = CliRunner().invoke(app, [*base, "--file", str(lines), "--protocol", "triton-grpc", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["predictions"] == [{"ctr": 0.25, "cvr": 0.125}] * 2
    assert calls[1][3] == "triton-grpc"


def test_predict_cli_user_errors_exit_2(tmp_path: Path) -> None:
    base = ["predict", "--url", "http://h:8080", "--model", "mmoe"]
    neither = CliRunner().invoke(app, base)
    assert neither.exit_code == 2 and "exactly one of --record and --file" in neither.output
    broken = CliRunner().invoke(app, [*base, "--record", "{not json"])
    assert broken.exit_code == 2 and "--record is not JSON" in broken.output
    lines = tmp_path / "r.jsonl"
    lines.write_text('{"a": 1}\n[1, 2]\n')
    not_object = CliRunner().invoke(app, [*base, "--file", str(lines)])
    assert not_object.exit_code == 2 and "record 1 is not a JSON object" in not_object.output
