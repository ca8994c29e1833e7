"""Every registered model is trained, exported and served, once per model for all the tests here:

* raw records through the repository's own transform and each in-process runner (ONNX Runtime, TorchScript) give the
  eager model's probabilities;
* odd input gets the same finite answer on every runtime: unseen ids, missing optional fields (absent or null, the
  schema's per-field defaults, applied identically to a request and to an offline frame), extreme numbers, and
  tensors at the edges of what the server lets through (ids 0, 1 and the last of each vocabulary, dense values at
  the clip); probabilities stay in [0, 1]; the golden files of both runtimes agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from model_cases import case_config
from mtlrec.data.dataset import EncodedData, open_prepared
from mtlrec.data.loaders.synthetic import generate_impressions
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.export.golden import golden_records, load_golden, probability_outputs
from mtlrec.export.wrapper import ExportWrapper, eval_mode
from mtlrec.models import get_model_class, list_models
from mtlrec.schema import DENSE, SPARSE_IDS
from mtlrec.serving.repository import ServedModel, open_model
from mtlrec.serving.repository import list_models as repository_models
from mtlrec.serving.schemas import build_request_model, records_to_frame
from mtlrec.train.checkpoint import Run, load_run
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import predict, train

REGISTERED = sorted(info.name for info in list_models())
BACKENDS = {"onnxruntime": "{name}", "torchscript": "{name}_torchscript"}


@dataclass
class Exported:
    run: Run
    repo: Path


_CACHE: dict[str, Exported] = {}


@pytest.fixture
def exported(request: pytest.FixtureRequest, synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The model of the test's ``name`` parameter, trained one epoch and exported with both formats (cached)."""
    name: str = request.node.callspec.params["name"]
    if name not in _CACHE:
        root = tmp_path_factory.mktemp(f"served_{name}")
        track = get_model_class(name).tracks[0]
        model = case_config(name, track=track, regularized=False, task="ctr")
        config = build_run_config(name, {"model": model, "train": {"epochs": 1, "batch_size": 512}})
        train(open_prepared(synthetic_dir), config, root / "run")
        export_run(root / "run", root / "repo", ExportOptions(format="both", batch_sizes=(1, 7)))
        _CACHE[name] = Exported(load_run(root / "run"), root / "repo")
    return _CACHE[name]


def open_both(exported: Exported, name: str) -> dict[str, ServedModel]:
    return {
        backend: open_model(exported.repo, pattern.format(name=name), backend=backend, threads=1)
        for backend, pattern in BACKENDS.items()
    }


def eager(run: Run, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The eager model on the spec's tensors: ``{output: [N]}``."""
    from mtlrec.export.spec import build_export_spec

    spec = build_export_spec(run.schema, run.config.model_name, run.model.output_names)
    inputs = tuple(torch.from_numpy(np.ascontiguousarray(tensors[n])) for n in spec.input_names)
    with eval_mode(run.model), torch.no_grad():
        outputs = ExportWrapper(run.model, spec)(*inputs)
    return {n: t.numpy().reshape(-1) for n, t in zip(spec.output_names, outputs, strict=True)}


@pytest.mark.parametrize("name", REGISTERED)
def test_model_is_trained_exported_and_served(name: str, exported: Exported) -> None:
    for backend, pattern in BACKENDS.items():
        assert pattern.format(name=name) in repository_models(exported.repo), backend
    raw = generate_impressions(64, seed=11)  # raw records, as a client sends them (unseen ids included)
    with_missing = raw.copy()
    with_missing.loc[:5, "price"] = np.nan
    with_missing.loc[:5, "user_id"] = None
    run = exported.run
    encoded = run.preprocessor.transform(with_missing, with_labels=False)
    expected = predict(run.model, EncodedData.from_encoded(run.schema, encoded))
    for backend, served in open_both(exported, name).items():
        try:
            scores = served.predict_frame(with_missing)
            tensors, _ = served.encode(with_missing)
        finally:
            served.close()
        assert sorted(scores) == sorted(run.model.output_names)
        for output, values in scores.items():
            assert values.shape == (64,)
            np.testing.assert_allclose(values, expected[output], atol=1e-5, err_msg=f"{backend} {output}")
        assert np.array_equal(tensors[SPARSE_IDS], encoded.sparse)


@pytest.mark.parametrize("name", REGISTERED)
def test_odd_input_gets_the_same_finite_answer_on_every_runtime(name: str, exported: Exported) -> None:
    run = exported.run
    schema = run.preprocessor.schema
    records, labels = golden_records(run.preprocessor)
    huge = dict.fromkeys(schema.dense_names, 1e300) | dict.fromkeys(schema.sparse_names[:1], -(2**62))
    records.append({**huge, **({schema.scenario.name: schema.scenario.values[0]} if schema.scenario else {})})
    labels.append("huge")
    probabilities = probability_outputs(schema, run.model.output_names)

    # Missing optional fields: absent and null give one request; a request and an offline frame give one tensor.
    online = records_to_frame(build_request_model(schema).model_validate({"records": records}), schema)
    offline = pd.DataFrame(records).reindex(columns=online.columns)
    served = open_both(exported, name)
    try:
        feed, _ = served["onnxruntime"].encode(online)
        offline_feed, _ = served["torchscript"].encode(offline)
        for tensor in feed:
            np.testing.assert_array_equal(feed[tensor], offline_feed[tensor], err_msg=tensor)
        missing, null = labels.index("missing"), labels.index("null")
        for tensor in feed:
            np.testing.assert_array_equal(feed[tensor][missing], feed[tensor][null], err_msg=tensor)

        # Tensors at the edges of what the server lets through: ids 0 (OOV), 1 (missing), the last of each
        # vocabulary; dense values at +-clip (the v2 route clips larger ones to it).
        edges = {k: np.repeat(v[:1], 3, axis=0) for k, v in feed.items()}
        if SPARSE_IDS in edges:
            edges[SPARSE_IDS][:] = [[0] * len(schema.sparse), [1] * len(schema.sparse), schema.vocab_sizes()]
            edges[SPARSE_IDS][2] -= 1
        if DENSE in edges:
            clip = np.array([f.clip or 0.0 for f in schema.dense], dtype=np.float32)
            edges[DENSE][:] = np.stack([clip, -clip, clip * 0])
        answers = {"eager": eager(run, feed), "eager edges": eager(run, edges)}
        for backend, model in served.items():
            answers[backend] = model.runner.infer(feed)
            answers[f"{backend} edges"] = model.runner.infer(edges)
    finally:
        for model in served.values():
            model.close()

    for where, outputs in answers.items():
        for output, values in outputs.items():
            assert np.isfinite(values).all(), f"{where} {output}: {values}"
            if output in probabilities:
                assert ((values >= 0) & (values <= 1)).all(), f"{where} {output}: {values}"
    for backend in served:
        for suffix in ("", " edges"):
            for output in run.model.output_names:
                np.testing.assert_allclose(
                    answers[backend + suffix][output],
                    answers["eager" + suffix][output],
                    atol=1e-5,
                    err_msg=f"{backend}{suffix} {output} ({labels})",
                )
    golden = {b: load_golden(exported.repo / p.format(name=name) / "1") for b, p in BACKENDS.items()}
    assert golden["onnxruntime"] is not None and golden["torchscript"] is not None
    for a, b in zip(golden["onnxruntime"]["expected"], golden["torchscript"]["expected"], strict=True):
        assert all(abs(a[k] - b[k]) <= 1e-5 for k in a), (a, b)
