"""End to end on a trained tiny run: export into a repository, versions, atomicity, and the preprocess model.

The preprocess model is exercised in-process: the ``model.py`` copied into the repository is imported and driven
with a tiny fake ``triton_python_backend_utils``, and its tensors must equal ``Preprocessor.transform``'s.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.dataset import open_prepared
from mtlrec.data.preprocess import Preprocessor
from mtlrec.errors import ExportError
from mtlrec.export import repository
from mtlrec.export.api import ExportOptions, ExportResult, export_run
from mtlrec.export.repo_validate import validate_repository
from mtlrec.export.triton_config import parse
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import train

TINY_MMOE = {"embed_dim": 4, "num_experts": 2, "expert": {"hidden": [8]}, "tower": {"hidden": [4]}}
FAST = {"batch_sizes": (1, 7)}  # parity on two batch sizes keeps these tests fast; the default adds 1024


@pytest.fixture(scope="module")
def run_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export_run") / "run"
    config = build_run_config("mmoe", {"model": TINY_MMOE, "train": {"epochs": 1, "batch_size": 512}})
    train(open_prepared(synthetic_dir), config, out)
    return out


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """Both formats, default serving options, into a fresh repository."""
    return export_run(run_dir, tmp_path_factory.mktemp("export_repo") / "repo", ExportOptions(format="both"))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` and beside it (staging leftovers), with file contents."""
    paths = sorted(root.parent.rglob("*"))
    return {str(p.relative_to(root.parent)): p.read_bytes() if p.is_file() else None for p in paths}


def copy_repo(exported: ExportResult, tmp_path: Path) -> Path:
    repo = tmp_path / "area" / "repo"
    shutil.copytree(exported.repo, repo)
    return repo


def test_export_writes_valid_repository_with_conventional_names(exported: ExportResult) -> None:
    assert exported.version == 1
    assert exported.models == {
        "onnx": "mmoe",
        "torchscript": "mmoe_torchscript",
        "preprocess": "mmoe_preprocess",
        "ensemble": "mmoe_ensemble",
    }
    assert validate_repository(exported.repo) == []
    files = {p.name for p in exported.version_dir("onnx").iterdir()}
    assert files == {
        "model.onnx",
        "export_spec.json",
        "schema.json",
        "preprocessor.json",
        "manifest.json",
        "golden.json",
    }
    assert (exported.version_dir("torchscript") / "model.pt").is_file()
    assert (exported.version_dir("torchscript") / "golden.json").is_file()  # a golden file per exported model
    assert (exported.version_dir("preprocess") / "model.py").is_file()
    assert set(exported.parity) == {"onnx", "torchscript"}
    assert all(d <= 1e-5 for report in exported.parity.values() for d in report.max_abs_diff.values())


def test_manifest_and_config_carry_the_schema_hash(exported: ExportResult, run_dir: Path) -> None:
    manifest = json.loads((exported.version_dir("onnx") / "manifest.json").read_text())
    schema_hash = json.loads((run_dir / "run.json").read_text())["schema_hash"]
    assert manifest["schema_hash"] == schema_hash
    assert manifest["source_run"]["path"] == str(run_dir.resolve())
    assert manifest["metrics"] == json.loads((run_dir / "metrics.json").read_text())
    assert {"mtlrec", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    for model in exported.models.values():
        cfg = parse((exported.repo / model / "config.pbtxt").read_text())
        assert cfg.parameters["mtlrec_schema_hash"].string_value == schema_hash


def test_ensemble_steps_map_existing_tensors(exported: ExportResult) -> None:
    configs = {m: parse((exported.repo / m / "config.pbtxt").read_text()) for m in exported.models.values()}
    ensemble = configs["mmoe_ensemble"]
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        step_cfg = configs[step.model_name]
        assert step.model_version == exported.version
        assert set(step.input_map) == {i.name for i in step_cfg.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) <= {o.name for o in step_cfg.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available
    assert [o.name for o in ensemble.output] == ["ctr", "cvr"]


def test_second_export_adds_version_two_beside_one(exported: ExportResult, run_dir: Path, tmp_path: Path) -> None:
    repo = copy_repo(exported, tmp_path)
    before = {p: p.read_bytes() for p in (repo / "mmoe" / "1").iterdir()}
    result = export_run(run_dir, repo, ExportOptions(format="onnx", **FAST))
    assert result.version == 2
    assert repository.existing_versions(repo, "mmoe") == [1, 2]
    assert repository.existing_versions(repo, "mmoe_torchscript") == [1]  # not part of this export
    assert {p: p.read_bytes() for p in (repo / "mmoe" / "1").iterdir()} == before
    ensemble = parse((repo / "mmoe_ensemble" / "config.pbtxt").read_text())
    assert {s.model_version for s in ensemble.ensemble_scheduling.step} == {2}
    assert validate_repository(repo) == []


def test_export_failing_after_model_file_leaves_repository_untouched(
    exported: ExportResult, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = copy_repo(exported, tmp_path)
    before = snapshot(repo)
    write_files = repository._write_files

    def fail_after_model(directory: Path, files: dict[str, Any]) -> None:
        write_files(directory, files)
        if "model.onnx" in files:
            assert (directory / "model.onnx").is_file()
            raise OSError("disk full")

    monkeypatch.setattr(repository, "_write_files", fail_after_model)
    with pytest.raises(OSError, match="disk full"):
        export_run(run_dir, repo, ExportOptions(**FAST))
    assert snapshot(repo) == before


def test_export_failing_while_committing_rolls_back(
    exported: ExportResult, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = copy_repo(exported, tmp_path)
    before = snapshot(repo)
    replace = repository.os.replace
    calls = []

    def fail_on_second_config(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the first config is already replaced, the version dirs are in place
            raise OSError("interrupted")
        replace(src, dst)

    monkeypatch.setattr(repository.os, "replace", fail_on_second_config)
    with pytest.raises(OSError, match="interrupted"):
        export_run(run_dir, repo, ExportOptions(**FAST))
    assert snapshot(repo) == before


def test_export_refuses_existing_version_before_exporting(exported: ExportResult, run_dir: Path) -> None:
    with pytest.raises(ExportError, match=r"version 1 of mmoe.* already exists"):
        export_run(run_dir, exported.repo, ExportOptions(format="both", version=1))


def test_export_refuses_incompatible_model_under_same_name(exported: ExportResult, run_dir: Path) -> None:
    with pytest.raises(ExportError, match=r"model `mmoe` .* another platform"):
        export_run(run_dir, exported.repo, ExportOptions(format="torchscript", **FAST))


# ------------------------------------------------------------------------------------- preprocess model in-process
class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


def fake_pb_utils() -> Any:
    return SimpleNamespace(
        get_input_tensor_by_name=lambda request, name: FakeTensor(name, request[name]) if name in request else None,
        Tensor=FakeTensor,
        InferenceResponse=FakeResponse,
        TritonError=lambda message: message,
    )


def load_model_py(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("exported_preprocess_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw_records(pre: Preprocessor, n: int, seed: int) -> pd.DataFrame:
    """Raw rows: known and unseen categories, empty strings, NaN and extreme dense values."""
    rng = np.random.default_rng(seed)
    schema = pre.schema
    columns: dict[str, Any] = {}
    for name in schema.sparse_names:
        pool = [*pre.state.vocabularies[name][:20], "never-seen", ""]
        columns[name] = rng.choice(np.array(pool, dtype=object), n)
    for name in schema.dense_names:
        values = rng.normal(0, 10, n).astype(np.float32).astype(np.float64)
        values[rng.random(n) < 0.2] = np.nan
        values[0] = 1e30
        columns[name] = values
    assert schema.scenario is not None and schema.scenario.values is not None
    columns[schema.scenario.name] = rng.choice(np.array(schema.scenario.values, dtype=object), n)
    return pd.DataFrame(columns)


def as_request(frame: pd.DataFrame, pre: Preprocessor) -> dict[str, np.ndarray]:
    """The tensors Triton hands the model for these rows: BYTES as object arrays of bytes, FP32, all [b, 1]."""
    schema = pre.schema
    strings = [*schema.sparse_names, schema.scenario.name] if schema.scenario else schema.sparse_names
    request = {}
    for name in frame.columns:
        if name in strings:
            request[name] = np.array([s.encode() for s in frame[name]], dtype=object).reshape(-1, 1)
        else:
            request[name] = frame[name].to_numpy(np.float32).reshape(-1, 1)
    return request


def test_preprocess_model_equals_preprocessor_transform(
    exported: ExportResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    version_dir = exported.version_dir("preprocess")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    module = load_model_py(version_dir / "model.py")
    model = module.TritonPythonModel()
    config = json.dumps(
        {
            "output": [{"name": o.name} for o in parse((version_dir.parent / "config.pbtxt").read_text()).output],
            "parameters": {"mtlrec_schema_hash": {"string_value": exported.manifest["schema_hash"]}},
        }
    )
    model.initialize({"model_config": config, "model_repository": str(version_dir.parent), "model_version": "1"})
    pre = Preprocessor.load(version_dir / "preprocessor.json")
    frames = [raw_records(pre, n, seed) for seed, n in enumerate((5, 1, 12))]
    bad = frames[1].copy()
    bad["scenario"] = "no-such-scenario"
    requests = [as_request(frames[0], pre), as_request(bad, pre), as_request(frames[2], pre)]

    responses = model.execute(requests)

    assert len(responses) == 3
    assert responses[1].error is not None and "no-such-scenario" in responses[1].error
    for response, frame in ((responses[0], frames[0]), (responses[2], frames[2])):
        assert response.error is None
        expected = pre.transform(frame)
        np.testing.assert_array_equal(response.outputs["encoded_sparse_ids"], expected.sparse)
        np.testing.assert_array_equal(response.outputs["encoded_dense"], expected.dense)
        assert expected.scenario is not None
        np.testing.assert_array_equal(response.outputs["encoded_scenario"], expected.scenario.reshape(-1, 1))
        assert response.outputs["encoded_sparse_ids"].dtype == np.int64
        assert response.outputs["encoded_dense"].dtype == np.float32


def test_preprocess_model_encodes_a_whole_batch_in_one_transform(
    exported: ExportResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_model_py(exported.version_dir("preprocess") / "model.py")
    pre = Preprocessor.load(exported.version_dir("preprocess") / "preprocessor.json")
    calls = []
    transform = Preprocessor.transform

    def counting(self: Preprocessor, frame: pd.DataFrame, **kwargs: Any) -> Any:
        calls.append(len(frame))
        return transform(self, frame, **kwargs)

    monkeypatch.setattr(Preprocessor, "transform", counting)
    requests = [module.decode_request(pre, as_request(raw_records(pre, n, n), pre)) for n in (3, 4, 5)]
    results = module.encode_batch(pre, requests)
    assert calls == [12]
    assert [len(r["encoded_sparse_ids"]) for r in results] == [3, 4, 5]


def test_preprocess_model_reports_missing_input_as_error_response(
    exported: ExportResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    module = load_model_py(exported.version_dir("preprocess") / "model.py")
    model = module.TritonPythonModel()
    version_dir = exported.version_dir("preprocess")
    model.initialize({"model_config": "{}", "model_repository": str(version_dir.parent), "model_version": "1"})
    pre = model.preprocessor
    request = as_request(raw_records(pre, 2, 0), pre)
    del request[pre.schema.sparse_names[0]]
    (response,) = model.execute([request])
    assert "is missing from the request" in response.error
