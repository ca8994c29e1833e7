"""Batch scoring throughput: ``score_file`` vs bare ONNX Runtime vs a naive pandas -> torch loop, in one run.

Three ways to score the same raw rows with the same model (an MMoE of ``configs/synthetic/mmoe.yaml``, trained one
epoch on synthetic data and exported to ONNX):

* ``score_file``: Parquet in -> THE transform -> ONNX Runtime -> Parquet out, everything included;
* bare ONNX Runtime: the same runner (same threads) on arrays encoded before the clock starts, same batch size:
  the ceiling, what the model alone costs;
* naive loop: what a user without the transform would write: each row as a dict, hand-written vocabulary
  lookups and normalisation, a tensor per row and an eager PyTorch forward per row. It is capped by time
  (``--naive-seconds``) and its rows/s extrapolated.

Goals: ``score_file`` >= 70 % of bare ONNX Runtime and >= 3x the naive loop.

Usage:
    python benchmarks/score_throughput.py [--rows 200000] [--batch-size 65536] [--threads N | --threads-list 2,1]
        [--repeats 3]

With fewer threads than cores, ``score_file`` encodes the next chunk in a background thread while the model runs
(bare ONNX Runtime gets the same runtime threads).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import REPO, write_result
from mtlrec.data.dataset import open_prepared
from mtlrec.data.loaders.synthetic import generate_impressions
from mtlrec.data.prepare import prepare
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.schema import DENSE, MISSING_ID, OOV_ID, SCENARIO, SPARSE_IDS
from mtlrec.serving.repository import open_model
from mtlrec.serving.score import score_file
from mtlrec.train.checkpoint import load_run
from mtlrec.train.config import build_run_config, load_run_config
from mtlrec.train.loop import train


def build_model(root: Path, config_path: Path, train_rows: int) -> tuple[Path, Path]:
    """Train the config's model for one epoch on synthetic data and export it (ONNX); return (run, repo)."""
    prepare("synthetic", None, root / "data", seed=0, rows=train_rows)
    base = load_run_config(config_path, None)
    config = build_run_config(
        base.model_name,
        {"model": base.model.model_dump(), "train": {**base.train.model_dump(), "epochs": 1, "early_stopping": None}},
    )
    train(open_prepared(root / "data"), config, root / "run")
    export_run(root / "run", root / "repo", ExportOptions(format="onnx", batch_sizes=(1, 7)))
    return root / "run", root / "repo"


def bare_onnxruntime(repo: Path, input_path: Path, batch_size: int, threads: int) -> float:
    """Rows/s of the runner alone on chunks encoded before the clock starts."""
    import pandas as pd

    served = open_model(repo, "mmoe", threads=threads)
    frame = pd.read_parquet(input_path)
    chunks = [served.encode(frame.iloc[i : i + batch_size])[0] for i in range(0, len(frame), batch_size)]
    served.runner.infer(chunks[0])  # warm-up
    start = time.perf_counter()
    for chunk in chunks:
        served.runner.infer(chunk)
    seconds = time.perf_counter() - start
    served.close()
    return len(frame) / seconds


def naive_loop(run_dir: Path, input_path: Path, max_seconds: float, threads: int) -> tuple[float, int]:
    """Rows/s of a per-row pandas -> dict -> tensor -> eager forward loop (run until ``max_seconds``)."""
    import pandas as pd

    torch.set_num_threads(threads)
    run = load_run(run_dir)
    model, schema, state = run.model.eval(), run.schema, run.preprocessor.state
    # What a user re-implements by hand: a dict per vocabulary, the fill and scaling of every dense field.
    vocab = {name: {v: i + 2 for i, v in enumerate(values)} for name, values in state.vocabularies.items()}
    stats = state.dense_stats
    scenarios = {v: i for i, v in enumerate(schema.scenario.values or ())} if schema.scenario else {}
    frame = pd.read_parquet(input_path)
    rows = 0
    start = time.perf_counter()
    with torch.no_grad():
        for record in frame.to_dict("records"):
            ids = []
            for name in schema.sparse_names:
                value = record[name]
                ids.append(MISSING_ID if value is None else vocab[name].get(str(value), OOV_ID))
            dense = []
            for spec in schema.dense:
                x = record[spec.name]
                x = stats[spec.name].fill_value if x is None or math.isnan(x) else float(x)
                if spec.normalization == "log1p":
                    x = math.copysign(math.log1p(abs(x)), x)
                x = (x - stats[spec.name].center) / stats[spec.name].scale
                dense.append(max(-(spec.clip or math.inf), min(spec.clip or math.inf, x)))
            features: dict[str, Any] = {
                SPARSE_IDS: torch.tensor([ids], dtype=torch.int64),
                DENSE: torch.tensor([dense], dtype=torch.float32),
            }
            if schema.scenario is not None:
                features[SCENARIO] = torch.tensor([scenarios[record[schema.scenario.name]]], dtype=torch.int64)
            outputs = model(features)
            _ = {name: float(value[0]) for name, value in outputs.items()}
            rows += 1
            if rows % 256 == 0 and time.perf_counter() - start > max_seconds:
                break
    return rows / (time.perf_counter() - start), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows to score")
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads of every path")
    parser.add_argument(
        "--threads-list",
        type=lambda text: [int(t) for t in text.split(",")],
        default=None,
        help="several thread counts, e.g. 2,1 (the first one gives the headline figures); overrides --threads",
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternate score/bare this many times; best of each")
    parser.add_argument("--train-rows", type=int, default=50_000)
    parser.add_argument("--naive-seconds", type=float, default=20.0)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "synthetic" / "mmoe.yaml")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mtlrec-score-bench-") as tmp:
        root = Path(tmp)
        print(f"training and exporting {args.config.relative_to(REPO)} (1 epoch, {args.train_rows:,} rows)...")
        run_dir, repo = build_model(root, args.config, args.train_rows)
        raw = generate_impressions(args.rows, seed=1).drop(columns=["click", "conversion"])
        input_path = root / "impressions.parquet"
        raw.to_parquet(input_path)
        del raw
        settings = [args.threads] if args.threads_list is None else args.threads_list
        measured: list[dict[str, Any]] = []
        for threads in settings:
            score_rates, bare_rates = [], []
            for _ in range(args.repeats):
                result = score_file(
                    input_path, repo, "mmoe", root / "scores.parquet", batch_size=args.batch_size, threads=threads
                )
                score_rates.append(result.rows_per_s)
                bare_rates.append(bare_onnxruntime(repo, input_path, args.batch_size, threads))
                score_now, bare_now = score_rates[-1], bare_rates[-1]
                print(f"  threads {threads}: score_file {score_now:>9,.0f} rows/s   bare ORT {bare_now:>9,.0f} rows/s")
            measured.append(
                {
                    "threads": threads,
                    "overlap": threads < (os.cpu_count() or 1),
                    "score_rows_per_s": round(max(score_rates)),
                    "bare_onnxruntime_rows_per_s": round(max(bare_rates)),
                    "score_vs_bare": round(max(score_rates) / max(bare_rates), 3),
                    "score_rows_per_s_all": [round(r) for r in score_rates],
                    "bare_onnxruntime_rows_per_s_all": [round(r) for r in bare_rates],
                }
            )
        naive, naive_rows = naive_loop(run_dir, input_path, args.naive_seconds, settings[0])

    main_setting = measured[0]
    score, bare = main_setting["score_rows_per_s"], main_setting["bare_onnxruntime_rows_per_s"]
    payload = {
        "model": str(args.config.relative_to(REPO)),
        "rows": args.rows,
        "batch_size": args.batch_size,
        "threads": main_setting["threads"],
        "repeats": args.repeats,
        "runtime": result.runtime,
        "score_rows_per_s": score,
        "bare_onnxruntime_rows_per_s": bare,
        "naive_rows_per_s": round(naive),
        "naive_rows_timed": naive_rows,
        "score_vs_bare": round(score / bare, 3),
        "score_vs_naive": round(score / naive, 1),
        "by_threads": measured,
        "goals": {"score_vs_bare_min": 0.7, "score_vs_naive_min": 3.0},
    }
    path = write_result("score_throughput", payload)
    print(f"score_file (Parquet -> transform -> ORT -> Parquet): {score:>11,.0f} rows/s")
    print(f"bare ONNX Runtime on pre-encoded arrays:             {bare:>11,.0f} rows/s")
    print(f"naive pandas -> torch eager loop ({naive_rows:,} rows):     {naive:>11,.0f} rows/s")
    print(f"score / bare ORT = {score / bare:.2f} (goal >= 0.70); score / naive = {score / naive:.0f}x (goal >= 3x)")
    for entry in measured[1:]:
        print(
            f"threads {entry['threads']} (encode overlapped: {entry['overlap']}): score {entry['score_rows_per_s']:,} "
            f"rows/s, bare ORT {entry['bare_onnxruntime_rows_per_s']:,} rows/s, ratio {entry['score_vs_bare']:.2f}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
