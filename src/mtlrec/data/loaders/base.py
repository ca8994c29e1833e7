"""The dataset registry: each loader turns upstream files (as published) into raw split frames and a schema.

A loader is a class with a :class:`DatasetInfo` and a ``load`` method, registered with :func:`register_dataset`::

    @register_dataset
    class CensusIncome(DatasetLoader):
        info = DatasetInfo(name="census-income", ...)
        def load(self, source, *, seed, rows): ...

``load`` returns a :class:`RawDataset`: the (unfitted) schema and raw ``train``/``val``/``test`` frames whose
columns are the schema's fields, the label columns of its tasks and, optionally, its id column. Everything after
that (fitting, encoding, writing) is shared: :func:`mtlrec.data.prepare.prepare`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mtlrec.errors import DataError
from mtlrec.schema import FeatureSchema


@dataclass(frozen=True)
class DatasetInfo:
    """What ``mtlrec data list`` shows about a dataset."""

    name: str
    description: str
    tasks: tuple[str, ...]
    scenario: str | None = None
    upstream_files: tuple[str, ...] = ()
    needs_source: bool = True
    source_hint: str = ""


@dataclass
class RawDataset:
    """Raw split frames plus the schema that describes them (not fitted yet)."""

    schema: FeatureSchema
    splits: dict[str, pd.DataFrame]
    notes: dict[str, str] = field(default_factory=dict)


class DatasetLoader(ABC):
    """Base class of every loader."""

    info: DatasetInfo

    @abstractmethod
    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read ``source`` (a file or folder in the upstream format) and return the raw splits.

        Args:
            source: where the upstream files are; None where the loader needs none (synthetic).
            seed: seeds every random choice (splits, generation).
            rows: an optional cap on the rows read per upstream file (or generated), for quick runs.
        """


_REGISTRY: dict[str, type[DatasetLoader]] = {}


def register_dataset(cls: type[DatasetLoader]) -> type[DatasetLoader]:
    """Class decorator: add a loader to the registry under ``cls.info.name`` (a name can be registered once)."""
    name = cls.info.name
    if name in _REGISTRY:
        raise ValueError(f"dataset `{name}` is registered twice")
    _REGISTRY[name] = cls
    return cls


def get_dataset(name: str) -> DatasetLoader:
    """An instance of the loader called ``name``; an unknown name lists the known ones."""
    from mtlrec.data import loaders  # noqa: F401  (importing the package registers the built-in loaders)

    if name not in _REGISTRY:
        raise DataError(f"unknown dataset `{name}`", hint=f"known datasets: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def list_datasets() -> list[DatasetInfo]:
    """Info of every registered dataset, sorted by name."""
    from mtlrec.data import loaders  # noqa: F401

    return [_REGISTRY[name].info for name in sorted(_REGISTRY)]


def require_files(source: Path, expected: dict[str, list[str]]) -> dict[str, Path]:
    """Find each expected upstream file under ``source``, accepting any of the listed names.

    Args:
        source: the folder given with ``--source``.
        expected: role -> accepted file names (e.g. ``{"train": ["census-income.data", "census-income.data.gz"]}``).

    Returns:
        role -> path found. A missing file raises :class:`DataError` that lists what was expected where.
    """
    if not source.exists():
        raise DataError(f"source not found: {source}", hint="pass --source with the folder of the upstream files")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, names in expected.items():
        hit = next((source / n for n in names if (source / n).is_file()), None)
        if hit is None:
            missing.append(f"{role}: one of {', '.join(names)}")
        else:
            found[role] = hit
    if missing:
        raise DataError(
            f"expected upstream files are missing in {source}: " + "; ".join(missing),
            hint="download the files as published and put them in that folder (plain, .gz or .bz2)",
        )
    return found
