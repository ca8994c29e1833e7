"""A searched architecture goes the whole way: search, train, export (parity checked), serve raw records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from mtlrec.data.dataset import EncodedData, open_prepared
from mtlrec.data.loaders.synthetic import generate_impressions
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.nas.architecture import Architecture
from mtlrec.nas.search import SearchConfig, search
from mtlrec.serving.app import create_app
from mtlrec.train.checkpoint import load_run
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import predict, train

SEARCH = {
    "space": {
        "embed_dim": 4,
        "num_experts": 3,
        "num_blocks": 2,
        "block_dim": 8,
        "candidate_ops": ["identity", "mlp:8", "mlp:16"],
        "tower": {"hidden": [8]},
    },
    "search": {"warmup_epochs": 1, "search_epochs": 1, "batch_size": 256, "train_rows": 2000},
}


def with_fields_dropped(arch: Architecture) -> Architecture:
    """The architecture with each first-level expert reading every other field only (a short search on a few
    rows barely moves the masks): the exported graph must gather the kept fields."""
    data = arch.model_dump(mode="json")
    fields = list(arch.fields or ())
    for j, expert in enumerate(data["levels"][0]["experts"].values()):
        expert["single"] = fields[j % 2 :: 2]
        expert["interaction"] = fields[: 2 + j]
    return Architecture.model_validate(data)


@pytest.fixture(scope="module")
def exported(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    root = tmp_path_factory.mktemp("searched")
    result = search(synthetic_dir, SearchConfig.model_validate(SEARCH))
    arch = with_fields_dropped(result.architecture)
    model = {"embed_dim": arch.embed_dim, "architecture": arch.model_dump(mode="json")}
    config = build_run_config("automtl", {"model": model, "train": {"epochs": 1, "batch_size": 512}})
    trained = train(open_prepared(synthetic_dir), config, root / "run")
    export = export_run(root / "run", root / "repo", ExportOptions(format="onnx", batch_sizes=(1, 7, 64)))
    for report in export.parity.values():
        assert max(report.max_abs_diff.values()) <= 1e-5, report
    n_weights = sum(p.numel() for p in trained.model.state_dict().values() if p.is_floating_point())
    return root / "run", export.repo, n_weights


def test_exported_graph_holds_only_the_chosen_ops(exported: tuple[Path, Path, int]) -> None:
    _, repo, n_weights = exported
    graph = onnx.load(str(repo / "automtl" / "1" / "model.onnx")).graph
    names = [i.name for i in graph.initializer]
    assert not [n for n in names if "alpha" in n], names
    stored = sum(int(np.prod(i.dims)) for i in graph.initializer)
    assert stored <= n_weights  # nothing beyond the discrete model's own tensors (no candidate ops)


def test_searched_model_serves_raw_records_as_the_eager_model_scores_them(exported: tuple[Path, Path, int]) -> None:
    run_dir, repo, _ = exported
    raw = generate_impressions(16, seed=5)
    inputs = raw.drop(columns=["click", "conversion", "impression_id"])
    records = inputs.astype(object).where(inputs.notna(), None).to_dict(orient="records")  # NaN -> null
    with TestClient(create_app(repo, models=["automtl"], threads=1)) as client:
        response = client.post("/v1/models/automtl/predict", json={"records": records})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    run = load_run(run_dir)
    eager = predict(run.model, EncodedData.from_encoded(run.schema, run.preprocessor.transform(raw, with_labels=False)))
    for task in ("ctr", "cvr"):
        np.testing.assert_allclose([p[task] for p in served], eager[task], atol=1e-5, err_msg=task)
