"""Shared fixtures: tiny fitted schemas and seeded random batches built in code (no files, no real data)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.data.prepare import prepare
from mtlrec.schema import (
    DENSE,
    SCENARIO,
    SPARSE_IDS,
    DenseField,
    FeatureSchema,
    ScenarioField,
    SparseField,
    TaskSpec,
)

BatchFactory = Callable[[FeatureSchema, int, int], Batch]


def make_batch(schema: FeatureSchema, n: int, seed: int = 0) -> Batch:
    """Random inputs and labels for a fitted ``schema``: ``n`` rows, reproducible from ``seed``.

    Sparse ids are uniform over each field's whole vocabulary (reserved ids included), dense values
    standard normal, scenarios uniform. Binary labels are Bernoulli(1/2); a task ``conditioned_on`` a parent
    is positive only where the parent is (a conversion only after a click); regression labels are standard
    normal.

    Args:
        schema: a fitted schema (vocabulary sizes and scenario values set).
        n: number of rows.
        seed: seed of the private generator.

    Returns:
        A :class:`Batch` keyed by the schema's tensor names and task names.
    """
    gen = torch.Generator().manual_seed(seed)
    features: dict[str, torch.Tensor] = {}
    if schema.sparse:
        columns = [torch.randint(0, size, (n,), generator=gen) for size in schema.vocab_sizes()]
        features[SPARSE_IDS] = torch.stack(columns, dim=1)  # [n, F]
    if schema.dense:
        features[DENSE] = torch.randn(n, len(schema.dense), generator=gen)  # [n, D]
    if schema.scenario is not None:
        features[SCENARIO] = torch.randint(0, schema.num_scenarios, (n,), generator=gen)  # [n]
    labels: dict[str, torch.Tensor] = {}
    pending = list(schema.tasks)
    while pending:  # parents first, whatever the schema order (the schema forbids cycles)
        task = next(t for t in pending if t.conditioned_on is None or t.conditioned_on in labels)
        pending.remove(task)
        if task.kind == "regression":
            labels[task.name] = torch.randn(n, generator=gen)
            continue
        label = torch.bernoulli(torch.full((n,), 0.5), generator=gen)
        if task.conditioned_on is not None:
            label = label * labels[task.conditioned_on]
        labels[task.name] = label
    return Batch(features, labels)


@pytest.fixture
def tiny_schema() -> FeatureSchema:
    """Fitted: 3 sparse fields, 2 dense, a 2-value scenario, and a ctr→cvr funnel."""
    return FeatureSchema(
        sparse=(
            SparseField(name="user", vocab_size=12),
            SparseField(name="item", vocab_size=9),
            SparseField(name="category", vocab_size=5),
        ),
        dense=(DenseField(name="price"), DenseField(name="age")),
        scenario=ScenarioField(name="site", values=("app", "web")),
        tasks=(
            TaskSpec(name="ctr", label="click"),
            TaskSpec(name="cvr", label="conversion", conditioned_on="ctr"),
        ),
    )


@pytest.fixture
def tiny_schema_no_funnel() -> FeatureSchema:
    """Fitted: 2 sparse fields, 1 dense, no scenario, two unconditioned binary tasks."""
    return FeatureSchema(
        sparse=(SparseField(name="user", vocab_size=7), SparseField(name="item", vocab_size=6)),
        dense=(DenseField(name="price"),),
        tasks=(TaskSpec(name="income"), TaskSpec(name="marital")),
    )


@pytest.fixture
def batch_factory() -> BatchFactory:
    """:func:`make_batch`, for tests that need batches of their own size or seed."""
    return make_batch


@pytest.fixture
def tiny_batch(tiny_schema: FeatureSchema) -> Batch:
    """256 rows of ``tiny_schema``: enough that every embedding row of every field is drawn."""
    return make_batch(tiny_schema, 256, seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared ``synthetic`` data directory (12,000 generated rows, seed 0), shared by the session."""
    out = tmp_path_factory.mktemp("synthetic")
    prepare("synthetic", None, out, seed=0, rows=12_000)
    return out
