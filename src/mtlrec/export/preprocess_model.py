"""Triton Python-backend model that turns raw records into model tensors with ``Preprocessor.transform``.

This file is copied verbatim as ``<name>_preprocess/<version>/model.py`` by the exporter, next to the fitted
``preprocessor.json``. Inside Triton it needs ``mtlrec`` installed in the Python backend's environment
(``pip install mtlrec``); ``triton_python_backend_utils`` is imported only when Triton calls the model, so this
module imports (and is unit-tested) anywhere.

Inputs, one per field, each ``dims [1]`` (so ``[b, 1]`` per request): ``TYPE_STRING`` per sparse field and for the
scenario (UTF-8 bytes; an empty string is a missing value), ``TYPE_FP32`` per dense field (NaN is missing).
Outputs: ``encoded_sparse_ids`` int64 ``[b, F]``, ``encoded_dense`` float32 ``[b, D]``, ``encoded_scenario`` int64
``[b, 1]`` (only those the schema has).

All requests of a dynamic batch are concatenated and encoded by ONE ``transform`` call, then split back in request
order. When that call fails (an unknown scenario in one request), each request is encoded on its own so that only
the bad ones get an error response; the model never raises out of ``execute``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlrec.data.preprocess import EncodedFrame, Preprocessor
from mtlrec.errors import MtlrecError
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS

ENCODED_PREFIX = "encoded_"  # keep equal to mtlrec.export.triton_config.ENCODED_PREFIX (a test checks it)
PREPROCESSOR_FILE = "preprocessor.json"

Columns = dict[str, np.ndarray]
Encoded = dict[str, np.ndarray]


def _strings(values: np.ndarray) -> np.ndarray:
    """A BYTES tensor ``[b, 1]`` as a flat object array of str (bytes decoded as UTF-8, invalid bytes replaced)."""
    flat = values.reshape(-1)
    return np.array(
        [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat], dtype=object
    )


def decode_request(preprocessor: Preprocessor, tensors: dict[str, np.ndarray]) -> Columns:
    """Raw column arrays of one request from its input tensors (numpy, as the backend hands them over).

    Args:
        preprocessor: the fitted preprocessor (its schema names the inputs).
        tensors: input name -> ``[b, 1]`` array (object/bytes for strings, float32 for dense fields).

    Raises:
        MtlrecError: an input is missing or the inputs disagree in row count.
    """
    schema = preprocessor.schema
    columns: Columns = {}
    string_fields = schema.sparse_names + ([schema.scenario.name] if schema.scenario else [])
    for name in string_fields + schema.dense_names:
        if name not in tensors:
            raise MtlrecError(f"input `{name}` is missing from the request")
        array = np.asarray(tensors[name])
        columns[name] = _strings(array) if name in string_fields else array.reshape(-1).astype(np.float64)
    rows = {len(v) for v in columns.values()}
    if len(rows) > 1:
        raise MtlrecError(f"the inputs of the request have different row counts: {sorted(rows)}")
    return columns


def encode(preprocessor: Preprocessor, columns: Columns) -> Encoded:
    """Output tensors (``encoded_<tensor>`` -> array) of raw columns, through ``Preprocessor.transform``."""
    encoded: EncodedFrame = preprocessor.transform(pd.DataFrame(columns), with_labels=False)
    schema = preprocessor.schema
    out: Encoded = {}
    if schema.sparse:
        out[ENCODED_PREFIX + SPARSE_IDS] = np.ascontiguousarray(encoded.sparse)  # [b, F] int64
    if schema.dense:
        out[ENCODED_PREFIX + DENSE] = np.ascontiguousarray(encoded.dense)  # [b, D] float32
    if encoded.scenario is not None:
        out[ENCODED_PREFIX + SCENARIO] = encoded.scenario.reshape(-1, 1)  # [b] -> [b, 1] (config dims [1])
    return out


def encode_batch(preprocessor: Preprocessor, requests: list[Columns | Exception]) -> list[Encoded | Exception]:
    """Encode every decoded request with one ``transform``; isolate failures per request when it fails.

    Args:
        preprocessor: the fitted preprocessor.
        requests: per request, its raw columns, or the error met while decoding it.

    Returns:
        Per request and in order, its output tensors or the error to answer it with.
    """
    results: list[Encoded | Exception] = [r if isinstance(r, Exception) else {} for r in requests]
    good = [(i, r) for i, r in enumerate(requests) if not isinstance(r, Exception)]
    if not good:
        return results
    names = list(good[0][1])
    sizes = [len(columns[names[0]]) if names else 0 for _, columns in good]
    try:
        merged = {n: np.concatenate([columns[n] for _, columns in good]) for n in names}
        encoded = encode(preprocessor, merged)
    except Exception:  # one bad request must not fail the others: retry them one by one
        for i, columns in good:
            try:
                results[i] = encode(preprocessor, columns)
            except Exception as err:
                results[i] = err
        return results
    bounds = np.cumsum([0, *sizes])
    for k, (i, _) in enumerate(good):
        results[i] = {n: array[bounds[k] : bounds[k + 1]] for n, array in encoded.items()}
    return results


def _message(err: Exception) -> str:
    return err.message if isinstance(err, MtlrecError) else f"{type(err).__name__}: {err}"


class TritonPythonModel:
    """The Python-backend entry point: ``initialize`` loads the preprocessor, ``execute`` encodes a batch."""

    preprocessor: Preprocessor
    output_names: list[str]

    def initialize(self, args: dict[str, str]) -> None:
        """Load ``preprocessor.json`` from this model's version directory and check it against the config.

        Args:
            args: Triton's arguments (``model_config`` JSON, ``model_repository``, ``model_version``).
        """
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.preprocessor = Preprocessor.load(version_dir / PREPROCESSOR_FILE)
        self.output_names = [o["name"] for o in config.get("output", [])]
        expected = config.get("parameters", {}).get("mtlrec_schema_hash", {}).get("string_value")
        actual = self.preprocessor.schema.hash()
        if expected is not None and expected != actual:
            raise MtlrecError(
                f"{version_dir / PREPROCESSOR_FILE} has schema hash {actual}, the config expects {expected}",
                hint="export the model again",
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; a request that cannot be encoded gets an error response."""
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        schema = self.preprocessor.schema
        names = schema.sparse_names + schema.dense_names + ([schema.scenario.name] if schema.scenario else [])
        decoded: list[Columns | Exception] = []
        for request in requests:
            try:
                tensors = {}
                for name in names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        tensors[name] = tensor.as_numpy()
                decoded.append(decode_request(self.preprocessor, tensors))
            except Exception as err:
                decoded.append(err)
        responses = []
        for result in encode_batch(self.preprocessor, decoded):
            if isinstance(result, Exception):
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(_message(result)))
                )
            else:
                tensors_out = [pb_utils.Tensor(n, result[n]) for n in self.output_names if n in result]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors_out))
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
