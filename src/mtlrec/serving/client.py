"""Clients for raw records: ``mtlrec serve``'s records API (httpx) and a Triton ensemble (tritonclient).

Both take records as plain dicts of raw feature values (``{"user_id": "u1", "price": 9.5, "scenario": "app"}``)
and return one ``{output: probability}`` per record, in order. Nothing here imports torch, so a client host needs
only ``httpx`` (records API) or ``tritonclient[http,grpc]`` (Triton).

* ``records``: ``POST {url}/v1/models/{model}/predict`` with ``{"records": [...]}`` (header ``x-api-key`` when
  given); the server validates the records against the model's schema and encodes them with the run's transform.
* ``triton-http`` / ``triton-grpc``: the ``<model>_ensemble`` of an exported repository (or ``model`` itself when
  it takes raw fields). The client cannot read the schema remotely, so it builds the request from the ensemble's
  metadata: a ``BYTES`` input gets the value as a UTF-8 string (a missing one: an empty string), an ``FP32``
  input a float (a missing one: NaN). Values are checked for type here; the vocabulary and the scenario are
  checked by the server.

Example::

    predict_records("http://localhost:8080", "mmoe", [{"user_id": "u1", "scenario": "scenario_0"}])
    # [{"ctr": 0.12, "cvr": 0.03}]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from mtlrec.errors import MtlrecError
from mtlrec.serving.runners import (
    TritonClients,
    TritonProtocol,
    triton_infer,
    triton_max_batch_size,
    triton_metadata,
)

ClientProtocol = Literal["records", "triton-http", "triton-grpc"]
CLIENT_PROTOCOLS: tuple[ClientProtocol, ...] = ("records", "triton-http", "triton-grpc")
ENSEMBLE_SUFFIX = "_ensemble"
API_KEY_HEADER = "x-api-key"

Record = Mapping[str, Any]


class ClientError(MtlrecError):
    """A request could not be built, sent or answered."""


# ---------------------------------------------------------------------------------------------- records API
def predict_url(url: str, model: str) -> str:
    """``{url}/v1/models/{model}/predict`` (``http://`` added when ``url`` has no scheme)."""
    base = url.strip().rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    return f"{base}/v1/models/{model}/predict"


def _error_text(body: Any) -> str:
    """The readable part of an error body: FastAPI's ``detail`` (a string or pydantic's error list) or ``error``."""
    if isinstance(body, dict):
        detail = body.get("detail", body.get("error", body))
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict) and "loc" in item:
                    loc = ".".join(str(p) for p in item["loc"] if p != "body")
                    parts.append(f"{loc}: {item.get('msg', '')}")
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return str(detail)
    return str(body)


def post_records(
    url: str,
    model: str,
    records: Sequence[Record],
    *,
    api_key: str | None = None,
    timeout_s: float = 30.0,
    client: Any = None,
) -> dict[str, Any]:
    """POST records to ``mtlrec serve`` and return the response body (``model``, ``version``, ``predictions``...).

    Args:
        url: the server's base URL, e.g. ``http://localhost:8080``.
        model: the model name.
        records: raw records.
        api_key: sent as the ``x-api-key`` header when given.
        timeout_s: the request timeout.
        client: an ``httpx.Client`` to use (tests pass one with a ``MockTransport``); default: a new one.

    Raises:
        ClientError: the server is unreachable, refused the request (its message is included) or answered
            something that is not a predictions body.
    """
    import httpx

    headers = {API_KEY_HEADER: api_key} if api_key else {}
    target = predict_url(url, model)
    own = client is None
    http = httpx.Client(timeout=timeout_s) if own else client
    try:
        response = http.post(target, json={"records": list(records)}, headers=headers)
    except httpx.HTTPError as err:
        raise ClientError(f"cannot reach {target}: {err}", hint="check --url and that `mtlrec serve` is up") from None
    finally:
        if own:
            http.close()
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code != 200:
        hint = {
            401: "pass the server's key with --api-key",
            403: "pass the server's key with --api-key",
            404: "check --model (GET /v1/models lists the served models)",
            422: "fix the records: GET /v1/models/{name} lists the fields",
        }.get(response.status_code)
        raise ClientError(f"{target} answered {response.status_code}: {_error_text(body)}", hint=hint)
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        raise ClientError(f"{target} answered 200 without a predictions list: {str(body)[:200]}")
    return body


# ---------------------------------------------------------------------------------------------- Triton ensemble
def _text(name: str, value: Any) -> bytes:
    """A raw categorical value as the UTF-8 bytes the preprocess model reads (12.0 and 12 both as ``12``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return b""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0**63:
        value = int(value)
    if not isinstance(value, str | int | float):
        raise ClientError(f"field `{name}` has the value {value!r}; a categorical value is a string or a number")
    return str(value).encode("utf-8")


def _number(name: str, value: Any) -> float:
    """A raw numeric value as float (missing: NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        if not value.strip():
            return math.nan
        try:
            return float(value)
        except ValueError:
            raise ClientError(f"field `{name}` has the non-numeric value {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClientError(f"field `{name}` has the value {value!r}; a numeric field takes a number or null")
    return float(value)


def ensemble_inputs(records: Sequence[Record], inputs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The ``[B, 1]`` input tensors of a raw-record ensemble from records and the ensemble's input metadata.

    Args:
        records: raw records keyed by field name; an absent key or None is a missing value.
        inputs: the ``inputs`` of ``get_model_metadata`` (``name`` and ``datatype``: ``BYTES`` or ``FP32``).

    Returns:
        Input name -> object array of bytes (``BYTES``) or float32 array (``FP32``), each ``[B, 1]``.

    Raises:
        ClientError: a record has a key the ensemble does not take, a value of the wrong type, or an input has
            a datatype other than BYTES/FP32.
    """
    known = {str(spec["name"]): str(spec["datatype"]) for spec in inputs}
    for i, record in enumerate(records):
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise ClientError(
                f"record {i} has fields the model does not take: {', '.join(unknown)}",
                hint=f"the model's fields are {', '.join(known)}",
            )
    tensors: dict[str, np.ndarray] = {}
    for name, datatype in known.items():
        values = [r.get(name) for r in records]
        if datatype == "BYTES":
            tensors[name] = np.array([_text(name, v) for v in values], dtype=object).reshape(-1, 1)
        elif datatype == "FP32":
            tensors[name] = np.array([_number(name, v) for v in values], dtype=np.float32).reshape(-1, 1)
        else:
            raise ClientError(
                f"input `{name}` of the model has datatype {datatype}; raw records fill only BYTES and FP32 inputs",
                hint="call the `<name>_ensemble` model of an mtlrec export",
            )
    return tensors


class TritonRecordsClient:
    """Raw records to a Triton ensemble (``<name>_ensemble``): ``predict(records) -> [{output: prob}]``.

    The metadata (inputs, outputs) and ``max_batch_size`` are read once; larger requests are split.

    Args:
        url: the server, ``host:port``.
        model: the ensemble's name, or the base name (``mmoe`` -> ``mmoe_ensemble`` when that model exists).
        protocol: ``http`` or ``grpc``.
        version: the model version (``""`` = newest).
    """

    def __init__(self, url: str, model: str, protocol: TritonProtocol = "http", version: str = "") -> None:
        self.protocol: TritonProtocol = protocol
        self.version = version
        self.clients = TritonClients(url, protocol)
        self.model = self._resolve(model)
        metadata = triton_metadata(self.client, protocol, self.model, version)
        self.inputs: list[dict[str, Any]] = [dict(i) for i in metadata.get("inputs", [])]
        self.outputs: list[str] = [str(o["name"]) for o in metadata.get("outputs", [])]
        self.max_batch_size = triton_max_batch_size(self.client, protocol, self.model, version)

    def _resolve(self, model: str) -> str:
        if model.endswith(ENSEMBLE_SUFFIX):
            return model
        candidate = model + ENSEMBLE_SUFFIX
        try:
            triton_metadata(self.client, self.protocol, candidate, self.version)
        except MtlrecError:
            return model  # no such ensemble: the model itself must take raw fields
        return candidate

    @property
    def client(self) -> Any:
        """The calling thread's tritonclient client."""
        return self.clients.get()

    def predict(self, records: Sequence[Record]) -> list[dict[str, float]]:
        """One ``{output: probability}`` per record, in order."""
        if not records:
            return []
        step = self.max_batch_size if self.max_batch_size > 0 else len(records)
        out: list[dict[str, float]] = []
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            answer = triton_infer(
                self.client, self.protocol, self.model, ensemble_inputs(chunk, self.inputs), self.outputs, self.version
            )
            columns = {n: answer[n].astype(np.float64).reshape(len(chunk), -1)[:, 0] for n in self.outputs}
            out += [{n: float(columns[n][i]) for n in self.outputs} for i in range(len(chunk))]
        return out

    def close(self) -> None:
        """Close the clients' connections."""
        self.clients.close()


# ---------------------------------------------------------------------------------------------- one entry point
def predict_records(
    url: str,
    model: str,
    records: Sequence[Record],
    protocol: ClientProtocol = "records",
    api_key: str | None = None,
    *,
    timeout_s: float = 30.0,
    http_client: Any = None,
) -> list[dict[str, float]]:
    """Predictions for raw records from ``mtlrec serve`` (``records``) or a Triton ensemble (``triton-*``).

    Args:
        url: the server (``http://host:8080`` for ``mtlrec serve``; ``host:8000``/``host:8001`` for Triton).
        model: the model name (for Triton: the base name or the ensemble's).
        records: raw records keyed by field name.
        protocol: ``records``, ``triton-http`` or ``triton-grpc``.
        api_key: the ``x-api-key`` of ``mtlrec serve`` (not used with Triton).
        timeout_s: the request timeout of the records API.
        http_client: an ``httpx.Client`` for the records API (tests pass one with a ``MockTransport``).

    Returns:
        One ``{output: probability}`` per record, in order.

    Raises:
        ClientError: a bad record, an unreachable server or an error answer.
    """
    if protocol not in CLIENT_PROTOCOLS:
        raise ClientError(f"unknown protocol `{protocol}`", hint=f"use one of {', '.join(CLIENT_PROTOCOLS)}")
    if not records:
        raise ClientError("no records to predict", hint="pass at least one record")
    if protocol == "records":
        body = post_records(url, model, records, api_key=api_key, timeout_s=timeout_s, client=http_client)
        predictions: list[dict[str, float]] = [{str(k): float(v) for k, v in p.items()} for p in body["predictions"]]
        return predictions
    triton = TritonRecordsClient(url, model, "http" if protocol == "triton-http" else "grpc")
    try:
        return triton.predict(records)
    finally:
        triton.close()
