"""Runners: the in-process runtimes agree on the exported repository; TritonRunner against a fake tritonclient."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mtlrec.data.loaders.synthetic import generate_impressions
from mtlrec.export.spec import ExportSpec
from mtlrec.serving.repository import list_models, open_model
from mtlrec.serving.runners import (
    OnnxRuntimeRunner,
    RunnerError,
    TorchScriptRunner,
    TritonRunner,
    triton_module,
)
from mtlrec.serving.schemas import records_to_frame

ATOL = 1e-5
FakeInstaller = Callable[[dict[str, dict[str, Any]]], Any]  # the fake_triton fixture


def test_onnxruntime_and_torchscript_runners_agree_on_the_exported_model(exported_repo: Path) -> None:
    assert list_models(exported_repo) == {"mmoe": [1], "mmoe_torchscript": [1]}
    frame = generate_impressions(257, seed=4)
    onnx = open_model(exported_repo, "mmoe", backend="onnxruntime", threads=1)
    torchscript = open_model(exported_repo, "mmoe_torchscript", backend="torchscript", threads=1)
    try:
        assert isinstance(onnx.runner, OnnxRuntimeRunner) and isinstance(torchscript.runner, TorchScriptRunner)
        tensors, _ = onnx.encode(frame)
        a, b = onnx.runner.infer(tensors), torchscript.runner.infer(tensors)
        assert list(a) == list(b) == ["ctr", "cvr"]
        for name in a:
            assert a[name].shape == (257,) and a[name].dtype == np.float32
            np.testing.assert_allclose(a[name], b[name], atol=ATOL, rtol=0, err_msg=name)
        # The same rows as request records give the same answers (records -> frame -> THE transform).
        records = frame[[*onnx.schema.feature_names, "scenario"]].iloc[:9].to_dict("records")
        from_records = onnx.predict_frame(records_to_frame(records, onnx.schema))
        np.testing.assert_allclose(from_records["ctr"], a["ctr"][:9], atol=ATOL, rtol=0)
    finally:
        onnx.close()
        torchscript.close()


def test_runner_refuses_a_feed_without_its_inputs(exported_repo: Path) -> None:
    spec = ExportSpec.load(exported_repo / "mmoe" / "1" / "export_spec.json")
    runner = OnnxRuntimeRunner(exported_repo / "mmoe" / "1" / "model.onnx", spec, threads=1)
    with runner, pytest.raises(RunnerError, match="lacks the input tensors"):
        runner.infer({"dense": np.zeros((1, 4), np.float32)})


# ------------------------------------------------------------------------------------------------- Triton
@pytest.fixture
def spec(exported_repo: Path) -> ExportSpec:
    return ExportSpec.load(exported_repo / "mmoe" / "1" / "export_spec.json")


def _feed(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sparse_ids": rng.integers(0, 5, (rows, 9)).astype(np.int64),
        "dense": rng.normal(size=(rows, 4)).astype(np.float32),
        "scenario": rng.integers(0, 3, rows).astype(np.int64),
    }


def _echo(names: list[str]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Answers [B, 1] per output: the row's first sparse id (+ the output's index / 10), so splits are checkable."""

    def answer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = inputs["sparse_ids"][:, :1].astype(np.float32)
        return {n: first + i / 10 for i, n in enumerate(names)}

    return answer


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_runner_sends_spec_inputs_and_reads_libtorch_outputs(
    fake_triton: FakeInstaller, spec: ExportSpec, protocol: str
) -> None:
    wire = ["ctr__0", "cvr__1"]
    model = {"platform": "pytorch_libtorch", "outputs": wire, "answer": _echo(wire), "max_batch_size": 4}
    fake = fake_triton({"mmoe_torchscript": model})
    feed = _feed(10)
    with TritonRunner("http://localhost:8000", "mmoe_torchscript", spec, protocol=protocol) as runner:  # type: ignore[arg-type]
        assert "pytorch_libtorch" in runner.description
        out = runner.infer(feed)
    assert [len(r[1]["scenario"]) for r in fake.requests] == [4, 4, 2]  # split at max_batch_size
    name, arrays, datatypes = fake.requests[0]
    assert name == "mmoe_torchscript"
    assert datatypes == {"sparse_ids": "INT64", "dense": "FP32", "scenario": "INT64"}
    assert arrays["scenario"].shape == (4, 1)  # dims [1] + reshape on the server
    assert list(out) == ["ctr", "cvr"] and out["ctr"].shape == (10,) and out["ctr"].dtype == np.float32
    np.testing.assert_allclose(out["ctr"], feed["sparse_ids"][:, 0])
    np.testing.assert_allclose(out["cvr"], feed["sparse_ids"][:, 0] + 0.1, rtol=1e-6)


def test_triton_runner_refuses_a_model_without_the_spec_outputs(fake_triton: FakeInstaller, spec: ExportSpec) -> None:
    fake_triton({"mmoe": {"platform": "onnxruntime_onnx", "outputs": ["p"], "answer": _echo(["p"])}})
    with pytest.raises(RunnerError, match="has no output `ctr`"):
        TritonRunner("localhost:8000", "mmoe", spec)


def test_triton_runner_reports_server_errors(fake_triton: FakeInstaller, spec: ExportSpec) -> None:
    fake_triton({})
    with pytest.raises(RunnerError, match="metadata of nope failed: Request for unknown model"):
        TritonRunner("localhost:8000", "nope", spec)


def test_triton_module_missing_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(RunnerError, match="not installed") as failure:
        triton_module("grpc")
    assert "pip install" in (failure.value.hint or "")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_http_clients_are_per_thread_and_grpc_is_shared(protocol: str) -> None:
    pytest.importorskip(f"tritonclient.{protocol}", reason="tritonclient (the [triton] extra) is not installed")
    import threading

    from mtlrec.serving.runners import TritonClients

    clients = TritonClients("127.0.0.1:1", protocol)  # type: ignore[arg-type]  # opening connects to nothing yet
    mine = clients.get()
    assert clients.get() is mine
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(clients.get()))
    thread.start()
    thread.join()
    # geventhttpclient's connections belong to the thread that opened them; gRPC's client is thread-safe.
    assert (other[0] is mine) == (protocol == "grpc")
    clients.close()
