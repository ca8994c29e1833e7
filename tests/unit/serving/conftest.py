"""Serving fixtures: a tiny exported MMoE (``exported_repo``) and a fake tritonclient (``fake_triton``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mtlrec.data.dataset import open_prepared
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.serving import runners
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import train

TINY_MMOE = {"embed_dim": 4, "num_experts": 2, "expert": {"hidden": [8]}, "tower": {"hidden": [4]}}


@pytest.fixture(scope="session")
def exported_repo(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding ``mmoe`` (ONNX), ``mmoe_torchscript``, ``mmoe_preprocess`` and ``mmoe_ensemble``.

    A tiny MMoE is trained for one epoch on ``synthetic_dir`` and exported with ``--format both``; version 1.
    """
    root = tmp_path_factory.mktemp("serving_export")
    run_dir = root / "run"
    config = build_run_config("mmoe", {"model": TINY_MMOE, "train": {"epochs": 1, "batch_size": 512}})
    train(open_prepared(synthetic_dir), config, run_dir)
    result = export_run(run_dir, root / "repo", ExportOptions(format="both", batch_sizes=(1, 7)))
    return result.repo


# ------------------------------------------------------------------------------------------ a fake tritonclient
@dataclass
class FakeModel:
    """One model of :class:`FakeTriton`: metadata, config and an answer function (inputs -> outputs by name)."""

    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[str]
    answer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    max_batch_size: int = 1024


@dataclass
class FakeTriton:
    """Stands in for the ``tritonclient.http``/``.grpc`` module: the calls tests need, recorded, no server."""

    models: dict[str, FakeModel]
    requests: list[tuple[str, dict[str, np.ndarray], dict[str, str]]] = field(default_factory=list)

    def module(self) -> SimpleNamespace:
        """The module-like object (``InferenceServerClient``, ``InferInput``, ``InferRequestedOutput``)."""
        return SimpleNamespace(
            InferenceServerClient=lambda url, ssl=False: _FakeClient(self, url),
            InferInput=_FakeInput,
            InferRequestedOutput=lambda name: SimpleNamespace(name=name),
        )


class _FakeInput:
    def __init__(self, name: str, shape: list[int], datatype: str) -> None:
        self.name, self.shape, self.datatype = name, shape, datatype
        self.data: np.ndarray | None = None

    def set_data_from_numpy(self, array: np.ndarray) -> None:
        assert list(array.shape) == self.shape, (self.name, array.shape, self.shape)
        self.data = array


class FakeServerError(Exception):
    """Like tritonclient's InferenceServerException: ``message()`` gives the text."""

    def message(self) -> str:
        return str(self.args[0])


class _FakeClient:
    def __init__(self, fake: FakeTriton, url: str) -> None:
        self.fake, self.url = fake, url

    def _model(self, name: str) -> FakeModel:
        if name not in self.fake.models:
            raise FakeServerError(f"Request for unknown model: '{name}' is not found")
        return self.fake.models[name]

    def get_model_metadata(self, name: str, version: str = "", as_json: bool = False) -> dict[str, Any]:
        model = self._model(name)
        return {
            "name": name,
            "platform": model.platform,
            "inputs": model.inputs,
            "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, 1]} for n in model.outputs],
        }

    def get_model_config(self, name: str, version: str = "", as_json: bool = False) -> dict[str, Any]:
        config = {"name": name, "max_batch_size": self._model(name).max_batch_size}
        return {"config": config} if as_json else config

    def infer(self, name: str, inputs: list[_FakeInput], version: str = "", outputs: Any = None, **_: Any) -> Any:
        model = self._model(name)
        arrays = {i.name: i.data for i in inputs if i.data is not None}
        self.fake.requests.append((name, arrays, {i.name: i.datatype for i in inputs}))
        rows = len(next(iter(arrays.values())))
        if rows > model.max_batch_size:
            raise FakeServerError(f"inference request batch-size must be <= {model.max_batch_size}")
        answers = model.answer(arrays)
        return SimpleNamespace(as_numpy=lambda n: answers.get(n))

    def close(self) -> None:
        pass


@pytest.fixture
def fake_triton(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, dict[str, Any]]], FakeTriton]:
    """Install a :class:`FakeTriton` as both tritonclient protocols.

    Models are given as ``{name: {"platform", "outputs", "answer", "inputs"?, "max_batch_size"?}}`` (the fields of
    :class:`FakeModel`); the returned fake records every inference request.
    """

    def install(models: dict[str, dict[str, Any]]) -> FakeTriton:
        fake = FakeTriton({name: FakeModel(**{"inputs": [], **m}) for name, m in models.items()})
        monkeypatch.setattr(runners, "triton_module", lambda protocol: fake.module())
        return fake

    return install
