"""The KServe v2 / Triton HTTP inference protocol: request bodies (JSON or binary tensors) in, answers out.

:func:`parse_v2_request` turns a body into the model's tensors, checking every input against the export spec (names,
datatypes, shapes, batch size, ids inside each vocabulary, finite dense values) so that a runtime never sees a bad
row; :func:`v2_response` writes the outputs as JSON or binary tensors, as ``tritonclient`` expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS
from mtlrec.serving.http import JSON, Answer, HTTPProblem, loc_text

if TYPE_CHECKING:
    from mtlrec.serving.registry import ModelEntry

_V2_DATATYPES = {"int64": "INT64", "float32": "FP32"}
_NUMPY_WIRE: dict[str, np.dtype[Any]] = {"INT64": np.dtype("<i8"), "FP32": np.dtype("<f4")}  # little-endian
_NATIVE: dict[str, np.dtype[Any]] = {"INT64": np.dtype(np.int64), "FP32": np.dtype(np.float32)}


class _V2Input(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class _V2Output(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class _V2Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    inputs: list[_V2Input]
    outputs: list[_V2Output] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


def v2_request_schema() -> dict[str, Any]:
    """The JSON schema of a v2 inference request header (for the OpenAPI document)."""
    return _V2Request.model_json_schema()


@dataclass
class V2Request:
    """A decoded v2 inference request: the model's tensors and the outputs asked for."""

    id: str | None
    tensors: dict[str, np.ndarray]
    rows: int
    outputs: list[tuple[str, bool]]  # (spec output name, binary)
    timeout_us: int | None = None  # the ``timeout`` parameter (microseconds, as in Triton); None = none


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise HTTPProblem(
            400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes"
        )
    n = int(header_length)
    return body[:n], body[n:]


def _json_tensor(item: _V2Input, expected: str) -> np.ndarray:
    """The ``data`` of a JSON tensor (flat or nested lists) as a flat array of the expected datatype."""
    if item.data is None:
        raise HTTPProblem(400, f"input '{item.name}' has no data (neither `data` nor `binary_data_size`)")
    try:
        values = np.asarray(item.data)
    except (ValueError, OverflowError, RecursionError, TypeError):
        raise HTTPProblem(400, f"input '{item.name}' has ragged or invalid data") from None
    allowed = "iu" if expected == "INT64" else "iuf"
    if values.dtype.kind not in allowed:
        raise HTTPProblem(
            400, f"input '{item.name}' holds {values.dtype.kind!r}-kind values; expected {expected} numbers"
        )
    try:
        flat: np.ndarray = values.astype(_NATIVE[expected], casting="same_kind").reshape(-1)
        return flat
    except (TypeError, OverflowError):
        raise HTTPProblem(400, f"input '{item.name}' has values that do not fit {expected}") from None


def _check_ranges(entry: ModelEntry, tensors: dict[str, np.ndarray]) -> None:
    """Ids inside each vocabulary, a known scenario, finite dense values: a runtime never sees a bad row.

    Dense values are clipped to each field's ``clip``, as the preprocessor clips them: an extreme tensor gets the
    answer the same extreme raw value gets through the records API, finite on every runtime.
    """
    schema = entry.schema
    if SPARSE_IDS in tensors:
        ids = tensors[SPARSE_IDS]  # [B, F]
        bad = (ids < 0) | (ids >= entry.vocab_sizes)  # [B, F], one pass over every field
        if bool(bad.any()):
            j = int(np.flatnonzero(bad.any(axis=0))[0])  # the first field with a bad id, then its first row
            row = int(np.flatnonzero(bad[:, j])[0])
            name, size = schema.sparse_names[j], int(entry.vocab_sizes[j])
            raise HTTPProblem(
                400,
                f"input 'sparse_ids' column {j} (field `{name}`) has id {int(ids[row, j])} at row {row}, "
                f"outside [0, {size})",
                hint="ids come from the model's preprocessor; 0 is the out-of-vocabulary id",
            )
    if DENSE in tensors and not bool(np.isfinite(tensors[DENSE]).all()):
        row = int(np.flatnonzero(~np.isfinite(tensors[DENSE]).all(axis=1))[0])
        raise HTTPProblem(400, f"input 'dense' has a non-finite value at row {row}")
    limits = entry.dense_limits
    if DENSE in tensors and limits is not None:
        dense = tensors[DENSE]  # [B, D], a private copy made by the decoder
        if bool((np.abs(dense) > limits).any()):
            tensors[DENSE] = np.clip(dense, -limits, limits).astype(np.float32, copy=False)
    if SCENARIO in tensors:
        scenario = tensors[SCENARIO]
        count = schema.num_scenarios
        bad = (scenario < 0) | (scenario >= count)
        if bool(bad.any()):
            row = int(np.flatnonzero(bad)[0])
            raise HTTPProblem(400, f"input 'scenario' has id {int(scenario[row])} at row {row}, outside [0, {count})")


def parse_v2_request(entry: ModelEntry, body: bytes, header_length: str | None) -> V2Request:
    """Decode a v2 inference body (JSON, or JSON header + binary tensors) into the model's tensors.

    Raises:
        HTTPProblem: 400 naming the input for anything the model cannot run.
    """
    header, binary = _split_body(body, header_length)
    try:
        request = _V2Request.model_validate_json(header)  # parsed and validated in one pass
    except ValidationError as err:
        first = err.errors(include_url=False, include_context=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            raise HTTPProblem(400, f"malformed JSON in the inference request: {first['msg']}") from None
        raise HTTPProblem(400, f"invalid inference request: {loc_text(first['loc'])}: {first['msg']}") from None
    spec = entry.spec
    given = [i.name for i in request.inputs]
    unknown = [n for n in given if n not in spec.input_names]
    if unknown:
        raise HTTPProblem(
            400, f"unexpected inference input '{unknown[0]}' for model '{entry.name}'; inputs are {spec.input_names}"
        )
    if len(set(given)) != len(given) or set(given) != set(spec.input_names):
        raise HTTPProblem(400, f"expected the inputs {spec.input_names} once each, got {given}")
    offset = 0
    tensors: dict[str, np.ndarray] = {}
    rows: set[int] = set()
    for item in request.inputs:
        tspec = next(t for t in spec.inputs if t.name == item.name)
        expected = _V2_DATATYPES[tspec.dtype]
        if item.datatype != expected:
            raise HTTPProblem(
                400, f"input '{item.name}' has datatype {item.datatype}; model '{entry.name}' expects {expected}"
            )
        dims = entry.wire_dims(item.name)
        shape = item.shape
        ok = (
            len(shape) >= 1
            and all(d >= 0 for d in shape)
            and (shape[1:] == dims or (not tspec.shape and len(shape) == 1))
        )
        if not ok:
            raise HTTPProblem(
                400, f"input '{item.name}' has shape {shape}; expected [batch, {', '.join(map(str, dims))}]"
            )
        count = math.prod(shape)
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise HTTPProblem(400, f"input '{item.name}': binary_data_size {size!r} overruns the body")
            dtype = _NUMPY_WIRE[expected]
            if size != count * dtype.itemsize:
                raise HTTPProblem(400, f"input '{item.name}': {size} bytes do not hold shape {shape} of {expected}")
            flat = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).astype(_NATIVE[expected])
            offset += size
        else:
            flat = _json_tensor(item, expected)
            if flat.size != count:
                raise HTTPProblem(400, f"input '{item.name}' has {flat.size} values for shape {shape}")
        rows.add(shape[0])
        if tspec.shape:
            tensors[item.name] = flat.reshape(shape)  # [B, F] or [B, D]
        else:
            tensors[item.name] = flat.reshape(shape[0])  # [B, 1] or [B] -> [B]
    if offset != len(binary):
        raise HTTPProblem(400, f"the body carries {len(binary) - offset} bytes that no input claims")
    if len(rows) != 1:
        raise HTTPProblem(400, f"inputs disagree on the batch size: {sorted(rows)}")
    batch = rows.pop()
    if batch < 1:
        raise HTTPProblem(400, "the inference request has no rows (batch size 0)")
    if entry.max_batch_size and batch > entry.max_batch_size:
        raise HTTPProblem(
            400, f"batch size {batch} exceeds the max_batch_size {entry.max_batch_size} of model '{entry.name}'"
        )
    _check_ranges(entry, tensors)
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wire_to_spec = {entry.wire_output(n): n for n in spec.output_names}
    outputs: list[tuple[str, bool]] = []
    for out in request.outputs if request.outputs is not None else []:
        if out.name not in wire_to_spec:
            raise HTTPProblem(
                400,
                f"unexpected inference output '{out.name}' for model '{entry.name}'; outputs are {list(wire_to_spec)}",
            )
        if out.parameters.get("classification"):
            raise HTTPProblem(400, "the classification extension is not supported")
        outputs.append((wire_to_spec[out.name], bool(out.parameters.get("binary_data", default_binary))))
    if request.outputs is None:
        outputs = [(n, default_binary) for n in spec.output_names]
    return V2Request(request.id, tensors, batch, outputs, _timeout_parameter(request.parameters))


def _timeout_parameter(parameters: dict[str, Any]) -> int | None:
    """The v2 ``timeout`` request parameter in microseconds (Triton's meaning; 0 or absent = no deadline)."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HTTPProblem(400, f"parameter 'timeout' must be a non-negative integer (microseconds), got {value!r}")
    return value or None


def v2_response(entry: ModelEntry, request: V2Request, outputs: dict[str, np.ndarray]) -> Answer:
    """The v2 answer: JSON, or a JSON header followed by the binary outputs (``[B, 1]`` FP32 each)."""
    head: dict[str, Any] = {"model_name": entry.name, "model_version": str(entry.version), "outputs": []}
    if request.id is not None:
        head["id"] = request.id
    blobs: list[bytes] = []
    for name, binary in request.outputs:
        values = np.ascontiguousarray(outputs[name], dtype="<f4").reshape(request.rows, 1)  # [B] -> [B, 1]
        item: dict[str, Any] = {"name": entry.wire_output(name), "datatype": "FP32", "shape": [request.rows, 1]}
        if binary:
            blob = values.tobytes()
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = values.reshape(-1).tolist()  # a non-finite value is written as null
        head["outputs"].append(item)
    text = orjson.dumps(head)
    if not blobs:
        return Answer(200, text, JSON)
    header = [(b"inference-header-content-length", str(len(text)).encode())]
    return Answer(200, text + b"".join(blobs), b"application/octet-stream", header)


def model_metadata(entry: ModelEntry) -> dict[str, Any]:
    inputs = [
        {"name": t.name, "datatype": _V2_DATATYPES[t.dtype], "shape": [-1, *entry.wire_dims(t.name)]}
        for t in entry.spec.inputs
    ]
    outputs = [
        {"name": entry.wire_output(t.name), "datatype": _V2_DATATYPES[t.dtype], "shape": [-1, *(t.shape or [1])]}
        for t in entry.spec.outputs
    ]
    return {
        "name": entry.name,
        "versions": [str(entry.version)],
        "platform": entry.platform,
        "inputs": inputs,
        "outputs": outputs,
    }
