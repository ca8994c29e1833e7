"""Batch scoring: equal to the served model on the same rows, streamed, with exact locations of bad rows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtlrec.cli.app import app
from mtlrec.data.loaders.synthetic import generate_impressions
from mtlrec.errors import DataError
from mtlrec.serving import score as score_module
from mtlrec.serving.repository import ServedModel, open_model
from mtlrec.serving.score import score_file

ROWS = 300
ATOL = 1e-6


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """Raw synthetic impressions (labels included, as a real log would have them)."""
    return generate_impressions(ROWS, seed=3)


@pytest.fixture(scope="module")
def served(exported_repo: Path) -> Iterator[ServedModel]:
    model = open_model(exported_repo, "mmoe")
    yield model
    model.close()


def _expected(served: ServedModel, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return served.predict_frame(frame.reset_index(drop=True))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_score_parquet_equals_the_served_model_and_carries_the_id(
    exported_repo: Path, served: ServedModel, raw: pd.DataFrame, tmp_path: Path
) -> None:
    raw.to_parquet(tmp_path / "in.parquet")
    calls: list[tuple[int, int | None]] = []
    result = score_file(
        tmp_path / "in.parquet",
        exported_repo,
        "mmoe",
        tmp_path / "out.parquet",
        batch_size=128,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert (result.rows, result.skipped, result.out) == (ROWS, 0, tmp_path / "out.parquet")
    assert result.rows_per_s > 0 and result.model == "mmoe" and result.version == 1
    assert calls == [(128, ROWS), (256, ROWS), (ROWS, ROWS)]
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["impression_id", "ctr", "cvr"]
    assert out["impression_id"].tolist() == raw["impression_id"].tolist()
    expected = _expected(served, raw)
    for name in ("ctr", "cvr"):
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(out[name].to_numpy(), expected[name], atol=ATOL, rtol=0)
    assert _leftovers(tmp_path) == []


def test_score_csv_gz_to_csv_equals_the_served_model(
    exported_repo: Path, served: ServedModel, raw: pd.DataFrame, tmp_path: Path
) -> None:
    raw.to_csv(tmp_path / "in.csv.gz", index=False)
    result = score_file(tmp_path / "in.csv.gz", exported_repo, "mmoe", tmp_path / "out.csv", batch_size=100)
    assert (result.rows, result.skipped) == (ROWS, 0)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["impression_id", "ctr", "cvr"]
    assert out["impression_id"].tolist() == raw["impression_id"].tolist()
    expected = _expected(served, raw)
    for name in ("ctr", "cvr"):
        np.testing.assert_allclose(out[name].to_numpy(), expected[name], atol=1e-6, rtol=0)


def test_score_without_id_column_numbers_rows_from_zero(exported_repo: Path, raw: pd.DataFrame, tmp_path: Path) -> None:
    raw.drop(columns=["impression_id"]).iloc[:50].to_csv(tmp_path / "in.csv", index=False)
    score_file(tmp_path / "in.csv", exported_repo, "mmoe", tmp_path / "out.parquet", batch_size=16)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["row", "ctr", "cvr"]
    assert out["row"].tolist() == list(range(50))


def _with_bad_rows(raw: pd.DataFrame, bad: Mapping[int, tuple[str, object]]) -> pd.DataFrame:
    frame = raw.drop(columns=["impression_id"]).astype({"price": object, "scenario": object})
    for row, (column, value) in bad.items():
        frame.loc[row, column] = value
    return frame


def test_score_bad_csv_row_fails_with_its_line_and_field_and_leaves_no_output(
    exported_repo: Path, raw: pd.DataFrame, tmp_path: Path
) -> None:
    _with_bad_rows(raw, {150: ("price", "cheap"), 200: ("scenario", "mars")}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=r"line 152: dense field `price` has the non-numeric value 'cheap'") as failure:
        score_file(tmp_path / "in.csv", exported_repo, "mmoe", out, batch_size=64)
    assert "--on-error skip" in (failure.value.hint or "")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_score_failure_keeps_an_existing_output_untouched(
    exported_repo: Path, raw: pd.DataFrame, tmp_path: Path
) -> None:
    _with_bad_rows(raw, {10: ("scenario", None)}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    with pytest.raises(DataError, match=r"line 12: the scenario `scenario` is missing"):
        score_file(tmp_path / "in.csv", exported_repo, "mmoe", out)
    assert out.read_text() == "previous results\n" and _leftovers(tmp_path) == []


def test_score_skip_leaves_bad_rows_out_and_counts_them(
    exported_repo: Path, served: ServedModel, raw: pd.DataFrame, tmp_path: Path
) -> None:
    bad = {5: ("price", "n/a?"), 150: ("scenario", "mars"), 151: ("scenario", None), 299: ("price", "x")}
    _with_bad_rows(raw, bad).to_csv(tmp_path / "in.csv", index=False)
    result = score_file(tmp_path / "in.csv", exported_repo, "mmoe", tmp_path / "out.parquet", on_error="skip")
    assert (result.rows, result.skipped) == (ROWS - 4, 4)
    assert [(e.number, e.field) for e in result.errors] == [
        (7, "price"),
        (152, "scenario"),
        (153, "scenario"),
        (301, "price"),
    ]
    assert str(result.errors[1]).startswith("line 152: the scenario `scenario` has the unknown value 'mars'")
    assert "4 skipped" in result.report()
    out = pd.read_parquet(tmp_path / "out.parquet")
    kept = [i for i in range(ROWS) if i not in bad]
    assert out["row"].tolist() == kept
    expected = _expected(served, raw.iloc[kept])
    np.testing.assert_allclose(out["ctr"].to_numpy(), expected["ctr"], atol=ATOL, rtol=0)


def test_score_parquet_reports_row_numbers_and_ignores_nothing(
    exported_repo: Path, raw: pd.DataFrame, tmp_path: Path
) -> None:
    frame = raw.astype({"scenario": object})
    frame.loc[42, "scenario"] = "unknown-scenario"
    frame.to_parquet(tmp_path / "in.parquet")
    with pytest.raises(DataError, match=r"row 42: the scenario `scenario` has the unknown value"):
        score_file(tmp_path / "in.parquet", exported_repo, "mmoe", tmp_path / "out.parquet")
    result = score_file(tmp_path / "in.parquet", exported_repo, "mmoe", tmp_path / "out.parquet", on_error="skip")
    assert (result.skipped, result.errors[0].location) == (1, "row 42")
    assert 42 not in pd.read_parquet(tmp_path / "out.parquet")["impression_id"].tolist()


def test_score_blank_csv_lines_keep_line_numbers(exported_repo: Path, raw: pd.DataFrame, tmp_path: Path) -> None:
    lines = raw.drop(columns=["impression_id"]).iloc[:5].to_csv(index=False).splitlines()
    lines.insert(3, "")  # the blank line is line 4
    bad = lines[5].split(",")
    bad[list(raw.columns).index("price") - 1] = "oops"
    lines[5] = ",".join(bad)  # line 6
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n\n")
    result = score_file(tmp_path / "in.csv", exported_repo, "mmoe", tmp_path / "out.csv", on_error="skip")
    assert (result.rows, result.skipped, result.errors[0].number) == (4, 1, 6)
    assert pd.read_csv(tmp_path / "out.csv")["row"].tolist() == [0, 1, 3, 5]  # row = line - 2


def test_score_missing_columns_refused_naming_them(exported_repo: Path, raw: pd.DataFrame, tmp_path: Path) -> None:
    raw.drop(columns=["price", "device"]).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(DataError, match="lacks the columns device, price"):
        score_file(tmp_path / "in.csv", exported_repo, "mmoe", tmp_path / "out.csv", on_error="skip")
    assert _leftovers(tmp_path) == []


def test_bisect_finds_rows_the_column_checks_do_not_know(raw: pd.DataFrame) -> None:
    """Any other transform error is found row by row by bisection, with its field."""
    marked = {3, 17, 18}

    def encode(frame: pd.DataFrame) -> None:
        hit = sorted(set(frame["n"]) & marked)
        if hit:
            raise DataError(f"field `user_id` is odd at row {hit[0]}")

    schema = SimpleNamespace(dense_names=[], scenario=None)
    model = SimpleNamespace(schema=schema, encode=encode)
    frame = pd.DataFrame({"n": range(40)})
    chunk = score_module._Chunk(frame, 0, np.arange(2, 42), 40)
    errors, keep = score_module._row_errors(model, chunk, "line", first_only=False)  # type: ignore[arg-type]
    assert [(e.number, e.field, e.message) for e in errors] == [
        (5, "user_id", "field `user_id` is odd"),
        (19, "user_id", "field `user_id` is odd"),
        (20, "user_id", "field `user_id` is odd"),
    ]
    assert int(keep.sum()) == 37
    first, _ = score_module._row_errors(model, chunk, "line", first_only=True)  # type: ignore[arg-type]
    assert [e.number for e in first] == [5]


def test_score_cli_prints_rows_and_skipped(exported_repo: Path, raw: pd.DataFrame, tmp_path: Path) -> None:
    _with_bad_rows(raw, {7: ("price", "bad")}).to_csv(tmp_path / "in.csv", index=False)
    args = ["score", str(tmp_path / "in.csv"), "--repo", str(exported_repo), "--model", "mmoe"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o.parquet"), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "299 rows scored, 1 skipped" in result.output and "line 9" in result.output
    failed = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o2.parquet")])
    assert failed.exit_code == 2 and "line 9" in failed.output and "Traceback" not in failed.output


def test_score_with_fewer_threads_than_cores_gives_the_same_output(
    exported_repo: Path, raw: pd.DataFrame, tmp_path: Path
) -> None:
    raw.to_parquet(tmp_path / "in.parquet")
    one = score_file(tmp_path / "in.parquet", exported_repo, "mmoe", tmp_path / "a.parquet", batch_size=50, threads=1)
    two = score_file(tmp_path / "in.parquet", exported_repo, "mmoe", tmp_path / "b.parquet", batch_size=50)
    assert one.rows == two.rows == ROWS
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet"))


def test_prefetch_yields_in_order_and_reraises_the_producer_error() -> None:
    assert list(score_module._prefetch(iter(range(50)), depth=2)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise DataError("broken at line 3")

    got: list[int] = []
    with pytest.raises(DataError, match="broken at line 3"):
        got.extend(score_module._prefetch(failing()))
    assert got == [1]
    closed: list[bool] = []

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.append(True)

    stream = score_module._prefetch(endless(), depth=1)
    assert next(stream) == 0
    stream.close()  # the consumer stops early: the producer thread ends and closes its source
    assert closed == [True]


def test_score_unreadable_or_unknown_inputs_are_data_errors(exported_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "in.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read"):
        score_file(tmp_path / "in.parquet", exported_repo, "mmoe", tmp_path / "out.parquet")
    (tmp_path / "in.json").write_text("{}")
    with pytest.raises(DataError, match="unknown input type"):
        score_file(tmp_path / "in.json", exported_repo, "mmoe", tmp_path / "out.parquet")
    with pytest.raises(DataError, match="not found"):
        score_file(tmp_path / "missing.csv", exported_repo, "mmoe", tmp_path / "out.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "in.parquet"]
