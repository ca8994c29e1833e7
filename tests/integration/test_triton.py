"""A real Triton server (2.51, from the ``nvidia-pytriton`` wheel) serving the exported repository, unchanged.

One tiny MMoE is trained on the synthetic data and exported; the server loads the ONNX model, the TorchScript model,
the raw-record preprocess model and the ensemble through the explicit load API (the ONNX and TorchScript models
run on the test-only shim backends in ``triton_backends/``). Answers over ``tritonclient.http`` and
``tritonclient.grpc`` must equal in-process ONNX Runtime on the same inputs, and the ensemble's answers on raw
records must equal ``Preprocessor.transform`` + in-process ONNX Runtime. Skips, saying why, without
``.venv-triton`` (``scripts/setup_triton.sh``).
"""

from __future__ import annotations

import json
import queue
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
import tritonclient.http as httpclient  # type: ignore[import-untyped]
from google.protobuf import text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]
from tritonserver import TritonInstall, TritonServer, triton_server

from mtlrec.data.dataset import open_prepared
from mtlrec.data.preprocess import Preprocessor
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.export.spec import ExportSpec
from mtlrec.export.validate import run_onnx
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import train

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

ATOL = 1e-5
ROWS = 37  # not a power of two, not a warmup batch size
TINY_MMOE = {"embed_dim": 4, "num_experts": 2, "expert": {"hidden": [8]}, "tower": {"hidden": [4]}}
Client = Any  # tritonclient.http or .grpc InferenceServerClient (tritonclient ships no type information)


@dataclass(frozen=True)
class Exported:
    """The exported repository and the names the tests need from it."""

    repo: Path
    version: int
    onnx: str
    torchscript: str
    preprocess: str
    ensemble: str
    spec: ExportSpec
    preprocessor: Preprocessor

    @property
    def models(self) -> list[str]:
        return [self.onnx, self.torchscript, self.preprocess, self.ensemble]

    @property
    def onnx_path(self) -> Path:
        return self.repo / self.onnx / str(self.version) / "model.onnx"


@pytest.fixture(scope="module")
def exported(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A tiny MMoE trained for one epoch on the synthetic data, exported by ``export_run`` (the real exporter)."""
    root = tmp_path_factory.mktemp("triton_export")
    run_dir = root / "run"
    config = build_run_config("mmoe", {"model": TINY_MMOE, "train": {"epochs": 1, "batch_size": 512}})
    train(open_prepared(synthetic_dir), config, run_dir)
    # The deployment defaults (KIND_AUTO, max_batch_size 1024, warmup...), with the TorchScript twin beside ONNX.
    result = export_run(run_dir, root / "repo", ExportOptions(format="both", batch_sizes=(1, 7)))
    return Exported(
        repo=result.repo,
        version=result.version,
        onnx=result.models["onnx"],
        torchscript=result.models["torchscript"],
        preprocess=result.models["preprocess"],
        ensemble=result.models["ensemble"],
        spec=ExportSpec.load(result.version_dir("onnx") / "export_spec.json"),
        preprocessor=Preprocessor.load(result.version_dir("preprocess") / "preprocessor.json"),
    )


@pytest.fixture(scope="module")
def server(
    triton_install: TritonInstall, exported: Exported, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """The server over the exported repository (explicit model control: nothing is loaded at start)."""
    with triton_server(triton_install, exported.repo, tmp_path_factory.mktemp("tritonserver")) as running:
        yield running


@pytest.fixture(scope="module")
def loaded(server: TritonServer, exported: Exported) -> dict[str, str]:
    """Load every model through the HTTP load API; the errors by model name (empty when all loaded)."""
    client = httpclient.InferenceServerClient(server.http_url)
    errors: dict[str, str] = {}
    for name in exported.models:
        try:
            client.load_model(name)
        except InferenceServerException as exc:
            errors[name] = str(exc)
    return errors


def _client(server: TritonServer, protocol: str) -> Client:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def _module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def _datatype(array: np.ndarray) -> str:
    return {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32", np.dtype(object): "BYTES"}[array.dtype]


def _wire_inputs(module: Any, inputs: dict[str, np.ndarray]) -> list[Any]:
    """``InferInput`` objects of ``module`` (tritonclient.http or .grpc), binary data."""
    wire = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array)
        wire.append(tensor)
    return wire


def _infer(client: Client, protocol: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[Any]:
    module = _module(protocol)
    requested = [module.InferRequestedOutput(name) for name in outputs]
    # Bounded: HTTP has tritonclient's 60 s network timeout; gRPC has none unless given.
    bound = {"client_timeout": 60.0} if protocol == "grpc" else {}
    result = client.infer(model, _wire_inputs(module, inputs), outputs=requested, **bound)
    return [result.as_numpy(name) for name in outputs]


def _model_inputs(exported: Exported, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random valid model inputs, as the ONNX graph takes them (``scenario`` ``[B]``)."""
    rng = np.random.default_rng(seed)
    schema = exported.preprocessor.schema
    feed: dict[str, np.ndarray] = {}
    for tensor in exported.spec.inputs:
        if tensor.name == SPARSE_IDS:
            feed[tensor.name] = np.stack([rng.integers(0, n, rows) for n in schema.vocab_sizes()], 1).astype(np.int64)
        elif tensor.name == DENSE:
            feed[tensor.name] = rng.normal(size=(rows, len(schema.dense))).astype(np.float32)
        elif tensor.name == SCENARIO:
            feed[tensor.name] = rng.integers(0, schema.num_scenarios, rows).astype(np.int64)
    return feed


def _wire(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Model inputs as Triton takes them: a per-row scalar is ``dims [1]``, so ``[B] -> [B, 1]``."""
    return {k: v.reshape(-1, 1) if v.ndim == 1 else v for k, v in feed.items()}


def _ort(exported: Exported, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    return [np.asarray(r) for r in session.run(exported.spec.output_names, feed)]


def _raw_records(preprocessor: Preprocessor, rows: int, seed: int) -> pd.DataFrame:
    """Raw records: known values, unseen values and empty strings for categories; NaN and extremes for dense."""
    rng = np.random.default_rng(seed)
    schema = preprocessor.schema
    frame: dict[str, Any] = {}
    for name in schema.sparse_names:
        known = preprocessor.state.vocabularies[name]
        values = [str(known[i]) for i in rng.integers(0, len(known), rows)]
        values[1] = "never-seen-value"
        values[2] = ""
        frame[name] = values
    for name in schema.dense_names:
        dense = rng.normal(size=rows).astype(np.float32)
        dense[3] = np.nan
        dense[4] = 1e6
        frame[name] = dense
    if schema.scenario is not None:
        scenarios = schema.scenario.values or ()
        frame[schema.scenario.name] = [scenarios[i] for i in rng.integers(0, len(scenarios), rows)]
    return pd.DataFrame(frame)


def _ensemble_inputs(preprocessor: Preprocessor, records: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each field as a ``[B, 1]`` tensor: BYTES (UTF-8) for categories and the scenario, FP32 for dense fields."""
    schema = preprocessor.schema
    tensors: dict[str, np.ndarray] = {}
    strings = [*schema.sparse_names, *([schema.scenario.name] if schema.scenario else [])]
    for name in records.columns:
        if name in strings:
            tensors[name] = np.array([s.encode() for s in records[name]], dtype=object).reshape(-1, 1)
        else:
            tensors[name] = records[name].to_numpy(np.float32).reshape(-1, 1)
    return tensors


def _encoded_feed(exported: Exported, records: pd.DataFrame, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model inputs of raw records by ``Preprocessor.transform``, on the dense values the server sees (FP32)."""
    dense = {n: inputs[n][:, 0].astype(np.float64) for n in exported.preprocessor.schema.dense_names}
    encoded = exported.preprocessor.transform(records.assign(**dense), with_labels=False)
    by_name = {SPARSE_IDS: encoded.sparse, DENSE: encoded.dense, SCENARIO: encoded.scenario}
    return {t.name: np.asarray(by_name[t.name]) for t in exported.spec.inputs}


def test_all_models_load_ready(server: TritonServer, exported: Exported, loaded: dict[str, str]) -> None:
    assert loaded == {}, f"{loaded}\n--- server log ---\n{server.log()[-4000:]}"
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_ready()
    for name in exported.models:
        assert client.is_model_ready(name), name
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert all(index[name]["state"] == "READY" for name in exported.models), index
    # The shims stand in for the real backends without changing what clients see.
    assert client.get_model_metadata(exported.onnx)["platform"] == "onnxruntime_onnx"
    assert client.get_model_metadata(exported.torchscript)["platform"] == "pytorch_libtorch"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_onnx_and_torchscript_answers_equal_in_process_onnxruntime(
    server: TritonServer, exported: Exported, loaded: dict[str, str], protocol: str
) -> None:
    assert loaded == {}
    feed = _model_inputs(exported, ROWS, seed=1)
    expected = _ort(exported, feed)
    client = _client(server, protocol)
    spec = exported.spec
    onnx_out = _infer(client, protocol, exported.onnx, _wire(feed), spec.output_names)
    ts_names = [spec.backend_output_name(n, "pytorch_libtorch") for n in spec.output_names]
    ts_out = _infer(client, protocol, exported.torchscript, _wire(feed), ts_names)
    for name, want, got_onnx, got_ts in zip(spec.output_names, expected, onnx_out, ts_out, strict=True):
        assert got_onnx.shape == got_ts.shape == (ROWS, 1), name
        np.testing.assert_allclose(got_onnx, want, atol=ATOL, rtol=0, err_msg=f"{protocol} onnx {name}")
        np.testing.assert_allclose(got_ts, want, atol=ATOL, rtol=0, err_msg=f"{protocol} torchscript {name}")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_on_raw_records_equals_preprocessor_and_onnxruntime(
    server: TritonServer, exported: Exported, loaded: dict[str, str], protocol: str
) -> None:
    assert loaded == {}
    records = _raw_records(exported.preprocessor, ROWS, seed=2)
    inputs = _ensemble_inputs(exported.preprocessor, records)
    expected = _ort(exported, _encoded_feed(exported, records, inputs))
    got = _infer(_client(server, protocol), protocol, exported.ensemble, inputs, exported.spec.output_names)
    for name, want, answer in zip(exported.spec.output_names, expected, got, strict=True):
        assert answer.shape == (ROWS, 1), name
        np.testing.assert_allclose(answer, want, atol=ATOL, rtol=0, err_msg=f"{protocol} ensemble {name}")


def test_concurrent_requests_batched_by_triton_get_their_own_answers(
    server: TritonServer, exported: Exported, loaded: dict[str, str]
) -> None:
    """Many requests in flight at once: Triton's dynamic batcher merges them, the shims split the answers back."""
    assert loaded == {}
    sizes = [1, 5, 2, 9, 3, 1, 7, 4] * 2
    feeds = [_model_inputs(exported, n, seed=100 + i) for i, n in enumerate(sizes)]
    records = [_raw_records(exported.preprocessor, max(n, 5), seed=200 + i) for i, n in enumerate(sizes)]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    spec = exported.spec
    ts_names = [spec.backend_output_name(n, "pytorch_libtorch") for n in spec.output_names]
    jobs = [(exported.onnx, _wire(f), spec.output_names) for f in feeds]
    jobs += [(exported.torchscript, _wire(f), ts_names) for f in feeds]
    jobs += [(exported.ensemble, _ensemble_inputs(exported.preprocessor, r), spec.output_names) for r in records]
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()

    def done(k: int, result: Any, error: Any) -> None:
        answers.put((k, result, error))

    for k, (model, inputs, outputs) in enumerate(jobs):
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        client.async_infer(model, _wire_inputs(grpcclient, inputs), partial(done, k), outputs=requested)
    results: dict[int, list[np.ndarray]] = {}
    for _ in jobs:
        k, result, error = answers.get(timeout=30)
        assert error is None, (jobs[k][0], error)
        results[k] = [result.as_numpy(n) for n in jobs[k][2]]
    n = len(feeds)
    for i, feed in enumerate(feeds):
        expected = _ort(exported, feed)
        for got in (results[i], results[n + i]):
            for want, answer in zip(expected, got, strict=True):
                np.testing.assert_allclose(answer, want, atol=ATOL, rtol=0)
    for i, raw in enumerate(records):
        expected = _ort(exported, _encoded_feed(exported, raw, _ensemble_inputs(exported.preprocessor, raw)))
        for want, answer in zip(expected, results[2 * n + i], strict=True):
            np.testing.assert_allclose(answer, want, atol=ATOL, rtol=0)


def _break_onnx_input(config: Any, exported: Exported) -> str:
    config.input[0].name = "not_an_input"  # caught by the backend (the shim replicates the real one's check)
    return "unexpected inference input 'not_an_input'"


def _break_ensemble_output(config: Any, exported: Exported) -> str:
    step = config.ensemble_scheduling.step[-1]  # caught by Triton core's ensemble validation
    first = exported.spec.output_names[0]
    step.output_map["typo_output"] = step.output_map.pop(first)
    return "non-existing output typo_output"


@pytest.mark.parametrize("breakage", [_break_onnx_input, _break_ensemble_output], ids=["onnx_input", "ensemble_map"])
def test_load_of_a_broken_model_reports_its_error(
    server: TritonServer, exported: Exported, loaded: dict[str, str], breakage: Any
) -> None:
    """A copy of a model with one config error fails to load, and the load API names the error."""
    source = exported.ensemble if breakage is _break_ensemble_output else exported.onnx
    broken = f"broken_{source}"
    shutil.copytree(exported.repo / source, exported.repo / broken)
    try:
        config_path = exported.repo / broken / "config.pbtxt"
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        config.name = broken
        expected = breakage(config, exported)
        config_path.write_text(text_format.MessageToString(config))
        client = httpclient.InferenceServerClient(server.http_url)
        with pytest.raises(InferenceServerException, match=f"failed .*{broken}") as failure:
            client.load_model(broken)
        assert expected in str(failure.value)
        state = {m["name"]: m for m in client.get_model_repository_index()}[broken]
        assert state.get("state") != "READY", state  # UNAVAILABLE, or no state when core refused the config
        assert not client.is_model_ready(broken)
        assert all(client.is_model_ready(name) for name in exported.models)  # the others keep serving
    finally:
        shutil.rmtree(exported.repo / broken)


@pytest.mark.parametrize("protocol", ["triton-http", "triton-grpc"])
def test_predict_client_answers_raw_records_through_the_triton_ensemble(
    server: TritonServer, exported: Exported, loaded: dict[str, str], protocol: str
) -> None:
    from mtlrec.serving.client import predict_records

    assert loaded == {}
    records = _raw_records(exported.preprocessor, 9, seed=5)
    rows = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in records.to_dict("records")
    ]
    url = server.http_url if protocol == "triton-http" else server.grpc_url
    answers = predict_records(url, exported.onnx, rows, protocol=protocol)  # type: ignore[arg-type]
    encoded = exported.preprocessor.transform(records, with_labels=False)
    feed = {"sparse_ids": encoded.sparse, "dense": encoded.dense}
    if encoded.scenario is not None:
        feed["scenario"] = encoded.scenario
    expected = run_onnx(exported.onnx_path, {k: v for k, v in feed.items() if k in exported.spec.input_names})
    for name in exported.spec.output_names:
        np.testing.assert_allclose([a[name] for a in answers], expected[name].reshape(-1), atol=ATOL, err_msg=name)


def test_the_locustfile_load_tests_the_real_triton_server(
    server: TritonServer, exported: Exported, loaded: dict[str, str], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from mtlrec.cli.app import app

    assert loaded == {}
    args = ["loadtest", "--url", f"http://{server.http_url}", "--model", exported.onnx, "--protocol", "v2-http"]
    args += ["--repo", str(exported.repo), "--users", "2", "--duration", "4s", "--out", str(tmp_path), "--no-plots"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == 0 and report["requests"] > 0


def test_ray_scoring_through_triton_equals_the_local_engine(
    server: TritonServer, exported: Exported, loaded: dict[str, str], tmp_path: Path
) -> None:
    """`score --engine ray --triton-url`: each actor holds a Triton client (HTTP, then gRPC); same rows, same scores."""
    ray = pytest.importorskip("ray", reason="ray (the [ray] extra) is not installed")
    from mtlrec.data.loaders.synthetic import generate_impressions
    from mtlrec.scoring.ray_engine import score_with_ray
    from mtlrec.serving.score import score_file

    assert loaded == {}
    raw = generate_impressions(1_200, seed=3).drop(columns=["click", "conversion"])
    folder = tmp_path / "events"
    folder.mkdir()
    raw.iloc[:700].to_parquet(folder / "part-0.parquet")
    raw.iloc[700:].to_parquet(folder / "part-1.parquet")
    local = pd.concat(
        pd.read_parquet(score_file(part, exported.repo, exported.onnx, tmp_path / f"local-{part.name}").out)
        for part in sorted(folder.iterdir())
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            out = tmp_path / f"scores-{protocol}"
            result = score_with_ray(
                folder, exported.repo, exported.onnx, out, num_workers=1, triton_url=url, triton_protocol=protocol
            )
            scored = pd.read_parquet(out)
            assert result.rows == len(scored) == len(raw) and result.runtime.startswith(f"triton {protocol}")
            assert scored["impression_id"].is_unique and set(scored["impression_id"]) == set(raw["impression_id"])
            merged = scored.merge(local, on="impression_id", suffixes=("", "_local"))
            for name in exported.spec.output_names:
                np.testing.assert_allclose(merged[name], merged[f"{name}_local"], atol=1e-6, err_msg=name)
    finally:
        ray.shutdown()
