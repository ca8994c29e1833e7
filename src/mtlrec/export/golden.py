"""Golden requests: a few raw records and the predictions an exported model gives them, pinned at export time.

``mtlrec export`` writes ``golden.json`` into the version directory of every model it exports (the ONNX model and
its TorchScript twin). The records are built from the fitted preprocessor, so they exercise what clients really
send and what breaks runtimes (see :func:`golden_records`):

* a typical record (known categories, the training fill value of every numeric field), one per scenario;
* unseen categories (out-of-vocabulary ids, as strings and as integers);
* a record with every optional field left out (the per-field defaults of the schema: the reserved missing id,
  the fill value learned on the training split), and one with every field an explicit ``null``;
* extreme numbers (``±1e30``; the preprocessor clips them to the field's ``clip``).

The expected predictions are the exported artifact's own answers, and the export refuses an artifact whose answers
to these records are not finite, leave [0, 1] for a probability, or differ from eager PyTorch by more than the
spec's tolerance: the odd inputs must give the same answer on every runtime. Later, :func:`check_golden` replays
the records through any predictor (``mtlrec repo validate --golden``; the server, before it serves a version) and
reports every answer that moved: a client contract, a preprocessing change or a library upgrade that changes
answers is caught before it reaches traffic.

Example:
    >>> golden = {"golden_version": 1, "outputs": ["ctr"], "atol": 1e-5,
    ...           "records": [{"user": "u1"}], "expected": [{"ctr": 0.25}]}
    >>> check_golden(golden, lambda records: {"ctr": np.array([0.25], dtype=np.float32)})
    []
    >>> check_golden(golden, lambda records: {"ctr": np.array([0.5], dtype=np.float32)})[0]
    'record 0 (u1): ctr = 0.5, expected 0.25 (|diff| 0.25 > atol 1e-05)'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.data.preprocess import Preprocessor
from mtlrec.errors import CheckpointError, ExportError
from mtlrec.export.spec import ExportSpec
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema

GOLDEN_FILE = "golden.json"
GOLDEN_VERSION = 1
# Why 1e-5: the same artifact on another machine or thread count moves by ~1e-7; a changed transform, weight or
# runtime kernel moves answers by far more. The value is stored in the file, so a repository can loosen it.
DEFAULT_ATOL = 1e-5
UNSEEN = "__mtlrec_golden_unseen__"
UNSEEN_INT = 987_654_321
EXTREME = 1e30

Predict = Callable[[list[dict[str, Any]]], dict[str, np.ndarray]]
"""Raw records in, ``{output: [N]}`` out (e.g. records -> frame -> ``ServedModel.predict_frame``)."""


def golden_records(preprocessor: Preprocessor) -> tuple[list[dict[str, Any]], list[str]]:
    """The golden records of a fitted preprocessor and a short label per record.

    Returns:
        ``(records, labels)``: raw records keyed by field name (valid for the records API of the schema) and what
        each one exercises (``typical``, ``unseen``, ``missing``, ``null``, ``extreme+``, ``extreme-``).
    """
    schema = preprocessor.schema
    state = preprocessor.state
    scenarios: list[str | None] = list(schema.scenario.values or ()) if schema.scenario is not None else [None]

    def record(sparse: Callable[[str, int], Any], dense: Callable[[str], Any], scenario: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for j, name in enumerate(schema.sparse_names):
            value = sparse(name, j)
            if value is not ...:
                out[name] = value
        for name in schema.dense_names:
            value = dense(name)
            if value is not ...:
                out[name] = value
        if schema.scenario is not None:
            out[schema.scenario.name] = scenario
        return out

    def known_at(offset: int) -> Callable[[str, int], Any]:
        def known(name: str, j: int) -> Any:
            vocabulary = state.vocabularies.get(name) or []
            return vocabulary[(j + offset) % len(vocabulary)] if vocabulary else UNSEEN

        return known

    def fill(name: str) -> float:
        value = state.dense_stats[name].fill_value
        return float(value) if math.isfinite(value) else 0.0

    records: list[dict[str, Any]] = []
    labels: list[str] = []
    for k, scenario in enumerate(scenarios[:4]):  # one typical record per scenario (at most four)
        records.append(record(known_at(k), fill, scenario))
        labels.append("typical" if scenario is None else f"typical {scenario}")
    first = scenarios[0]
    records.append(record(lambda n, j: UNSEEN if j % 2 == 0 else UNSEEN_INT, lambda n: 0.0, first))
    labels.append("unseen")
    records.append(record(lambda n, j: ..., lambda n: ..., first))
    labels.append("missing")
    records.append(record(lambda n, j: None, lambda n: None, first))
    labels.append("null")
    records.append(record(known_at(0), lambda n: EXTREME, first))
    labels.append("extreme+")
    records.append(record(lambda n, j: UNSEEN, lambda n: -EXTREME, scenarios[-1]))
    labels.append("extreme-")
    return records, labels


def probability_outputs(schema: FeatureSchema, outputs: list[str]) -> list[str]:
    """The outputs that are probabilities (every output but a regression task's)."""
    regression = {t.name for t in schema.tasks if t.kind == "regression"}
    return [name for name in outputs if name not in regression]


def check_answers(answers: dict[str, np.ndarray], probabilities: list[str], rows: int, where: str) -> None:
    """Raise :class:`ExportError` unless every answer is finite, ``[rows]``, and in [0, 1] for a probability."""
    for name, values in answers.items():
        if values.shape != (rows,):
            raise ExportError(f"{where}: output `{name}` has shape {values.shape} for {rows} golden records")
        if not bool(np.isfinite(values).all()):
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ExportError(f"{where}: output `{name}` is not finite for golden record {row}")
        if name in probabilities and (float(values.min()) < 0.0 or float(values.max()) > 1.0):
            raise ExportError(f"{where}: output `{name}` leaves [0, 1] on the golden records")


def build_golden(
    model: str,
    schema_hash: str,
    records: list[dict[str, Any]],
    labels: list[str],
    answers: dict[str, np.ndarray],
    outputs: list[str],
    *,
    runtime: str,
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """The content of ``golden.json``: the records, their labels and the artifact's answers, rounded to 8 digits."""
    expected = [{name: round(float(answers[name][i]), 8) for name in outputs} for i in range(len(records))]
    return {
        "golden_version": GOLDEN_VERSION,
        "model": model,
        "schema_hash": schema_hash,
        "runtime": runtime,
        "outputs": list(outputs),
        "atol": atol,
        "labels": labels,
        "records": records,
        "expected": expected,
    }


def load_golden(version_dir: Path) -> dict[str, Any] | None:
    """The golden file of a version directory, or None when it has none (exported before golden files existed).

    Raises:
        CheckpointError: the file exists but is not a golden file.
    """
    path = version_dir / GOLDEN_FILE
    if not path.is_file():
        return None
    try:
        golden: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    keys = {"outputs", "records", "expected", "atol"}
    if not isinstance(golden, dict) or not keys <= set(golden) or len(golden["records"]) != len(golden["expected"]):
        raise CheckpointError(f"{path} is not a golden file", hint="export the run again")
    return golden


def _label(golden: dict[str, Any], i: int) -> str:
    labels = golden.get("labels") or []
    if i < len(labels):
        return str(labels[i])
    record = golden["records"][i]
    return ", ".join(str(v) for v in list(record.values())[:1])


def check_golden(golden: dict[str, Any], predict: Predict, *, atol: float | None = None) -> list[str]:
    """Replay the golden records through ``predict``; one line per answer that differs (empty: all match).

    Args:
        golden: the content of a golden file (:func:`load_golden`).
        predict: raw records -> ``{output: [N]}``.
        atol: the tolerance; None = the file's.

    Returns:
        Lines such as ``record 2 (missing): ctr = 0.31, expected 0.29 (|diff| 0.02 > atol 1e-05)``; a predictor
        that raises gives one line with its error.
    """
    tolerance = float(golden["atol"] if atol is None else atol)
    records = list(golden["records"])
    try:
        answers = predict(records)
    except Exception as err:  # any failure to answer is a golden failure, reported, not raised
        message = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
        return [f"the golden records could not be scored: {message}"]
    problems: list[str] = []
    for name in golden["outputs"]:
        if name not in answers:
            problems.append(f"output `{name}` is missing from the answer (it has {sorted(answers)})")
            continue
        values = np.asarray(answers[name], dtype=np.float64).reshape(-1)
        if len(values) != len(records):
            problems.append(f"output `{name}` has {len(values)} values for {len(records)} golden records")
            continue
        for i, row in enumerate(golden["expected"]):
            want, got = float(row[name]), float(values[i])
            diff = abs(got - want)
            if not diff <= tolerance:  # also catches NaN
                problems.append(
                    f"record {i} ({_label(golden, i)}): {name} = {got:.6g}, expected {want:.6g} "
                    f"(|diff| {diff:.2g} > atol {tolerance:g})"
                )
    return problems


def encode_records(
    preprocessor: Preprocessor, spec: ExportSpec, records: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Raw records -> the spec's input tensors by name, through the run's own transform (as the server does)."""
    from mtlrec.serving.schemas import records_to_frame

    encoded = preprocessor.transform(records_to_frame(records, preprocessor.schema), with_labels=False)
    available: dict[str, np.ndarray | None] = {SPARSE_IDS: encoded.sparse, DENSE: encoded.dense}
    available[SCENARIO] = encoded.scenario
    feed: dict[str, np.ndarray] = {}
    for name in spec.input_names:
        value = available.get(name)
        if value is None:
            raise ExportError(f"the preprocessor produces no `{name}` tensor", hint="export the run again")
        feed[name] = np.ascontiguousarray(value)
    return feed


def check_repository_golden(repo: Path, threads: int = 1) -> list[str]:
    """Replay the golden records of every servable model version of ``repo`` with its in-process runtime.

    A version (one holding ``export_spec.json`` and a model file) passes when it has a golden file, its records
    are still valid requests of its schema, and every answer is within the file's tolerance.

    Args:
        repo: a model repository written by ``mtlrec export``.
        threads: intra-op threads of the runtimes.

    Returns:
        Lines ``<model>/<version>: <problem>`` (empty when every version answers as it did at export time).
    """
    from pydantic import ValidationError

    from mtlrec.errors import MtlrecError
    from mtlrec.serving.repository import list_models, open_model
    from mtlrec.serving.schemas import build_request_model, records_to_frame

    problems: list[str] = []
    try:
        models = list_models(repo)
    except MtlrecError as err:
        return [err.message]
    for name, versions in models.items():
        for version in versions:
            where = f"{name}/{version}"
            try:
                golden = load_golden(repo / name / str(version))
            except MtlrecError as err:
                problems.append(f"{where}: {err.message}")
                continue
            if golden is None:
                problems.append(f"{where}: no {GOLDEN_FILE} (exported before golden files existed; export again)")
                continue
            try:
                served = open_model(repo, name, version, threads=threads)
            except MtlrecError as err:
                problems.append(f"{where}: cannot be opened: {err.message}")
                continue
            try:
                try:
                    build_request_model(served.schema).model_validate({"records": golden["records"]})
                except ValidationError as err:
                    first = err.errors(include_url=False, include_context=False, include_input=False)[0]
                    loc = ".".join(str(p) for p in first["loc"])
                    problems.append(f"{where}: golden records are no longer valid requests: {loc}: {first['msg']}")
                    continue

                def predict(records: list[dict[str, Any]], model: Any = served) -> dict[str, np.ndarray]:
                    return dict(model.predict_frame(records_to_frame(records, model.schema)))

                problems += [f"{where}: {line}" for line in check_golden(golden, predict)]
            finally:
                served.close()
    return problems
