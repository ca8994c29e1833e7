"""AutoMTL on Census-Income (KDD): search + training vs MMoE, test AUC over seeds and the cost of the search.

For each seed, on the same prepared data (../shared/data/census_income_kdd, prepared as benchmarks/census.py does)
and the same thread count, one after the other:

1. MMoE: ``configs/census-income/mmoe.yaml`` trained with the seed (epoch chosen on validation AUC);
2. the search: ``configs/census-income/automtl-search.yaml`` with the seed (``mtlrec search``);
3. the searched architecture trained from scratch with ``configs/census-income/automtl.yaml`` (MMoE's schedule)
   and the seed (``mtlrec train --arch``); with ``--inherit``, also from the supernet's weights.

Each wall time is the whole library call (training with its per-epoch validation; the search with its warm-up,
search epochs, validation and derivation). The cost of the search is reported relative to the MMoE training of
the same seed, measured in the same process right before it. The first seed's searched model is then exported
(ONNX, parity checked against eager PyTorch) to show it exports like any other model.

Usage:
    python benchmarks/automtl_census.py [--seeds 0,1,2] [--threads 1] [--inherit]

Writes results/automtl-census.json and results/automtl-census.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from common import REPO, RESULTS, shared_data, write_result
from mtlrec.data.dataset import open_prepared
from mtlrec.data.prepare import prepare
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.nas.search import load_search_config, search, supernet_weights, write_search
from mtlrec.train.config import RunConfig, build_run_config, load_run_config
from mtlrec.train.loop import evaluate_run, train

CONFIGS = REPO / "configs" / "census-income"
TASKS = ("income", "never_married")


def run_config(path: Path, seed: int, threads: int, model: dict[str, Any] | None = None) -> RunConfig:
    base = load_run_config(path, None)
    model_values = base.model.model_dump(mode="json") | (model or {})
    train_values = {**base.train.model_dump(mode="json"), "seed": seed, "num_threads": threads}
    return build_run_config(base.model_name, {"model": model_values, "train": train_values})


def timed_train(data: Any, config: RunConfig, run_dir: Path, init: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    result = train(data, config, run_dir, init_weights=init)
    seconds = time.perf_counter() - start
    test = evaluate_run(run_dir, "test")
    return {
        "seconds": seconds,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_rows_per_s": result.samples_per_s,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "test": {k: {"auc": v["auc"], "logloss": v["logloss"]} for k, v in test["tasks"].items()},
    }


def auc_line(row: dict[str, Any]) -> str:
    return " / ".join(f"{row['test'][t]['auc']:.4f}" for t in TASKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inherit", action="store_true", help="also train from the supernet's weights")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = args.work / "census"
    if not (data_dir / "train.parquet").is_file():
        prepare("census-income", shared_data("census_income_kdd"), data_dir, seed=0)
    data = open_prepared(data_dir)
    out = args.work / "automtl-census"
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        mmoe = timed_train(data, run_config(CONFIGS / "mmoe.yaml", seed, args.threads), out / f"mmoe-seed{seed}")
        print(f"seed {seed}: mmoe {mmoe['seconds']:.0f} s, test AUC {auc_line(mmoe)}", flush=True)

        search_config = load_search_config(CONFIGS / "automtl-search.yaml", {"seed": seed, "num_threads": args.threads})
        start = time.perf_counter()
        found = search(data, search_config)
        search_seconds = time.perf_counter() - start
        files = write_search(found, out / f"arch-seed{seed}.json")
        arch = found.architecture
        print(f"seed {seed}: search {search_seconds:.0f} s\n{arch.summary()}", flush=True)

        model = {"embed_dim": arch.embed_dim, "architecture": arch.model_dump(mode="json")}
        config = run_config(CONFIGS / "automtl.yaml", seed, args.threads, model)
        automtl = timed_train(data, config, out / f"automtl-seed{seed}")
        print(f"seed {seed}: automtl {automtl['seconds']:.0f} s, test AUC {auc_line(automtl)}", flush=True)
        row: dict[str, Any] = {
            "seed": seed,
            "mmoe": mmoe,
            "search": {
                "seconds": search_seconds,
                "epochs": [
                    {k: h[k] for k in ("epoch", "phase", "rows", "train_seconds", "samples_per_s", "val_auc")}
                    for h in found.history
                ],
                "architecture_file": str(files.architecture),
                "architecture": arch.model_dump(mode="json", exclude={"search"}),
                "summary": arch.summary(),
                "repairs": (arch.search or {}).get("repairs", []),
            },
            "automtl": automtl,
            "cost_vs_mmoe": {
                "search": search_seconds / mmoe["seconds"],
                "search_and_training": (search_seconds + automtl["seconds"]) / mmoe["seconds"],
            },
        }
        if args.inherit:
            inherited = timed_train(
                data, config, out / f"automtl-inherit-seed{seed}", init=supernet_weights(files.architecture, arch)
            )
            row["automtl_inherited"] = inherited
            print(f"seed {seed}: automtl from the supernet's weights, test AUC {auc_line(inherited)}", flush=True)
        runs.append(row)

    export = export_run(out / f"automtl-seed{seeds[0]}", out / "repo", ExportOptions(format="onnx"))
    parity = {fmt: report.max_abs_diff for fmt, report in export.parity.items()}
    print(f"export of seed {seeds[0]}: parity max |onnx - eager| {parity}", flush=True)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    write_result(
        "automtl-census",
        {
            "data": str(data_dir),
            "threads": args.threads,
            "runs": runs,
            "export_parity": parity,
            "peak_rss_gib": peak_rss_gib,
        },
    )
    write_markdown(args, runs, parity, peak_rss_gib)


def write_markdown(args: argparse.Namespace, runs: list[dict[str, Any]], parity: dict[str, Any], rss: float) -> None:
    def mean(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f}"

    variants = ["mmoe", "automtl"] + (["automtl_inherited"] if args.inherit else [])
    lines = [
        "# AutoMTL on Census-Income (KDD): searched architecture vs MMoE, and the cost of the search",
        "",
        f"Command: `python benchmarks/automtl_census.py --seeds {args.seeds} --threads {args.threads}"
        + (" --inherit" if args.inherit else "")
        + "` (raw figures in automtl-census.json).",
        "Data: as benchmarks/census.py (train file = train, 199,523 rows; test file split 1:1 into val/test, seed 0).",
        "MMoE: configs/census-income/mmoe.yaml. Search: configs/census-income/automtl-search.yaml (bi-level, 1 warm-up",
        "+ 3 search epochs on all training rows). AutoMTL: the searched architecture trained from scratch with",
        "configs/census-income/automtl.yaml (MMoE's schedule). Same seed for the three in each row; epochs chosen on",
        "mean validation AUC; test AUC reported once per run. The machine (2 cores) was shared with other jobs: wall",
        "times are comparable within a row (measured back to back), less so across rows.",
        "",
        "## Test AUC",
        "",
        "| seed | " + " | ".join(f"{v} income | {v} never_married" for v in variants) + " |",
        "|---|" + "---|---|" * len(variants),
    ]
    for r in runs:
        cells = " | ".join(
            f"{r[v]['test']['income']['auc']:.4f} | {r[v]['test']['never_married']['auc']:.4f}" for v in variants
        )
        lines.append(f"| {r['seed']} | {cells} |")
    means = " | ".join(
        f"{mean([r[v]['test'][t]['auc'] for r in runs])}" for v in variants for t in ("income", "never_married")
    )
    lines += [f"| mean | {means} |", ""]
    lines += [
        "## Cost (wall seconds, one thread)",
        "",
        "| seed | MMoE training | search | search / MMoE | AutoMTL training | (search + training) / MMoE |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['seed']} | {r['mmoe']['seconds']:.0f} ({r['mmoe']['epochs_run']} epochs) | "
            f"{r['search']['seconds']:.0f} | {r['cost_vs_mmoe']['search']:.2f}x | "
            f"{r['automtl']['seconds']:.0f} ({r['automtl']['epochs_run']} epochs) | "
            f"{r['cost_vs_mmoe']['search_and_training']:.2f}x |"
        )
    ratio = statistics.mean(r["cost_vs_mmoe"]["search"] for r in runs)
    total = statistics.mean(r["cost_vs_mmoe"]["search_and_training"] for r in runs)
    lines += [
        f"| mean | | | {ratio:.2f}x | | {total:.2f}x |",
        "",
        f"Parameters: MMoE {runs[0]['mmoe']['parameters']:,}; searched model (seed {runs[0]['seed']}) "
        f"{runs[0]['automtl']['parameters']:,}. Peak RSS of the whole benchmark process: {rss:.1f} GiB.",
        f"Export of the seed-{runs[0]['seed']} searched model: ONNX, parity max |onnx - eager| = {parity}.",
        "",
        "## Searched architectures",
        "",
    ]
    for r in runs:
        lines += [f"Seed {r['seed']}:", "", "```", r["search"]["summary"], "```", ""]
    (RESULTS / "automtl-census.md").write_text("\n".join(lines))
    print((RESULTS / "automtl-census.md").read_text())


if __name__ == "__main__":
    main()
