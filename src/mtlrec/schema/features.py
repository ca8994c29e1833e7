"""The feature schema: the single source of every name downstream (columns, tensors, outputs, requests).

A schema declares sparse categorical fields, dense numeric fields, an optional scenario field and the tasks. It is
written by a dataset loader (or by the user for the ``tabular`` dataset), completed by ``Preprocessor.fit`` (vocabulary
sizes and scenario values) and then travels with the encoded data, the checkpoint and the exported model. Its
:meth:`FeatureSchema.hash` proves at load time that two artifacts agree.

Example:
    >>> schema = FeatureSchema(
    ...     sparse=(SparseField(name="user"),),
    ...     dense=(DenseField(name="price"),),
    ...     tasks=(TaskSpec(name="ctr", label="click"), TaskSpec(name="cvr", label="buy", conditioned_on="ctr")),
    ... )
    >>> [t.name for t in schema.tasks]
    ['ctr', 'cvr']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mtlrec.config import StrictModel
from mtlrec.errors import LabelLeakageError, SchemaError

SCHEMA_VERSION = 1

# Tensor names of the model input. Export specs, servers and clients read these constants, never literals.
SPARSE_IDS = "sparse_ids"
DENSE = "dense"
SCENARIO = "scenario"

# Reserved ids of every categorical vocabulary: 0 = out-of-vocabulary (unseen or rarer than min_count),
# 1 = missing (null or empty string). Known values start at 2.
OOV_ID = 0
MISSING_ID = 1
FIRST_VALUE_ID = 2

_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"


class SparseField(StrictModel):
    """A categorical field, embedded by the models."""

    name: str = Field(pattern=_NAME_PATTERN)
    min_count: int = Field(default=1, ge=1, description="values seen fewer times in train map to the OOV id")
    missing: Literal["own_id", "oov"] = Field(
        default="own_id", description="own_id: a missing value gets the reserved id 1; oov: it shares id 0"
    )
    vocab_size: int | None = Field(default=None, ge=2, description="set by Preprocessor.fit; includes reserved ids")


class DenseField(StrictModel):
    """A numeric field: missing values filled, then normalised, then clipped."""

    name: str = Field(pattern=_NAME_PATTERN)
    normalization: Literal["standardize", "log1p", "minmax", "none"] = Field(
        default="standardize",
        description="standardize: (x - mean) / std; log1p: sign(x)·log1p(|x|), then standardized (for heavy tails); "
        "minmax: (x - min) / (max - min); none: as is. Statistics come from the training split.",
    )
    fill: Literal["mean", "median", "zero"] = Field(
        default="mean", description="value used for a missing entry, computed on the training split"
    )
    # Why a clip: a serving-time outlier (1e30) must still give a finite score; 50 standard deviations is far
    # beyond any real signal, so training data is practically never affected.
    clip: float | None = Field(default=50.0, gt=0, description="normalised values are clipped to [-clip, clip]")


class ScenarioField(StrictModel):
    """The scenario (domain) of a row: routes multi-scenario models and is embedded like a sparse field."""

    name: str = Field(pattern=_NAME_PATTERN)
    values: tuple[str, ...] | None = Field(
        default=None, description="set by Preprocessor.fit (sorted train values); scenario id = index in this tuple"
    )


class TaskSpec(StrictModel):
    """A prediction target. ``conditioned_on`` names the task whose positive rows define this one (cvr on clicks)."""

    name: str = Field(pattern=_NAME_PATTERN)
    kind: Literal["binary", "regression"] = "binary"
    label: str | None = Field(default=None, description="raw label column; defaults to the task name")
    conditioned_on: str | None = None

    @property
    def label_column(self) -> str:
        """The raw column holding this task's label."""
        return self.label or self.name


class FeatureSchema(StrictModel):
    """Fields, scenario and tasks of a dataset. Frozen; JSON round trip; stable :meth:`hash`."""

    version: int = SCHEMA_VERSION
    sparse: tuple[SparseField, ...] = ()
    dense: tuple[DenseField, ...] = ()
    scenario: ScenarioField | None = None
    tasks: tuple[TaskSpec, ...]
    id_column: str | None = Field(default=None, description="a row id carried through batch scoring, never a feature")

    @model_validator(mode="after")
    def _check(self) -> FeatureSchema:
        if not self.tasks:
            raise SchemaError("the schema declares no task", hint="add at least one entry under `tasks`")
        if not self.sparse and not self.dense:
            raise SchemaError("the schema declares no input feature", hint="add `sparse` or `dense` fields")
        features = self.feature_names + ([self.scenario.name] if self.scenario else [])
        dupes = sorted({n for n in features if features.count(n) > 1})
        if dupes:
            raise SchemaError(f"field names used twice: {', '.join(dupes)}", hint="give every field a unique name")
        task_names = [t.name for t in self.tasks]
        dupes = sorted({n for n in task_names if task_names.count(n) > 1})
        if dupes:
            raise SchemaError(f"task names used twice: {', '.join(dupes)}", hint="give every task a unique name")
        for task in self.tasks:
            for leaked in {task.name, task.label_column} & set(features):
                raise LabelLeakageError(
                    f"label leakage: the label `{leaked}` of task `{task.name}` is also listed as an input feature",
                    hint=f"remove `{leaked}` from the sparse/dense/scenario fields",
                )
        if self.id_column is not None and self.id_column in features:
            raise SchemaError(
                f"id column `{self.id_column}` is also a feature", hint="an id is carried through, never used as input"
            )
        by_name = {t.name: t for t in self.tasks}
        for task in self.tasks:
            parent_name = task.conditioned_on
            if parent_name is None:
                continue
            parent = by_name.get(parent_name)
            if parent is None:
                raise SchemaError(
                    f"task `{task.name}` is conditioned_on unknown task `{parent_name}`",
                    hint=f"use one of: {', '.join(task_names)}",
                )
            if parent.kind != "binary":
                raise SchemaError(f"task `{task.name}` is conditioned_on `{parent_name}`, which is not binary")
            seen = {task.name}
            while parent is not None:
                if parent.name in seen:
                    raise SchemaError(f"conditioned_on forms a cycle through task `{parent.name}`")
                seen.add(parent.name)
                parent = by_name.get(parent.conditioned_on) if parent.conditioned_on else None
        return self

    # ----------------------------------------------------------------------------------------------- names
    @property
    def sparse_names(self) -> list[str]:
        """Sparse field names, in tensor column order."""
        return [f.name for f in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        """Dense field names, in tensor column order."""
        return [f.name for f in self.dense]

    @property
    def feature_names(self) -> list[str]:
        """Sparse then dense field names (the scenario is separate)."""
        return self.sparse_names + self.dense_names

    @property
    def task_names(self) -> list[str]:
        """Task names, in output order."""
        return [t.name for t in self.tasks]

    @property
    def input_names(self) -> list[str]:
        """Model input tensor names, in positional order: sparse ids, dense values, scenario (when present)."""
        names = []
        if self.sparse:
            names.append(SPARSE_IDS)
        if self.dense:
            names.append(DENSE)
        if self.scenario is not None:
            names.append(SCENARIO)
        return names

    @property
    def num_scenarios(self) -> int:
        """Number of scenarios (0 without a scenario field; requires a fitted schema otherwise)."""
        if self.scenario is None:
            return 0
        if self.scenario.values is None:
            raise SchemaError("the scenario values are not known yet", hint="fit a Preprocessor on the train split")
        return len(self.scenario.values)

    @property
    def is_fitted(self) -> bool:
        """True when every vocabulary size and the scenario values are known."""
        return all(f.vocab_size is not None for f in self.sparse) and (
            self.scenario is None or self.scenario.values is not None
        )

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise SchemaError(f"unknown task `{name}`", hint=f"tasks are: {', '.join(self.task_names)}")

    def vocab_sizes(self) -> list[int]:
        """Vocabulary size of every sparse field (fitted schema only)."""
        sizes = [f.vocab_size for f in self.sparse]
        if any(s is None for s in sizes):
            raise SchemaError("vocabulary sizes are not known yet", hint="fit a Preprocessor on the train split")
        return [int(s) for s in sizes if s is not None]

    # --------------------------------------------------------------------------------------------- JSON
    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the input of :meth:`hash`."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeatureSchema:
        """Parse JSON written by :meth:`to_json`."""
        return cls.model_validate_json(text)

    def hash(self) -> str:
        """A stable 16-hex-digit digest: equal for equal schemas, whatever the key order of the source."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        """Write the schema as JSON."""
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> FeatureSchema:
        """Read a schema written by :meth:`save`."""
        if not path.is_file():
            raise SchemaError(f"schema file not found: {path}", hint="run `mtlrec data prepare` to create it")
        return cls.from_json(path.read_text())
