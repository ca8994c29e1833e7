"""Golden requests: written by the export for every model, replayed by ``mtlrec repo validate --golden`` and by the
server before it serves a version; a moved answer, a broken record or a missing file is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from mtlrec.cli.app import app as cli
from mtlrec.data.preprocess import Preprocessor
from mtlrec.export.golden import GOLDEN_FILE, check_golden, golden_records, load_golden
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec
from mtlrec.serving.app import create_app
from mtlrec.serving.repository import open_model
from mtlrec.serving.schemas import build_request_model, records_to_frame


def test_golden_records_cover_odd_input_and_are_valid_requests() -> None:
    schema = FeatureSchema(
        sparse=(SparseField(name="user"), SparseField(name="item")),
        dense=(DenseField(name="price"),),
        scenario=ScenarioField(name="site"),
        tasks=(TaskSpec(name="ctr"),),
    )
    train = pd.DataFrame(
        {"user": ["a", "b"], "item": [1, 2], "price": [1.0, 3.0], "site": ["app", "web"], "ctr": [0, 1]}
    )
    pre = Preprocessor.fit(train, schema)
    records, labels = golden_records(pre)
    assert labels == ["typical app", "typical web", "unseen", "missing", "null", "extreme+", "extreme-"]
    build_request_model(pre.schema).model_validate({"records": records})  # valid requests of the records API
    encoded = pre.transform(records_to_frame(records, pre.schema), with_labels=False)
    assert encoded.sparse[2].tolist() == [0, 0]  # unseen -> the OOV id
    assert encoded.sparse[3].tolist() == encoded.sparse[4].tolist() == [1, 1]  # absent == null -> the missing id
    assert encoded.dense[3, 0] == encoded.dense[4, 0]  # absent == null -> the training fill value
    assert encoded.dense[5, 0] == 50.0 and encoded.dense[6, 0] == -50.0  # extreme -> the clip


def test_every_exported_model_has_golden_answers_its_runtime_reproduces(exported_repo: Path) -> None:
    for name in ("mmoe", "mmoe_torchscript"):
        golden = load_golden(exported_repo / name / "1")
        assert golden is not None and golden["outputs"] == ["ctr", "cvr"]
        assert {"unseen", "missing", "null", "extreme+", "extreme-"} <= set(golden["labels"])
        values = np.array([[row[o] for o in golden["outputs"]] for row in golden["expected"]])
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
        served = open_model(exported_repo, name)
        try:
            assert check_golden(golden, lambda r, s=served: s.predict_frame(records_to_frame(r, s.schema))) == []
        finally:
            served.close()
    onnx = load_golden(exported_repo / "mmoe" / "1")
    torchscript = load_golden(exported_repo / "mmoe_torchscript" / "1")
    assert onnx is not None and torchscript is not None
    for a, b in zip(onnx["expected"], torchscript["expected"], strict=True):  # the same answers on both runtimes
        assert all(abs(a[k] - b[k]) < 1e-5 for k in a)
    assert not (exported_repo / "mmoe_ensemble" / "1" / GOLDEN_FILE).exists()


def test_repo_validate_golden_names_each_moved_answer_and_missing_file(exported_repo: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["repo", "validate", str(exported_repo), "--golden"])
    assert ok.exit_code == 0, ok.output
    assert "golden records answered as at export" in " ".join(ok.output.split())

    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    path = repo / "mmoe" / "1" / GOLDEN_FILE
    golden = json.loads(path.read_text())
    golden["expected"][3]["cvr"] += 0.25
    path.write_text(json.dumps(golden))
    (repo / "mmoe_torchscript" / "1" / GOLDEN_FILE).unlink()
    bad = runner.invoke(cli, ["repo", "validate", str(repo), "--golden"])
    assert bad.exit_code == 1
    output = " ".join(bad.output.split())
    assert "mmoe/1: record 3 (unseen): cvr" in output and "> atol 1e-05" in output
    assert "mmoe_torchscript/1: no golden.json" in output
    assert runner.invoke(cli, ["repo", "validate", str(repo)]).exit_code == 0  # static checks alone still pass


def test_the_server_refuses_a_version_whose_golden_answers_moved_and_serves_the_previous(
    exported_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo, ignore=shutil.ignore_patterns("mmoe_torchscript"))
    shutil.copytree(repo / "mmoe" / "1", repo / "mmoe" / "2")
    path = repo / "mmoe" / "2" / GOLDEN_FILE
    golden = json.loads(path.read_text())
    golden["expected"][0]["ctr"] = 1.0 - golden["expected"][0]["ctr"]
    path.write_text(json.dumps(golden))
    app = create_app(repo)  # at start-up: version 2 refused, version 1 serves
    entry = app.state.registry.entries["mmoe"]
    assert entry.version == 1
    assert "version 2: golden check failed: record 0" in app.state.registry.failed["mmoe"]
    assert create_app(repo, golden_check=False).state.registry.entries["mmoe"].version == 2  # --no-golden
