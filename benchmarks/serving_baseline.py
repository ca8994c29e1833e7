"""Served throughput and latency: ``mtlrec serve`` (micro-batching on and off) against a naive baseline server.

Builds two models by training one epoch on synthetic data and exporting them (cached under ``--work``):

* ``census``: the census-size MMoE of ``configs/census-income/mmoe.yaml`` (embeddings of 4, 8 experts of [32],
  towers [16]) on the default synthetic log;
* ``production``: 26 sparse fields × 16-d embeddings + 4 dense = 420 input dimensions, 8 experts of [512, 256],
  towers [64], noise fields of 20,000 values (large embedding tables).

Then, per model, starts each server on a free 127.0.0.1 port and drives it with the same locust users
(``loadtests/locustfile.py`` through :func:`mtlrec.loadtest.runner.run_load_test`): 1 and 8 users, 1 and 64
records per request, the records API and the v2 route (tritonclient.http with JSON tensors: the baseline takes
JSON only, so both servers get the same bytes). Servers:

* ``baseline``: ``benchmarks/baseline_server.py`` (FastAPI + uvicorn, one ONNX Runtime call per request, tensors
  as JSON, no records API);
* ``serve``: ``mtlrec serve`` with its defaults (micro-batching on: max batch 256 rows, no added delay);
* ``serve-nobatch``: ``mtlrec serve --max-batch-size 1 --max-delay-ms 0`` (every request its own model call).

The three servers run side by side; each step runs ``--step-seconds`` (default 8 s), reports from ``--warmup``
seconds on, and is repeated ``--rounds`` times (default 3) with the servers interleaved, the median reported (this
host's speed drifts by tens of percent from one minute to the next; interleaving spreads the drift over all servers).
Rows per model call come from the servers' KServe statistics (``inference_count / execution_count``). Writes
``results/serving_baseline.json`` and ``results/serving_baseline.md``; every figure is reported, goals met or not.

Usage:
    python benchmarks/serving_baseline.py [--step-seconds 8] [--warmup 2] [--rounds 3] [--models census,production]
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, write_result
from mtlrec.loadtest.runner import LoadTestOptions, run_load_test, serve_subprocess

MODELS: dict[str, dict[str, Any]] = {
    "census": {
        "rows": 20_000,
        "generator": {},
        "model": {"embed_dim": 4, "num_experts": 8, "expert": {"hidden": [32]}, "tower": {"hidden": [16]}},
    },
    "production": {
        "rows": 40_000,
        # 7 + 19 = 26 sparse fields x 16 = 416 (+ 4 dense) input dimensions; 20,000-value noise fields
        "generator": {"num_users": 200_000, "num_items": 50_000, "num_noise_fields": 19, "noise_cardinality": 20_000},
        "model": {"embed_dim": 16, "num_experts": 8, "expert": {"hidden": [512, 256]}, "tower": {"hidden": [64]}},
    },
}
SERVERS = ("baseline", "serve", "serve-nobatch")
ROUTES = ("records", "v2")
USERS = (1, 8)
RECORDS = (1, 64)


def build(name: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """Train ``name`` for one epoch on synthetic data and export it (ONNX) into ``work/name/repo``; cached."""
    import yaml

    from mtlrec.data.dataset import open_prepared
    from mtlrec.data.prepare import prepare
    from mtlrec.export.api import ExportOptions, export_run
    from mtlrec.train.config import build_run_config
    from mtlrec.train.loop import train

    spec = MODELS[name]
    root = work / name
    repo = root / "repo"
    info: dict[str, Any] = {"rows": spec["rows"], "generator": spec["generator"], "model": spec["model"]}
    if not (repo / "mmoe").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        generator = root / "generator.yaml"
        generator.write_text(yaml.safe_dump(spec["generator"]))
        prepare("synthetic", generator if spec["generator"] else None, root / "data", seed=0, rows=spec["rows"])
        config = build_run_config("mmoe", {"model": spec["model"], "train": {"epochs": 1, "batch_size": 1024}})
        started = time.perf_counter()
        train(open_prepared(root / "data"), config, root / "run")
        info["train_s"] = round(time.perf_counter() - started, 1)
        export_run(root / "run", repo, ExportOptions(format="onnx", batch_sizes=(1, 7)))
    import torch

    from mtlrec.train.checkpoint import load_run

    run = load_run(root / "run")
    info["parameters"] = sum(p.numel() for p in run.model.parameters())
    info["input_dim"] = int(run.model.embedding.output_dim)  # type: ignore[attr-defined]
    info["vocab_sizes"] = run.schema.vocab_sizes()
    info["onnx_mb"] = round((repo / "mmoe" / "1" / "model.onnx").stat().st_size / 1e6, 2)
    del run, torch
    return repo, info


def server_command(server: str, repo: Path) -> tuple[list[str] | None, list[str]]:
    """(command with ``{port}``, or None for ``mtlrec serve``; extra ``mtlrec serve`` args)."""
    if server == "baseline":
        model_file = repo / "mmoe" / "1" / "model.onnx"
        script = REPO / "benchmarks" / "baseline_server.py"
        return [sys.executable, str(script), "--model-file", str(model_file), "--name", "mmoe", "--port", "{port}"], []
    if server == "serve-nobatch":
        return None, ["--max-batch-size", "1", "--max-delay-ms", "0"]
    return None, []


def run_steps(name: str, repo: Path, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every (server, route, users, records) step of one model, ``--rounds`` times, servers interleaved.

    The three servers run side by side (an idle one costs no CPU), and each step configuration is measured on one
    server after the other, round after round: a slow minute of this shared host then hits every server alike
    instead of the one that happened to run during it. Each row holds the median over the rounds (and every round).
    """
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        urls = {}
        for server in SERVERS:
            command, extra = server_command(server, repo)
            log = work / "logs" / f"{name}-{server}.log"
            urls[server] = stack.enter_context(serve_subprocess(repo, "mmoe", log, extra, command=command)).url
        for route in ROUTES:
            for users in USERS:
                for records in RECORDS:
                    servers = [s for s in SERVERS if not (s == "baseline" and route == "records")]  # no transform
                    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
                    for index in range(args.rounds):
                        for server in servers:
                            step = f"{name}-{server}-{route}-u{users}-r{records}-{index}"
                            options = LoadTestOptions(
                                url=urls[server],
                                model="mmoe",
                                out=work / "steps" / step,
                                protocol="records" if route == "records" else "v2-http",
                                users=users,
                                duration_s=args.step_seconds,
                                warmup_s=args.warmup,
                                records_per_request=records,
                                repo=repo,
                                v2_encoding="json",
                                plots=False,
                                command=shlex.join(["python", *sys.argv]),
                            )
                            report = run_load_test(options)
                            lat = report["latency_ms"]
                            rounds[server].append(
                                {
                                    "p50_ms": lat["p50"],
                                    "p99_ms": lat["p99"],
                                    "requests_per_s": report["requests_per_s"],
                                    "records_per_s": report["records_per_s"],
                                    "rows_per_model_call": report["server"].get("rows_per_model_call"),
                                    "requests": report["requests"],
                                    "failures": report["failures"],
                                    "load_avg_1m": report["host"].get("load_avg_1m"),
                                }
                            )
                            print(
                                f"{step:50s} p50 {lat['p50']} ms p99 {lat['p99']} ms "
                                f"{report['requests_per_s']:9.1f} req/s",
                                flush=True,
                            )
                    for server in servers:
                        measured = rounds[server]
                        row = {"model": name, "server": server, "route": route, "users": users}
                        row["records_per_request"] = records
                        for key in ("p50_ms", "p99_ms", "requests_per_s", "records_per_s", "rows_per_model_call"):
                            values = [m[key] for m in measured if m[key] is not None]
                            row[key] = round(statistics.median(values), 3) if values else None
                        row["requests"] = sum(m["requests"] for m in measured)
                        row["failures"] = sum(m["failures"] for m in measured)
                        row["rounds"] = measured
                        rows.append(row)
    return rows


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three goals, per model and records per request, with the figures they compare."""
    out: list[dict[str, Any]] = []
    for name in {r["model"] for r in rows}:
        for records in RECORDS:
            base = _find(rows, model=name, server="baseline", route="v2", users=8, records_per_request=records)
            v2 = _find(rows, model=name, server="serve", route="v2", users=8, records_per_request=records)
            rec = _find(rows, model=name, server="serve", route="records", users=8, records_per_request=records)
            if base and v2 and rec and base["requests_per_s"]:
                out.append(
                    {
                        "goal": "8 users: serve v2 req/s >= baseline",
                        "model": name,
                        "records_per_request": records,
                        "ratio": round(v2["requests_per_s"] / base["requests_per_s"], 3),
                        "target": 1.0,
                    }
                )
                out.append(
                    {
                        "goal": "8 users: serve records req/s >= 80% of baseline",
                        "model": name,
                        "records_per_request": records,
                        "ratio": round(rec["requests_per_s"] / base["requests_per_s"], 3),
                        "target": 0.8,
                    }
                )
            for route in ROUTES:
                on = _find(rows, model=name, server="serve", route=route, users=1, records_per_request=records)
                off = _find(rows, model=name, server="serve-nobatch", route=route, users=1, records_per_request=records)
                if on and off and off["p50_ms"]:
                    out.append(
                        {
                            "goal": f"1 user: {route} p50 batching on within 10% of off (ratio <= 1.1)",
                            "model": name,
                            "records_per_request": records,
                            "ratio": round(on["p50_ms"] / off["p50_ms"], 3),
                            "target": 1.1,
                            "lower_is_better": True,
                        }
                    )
                if name == "production":
                    on8 = _find(rows, model=name, server="serve", route=route, users=8, records_per_request=records)
                    off8 = _find(
                        rows, model=name, server="serve-nobatch", route=route, users=8, records_per_request=records
                    )
                    if on8 and off8 and off8["requests_per_s"]:
                        out.append(
                            {
                                "goal": f"production, 8 users: {route} batching on >= 1.5x req/s of off",
                                "model": name,
                                "records_per_request": records,
                                "ratio": round(on8["requests_per_s"] / off8["requests_per_s"], 3),
                                "target": 1.5,
                            }
                        )
    for goal in out:
        lower = goal.pop("lower_is_better", False)
        goal["met"] = goal["ratio"] <= goal["target"] if lower else goal["ratio"] >= goal["target"]
    return sorted(out, key=lambda g: (g["model"], g["goal"], g["records_per_request"]))


def markdown(
    rows: list[dict[str, Any]], models: dict[str, Any], met: list[dict[str, Any]], host: str, command: str
) -> str:
    """The results table and the goals as Markdown."""
    lines = [
        "# Served latency and throughput: mtlrec serve vs a naive baseline",
        "",
        f"Host: {host}. Server, locust and client share the cores. v2 = tritonclient.http with JSON tensors.",
        "Each figure is the median of the rounds, servers interleaved (every round is in serving_baseline.json).",
        "",
        f"Command: `{command}`",
        "",
        "| model | server | route | users | rec/req | p50 ms | p99 ms | req/s | rec/s | rows/model call | fails |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['server']} | {r['route']} | {r['users']} | {r['records_per_request']} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['requests_per_s']:,.1f} | {r['records_per_s']:,.1f} "
            f"| {r['rows_per_model_call']} | {r['failures']} |"
        )
    lines += ["", "Models:", ""]
    for name, info in models.items():
        lines.append(
            f"- {name}: {info['parameters']:,} parameters, {info['input_dim']} input dims, ONNX {info['onnx_mb']} MB, "
            f"model {info['model']}"
        )
    lines += ["", "| goal | model | rec/req | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for g in met:
        lines.append(
            f"| {g['goal']} | {g['model']} | {g['records_per_request']} | {g['ratio']} | {g['target']} "
            f"| {'yes' if g['met'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="census,production")
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per step, servers interleaved; medians")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "serving")
    args = parser.parse_args()
    started = time.perf_counter()
    built: dict[str, tuple[Path, dict[str, Any]]] = {}
    for name in args.models.split(","):
        built[name] = build(name, args.work)
        print(f"built {name}: {built[name][1]}", flush=True)
    rows: list[dict[str, Any]] = []
    for name, (repo, _) in built.items():
        rows += run_steps(name, repo, args, args.work)
    met = goals(rows)
    from mtlrec.loadtest.report import host_info

    host = host_info()
    models = {name: info for name, (_, info) in built.items()}
    payload = {
        "step_seconds": args.step_seconds,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "servers": {
            "baseline": "benchmarks/baseline_server.py: FastAPI + uvicorn, one ORT call per request, JSON tensors",
            "serve": "mtlrec serve (micro-batching: --max-batch-size 256 --max-delay-ms 0, the defaults)",
            "serve-nobatch": "mtlrec serve --max-batch-size 1 --max-delay-ms 0",
        },
        "v2_encoding": "json",
        "load_host": host,
        "models": models,
        "rows": rows,
        "goals": met,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = write_result("serving_baseline", payload)
    host_text = f"{host['cpu']}, {host['cores']} cores, GPU {host['gpu']}"
    (RESULTS / "serving_baseline.md").write_text(
        markdown(rows, models, met, host_text, shlex.join(["python", *sys.argv]))
    )
    print(f"wrote {path} and {RESULTS / 'serving_baseline.md'} in {payload['wall_s']} s")


if __name__ == "__main__":
    main()
