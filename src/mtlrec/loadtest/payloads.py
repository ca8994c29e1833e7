"""Load-test payloads from an exported model's schema: realistic raw records and the tensors they encode to.

Two sources of raw values, chosen by what the schema holds:

* ``synthetic``: when every field of the schema is a column of the synthetic impression log (the model was trained
  on ``mtlrec data prepare synthetic``), rows come from :func:`~mtlrec.data.loaders.synthetic.generate_impressions`:
  Zipf-popular items, power-law users, right-skewed prices, 5 % missing dense values, the generator's scenario mix;
* ``vocabulary``: otherwise, values are drawn from the fitted preprocessor: categorical values Zipf-distributed over
  the vocabulary (it is stored most frequent first) with 2 % unseen values, dense values from the fitted centre and
  spread put back on the raw scale (``expm1`` after ``log1p``), 5 % missing.

A scenario mix (``{"scenario_0": 0.7, "scenario_2": 0.3}``) re-draws each record's scenario; without one the
source's own mix is kept. Requests are cut from one pool of records, so the records API and the KServe v2 routes
carry the same rows: :func:`record_requests` gives JSON bodies, :func:`tensor_requests` the encoded tensors.

Example:
    >>> from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="device"),), dense=(DenseField(name="price"),),
    ...                        scenario=ScenarioField(name="scenario", values=("scenario_0", "scenario_1")),
    ...                        tasks=(TaskSpec(name="ctr"),))
    >>> frame = raw_records(schema, None, rows=50, seed=0, scenario_mix={"scenario_1": 1.0})
    >>> sorted(frame.columns), set(frame["scenario"])
    (['device', 'price', 'scenario'], {'scenario_1'})
    >>> bodies = record_requests(frame, records_per_request=4, count=3, seed=0)
    >>> len(bodies), len(bodies[0]["records"])
    (3, 4)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlrec.data.preprocess import Preprocessor
from mtlrec.errors import ConfigError
from mtlrec.export.spec import ExportSpec
from mtlrec.schema import SCENARIO, FeatureSchema

MISSING_RATE = 0.05
UNSEEN_RATE = 0.02
ZIPF_EXPONENT = 1.05
# Rows drawn from the synthetic generator per pool: enough distinct users and items that a pool of requests is
# not a handful of cached rows, small enough to build in well under a second.
SYNTHETIC_POOL_ROWS = 4096


@dataclass
class ModelFiles:
    """What a load generator needs from one exported model version: schema, transform and tensor names."""

    name: str
    version: int
    schema: FeatureSchema
    preprocessor: Preprocessor
    spec: ExportSpec


def load_model_files(repo: Path, name: str, version: int | None = None) -> ModelFiles:
    """Schema, preprocessor and export spec of ``name`` in ``repo`` (newest version unless given); no runtime.

    Raises:
        CheckpointError: the repository or the model is missing.
    """
    from mtlrec.serving.repository import list_models

    models = list_models(repo)
    if name not in models:
        from mtlrec.errors import CheckpointError

        raise CheckpointError(f"model `{name}` is not in {repo}", hint=f"models: {', '.join(models) or '(none)'}")
    chosen = version if version is not None else models[name][-1]
    path = repo / name / str(chosen)
    return ModelFiles(
        name=name,
        version=chosen,
        schema=FeatureSchema.load(path / "schema.json"),
        preprocessor=Preprocessor.load(path / "preprocessor.json"),
        spec=ExportSpec.load(path / "export_spec.json"),
    )


def parse_scenario_mix(text: str | None) -> dict[str, float] | None:
    """``"a=0.7,b=0.3"`` -> ``{"a": 0.7, "b": 0.3}`` (weights normalised to sum 1); empty or ``natural`` -> None.

    Example:
        >>> parse_scenario_mix("app=3,web=1")
        {'app': 0.75, 'web': 0.25}
        >>> parse_scenario_mix("natural") is None
        True
    """
    if text is None or text.strip() in ("", "natural"):
        return None
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weight = float(value) if sep else math.nan
        except ValueError:
            weight = math.nan
        if not name.strip() or not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"bad scenario mix entry `{part}`", hint="write NAME=WEIGHT pairs, e.g. scenario_0=0.7,scenario_1=0.3"
            )
        weights[name.strip()] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError("the scenario mix has no positive weight", hint="e.g. scenario_0=0.7,scenario_1=0.3")
    return {k: v / total for k, v in weights.items()}


def _zipf_indices(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** ZIPF_EXPONENT
    return rng.choice(size, n, p=weights / weights.sum())


def _synthetic_columns() -> set[str]:
    from mtlrec.data.loaders.synthetic import synthetic_schema

    schema = synthetic_schema()
    noise = {f"noise_{j}" for j in range(64)}  # any number of noise fields
    return {*schema.sparse_names, *schema.dense_names, "scenario", *noise}


def _from_synthetic(schema: FeatureSchema, rows: int, seed: int) -> pd.DataFrame:
    from mtlrec.data.loaders.synthetic import SyntheticConfig, generate_impressions

    noise = [n for n in schema.sparse_names if n.startswith("noise_") and n != "noise_dense"]
    config = SyntheticConfig(num_noise_fields=max([int(n.split("_")[1]) + 1 for n in noise], default=0))
    return generate_impressions(rows, seed, config)


def _from_vocabulary(schema: FeatureSchema, preprocessor: Preprocessor | None, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for name in schema.sparse_names:
        vocab = preprocessor.state.vocabularies.get(name, []) if preprocessor is not None else []
        if vocab:
            values = np.asarray(vocab, dtype=object)[_zipf_indices(rng, len(vocab), rows)]
        else:  # no fitted vocabulary: values of a made-up Zipf-distributed vocabulary of 1,000 (mostly unseen)
            values = np.asarray([f"{name}_{i}" for i in _zipf_indices(rng, 1000, rows)], dtype=object)
        unseen = rng.random(rows) < UNSEEN_RATE
        values[unseen] = [f"unseen_{i}" for i in rng.integers(0, 1_000_000, int(unseen.sum()))]
        columns[name] = values
    for dense in schema.dense:
        stats = preprocessor.state.dense_stats.get(dense.name) if preprocessor is not None else None
        z = rng.standard_normal(rows)
        raw: np.ndarray
        if stats is None:
            raw = np.round(np.exp(z), 3)  # right-skewed, positive
        elif dense.normalization == "log1p":
            raw = np.expm1(np.maximum(stats.center + stats.scale * z, 0.0))
        elif dense.normalization == "minmax":
            raw = stats.center + stats.scale * rng.random(rows)
        elif dense.normalization == "standardize":
            raw = stats.center + stats.scale * z
        else:
            raw = stats.fill_value + z
        raw = np.round(raw.astype(np.float64), 4)
        raw[rng.random(rows) < MISSING_RATE] = np.nan
        columns[dense.name] = raw
    if schema.scenario is not None:
        values = list(schema.scenario.values or ("default",))
        columns[schema.scenario.name] = np.asarray(values, dtype=object)[rng.integers(0, len(values), rows)]
    return pd.DataFrame(columns)


def payload_source(schema: FeatureSchema) -> str:
    """``synthetic`` when every field of ``schema`` is a synthetic-log column, else ``vocabulary``."""
    fields = {*schema.sparse_names, *schema.dense_names}
    if schema.scenario is not None:
        fields.add(schema.scenario.name)
    return "synthetic" if fields <= _synthetic_columns() else "vocabulary"


def raw_records(
    schema: FeatureSchema,
    preprocessor: Preprocessor | None,
    rows: int,
    seed: int = 0,
    scenario_mix: dict[str, float] | None = None,
) -> pd.DataFrame:
    """``rows`` raw records of ``schema`` (its feature and scenario columns only); see the module docstring.

    Args:
        schema: the (fitted) feature schema of the served model.
        preprocessor: its fitted transform (vocabularies and statistics); None draws made-up values.
        rows: number of records.
        seed: seeds the draw.
        scenario_mix: scenario value -> weight; None keeps the source's mix.

    Returns:
        A frame with one column per sparse field, dense field and the scenario; missing values are None / NaN.
    """
    if payload_source(schema) == "synthetic":
        frame = _from_synthetic(schema, max(rows, SYNTHETIC_POOL_ROWS), seed).sample(
            n=rows, replace=rows > SYNTHETIC_POOL_ROWS, random_state=seed
        )
    else:
        frame = _from_vocabulary(schema, preprocessor, rows, seed)
    columns = [*schema.sparse_names, *schema.dense_names]
    if schema.scenario is not None:
        columns.append(schema.scenario.name)
    frame = frame[columns].reset_index(drop=True)
    if scenario_mix and schema.scenario is not None:
        known = set(schema.scenario.values or ())
        unknown = sorted(set(scenario_mix) - known) if known else []
        if unknown:
            raise ConfigError(
                f"the scenario mix names values the model does not know: {unknown}", hint=f"known: {sorted(known)}"
            )
        names = list(scenario_mix)
        rng = np.random.default_rng(seed + 1)
        drawn = rng.choice(len(names), rows, p=np.asarray([scenario_mix[n] for n in names]))
        frame[schema.scenario.name] = np.asarray(names, dtype=object)[drawn]
    return frame


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if math.isnan(float(value)) else float(value)
    return value


def _request_rows(rows: int, records_per_request: int, count: int, seed: int) -> list[np.ndarray]:
    if records_per_request < 1 or count < 1:
        raise ConfigError("records per request and the number of requests must be >= 1")
    rng = np.random.default_rng(seed + 2)
    return [rng.integers(0, rows, records_per_request) for _ in range(count)]


def record_requests(frame: pd.DataFrame, records_per_request: int, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` records-API bodies ``{"records": [...]}`` of ``records_per_request`` rows drawn from ``frame``.

    Missing values are sent as ``null`` (the server applies the fitted fill), as a client would.
    """
    records = [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dict("records")]
    return [
        {"records": [records[i] for i in idx]} for idx in _request_rows(len(frame), records_per_request, count, seed)
    ]


def record_request_bytes(bodies: list[dict[str, Any]]) -> list[bytes]:
    """The bodies serialised once, so that the load generator spends its time sending, not encoding JSON."""
    return [json.dumps(body, separators=(",", ":")).encode() for body in bodies]


def encode_frame(frame: pd.DataFrame, preprocessor: Preprocessor, spec: ExportSpec) -> dict[str, np.ndarray]:
    """Raw rows -> the model's input tensors by spec name (``scenario`` as int64 ``[N]``)."""
    encoded = preprocessor.transform(frame, with_labels=False)
    tensors: dict[str, np.ndarray] = {"sparse_ids": encoded.sparse, "dense": encoded.dense}
    if encoded.scenario is not None:
        tensors[SCENARIO] = encoded.scenario
    return {n: np.ascontiguousarray(tensors[n]) for n in spec.input_names}


def tensor_requests(
    frame: pd.DataFrame,
    preprocessor: Preprocessor,
    spec: ExportSpec,
    records_per_request: int,
    count: int,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """The same requests as :func:`record_requests` (same seed, same rows), as KServe v2 tensors.

    ``sparse_ids`` int64 ``[B, F]``, ``dense`` float32 ``[B, D]``, ``scenario`` int64 ``[B, 1]`` (Triton's
    ``dims: [1]``), as the model's export spec lists them.
    """
    tensors = encode_frame(frame, preprocessor, spec)
    out = []
    for idx in _request_rows(len(frame), records_per_request, count, seed):
        request = {}
        for name, values in tensors.items():
            chosen = values[idx]
            request[name] = np.ascontiguousarray(chosen.reshape(-1, 1) if chosen.ndim == 1 else chosen)
        out.append(request)
    return out
