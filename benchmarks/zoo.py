"""The model zoo on real data: test AUC per task and per scenario, mean and standard deviation over seeds.

For each model, trains ``configs/<dataset>/<model>.yaml`` (track and tasks overridden from the command line) once per
seed on one prepared copy of the dataset, selects the epoch on the validation split, evaluates the test split, and
writes ``results/zoo-<dataset>-<track>.json`` (every run, full precision) and ``.md`` (the table). Runs are spread over
``--jobs`` processes with one torch thread each (the figures are AUCs, not speeds).

Usage:
    python benchmarks/zoo.py --dataset census-income --source census_income_kdd --models mtl --seeds 0,1,2 --jobs 2
    python benchmarks/zoo.py --dataset amazon-reviews --source amazon_reviews_2018 --models scenario --track mtmsl

``--models`` takes names, or ``mtl`` (every registered model that runs without a scenario: the Census set) or
``scenario`` (every model that supports the chosen track).
"""

from __future__ import annotations

import argparse
import math
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, shared_data, write_result


def _run(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (model, seed) in a worker process."""
    import torch

    from mtlrec.data.dataset import open_prepared
    from mtlrec.train.config import build_run_config, load_run_config
    from mtlrec.train.loop import evaluate_run, train

    torch.set_num_threads(1)
    base = load_run_config(Path(job["config"]), None)
    model_values = {**base.model.model_dump(), "track": job["track"]}
    if job["tasks"]:
        model_values["tasks"] = job["tasks"]
    train_values = {**base.train.model_dump(), "seed": job["seed"], "num_threads": 1}
    config = build_run_config(job["model"], {"model": model_values, "train": train_values})
    result = train(open_prepared(Path(job["data"])), config, Path(job["run_dir"]))
    test = evaluate_run(Path(job["run_dir"]), "test")
    return {
        "model": job["model"],
        "seed": job["seed"],
        "config": str(Path(job["config"]).relative_to(REPO)),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_rows_per_s": result.samples_per_s,
        "test": {k: {"auc": v.get("auc"), "logloss": v.get("logloss")} for k, v in test["tasks"].items()},
        "scenarios": {
            s: {k: {"auc": v.get("auc"), "rows": v.get("rows")} for k, v in per.items()}
            for s, per in test["scenarios"].items()
        },
    }


def _models(spec: str, track: str, has_scenario: bool) -> list[str]:
    from mtlrec.models import get_model_class, list_models

    if spec not in ("mtl", "scenario"):
        return spec.split(",")
    names = []
    for info in list_models():
        if info.name == "automtl":  # a searched architecture, benchmarked by benchmarks/automtl_census.py
            continue
        cls = get_model_class(info.name)
        if track not in cls.tracks or (cls.needs_scenario and not has_scenario):
            continue
        if spec == "mtl" and cls.needs_scenario:
            continue
        names.append(info.name)
    return names


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="registered dataset name (configs/<dataset>/)")
    parser.add_argument("--source", required=True, help="folder under ../shared/data with the upstream files")
    parser.add_argument("--models", default="mtl")
    parser.add_argument("--track", default="mtl", choices=["mtl", "msl", "mtmsl"])
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (the msl track learns one)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rows", type=int, default=None, help="cap on upstream rows read (quick runs)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "zoo")
    args = parser.parse_args()

    from mtlrec.data.dataset import open_prepared
    from mtlrec.data.prepare import prepare

    data_dir = args.work / args.dataset / "data"
    if not (data_dir / "train.parquet").is_file():
        prepare(args.dataset, shared_data(args.source), data_dir, seed=0, rows=args.rows)
    schema = open_prepared(data_dir).schema
    models = _models(args.models, args.track, schema.scenario is not None)
    tasks = args.tasks.split(",") if args.tasks else None
    jobs = []
    for model in models:
        config = REPO / "configs" / args.dataset / f"{model}.yaml"
        if not config.is_file():
            raise SystemExit(f"no config {config.relative_to(REPO)}: write one (or run scripts/make_configs.py)")
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = args.work / args.dataset / f"{args.track}-{model}-seed{seed}"
            jobs.append(
                {
                    "model": model,
                    "seed": seed,
                    "config": str(config),
                    "track": args.track,
                    "tasks": tasks,
                    "data": str(data_dir),
                    "run_dir": str(run_dir),
                }
            )
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(_run, jobs):
            runs.append(row)
            aucs = ", ".join(f"{k} {v['auc']:.4f}" for k, v in row["test"].items() if v["auc"] is not None)
            print(f"{row['model']} seed {row['seed']}: best epoch {row['best_epoch']}, test AUC {aucs}", flush=True)

    name = f"zoo-{args.dataset}-{args.track}"
    write_result(name, {"data": str(data_dir), "track": args.track, "tasks": tasks, "runs": runs})
    found = {o for r in runs for o in r["test"]}
    outputs = [t for t in schema.task_names if t in found] + sorted(found - set(schema.task_names))
    lines = [
        f"# {args.dataset}, {args.track} track: test AUC (mean ± std over seeds {args.seeds})",
        "",
        f"Command: `python benchmarks/zoo.py --dataset {args.dataset} --source {args.source} --models {args.models} "
        f"--track {args.track}{' --tasks ' + args.tasks if args.tasks else ''} --seeds {args.seeds} "
        f"--jobs {args.jobs}{' --rows ' + str(args.rows) if args.rows else ''}` (every run in {name}.json).",
        "Configs: `configs/<dataset>/<model>.yaml`; epoch chosen on the validation split; test split evaluated once.",
        "",
        "| model | " + " | ".join(outputs) + " | epochs (best) |",
        "|---|" + "---|" * len(outputs) + "---|",
    ]
    for model in models:
        rows = [r for r in runs if r["model"] == model]
        cells = [_fmt([r["test"][o]["auc"] for r in rows if o in r["test"]]) for o in outputs]
        epochs = ", ".join(str(r["best_epoch"]) for r in rows)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {epochs} |")
    scenarios = sorted({s for r in runs for s in r["scenarios"]})
    if scenarios:
        lines += ["", "Per scenario (each row scored by its own scenario's head on msl/mtmsl):", ""]
        header = [f"{s}: {o}" for s in scenarios for o in schema.task_names if any(o in r["test"] for r in runs)]
        lines += ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for model in models:
            rows = [r for r in runs if r["model"] == model]
            cells = []
            for s in scenarios:
                for o in schema.task_names:
                    if any(o in r["test"] for r in runs):
                        cells.append(
                            _fmt([r["scenarios"][s][o]["auc"] for r in rows if o in r["scenarios"].get(s, {})])
                        )
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
