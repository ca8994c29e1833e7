"""The static repository validator: a valid export passes, each kind of breakage is named on its own line."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlrec.export import preprocess_model
from mtlrec.export.onnx import export_onnx
from mtlrec.export.repo_validate import validate_repository
from mtlrec.export.repository import ModelFiles, write_model_repository
from mtlrec.export.spec import build_export_spec
from mtlrec.export.torchscript import export_torchscript
from mtlrec.export.triton_config import (
    ServingOptions,
    build_ensemble_config,
    build_model_config,
    build_preprocess_config,
    parse,
    render,
)
from mtlrec.models import build_model
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec

SCHEMA = FeatureSchema(
    sparse=(SparseField(name="user", vocab_size=6), SparseField(name="item", vocab_size=4)),
    dense=(DenseField(name="price"),),
    scenario=ScenarioField(name="scenario", values=("app", "web")),  # named like the model's tensor, on purpose
    tasks=(TaskSpec(name="ctr", label="click"), TaskSpec(name="cvr", conditioned_on="ctr")),
)


@pytest.fixture(scope="module")
def valid_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """onnx + torchscript + python preprocess + ensemble of an untrained tiny model, written by the real writer."""
    root = tmp_path_factory.mktemp("repo_validate")
    torch.manual_seed(0)
    model = build_model("shared_bottom", {"bottom": {"hidden": [4]}}, SCHEMA).eval()
    spec = build_export_spec(SCHEMA, "shared_bottom", model.output_names)
    serving = ServingOptions(max_batch_size=64)
    onnx_path = export_onnx(model, spec, root / "work" / "model.onnx")
    pt_path = export_torchscript(model, spec, root / "work" / "model.pt")
    models = [
        ModelFiles(build_model_config(spec, "onnxruntime_onnx", "tiny", serving), {"model.onnx": onnx_path}),
        ModelFiles(build_model_config(spec, "pytorch_libtorch", "tiny_ts", serving), {"model.pt": pt_path}),
        ModelFiles(
            build_preprocess_config(SCHEMA, spec, "tiny_preprocess", serving),
            {"model.py": Path(preprocess_model.__file__).read_text()},
        ),
        ModelFiles(
            build_ensemble_config(
                SCHEMA, spec, "tiny_ensemble", ("tiny_preprocess", "tiny"), "onnxruntime_onnx", serving, version=1
            )
        ),
    ]
    write_model_repository(root / "repo", models)
    return root / "repo"


def edit_config(repo: Path, model: str, change: Callable[[Any], None]) -> None:
    """Parse ``repo/model/config.pbtxt``, apply ``change`` to the message, write it back."""
    path = repo / model / "config.pbtxt"
    cfg = parse(path.read_text())
    change(cfg)
    path.write_text(render(cfg))


def broken_copy(valid_repo: Path, tmp_path: Path) -> Path:
    """A copy of the valid repository with four deliberate problems (the issue's list)."""
    repo = tmp_path / "broken"
    shutil.copytree(valid_repo, repo)

    def rename_input(cfg: Any) -> None:
        cfg.input[1].name = "dense_x"

    def preferred_too_big(cfg: Any) -> None:
        cfg.dynamic_batching.preferred_batch_size.append(512)

    def map_missing_output(cfg: Any) -> None:
        step = cfg.ensemble_scheduling.step[1]
        del step.output_map["ctr"]
        step.output_map["ctr_typo"] = "ctr"

    edit_config(repo, "tiny", rename_input)
    edit_config(repo, "tiny_ts", preferred_too_big)
    edit_config(repo, "tiny_ensemble", map_missing_output)
    (repo / "tiny_preprocess" / "1" / "model.py").unlink()
    return repo


def test_valid_export_has_no_problem(valid_repo: Path) -> None:
    assert validate_repository(valid_repo) == []


def test_broken_repository_names_each_problem(valid_repo: Path, tmp_path: Path) -> None:
    problems = validate_repository(broken_copy(valid_repo, tmp_path))
    text = "\n".join(problems)
    assert any("tiny:" in p and "'dense_x'" in p and "not an input of the graph" in p for p in problems), text
    assert any("tiny:" in p and "['dense'] are not declared" in p for p in problems), text
    assert "tiny_ts: preferred_batch_size 512 > max_batch_size 64" in problems, text
    assert any("tiny_ensemble" in p and "'ctr_typo'" in p for p in problems), text
    assert any("tiny_ensemble: ensemble output 'ctr' is produced by no step" in p for p in problems), text
    assert "tiny_preprocess: version 1 has no model.py" in problems, text
    # the ensemble's step input 'dense' of tiny no longer exists either: reported, not crashed on
    assert any("tiny_ensemble" in p and "'dense'" in p for p in problems), text


def test_data_type_mismatch_with_graph_is_named(valid_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(valid_repo, repo)

    def int32(cfg: Any) -> None:
        cfg.input[0].data_type = 8  # TYPE_INT32

    edit_config(repo, "tiny", int32)
    problems = validate_repository(repo)
    assert any("'sparse_ids' is TYPE_INT64 in the graph, TYPE_INT32 in the config" in p for p in problems), problems
    assert any("TYPE_INT64 from step 1" in p and "TYPE_INT32" in p for p in problems), problems


def test_torchscript_arity_mismatch_is_named(valid_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(valid_repo, repo)

    def extra_input(cfg: Any) -> None:
        cfg.input.add(name="extra", data_type=11, dims=[1])  # TYPE_FP32

    edit_config(repo, "tiny_ts", extra_input)
    problems = validate_repository(repo)
    assert any("tiny_ts: version 1 model.pt: forward() takes 3 tensors" in p and "4 inputs" in p for p in problems)


def test_structure_problems_are_named(valid_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(valid_repo, repo)
    (repo / "tiny_ts" / "config.pbtxt").write_text('name: "tiny_ts" max_batch_size: 4 bogus_field: 1')
    edit_config(repo, "tiny", lambda cfg: setattr(cfg, "name", "other"))
    shutil.rmtree(repo / "tiny_preprocess" / "1")
    (repo / "no_config").mkdir()

    def missing_model(cfg: Any) -> None:
        cfg.ensemble_scheduling.step[0].model_name = "ghost"

    edit_config(repo, "tiny_ensemble", missing_model)
    problems = validate_repository(repo)
    text = "\n".join(problems)
    assert any(p.startswith("tiny_ts: config.pbtxt does not parse") and "bogus_field" in p for p in problems), text
    assert "tiny: config name 'other' differs from the directory name 'tiny'" in problems, text
    assert "tiny_preprocess: no numeric version directory" in problems, text
    assert "no_config: no config.pbtxt" in problems, text
    assert "tiny_ensemble: ensemble step 1 names model 'ghost', which is not in the repository" in problems, text


def test_missing_repository_is_one_problem(tmp_path: Path) -> None:
    assert validate_repository(tmp_path / "nope") == [f"{tmp_path / 'nope'}: not a directory"]
