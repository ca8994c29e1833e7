"""Fixtures of the data tests: tiny census-income files in the exact upstream format, and the real data's folder."""

from __future__ import annotations

import bz2
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest

# Five real records of census-income.data (UCI), as published: 42 values joined by ", ", `?` for missing,
# one value with a trailing space ("... U S "). Rows of the tiny files are variations of these.
CENSUS_TEMPLATES = (
    "73, Not in universe, 0, 0, High school graduate, 0, Not in universe, Widowed, Not in universe or children, "
    "Not in universe, White, All other, Female, Not in universe, Not in universe, Not in labor force, 0, 0, 0, "
    "Nonfiler, Not in universe, Not in universe, Other Rel 18+ ever marr not in subfamily, "
    "Other relative of householder, 1700.09, ?, ?, ?, Not in universe under 1 year old, ?, 0, Not in universe, "
    "United-States, United-States, United-States, Native- Born in the United States, 0, Not in universe, 2, 0, "
    "95, - 50000.",
    "58, Self-employed-not incorporated, 4, 34, Some college but no degree, 0, Not in universe, Divorced, "
    "Construction, Precision production craft & repair, White, All other, Male, Not in universe, "
    "Not in universe, Children or Armed Forces, 0, 0, 0, Head of household, South, Arkansas, Householder, "
    "Householder, 1053.55, MSA to MSA, Same county, Same county, No, Yes, 1, Not in universe, United-States, "
    "United-States, United-States, Native- Born in the United States, 0, Not in universe, 2, 52, 94, - 50000.",
    "18, Not in universe, 0, 0, 10th grade, 0, High school, Never married, Not in universe or children, "
    "Not in universe, Asian or Pacific Islander, All other, Female, Not in universe, Not in universe, "
    "Not in labor force, 0, 0, 0, Nonfiler, Not in universe, Not in universe, "
    "Child 18+ never marr Not in a subfamily, Child 18 or older, 991.95, ?, ?, ?, "
    "Not in universe under 1 year old, ?, 0, Not in universe, Vietnam, Vietnam, Vietnam, "
    "Foreign born- Not a citizen of U S , 0, Not in universe, 2, 0, 95, - 50000.",
    "38, Private, 6, 36, 1st 2nd 3rd or 4th grade, 0, Not in universe, Married-civilian spouse present, "
    "Manufacturing-durable goods, Machine operators assmblrs & inspctrs, White, Mexican (Mexicano), Female, "
    "Not in universe, Not in universe, Full-time schedules, 0, 0, 0, Joint one under 65 & one 65+, "
    "Not in universe, Not in universe, Spouse of householder, Spouse of householder, 1032.38, ?, ?, ?, "
    "Not in universe under 1 year old, ?, 4, Not in universe, Mexico, Mexico, Mexico, "
    "Foreign born- Not a citizen of U S , 0, Not in universe, 2, 12, 95, - 50000.",
    "44, Self-employed-not incorporated, 37, 12, Associates degree-occup /vocational, 0, Not in universe, "
    "Married-civilian spouse present, Business and repair services, Professional specialty, White, All other, "
    "Female, Not in universe, Not in universe, PT for econ reasons usually PT, 0, 0, 2500, "
    "Joint both under 65, Not in universe, Not in universe, Spouse of householder, Spouse of householder, "
    "1462.33, ?, ?, ?, Not in universe under 1 year old, ?, 1, Not in universe, United-States, United-States, "
    "United-States, Native- Born in the United States, 0, Not in universe, 2, 26, 95, - 50000.",
)
MARITAL = ("Never married", "Married-civilian spouse present", "Divorced", "Widowed", "Separated")
AGE, WAGE, MARITAL_STAT, CAPITAL_GAINS, INCOME = 0, 5, 7, 16, 41


def census_lines(n: int, offset: int = 0) -> list[str]:
    """``n`` records in the upstream format; row i is never married iff i % 5 == 0 and earns 50000+ iff i % 4 == 0."""
    lines = []
    for i in range(offset, offset + n):
        values = CENSUS_TEMPLATES[i % len(CENSUS_TEMPLATES)].split(", ")
        assert len(values) == 42
        values[AGE] = str(18 + i % 70)
        values[WAGE] = str((i * 37) % 1200 if i % 3 == 0 else 0)
        values[MARITAL_STAT] = MARITAL[i % len(MARITAL)]
        values[CAPITAL_GAINS] = str(15024 if i % 11 == 0 else 0)
        values[INCOME] = "50000+." if i % 4 == 0 else "- 50000."
        lines.append(", ".join(values))
    return lines


def write_text(path: Path, text: str) -> Path:
    """Write ``text``, compressed as the file name says (.gz, .bz2 or plain)."""
    data = text.encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.name.endswith(".bz2"):
        path.write_bytes(bz2.compress(data))
    else:
        path.write_bytes(data)
    return path


CensusWriter = Callable[..., Path]


@pytest.fixture
def write_census(tmp_path: Path) -> CensusWriter:
    """Write tiny census-income files (``train_rows`` in .data, ``test_rows`` in .test) into a new folder."""

    def write(train_rows: int = 60, test_rows: int = 40, suffix: str = "", folder: str = "census") -> Path:
        out = tmp_path / folder
        out.mkdir(exist_ok=True)
        write_text(out / f"census-income.data{suffix}", "\n".join(census_lines(train_rows)) + "\n")
        write_text(out / f"census-income.test{suffix}", "\n".join(census_lines(test_rows, offset=1000)) + "\n")
        return out

    return write


def repo_root() -> Path:
    """The folder holding pyproject.toml, above this file."""
    return next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())


def real_census_dir() -> Path | None:
    """The real census-income folder: $MTLREC_SHARED_DATA, else ``<repo root>/../shared/data``; None if absent.

    ``MTLREC_SHARED_DATA`` may name the shared ``data`` folder or the ``census_income_kdd`` folder itself.
    """
    bases = [Path(os.environ["MTLREC_SHARED_DATA"])] if os.environ.get("MTLREC_SHARED_DATA") else []
    bases.append(repo_root().parent / "shared" / "data")
    for base in bases:
        for folder in (base / "census_income_kdd", base):
            if any(folder.glob("census-income.data*")) and any(folder.glob("census-income.test*")):
                return folder
    return None


@pytest.fixture
def census_records() -> Callable[[int, int], list[str]]:
    """:func:`census_lines`, for tests that write their own variations."""
    return census_lines


@pytest.fixture
def real_census() -> Path:
    """The real census-income folder, or a skip that says where it was looked for."""
    folder = real_census_dir()
    if folder is None:
        pytest.skip(
            "real census-income files not found: set MTLREC_SHARED_DATA or put them in "
            f"{repo_root().parent / 'shared' / 'data' / 'census_income_kdd'}"
        )
    return folder
