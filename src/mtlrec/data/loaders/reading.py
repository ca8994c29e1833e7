"""Helpers shared by the loaders of flat upstream tables: a per-scenario random split and guarded CSV reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.errors import DataError


def stratified_split(
    frame: pd.DataFrame, column: str, seed: int, val: float = 0.1, test: float = 0.1
) -> dict[str, pd.DataFrame]:
    """Split ``frame`` at random into train/val/test, separately within each value of ``column``.

    Within a group of n rows, ``round(n * val)`` rows go to val and ``round(n * test)`` to test (drawn by one
    generator seeded with ``seed``, groups taken in sorted order), the rest to train; a group of a few rows stays in
    train whole, so every scenario of val and test is known from train. Rows keep their file order in each split.
    """
    rng = np.random.default_rng(seed)
    keys = frame[column].astype("string").fillna("\x00missing").to_numpy(dtype=object)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for value in sorted(set(keys)):
        idx = np.flatnonzero(keys == value)
        idx = idx[rng.permutation(len(idx))]
        n_val, n_test = round(len(idx) * val), round(len(idx) * test)
        if n_val + n_test >= len(idx):
            n_val = n_test = 0
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {
        name: frame.take(np.sort(np.concatenate(chunks)) if chunks else np.array([], dtype=np.int64)).reset_index(
            drop=True
        )
        for name, chunks in parts.items()
    }


def read_csv_file(path: Path, hint: str, **options: object) -> pd.DataFrame:
    """``pd.read_csv(path, **options)`` with unreadable or empty files turned into a :class:`DataError`."""
    try:
        frame = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint=hint) from None
    except ValueError as err:  # ParserError is a ValueError; so is a `usecols` column the file lacks
        raise DataError(f"cannot read {path}: {err}", hint=hint) from None
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}", hint=hint) from None
    if len(frame) == 0:
        raise DataError(f"{path} is empty: it has no data rows", hint=hint)
    assert isinstance(frame, pd.DataFrame)
    return frame


def check_columns(path: Path, present: list[str], needed: tuple[str, ...] | list[str], hint: str) -> None:
    """Raise a :class:`DataError` naming the columns of ``needed`` that ``present`` lacks."""
    missing = [c for c in needed if c not in present]
    if missing:
        raise DataError(
            f"{path} lacks the columns {', '.join(missing)} (it has: {', '.join(map(str, present[:30]))})",
            hint=hint,
        )
