"""Every registered model is trained, exported and served: raw records through the repository's own transform and
an in-process runner give the eager model's probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_cases import case_config
from mtlrec.data.dataset import EncodedData, open_prepared
from mtlrec.data.loaders.synthetic import generate_impressions
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.models import get_model_class, list_models
from mtlrec.serving.repository import list_models as repository_models
from mtlrec.serving.repository import open_model
from mtlrec.train.checkpoint import load_run
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import predict, train

REGISTERED = sorted(info.name for info in list_models())


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_model_is_trained_exported_and_served(name: str, backend: str, synthetic_dir: Path, tmp_path: Path) -> None:
    track = get_model_class(name).tracks[0]
    model = case_config(name, track=track, regularized=False, task="ctr")
    config = build_run_config(name, {"model": model, "train": {"epochs": 1, "batch_size": 512}})
    train(open_prepared(synthetic_dir), config, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "repo", ExportOptions(format="both"))
    served_name = name if backend == "onnxruntime" else f"{name}_torchscript"
    assert served_name in repository_models(tmp_path / "repo")

    raw = generate_impressions(64, seed=11)  # raw records, as a client sends them (unseen ids included)
    with_missing = raw.copy()
    with_missing.loc[:5, "price"] = np.nan
    with_missing.loc[:5, "user_id"] = None
    served = open_model(tmp_path / "repo", served_name, backend=backend, threads=1)
    try:
        scores = served.predict_frame(with_missing)
    finally:
        served.close()

    run = load_run(tmp_path / "run")
    tensors, _ = served.encode(with_missing)
    encoded = run.preprocessor.transform(with_missing, with_labels=False)
    eager = predict(run.model, EncodedData.from_encoded(run.schema, encoded))
    assert sorted(scores) == sorted(run.model.output_names)
    for output, values in scores.items():
        assert values.shape == (64,)
        np.testing.assert_allclose(values, eager[output], atol=1e-5, err_msg=output)
    assert np.array_equal(tensors["sparse_ids"], encoded.sparse)
