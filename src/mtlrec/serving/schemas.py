"""Request and response bodies of the records API, in RAW feature values, generated from a :class:`FeatureSchema`.

A client sends what it has (a user id, a price, the scenario), never vocabulary ids or normalised values: the
server turns the records into tensors with the run's own :class:`~mtlrec.data.preprocess.Preprocessor`.

* Record: one optional key per sparse field (``str | int | null``, categorical) and per dense field (a finite number
  or ``null``, numeric); the scenario (``str | int``) is required when the schema has one. Unknown keys are
  rejected. A missing or ``null`` feature takes the preprocessor's rule (reserved id, fill value).
* Request: ``{"records": [Record, ...]}`` with at least one and at most ``max_records`` records.
* Response: ``{"model", "version", "predictions": [{task: probability}, ...], "oov": {field: count} | null}``, one
  prediction per record, in request order.

Validation errors name the field: pydantic's ``loc`` reads ``("records", 0, "price")``.

Example:
    >>> from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user"),), dense=(DenseField(name="price"),),
    ...                        scenario=ScenarioField(name="site"), tasks=(TaskSpec(name="ctr"),))
    >>> Request = build_request_model(schema)
    >>> body = Request.model_validate({"records": [{"user": "u1", "site": "app"}, {"price": 9.5, "site": 2}]})
    >>> records_to_frame(body, schema).to_dict("list")
    {'user': ['u1', None], 'price': [nan, 9.5], 'site': ['app', '2']}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictFloat, WithJsonSchema, create_model

from mtlrec.data.preprocess import category_text
from mtlrec.schema import FeatureSchema

DEFAULT_MAX_RECORDS = 4096


def _categorical(value: Any) -> str | int | None:
    # One plain validator instead of a `str | int` union: a union reports one error per member
    # (loc records.0.user.str and records.0.user.int); this reports records.0.user once.
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError("a categorical value is a string, an integer or null")


Categorical = Annotated[
    Any,
    PlainValidator(_categorical),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}),
]
"""A raw categorical value: a string, an integer (``12`` and ``"12"`` are one category) or null."""

Numeric = Annotated[StrictFloat, Field(allow_inf_nan=False)]
"""A raw numeric value: a finite int or float; booleans, strings, NaN and infinities are rejected."""

Kind = Literal["categorical", "numeric"]


class PredictResponse(BaseModel):
    """The answer to a records request: one ``{task: probability}`` per record, in request order."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="the served model's name")
    version: str = Field(description="the served model's version")
    predictions: list[dict[str, float]] = Field(description="per record, output name -> probability")
    oov: dict[str, int] | None = Field(
        default=None, description="per sparse field, how many values of the request were unseen in training"
    )


def _field_id(index: int) -> str:
    # Schema names may hold `.` and `-` or shadow BaseModel attributes (`schema`, `copy`): the model's attributes
    # are positional and the real names are aliases, so validation, errors and dumps all use the real names.
    return f"f{index}"


def record_keys(schema: FeatureSchema) -> dict[str, str]:
    """Field name -> the attribute under which a record of :func:`build_record_model` keeps its value.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, SparseField, TaskSpec
        >>> record_keys(FeatureSchema(sparse=(SparseField(name="user"),), dense=(DenseField(name="price"),),
        ...                           tasks=(TaskSpec(name="ctr"),)))
        {'user': 'f0', 'price': 'f1'}
    """
    names = [*schema.sparse_names, *schema.dense_names, *([schema.scenario.name] if schema.scenario else [])]
    return {name: _field_id(index) for index, name in enumerate(names)}


def build_record_model(schema: FeatureSchema) -> type[BaseModel]:
    """The pydantic model of one record of ``schema``: raw values keyed by field name; see the module docstring."""
    fields: dict[str, Any] = {}
    index = 0
    for name in schema.sparse_names:
        fields[_field_id(index)] = (
            Categorical,
            Field(default=None, alias=name, description="categorical; null or absent = missing"),
        )
        index += 1
    for name in schema.dense_names:
        fields[_field_id(index)] = (
            Numeric | None,
            Field(default=None, alias=name, description="numeric; null or absent = missing"),
        )
        index += 1
    if schema.scenario is not None:
        values = list(schema.scenario.values or ())
        fields[_field_id(index)] = (
            Annotated[Categorical, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]})],
            Field(alias=schema.scenario.name, description=f"scenario, required; one of {values}"),
        )
    model: type[BaseModel] = create_model(
        "Record",
        __config__=ConfigDict(extra="forbid", populate_by_name=False, protected_namespaces=()),
        __doc__="One record in raw feature values.",
        **fields,
    )
    return model


def build_request_model(schema: FeatureSchema, max_records: int = DEFAULT_MAX_RECORDS) -> type[BaseModel]:
    """The pydantic model of a request ``{"records": [Record, ...]}`` for ``schema``.

    Args:
        schema: the fitted feature schema of the served model.
        max_records: the most records one request may carry.

    Returns:
        A model class with one field ``records`` (between 1 and ``max_records`` records of
        :func:`build_record_model`).
    """
    record = build_record_model(schema)
    model: type[BaseModel] = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Records to score, in raw feature values.",
        records=(list[record], Field(min_length=1, max_length=max_records)),  # type: ignore[valid-type]
    )
    return model


def request_schema_json(schema: FeatureSchema, output_names: list[str]) -> dict[str, Any]:
    """What a request must look like and what it returns (the body of ``GET /v1/models/{name}``).

    Returns:
        ``{"fields": [{"name", "kind", "required"}], "scenario": {"name", "kind", "required", "values"} | None,
        "tasks": [output names]}``.
    """
    fields: list[dict[str, Any]] = [{"name": n, "kind": "categorical", "required": False} for n in schema.sparse_names]
    fields += [{"name": n, "kind": "numeric", "required": False} for n in schema.dense_names]
    scenario = None
    if schema.scenario is not None:
        scenario = {
            "name": schema.scenario.name,
            "kind": "categorical",
            "required": True,
            "values": list(schema.scenario.values or ()),
        }
    return {"fields": fields, "scenario": scenario, "tasks": list(output_names)}


def _columns_getter(records: list[Any]) -> Any:
    """``get(record, name)`` for these records: attribute access for generated models (no dump), ``.get`` else."""
    first = records[0] if records else None
    if isinstance(first, BaseModel):
        attribute = {(f.alias or a): a for a, f in type(first).model_fields.items()}

        def from_model(record: Any, name: str) -> Any:
            return getattr(record, attribute[name], None) if name in attribute else None

        return from_model
    return lambda record, name: record.get(name)


def records_to_frame(
    records: BaseModel | Iterable[BaseModel | Mapping[str, Any]], schema: FeatureSchema
) -> pd.DataFrame:
    """Records (validated models, plain dicts keyed by field name, or a whole request) -> the raw frame that
    :meth:`~mtlrec.data.preprocess.Preprocessor.transform` takes.

    Columns are the sparse fields (object: values as text, None = missing), the dense fields (float64, NaN =
    missing) and the scenario (object). A key absent from a record is missing. Plain dicts are not validated: a
    non-numeric dense value is left for the transform to report.
    """
    if isinstance(records, BaseModel):  # a whole request
        records = getattr(records, "records")  # noqa: B009  (a generated model)
    assert not isinstance(records, BaseModel)
    rows = list(records)
    get = _columns_getter(rows)
    columns: dict[str, Any] = {}
    for name in schema.sparse_names:
        columns[name] = pd.Series([category_text(get(r, name)) for r in rows], dtype=object)
    for name in schema.dense_names:
        values = [get(r, name) for r in rows]
        try:
            if any(isinstance(v, bool | str) for v in values):
                raise TypeError
            columns[name] = pd.Series(np.array(values, dtype=np.float64))
        except (TypeError, ValueError):  # left as given: the transform names the bad value
            columns[name] = pd.Series(values, dtype=object)
    if schema.scenario is not None:
        name = schema.scenario.name
        columns[name] = pd.Series([category_text(get(r, name)) for r in rows], dtype=object)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))


def field_kinds(schema: FeatureSchema) -> dict[str, Kind]:
    """Each request field (features and the scenario) with its kind."""
    kinds: dict[str, Kind] = dict.fromkeys(schema.sparse_names, "categorical")
    kinds |= dict.fromkeys(schema.dense_names, "numeric")
    if schema.scenario is not None:
        kinds[schema.scenario.name] = "categorical"
    return kinds
