"""The census-income loader on the real UCI files (skipped with a reason where they are not present).

The files are looked for in ``$MTLREC_SHARED_DATA`` and in ``<repo root>/../shared/data/census_income_kdd``.
Expected numbers from the data folder's PROVENANCE.md and UCI's census-income.names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlrec.data.loaders import get_dataset


@pytest.mark.real_data
def test_real_census_files_give_the_documented_rows_and_rates(real_census: Path) -> None:
    raw = get_dataset("census-income").load(real_census, seed=0, rows=None)
    splits = raw.splits
    assert len(splits["train"]) == 199_523
    assert len(splits["val"]) == 49_881 and len(splits["test"]) == 49_881
    assert int(splits["train"]["income"].sum()) == 12_382
    assert int(splits["train"]["never_married"].sum()) == 86_485
    held_out = len(splits["val"]) + len(splits["test"])
    assert int(splits["val"]["income"].sum() + splits["test"]["income"].sum()) == 6_186
    assert held_out == 99_762
    for frame in splits.values():
        assert frame["income"].mean() == pytest.approx(0.062, abs=0.003)
        assert frame["never_married"].mean() == pytest.approx(0.433, abs=0.005)
        assert sorted(frame.columns) == sorted([*raw.schema.feature_names, "income", "never_married"])
    # the first record of the train file is the canonical one
    first = splits["train"].iloc[0]
    assert first["age"] == 73 and first["education"] == "High school graduate"
