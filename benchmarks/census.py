"""Census-Income (KDD) test AUC of the shipped configs, over several seeds.

Prepares ../shared/data/census_income_kdd (train file = train; test file split 1:1 into val/test, seed 0), trains
each model with ``configs/census-income/<model>.yaml`` and every seed (epoch chosen on validation AUC), evaluates
on the test split, and writes ``results/census.json`` and ``results/census.md``.

Usage:
    python benchmarks/census.py [--models mmoe,shared_bottom,esmm] [--seeds 0,1,2] [--threads 2]

Published anchors (test AUC income / never_married): torch-rechub MMoE 0.9579 / 0.9950, Shared-Bottom
0.9560 / 0.9948; PaddleRec MMoE 0.949 / 0.994.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from common import REPO, RESULTS, shared_data, write_result
from mtlrec.data.dataset import open_prepared
from mtlrec.data.prepare import prepare
from mtlrec.train.config import build_run_config, load_run_config
from mtlrec.train.loop import evaluate_run, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mmoe,shared_bottom,esmm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = args.work / "census"
    if not (data_dir / "train.parquet").is_file():
        prepare("census-income", shared_data("census_income_kdd"), data_dir, seed=0)
    data = open_prepared(data_dir)
    runs: list[dict[str, Any]] = []
    for model in args.models.split(","):
        config_path = REPO / "configs" / "census-income" / f"{model}.yaml"
        for seed in (int(s) for s in args.seeds.split(",")):
            base = load_run_config(config_path, None)
            config = build_run_config(
                model,
                {"model": base.model.model_dump(), "train": {**base.train.model_dump(), "seed": seed}},
            )
            run_dir = args.work / "census-runs" / f"{model}-seed{seed}"
            result = train(data, config, run_dir)
            test = evaluate_run(run_dir, "test")
            row = {
                "model": model,
                "seed": seed,
                "config": str(config_path.relative_to(REPO)),
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "train_rows_per_s": result.samples_per_s,
                "test": {k: {"auc": v["auc"], "logloss": v["logloss"]} for k, v in test["tasks"].items()},
            }
            runs.append(row)
            aucs = ", ".join(f"{k} {v['auc']:.4f}" for k, v in row["test"].items())
            print(f"{model} seed {seed}: best epoch {result.best_epoch}, test AUC {aucs}", flush=True)
    write_result("census", {"data": str(data_dir), "runs": runs})
    lines = [
        "# Census-Income (KDD): test AUC",
        "",
        "Command: `python benchmarks/census.py --models "
        f"{args.models} --seeds {args.seeds} --threads {args.threads}` (raw figures in census.json).",
        "Split: train file = train (199,523 rows); test file split 1:1 into val/test (seed 0, 49,881 rows each).",
        "Epoch selected on mean validation AUC; test AUC reported once per seed.",
        "",
        "| model | output | test AUC mean | min | max | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for model in args.models.split(","):
        rows = [r for r in runs if r["model"] == model]
        for output in rows[0]["test"]:
            aucs = [r["test"][output]["auc"] for r in rows]
            lines.append(
                f"| {model} | {output} | {statistics.mean(aucs):.4f} | {min(aucs):.4f} | {max(aucs):.4f} "
                f"| {len(aucs)} |"
            )
    (RESULTS / "census.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "census.md").read_text())


if __name__ == "__main__":
    main()
