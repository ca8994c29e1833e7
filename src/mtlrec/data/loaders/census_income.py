"""UCI Census-Income (KDD): the standard two-task MTL benchmark of MMoE and PLE.

The loader reads the two upstream files as published by UCI (``census-income.data`` and
``census-income.test``, plain, ``.gz`` or ``.bz2``): 42 comma+space separated columns, no header, ``?`` for
a missing value.

Tasks (MMoE, Ma et al. KDD 2018, section 6.3, group 1; also PLE):

* ``income``: 1 iff the income column is ``50000+.`` (about 6.2 % positive);
* ``never_married``: 1 iff ``marital_stat`` is ``Never married`` (about 43.3 % positive).

``marital_stat`` and the income column are the sources of the labels and are removed from the inputs;
``instance_weight`` is a survey sampling weight and never a feature. The 7 continuous columns are dense
fields; every other column, including the numerically coded ones (industry/occupation codes,
``own_or_self``, ``vet_benefits``, ``year``), is categorical. Split as keras-mmoe and torch-rechub do: the
``.data`` file is the training split and the ``.test`` file is shuffled with the seed and cut 1:1 into
validation and test.

Example:
    >>> from pathlib import Path
    >>> from mtlrec.data.loaders import get_dataset
    >>> source = Path("../shared/data/census_income_kdd")
    >>> raw = get_dataset("census-income").load(source, seed=0, rows=None)  # doctest: +SKIP
    >>> [len(raw.splits[s]) for s in ("train", "val", "test")]  # doctest: +SKIP
    [199523, 49881, 49881]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.data.loaders.base import DatasetInfo, DatasetLoader, RawDataset, register_dataset, require_files
from mtlrec.errors import ConfigError, DataError
from mtlrec.schema import DenseField, FeatureSchema, SparseField, TaskSpec

# Upstream column order (names as in keras-mmoe, DeepCTR and MMLRec); see the data folder's PROVENANCE.md.
COLUMNS: tuple[str, ...] = (
    "age",
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "wage_per_hour",
    "hs_college",
    "marital_stat",
    "major_ind_code",
    "major_occ_code",
    "race",
    "hisp_origin",
    "sex",
    "union_member",
    "unemp_reason",
    "full_or_part_emp",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "tax_filer_stat",
    "region_prev_res",
    "state_prev_res",
    "det_hh_fam_stat",
    "det_hh_summ",
    "instance_weight",
    "mig_chg_msa",
    "mig_chg_reg",
    "mig_move_reg",
    "mig_same",
    "mig_prev_sunbelt",
    "num_emp",
    "fam_under_18",
    "country_father",
    "country_mother",
    "country_self",
    "citizenship",
    "own_or_self",
    "vet_question",
    "vet_benefits",
    "weeks_worked",
    "year",
    "income_50k",
)

INCOME_COLUMN = "income_50k"
MARITAL_COLUMN = "marital_stat"
WEIGHT_COLUMN = "instance_weight"
INCOME_POSITIVE = "50000+."
INCOME_NEGATIVE = "- 50000."
NEVER_MARRIED = "Never married"

# The 7 continuous columns and their normalisation. Why these choices:
# * the money columns (wage_per_hour, capital_gains, capital_losses, stock_dividends) are 0 for 90-98 % of
#   the rows with a tail up to 9,999 / 99,999: standardising would squash every typical row into a sliver near
#   the mean and let a few rows dominate, so they get log1p (range 0..11.5), the median (0) as fill value;
# * age (0-90), num_emp (0-6) and weeks_worked (0-52) are bounded and not heavy-tailed: plain standardisation.
DENSE_FIELDS: tuple[DenseField, ...] = (
    DenseField(name="age", normalization="standardize"),
    DenseField(name="wage_per_hour", normalization="log1p", fill="median"),
    DenseField(name="capital_gains", normalization="log1p", fill="median"),
    DenseField(name="capital_losses", normalization="log1p", fill="median"),
    DenseField(name="stock_dividends", normalization="log1p", fill="median"),
    DenseField(name="num_emp", normalization="standardize"),
    DenseField(name="weeks_worked", normalization="standardize"),
)

_NOT_INPUTS = {INCOME_COLUMN, MARITAL_COLUMN, WEIGHT_COLUMN}
_DENSE_NAMES = {f.name for f in DENSE_FIELDS}
SPARSE_FIELDS: tuple[SparseField, ...] = tuple(
    SparseField(name=c) for c in COLUMNS if c not in _NOT_INPUTS and c not in _DENSE_NAMES
)

TASKS: tuple[TaskSpec, ...] = (TaskSpec(name="income"), TaskSpec(name="never_married"))

_SUFFIXES = ("", ".gz", ".bz2")
UPSTREAM_FILES: dict[str, list[str]] = {
    "train": [f"census-income.data{s}" for s in _SUFFIXES],
    "test": [f"census-income.test{s}" for s in _SUFFIXES],
}


def census_schema() -> FeatureSchema:
    """The (unfitted) schema of the census-income dataset: 32 sparse fields, 7 dense fields, 2 tasks."""
    return FeatureSchema(sparse=SPARSE_FIELDS, dense=DENSE_FIELDS, tasks=TASKS)


def read_census_file(path: Path, rows: int | None = None) -> pd.DataFrame:
    """Read one upstream file (plain, .gz or .bz2) into a frame with the 42 named columns.

    Args:
        path: the file.
        rows: read at most this many rows (None: all).

    Returns:
        The raw columns; ``?`` is read as missing; values keep the upstream spelling (leading spaces removed).

    Raises:
        DataError: the file is empty, unreadable, or does not have 42 columns.
    """
    try:
        frame = pd.read_csv(
            path,
            header=None,
            sep=",",
            skipinitialspace=True,
            na_values=["?"],
            keep_default_na=False,
            nrows=rows,
            low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="download the file again as published by UCI") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(
            f"cannot read {path}: {err}",
            hint="expected the UCI census-income format: 42 comma+space separated values per line (plain, .gz or .bz2)",
        ) from None
    if frame.shape[1] != len(COLUMNS):
        raise DataError(
            f"{path} has {frame.shape[1]} columns, expected {len(COLUMNS)}",
            hint="expected the UCI census-income format (census-income.data/.test), not a preprocessed copy",
        )
    if len(frame) == 0:
        raise DataError(f"{path} is empty: it has no rows", hint="download the file again as published by UCI")
    frame.columns = list(COLUMNS)
    return frame


def derive_labels(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Add the 0/1 ``income`` and ``never_married`` labels; drop their sources and the instance weight.

    Raises:
        DataError: an income value is neither ``- 50000.`` nor ``50000+.``, or the marital status is missing.
    """
    income = frame[INCOME_COLUMN].astype("string").str.strip()
    bad = ~income.isin([INCOME_POSITIVE, INCOME_NEGATIVE]).fillna(False).to_numpy(dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: income column has the value {frame[INCOME_COLUMN].iloc[row]!r} at row {row} "
            f"({int(bad.sum())} such rows)",
            hint=f"expected `{INCOME_NEGATIVE}` or `{INCOME_POSITIVE}`; is this the unmodified UCI file?",
        )
    marital = frame[MARITAL_COLUMN].astype("string").str.strip()
    missing = marital.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(f"{path}: marital_stat is missing at row {row}", hint="is this the unmodified UCI file?")
    out = frame.drop(columns=list(_NOT_INPUTS))
    out["income"] = (income == INCOME_POSITIVE).to_numpy(dtype=np.int8)
    out["never_married"] = (marital == NEVER_MARRIED).to_numpy(dtype=np.int8)
    return out


@register_dataset
class CensusIncome(DatasetLoader):
    """Loader of the UCI Census-Income (KDD) files; see the module docstring."""

    info = DatasetInfo(
        name="census-income",
        description="UCI Census-Income KDD (1994/95 CPS), 299k people; MMoE/PLE two-task benchmark",
        tasks=("income", "never_married"),
        scenario=None,
        upstream_files=("census-income.data[.gz|.bz2]", "census-income.test[.gz|.bz2]"),
        needs_source=True,
        source_hint=(
            "pass the folder holding census-income.data and census-income.test (plain, .gz or .bz2), "
            "e.g. --source ../shared/data/census_income_kdd"
        ),
    )

    def load(self, source: Path | None, *, seed: int, rows: int | None) -> RawDataset:
        """Read both upstream files, derive the labels and split the test file 1:1 into val and test.

        Args:
            source: the folder with the upstream files.
            seed: seeds the val/test permutation.
            rows: cap on the rows read from each file.

        Returns:
            The raw splits (schema fields plus the ``income`` and ``never_married`` label columns).
        """
        if source is None:
            raise DataError("dataset `census-income` needs --source", hint=self.info.source_hint)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}", hint="pass a non-negative --seed")
        files = require_files(source, UPSTREAM_FILES)
        train = derive_labels(read_census_file(files["train"], rows), files["train"])
        held_out = derive_labels(read_census_file(files["test"], rows), files["test"])
        perm = np.random.default_rng(seed).permutation(len(held_out))
        half = len(held_out) // 2
        splits = {
            "train": train,
            "val": held_out.iloc[perm[:half]].reset_index(drop=True),
            "test": held_out.iloc[perm[half:]].reset_index(drop=True),
        }
        notes = {
            "train_file": str(files["train"]),
            "test_file": str(files["test"]),
            "split": f"train = {files['train'].name}; {files['test'].name} shuffled (seed {seed}) "
            "and cut 1:1 into val and test",
            "removed_inputs": "marital_stat (source of never_married), income_50k (source of income), "
            "instance_weight (survey sampling weight, never a feature)",
        }
        return RawDataset(schema=census_schema(), splits=splits, notes=notes)
