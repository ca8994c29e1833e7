"""Feature schema: fields, scenario, tasks; JSON and hash."""

from mtlrec.schema.features import (
    DENSE,
    FIRST_VALUE_ID,
    MISSING_ID,
    OOV_ID,
    SCENARIO,
    SPARSE_IDS,
    DenseField,
    FeatureSchema,
    ScenarioField,
    SparseField,
    TaskSpec,
)

__all__ = [
    "DENSE",
    "FIRST_VALUE_ID",
    "MISSING_ID",
    "OOV_ID",
    "SCENARIO",
    "SPARSE_IDS",
    "DenseField",
    "FeatureSchema",
    "ScenarioField",
    "SparseField",
    "TaskSpec",
]
