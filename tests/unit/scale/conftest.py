"""Fixtures of the scale tests: one small synthetic dataset prepared both as single files and as shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlrec.data.prepare import prepare

ROWS = 6_000
SHARD_ROWS = 1_000


@pytest.fixture(scope="session")
def sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synthetic`` (6,000 rows, seed 0) streamed into shards of 1,000 rows."""
    out = tmp_path_factory.mktemp("sharded")
    prepare("synthetic", None, out, seed=0, rows=ROWS, shard_rows=SHARD_ROWS, chunk_rows=700)
    return out


@pytest.fixture(scope="session")
def single_file_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rows prepared in memory into one Parquet file per split."""
    out = tmp_path_factory.mktemp("single")
    prepare("synthetic", None, out, seed=0, rows=ROWS)
    return out
