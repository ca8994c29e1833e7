"""The user's own data: CSV or Parquet files described by a YAML spec (``--source spec.yaml``).

The spec names the files, the fields and the tasks; it is validated strictly (an unknown key is an error
naming it) and turned into a :class:`~mtlrec.schema.FeatureSchema`, so a label listed as a feature is refused
as label leakage.

Either three files, one per split::

    files: {train: train.csv, val: val.csv, test: test.csv}

or one file split at random with the seed (fractions of the rows; the rest is train)::

    files: {path: events.parquet, split: {val: 0.1, test: 0.1}}

A full spec::

    files: {path: data/events.csv.gz}
    sparse:                       # SparseField keys; a bare name is short for {name: ...}
      - user_id
      - {name: item_id, min_count: 5}
    dense:                        # DenseField keys
      - {name: price, normalization: log1p, fill: median}
    scenario: {name: channel}     # optional
    tasks:                        # TaskSpec keys
      - {name: ctr, label: click}
      - {name: cvr, label: purchase, conditioned_on: ctr}
    id_column: request_id         # optional, carried through batch scoring
    csv: {separator: ";"}         # optional CSV reading options

Relative paths are resolved against the folder of the YAML file. Files may be ``.csv``, ``.tsv`` (either
optionally ``.gz``/``.bz2``/``.xz``/``.zip``) or ``.parquet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from mtlrec.config import StrictModel, load_yaml
from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec

_COMPRESSIONS = ("", ".gz", ".bz2", ".xz", ".zip")
CSV_SUFFIXES = tuple(f"{ext}{c}" for ext in (".csv", ".tsv") for c in _COMPRESSIONS)
PARQUET_SUFFIXES = (".parquet", ".pq")


class SplitFractions(StrictModel):
    """Shares of the rows of a single file that go to validation and test; the rest is train."""

    val: float = Field(default=0.1, gt=0, lt=1)
    test: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> SplitFractions:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be below 1 (got {self.val} + {self.test}), so that train keeps rows")
        return self


class FilesSpec(StrictModel):
    """Where the rows are: ``train``/``val``/``test`` files, or one ``path`` with ``split`` fractions."""

    train: str | None = None
    val: str | None = None
    test: str | None = None
    path: str | None = None
    split: SplitFractions | None = None

    @model_validator(mode="after")
    def _check(self) -> FilesSpec:
        per_split = [self.train, self.val, self.test]
        if self.path is not None:
            if any(p is not None for p in per_split):
                raise ValueError("give either `path` (one file, split at random) or `train`/`val`/`test`, not both")
        elif any(p is None for p in per_split):
            raise ValueError("give `path` (one file, split at random) or all three of `train`, `val` and `test`")
        elif self.split is not None:
            raise ValueError("`split` applies to a single `path`; with train/val/test files, leave it out")
        return self


class CsvOptions(StrictModel):
    """How CSV files are read."""

    separator: str = Field(default=",", min_length=1, description="field separator (`\\t` for TSV)")
    encoding: str = "utf-8"
    na_values: tuple[str, ...] = Field(
        default=(), description="extra strings read as missing (besides empty, NA, NaN, null, ...)"
    )


def _names_to_fields(value: Any) -> Any:
    """Accept a bare field name as short for ``{name: ...}``."""
    if isinstance(value, list | tuple):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class TabularSpec(StrictModel):
    """The YAML spec of a ``tabular`` dataset; see the module docstring."""

    files: FilesSpec
    sparse: tuple[SparseField, ...] = ()
    dense: tuple[DenseField, ...] = ()
    scenario: ScenarioField | None = None
    tasks: tuple[TaskSpec, ...]
    id_column: str | None = None
    csv: CsvOptions = Field(default_factory=CsvOptions)

    @field_validator("sparse", "dense", mode="before")
    @classmethod
    def _bare_names(cls, value: Any) -> Any:
        return _names_to_fields(value)

    @field_validator("scenario", mode="before")
    @classmethod
    def _bare_scenario(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def to_schema(self) -> FeatureSchema:
        """The feature schema; raises :class:`~mtlrec.errors.SchemaError` on label leakage, duplicates, ..."""
        return FeatureSchema(
            sparse=self.sparse,
            dense=self.dense,
            scenario=self.scenario,
            tasks=self.tasks,
            id_column=self.id_column,
        )


def required_columns(schema: FeatureSchema) -> list[str]:
    """Columns a data file must have: fields, scenario, label columns and the id column (in that order)."""
    names = [*schema.feature_names]
    if schema.scenario is not None:
        names.append(schema.scenario.name)
    names += [t.label_column for t in schema.tasks]
    if schema.id_column is not None:
        names.append(schema.id_column)
    return list(dict.fromkeys(names))


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise DataError(
        f"unsupported data file type: {path}",
        hint="use .csv or .tsv (optionally .gz, .bz2, .xz or .zip) or .parquet",
    )


def _check_columns(path: Path, present: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in present]
    if missing:
        shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
        raise DataError(
            f"{path} lacks the columns {', '.join(missing)} named in the spec",
            hint=f"its columns are: {shown}; fix the names in the spec (or the CSV separator)",
        )


def read_table(
    path: Path, columns: list[str], csv: CsvOptions, rows: int | None = None, text_columns: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read ``columns`` of a CSV or Parquet file.

    Args:
        path: the file (``.csv``/``.tsv``, possibly compressed, or ``.parquet``).
        columns: the columns to read; each must exist.
        csv: separator, encoding and extra NA strings for CSV files.
        rows: read at most this many rows.
        text_columns: CSV columns read as text, not inferred (categorical codes keep leading zeros: "01234").

    Returns:
        The columns, in the order given.

    Raises:
        DataError: the file is missing, unreadable, lacks a column or has no rows.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}", hint="fix the path in the spec (relative to the YAML file)")
    kind = _file_kind(path)
    try:
        if kind == "parquet":
            parquet = pq.ParquetFile(path)
            _check_columns(path, list(parquet.schema_arrow.names), columns)
            if rows is None:
                table = parquet.read(columns=columns)
            else:
                # Stream batches until `rows` are in hand: a capped read of a big file stays cheap.
                batches: list[pa.RecordBatch] = []
                for batch in parquet.iter_batches(batch_size=min(rows, 65_536), columns=columns):
                    batches.append(batch)
                    if sum(b.num_rows for b in batches) >= rows:
                        break
                table = pa.Table.from_batches(batches) if batches else parquet.read(columns=columns)
                table = table.slice(0, rows)
            frame = table.to_pandas()
        else:
            options: dict[str, Any] = {"sep": csv.separator, "encoding": csv.encoding}
            if csv.na_values:
                options["na_values"] = list(csv.na_values)
            header = list(pd.read_csv(path, nrows=0, **options).columns)
            _check_columns(path, header, columns)
            dtypes = {c: "string" for c in text_columns if c in columns}
            frame = pd.read_csv(path, usecols=columns, nrows=rows, low_memory=False, dtype=dtypes, **options)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="expected a header line and at least one row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, LookupError, pa.ArrowException, OSError, EOFError) as err:
        raise DataError(
            f"cannot read {path}: {err}", hint="check the file type, the CSV separator and the encoding"
        ) from None
    if len(frame) == 0:
        raise DataError(f"{path} is empty: it has no data rows", hint="a data file needs a header and at least one row")
    return frame[columns]


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def split_by_fractions(frame: pd.DataFrame, fractions: SplitFractions, seed: int) -> dict[str, pd.DataFrame]:
    """Shuffle ``frame`` with ``seed`` and cut it into train/val/test by the given fractions."""
    n = len(frame)
    n_val, n_test = round(n * fractions.val), round(n * fractions.test)
    if min(n_val, n_test, n - n_val - n_test) < 1:
        raise DataError(
            f"{n} rows are too few to split with val={fractions.val}, test={fractions.test}",
            hint="give more rows (or larger fractions), or separate train/val/test files",
        )
    perm = np.random.default_rng(seed).permutation(n)
    parts = {"val": perm[:n_val], "test": perm[n_val : n_val + n_test], "train": perm[n_val + n_test :]}
    return {name: frame.take(np.sort(parts[name])).reset_index(drop=True) for name in ("train", "val", "test")}


@register_dataset
class Tabular(DatasetLoader):
    """Loader of CSV/Parquet files described by a YAML spec; see the module docstring."""

    info = DatasetInfo(
        name="tabular",
        description="your own CSV or Parquet files, described by a YAML spec (fields, tasks, scenario)",
        tasks=("(from the spec)",),
        scenario="(from the spec)",
        upstream_files=("<spec>.yaml", "CSV/Parquet files it names"),
        needs_source=True,
        source_hint="pass the YAML spec: --source my_data.yaml (its keys: `mtlrec.data.loaders.tabular`)",
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read the spec, build the schema, read the files and split them.

        Args:
            source: the YAML spec.
            seed: seeds the random split of a single file.
            rows: cap on the rows read per file.

        Returns:
            The raw splits (the spec's fields, label columns and id column).
        """
        if source is None:
            raise DataError("dataset `tabular` needs --source", hint=self.info.source_hint)
        if source.is_dir():
            raise DataError(f"--source {source} is a folder", hint="for `tabular`, --source is the YAML spec file")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        spec = load_yaml(source, TabularSpec)
        schema = spec.to_schema()
        columns = required_columns(schema)
        text = tuple(schema.sparse_names) + ((schema.scenario.name,) if schema.scenario else ())
        base = source.resolve().parent
        files = spec.files
        notes = {"spec": str(source.resolve())}
        if files.path is not None:
            path = _resolve(base, files.path)
            fractions = files.split or SplitFractions()
            splits = split_by_fractions(read_table(path, columns, spec.csv, rows, text), fractions, seed)
            notes["files"] = str(path)
            notes["split"] = f"val {fractions.val}, test {fractions.test} of the rows, by a permutation seeded {seed}"
        else:
            paths = {name: _resolve(base, str(getattr(files, name))) for name in ("train", "val", "test")}
            splits = {name: read_table(path, columns, spec.csv, rows, text) for name, path in paths.items()}
            notes["files"] = ", ".join(f"{name}={path}" for name, path in paths.items())
            notes["split"] = "as given by the files"
        return RawDataset(schema=schema, splits=splits, notes=notes)
