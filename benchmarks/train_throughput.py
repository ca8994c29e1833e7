"""Trainer overhead: MMoE training rows/s through ``mtlrec.train.loop.train`` vs the pure compute, in one run.

The pure compute is forward + loss + backward + optimiser step over batches that were built (permuted and
sliced) before the clock starts, i.e. everything the trainer must do anyway. The difference is what the trainer
adds: the per-epoch permutation, batch slicing, loss bookkeeping. Goal: at most 15 % over the pure compute.

Usage:
    python benchmarks/train_throughput.py [--data DIR] [--epochs 3] [--threads 2]

Without --data it prepares Census-Income from ../shared/data/census_income_kdd into runs/bench/census.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import REPO, shared_data, write_result
from mtlrec.data.dataset import open_prepared
from mtlrec.data.prepare import prepare
from mtlrec.train.config import build_run_config, load_run_config
from mtlrec.train.loop import build_model_for, train


def pure_compute(data_dir: Path, config_path: Path, epochs: int) -> float:
    """Rows/s of forward+backward+step on pre-built batches (same model, config and batch size)."""
    prepared = open_prepared(data_dir)
    config = load_run_config(config_path, None)
    model = build_model_for(prepared, config)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    split = prepared.split("train")
    generator = torch.Generator().manual_seed(0)
    batches = [b for b in split.batches(config.train.batch_size, shuffle=True, generator=generator) if b.size > 1]
    rows = sum(b.size for b in batches)
    seconds = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in batches:
            _, losses = model.compute_loss(batch.features, batch.labels)
            total = torch.stack(list(losses.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        seconds += time.perf_counter() - start
    return rows * epochs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "census-income" / "mmoe.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternate trainer/pure this many times; best of each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = args.data
    if data_dir is None:
        data_dir = REPO / "runs" / "bench" / "census"
        if not (data_dir / "train.parquet").is_file():
            prepare("census-income", shared_data("census_income_kdd"), data_dir, seed=0)
    trainer_rates, pure_rates = [], []
    for _ in range(args.repeats):
        config = load_run_config(args.config, None)
        config = build_run_config(
            config.model_name,
            {
                "model": config.model.model_dump(),
                "train": {**config.train.model_dump(), "epochs": args.epochs, "early_stopping": None},
            },
        )
        result = train(open_prepared(data_dir), config, None)
        trainer_rates.append(result.samples_per_s)
        pure_rates.append(pure_compute(data_dir, args.config, args.epochs))
    trainer, pure = max(trainer_rates), max(pure_rates)
    overhead = pure / trainer - 1.0
    payload = {
        "model": config.model_name,
        "config": str(args.config.relative_to(REPO)),
        "data": str(data_dir),
        "epochs": args.epochs,
        "batch_size": config.train.batch_size,
        "trainer_rows_per_s": trainer,
        "pure_compute_rows_per_s": pure,
        "trainer_overhead": overhead,
        "goal_overhead_at_most": 0.15,
        "all_trainer_rows_per_s": trainer_rates,
        "all_pure_rows_per_s": pure_rates,
    }
    path = write_result("train_throughput", payload)
    print(f"trainer {trainer:,.0f} rows/s, pure compute {pure:,.0f} rows/s, overhead {overhead:+.1%} -> {path}")


if __name__ == "__main__":
    main()
