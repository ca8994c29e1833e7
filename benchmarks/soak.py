"""Soak: ``mtlrec serve`` under a steady mix of good and bad requests, with a model reload every ``--reload-every``
seconds, for ``--duration`` seconds; the server's resident memory (RSS) and open file descriptors are sampled.

What it does:

1. trains a tiny MMoE one epoch on synthetic data and exports it with ``--format both`` (cached under ``--work``);
2. starts ``mtlrec serve --poll-seconds 1`` on a free 127.0.0.1 port (both models: ONNX Runtime and TorchScript);
3. sends requests open-loop at ``--rate`` per second (a request is sent on schedule whether or not the previous
   ones were answered): 70 % good (records API and v2 JSON tensors, 1 to 64 records) and 30 % bad (malformed JSON,
   an unknown field, a missing scenario, a wrong v2 datatype, an out-of-range id, an unknown model, a body over
   the limit), each bad kind with the 4xx status it must get;
4. every ``--reload-every`` seconds adds a new version of both models (a copy of the served one, moved into the
   repository in one rename), waits until the poller serves it (warm-up and golden check included), then removes
   the version before it: the old versions drain and close;
5. samples the server's RSS, open file descriptors and threads every ``--sample-every`` seconds and after each
   reload; at the end sends SIGTERM and records the exit status.

Reported (``results/soak.json``, ``soak.md``, ``soak.png``): the RSS slope over time (MB per minute, least squares
over the samples after the first minute) and over reloads (MB per reload, least squares of the RSS after each
reload), the same for file descriptors, failed good requests (any non-200), bad requests answered other than 4xx,
latency percentiles, and the exit status. Goal: flat RSS within noise (below 1 MB per minute), 0 failed good
requests, every bad request a 4xx.

Usage:
    python benchmarks/soak.py [--duration 600] [--rate 40] [--reload-every 30] [--label full]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common import RESULTS, host

TINY_MMOE = {"embed_dim": 4, "num_experts": 2, "expert": {"hidden": [8]}, "tower": {"hidden": [4]}}
MODELS = ("mmoe", "mmoe_torchscript")


# ------------------------------------------------------------------------------------------------ set-up
def build(work: Path) -> Path:
    """Train and export the tiny MMoE into ``work/repo`` (cached); a fresh copy goes to ``work/soak-repo``."""
    from mtlrec.data.dataset import open_prepared
    from mtlrec.data.prepare import prepare
    from mtlrec.export.api import ExportOptions, export_run
    from mtlrec.train.config import build_run_config
    from mtlrec.train.loop import train

    if not (work / "repo").is_dir():
        if not (work / "data").is_dir():
            prepare("synthetic", None, work / "data", seed=0, rows=12_000)
        config = build_run_config("mmoe", {"model": TINY_MMOE, "train": {"epochs": 1, "batch_size": 512}})
        train(open_prepared(work / "data"), config, work / "run")
        export_run(work / "run", work / "repo", ExportOptions(format="both", batch_sizes=(1, 7)))
    repo = work / "soak-repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(work / "repo", repo)
    return repo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_sample(pid: int) -> dict[str, float]:
    """RSS (MB), open file descriptors and threads of process ``pid``, from /proc."""
    rss_kb = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": rss_kb / 1024, "fds": fds, "threads": threads}


# ------------------------------------------------------------------------------------------------ requests
def record(rng: random.Random) -> dict[str, Any]:
    return {
        "user_id": f"u{rng.randrange(20_000)}",
        "item_id": f"i{rng.randrange(5_000)}",
        "device": rng.choice(["ios", "android", "web", "never-seen"]),
        "price": round(rng.uniform(0, 100), 2),
        "scenario": f"scenario_{rng.randrange(3)}",
    }


def v2_body(rows: int, rng: random.Random, *, datatype: str = "INT64", bad_id: bool = False) -> dict[str, Any]:
    ids = [rng.randrange(0, 2) for _ in range(rows * 9)]
    if bad_id:
        ids[0] = 10**9
    return {
        "inputs": [
            {"name": "sparse_ids", "shape": [rows, 9], "datatype": datatype, "data": ids},
            {
                "name": "dense",
                "shape": [rows, 4],
                "datatype": "FP32",
                "data": [rng.gauss(0, 1) for _ in range(rows * 4)],
            },
            {"name": "scenario", "shape": [rows, 1], "datatype": "INT64", "data": [rng.randrange(3)] * rows},
        ]
    }


# (kind, weight, expected status class or exact status)
MIX: list[tuple[str, int]] = [
    ("good-v1", 45),
    ("good-v2", 25),
    ("bad-json", 5),
    ("bad-field", 5),
    ("bad-no-scenario", 4),
    ("bad-datatype", 4),
    ("bad-id", 4),
    ("bad-model", 4),
    ("bad-too-large", 4),
]


def build_request(kind: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """``(path, httpx request kwargs)`` of one request of ``kind``."""
    model = rng.choice(MODELS)
    if kind == "good-v1":
        return f"/v1/models/{model}/predict", {
            "json": {"records": [record(rng) for _ in range(rng.choice((1, 8, 64)))]}
        }
    if kind == "good-v2":
        return f"/v2/models/{model}/infer", {"json": v2_body(rng.choice((1, 8, 64)), rng)}
    if kind == "bad-json":
        return f"/v1/models/{model}/predict", {
            "content": b'{"records": [',
            "headers": {"content-type": "application/json"},
        }
    if kind == "bad-field":
        return f"/v1/models/{model}/predict", {"json": {"records": [{**record(rng), "colour": "red"}]}}
    if kind == "bad-no-scenario":
        body = record(rng)
        body.pop("scenario")
        return f"/v1/models/{model}/predict", {"json": {"records": [body]}}
    if kind == "bad-datatype":
        return f"/v2/models/{model}/infer", {"json": v2_body(2, rng, datatype="FP32")}
    if kind == "bad-id":
        return f"/v2/models/{model}/infer", {"json": v2_body(2, rng, bad_id=True)}
    if kind == "bad-model":
        return "/v1/models/no-such-model/predict", {"json": {"records": [record(rng)]}}
    if kind == "bad-too-large":
        return f"/v1/models/{model}/predict", {
            "content": b" " * 1_100_000,
            "headers": {"content-type": "application/json"},
        }
    raise ValueError(kind)


@dataclass
class Outcome:
    t: float
    kind: str
    status: int  # 0 = transport error
    latency_s: float
    error: str = ""


@dataclass
class Soak:
    url: str
    repo: Path
    pid: int
    duration: float
    rate: float
    reload_every: float
    sample_every: float
    seed: int = 0
    start: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)
    reloads: list[dict[str, float]] = field(default_factory=list)
    skipped: int = 0

    def now(self) -> float:
        return time.monotonic() - self.start

    def sample(self, what: str) -> dict[str, float]:
        row = {"t": self.now(), **process_sample(self.pid), "reloads": len(self.reloads)}
        row["what"] = what  # type: ignore[assignment]
        self.samples.append(row)
        return row

    async def traffic(self, http: httpx.AsyncClient) -> None:
        rng = random.Random(self.seed)
        kinds, weights = zip(*MIX, strict=True)
        inflight: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        end = self.start + self.duration

        async def one(kind: str, path: str, kwargs: dict[str, Any]) -> None:
            sent = time.monotonic()
            try:
                response = await http.post(path, **kwargs)
                self.outcomes.append(Outcome(sent - self.start, kind, response.status_code, time.monotonic() - sent))
            except httpx.HTTPError as err:
                self.outcomes.append(Outcome(sent - self.start, kind, 0, time.monotonic() - sent, type(err).__name__))

        while next_at < end:
            next_at += 1.0 / self.rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if len(inflight) >= 256:  # the server is not keeping up: count, do not pile up in the client
                self.skipped += 1
                continue
            kind = rng.choices(kinds, weights)[0]
            path, kwargs = build_request(kind, rng)
            task = asyncio.create_task(one(kind, path, kwargs))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        await asyncio.gather(*inflight)

    async def sampler(self) -> None:
        while self.now() < self.duration:
            self.sample("periodic")
            await asyncio.sleep(self.sample_every)

    async def reloader(self, http: httpx.AsyncClient) -> None:
        due = self.reload_every  # on a fixed schedule from the start (not after the previous reload's end)
        while due + 5.0 < self.duration:
            await asyncio.sleep(max(0.0, due - self.now()))
            due += self.reload_every
            started = time.monotonic()
            served = int((await http.get(f"/v2/models/{MODELS[0]}")).json()["versions"][0])
            new = max(int(p.name) for p in (self.repo / MODELS[0]).iterdir() if p.name.isdigit()) + 1
            for model in MODELS:
                staging = self.repo / f".staging-{model}-{new}"
                await asyncio.to_thread(shutil.copytree, self.repo / model / str(served), staging)
                os.rename(staging, self.repo / model / str(new))
            deadline = time.monotonic() + 60
            for model in MODELS:
                while (await http.get(f"/v2/models/{model}")).json()["versions"] != [str(new)]:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"version {new} of {model} was not picked up within 60 s")
                    await asyncio.sleep(0.1)
            switched = time.monotonic() - started
            for model in MODELS:  # the version before: no longer served, removed (it drains and closes)
                await asyncio.to_thread(shutil.rmtree, self.repo / model / str(served), True)
            await asyncio.sleep(1.0)  # let the old sessions drain and close before sampling
            self.reloads.append({"t": self.now(), "version": new, "switch_s": switched})
            self.sample("after-reload")

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as http:
            self.start = time.monotonic()
            await asyncio.gather(self.traffic(http), self.sampler(), self.reloader(http))
            self.sample("end")


# ------------------------------------------------------------------------------------------------ report
def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs (None with fewer than 3 points)."""
    if len(xs) < 3:
        return None
    return float(np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)[0])


def summarize(soak: Soak, exit_status: int | None, label: str) -> dict[str, Any]:
    periodic = [s for s in soak.samples if s["what"] == "periodic" and s["t"] >= min(60.0, soak.duration / 4)]
    after = [s for s in soak.samples if s["what"] == "after-reload"]
    good = [o for o in soak.outcomes if o.kind.startswith("good")]
    bad = [o for o in soak.outcomes if o.kind.startswith("bad")]
    latencies = np.array([o.latency_s for o in good if o.status == 200]) * 1e3
    by_kind: dict[str, dict[str, int]] = {}
    for o in soak.outcomes:
        by_kind.setdefault(o.kind, {})
        by_kind[o.kind][str(o.status)] = by_kind[o.kind].get(str(o.status), 0) + 1
    rss_min = slope([s["t"] / 60 for s in periodic], [s["rss_mb"] for s in periodic])
    return {
        "label": label,
        "duration_s": soak.duration,
        "rate_per_s": soak.rate,
        "reload_every_s": soak.reload_every,
        "requests": len(soak.outcomes),
        "client_skipped": soak.skipped,
        "good": len(good),
        "failed_good": sum(1 for o in good if o.status != 200),
        "bad": len(bad),
        "bad_not_4xx": sum(1 for o in bad if not 400 <= o.status < 500),
        "by_kind": by_kind,
        "reloads": len(soak.reloads),
        "reload_switch_s": {
            "median": float(np.median([r["switch_s"] for r in soak.reloads])) if soak.reloads else None,
            "max": max((r["switch_s"] for r in soak.reloads), default=None),
        },
        "rss_mb": {
            "first": soak.samples[0]["rss_mb"] if soak.samples else None,
            "last": soak.samples[-1]["rss_mb"] if soak.samples else None,
            "max": max((s["rss_mb"] for s in soak.samples), default=None),
            "slope_mb_per_min": rss_min,
            "slope_mb_per_reload": slope(list(range(len(after))), [s["rss_mb"] for s in after]),
        },
        "fds": {
            "first": soak.samples[0]["fds"] if soak.samples else None,
            "last": soak.samples[-1]["fds"] if soak.samples else None,
            "max": max((s["fds"] for s in soak.samples), default=None),
            "slope_per_min": slope([s["t"] / 60 for s in periodic], [s["fds"] for s in periodic]),
            "slope_per_reload": slope(list(range(len(after))), [s["fds"] for s in after]),
        },
        "threads": {
            "first": soak.samples[0]["threads"] if soak.samples else None,
            "last": soak.samples[-1]["threads"] if soak.samples else None,
        },
        "latency_ms_good": {
            p: float(np.percentile(latencies, q)) if len(latencies) else None
            for p, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
        "server_exit_status": exit_status,
        "goal": {
            "rss_slope_below_1_mb_per_min": rss_min is not None and rss_min < 1.0,
            "no_failed_good": all(o.status == 200 for o in good),
            "every_bad_4xx": all(400 <= o.status < 500 for o in bad),
        },
    }


def plot(soak: Soak, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in soak.samples]
    fig, (ax_rss, ax_fd) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_rss.plot(t, [s["rss_mb"] for s in soak.samples], marker=".", lw=1)
    ax_rss.set_ylabel("server RSS (MB)")
    ax_fd.plot(t, [s["fds"] for s in soak.samples], marker=".", lw=1, color="tab:orange", label="open fds")
    ax_fd.plot(t, [s["threads"] for s in soak.samples], marker=".", lw=1, color="tab:green", label="threads")
    ax_fd.set_ylabel("count")
    ax_fd.legend(loc="upper left")
    for r in soak.reloads:
        for ax in (ax_rss, ax_fd):
            ax.axvline(r["t"] / 60, color="grey", lw=0.5, alpha=0.5)
    ax_fd.set_xlabel("minutes (grey lines: reloads)")
    fig.suptitle(f"mtlrec serve soak ({label}): {soak.rate:g} req/s, reload every {soak.reload_every:g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any], command: str) -> str:
    rss, fds, lat = result["rss_mb"], result["fds"], result["latency_ms_good"]

    def f(value: Any, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    goal = result["goal"]
    lines = [
        f"# Soak of `mtlrec serve` ({result['label']})",
        "",
        f"{result['duration_s'] / 60:g} minutes at {result['rate_per_s']:g} requests/s (open loop), a reload every "
        f"{result['reload_every_s']:g} s ({result['reloads']} reloads of both models, ONNX Runtime and TorchScript), "
        f"on {result['host']['cpu']} ({result['host']['cores']} cores, shared with other work). Command: `{command}`.",
        "",
        "| figure | value | goal |",
        "| --- | --- | --- |",
        f"| RSS slope over time (after the first minute) | {f(rss['slope_mb_per_min'], 3)} MB/min | < 1 MB/min: "
        f"{'met' if goal['rss_slope_below_1_mb_per_min'] else 'NOT met'} |",
        f"| RSS slope over reloads | {f(rss['slope_mb_per_reload'], 3)} MB/reload | flat |",
        f"| RSS first / last / max | {f(rss['first'], 1)} / {f(rss['last'], 1)} / {f(rss['max'], 1)} MB | |",
        f"| open fds first / last / max; slope | {fds['first']} / {fds['last']} / {fds['max']}; "
        f"{f(fds['slope_per_min'], 3)} per min, {f(fds['slope_per_reload'], 3)} per reload | flat |",
        f"| threads first / last | {result['threads']['first']} / {result['threads']['last']} | flat |",
        f"| good requests; failed (not 200) | {result['good']}; {result['failed_good']} | 0: "
        f"{'met' if goal['no_failed_good'] else 'NOT met'} |",
        f"| bad requests; answered other than 4xx | {result['bad']}; {result['bad_not_4xx']} | 0: "
        f"{'met' if goal['every_bad_4xx'] else 'NOT met'} |",
        f"| good latency p50 / p95 / p99 / max | {f(lat['p50'])} / {f(lat['p95'])} / {f(lat['p99'])} / "
        f"{f(lat['max'])} ms | |",
        f"| reload: new version served after (median / max) | {f(result['reload_switch_s']['median'])} / "
        f"{f(result['reload_switch_s']['max'])} s | |",
        f"| requests not sent (client backlog > 256) | {result['client_skipped']} | 0 |",
        f"| server exit status after SIGTERM | {result['server_exit_status']} | 0 |",
        "",
        "Statuses per request kind:",
        "",
        "| kind | statuses |",
        "| --- | --- |",
    ]
    for kind, statuses in sorted(result["by_kind"].items()):
        lines.append(f"| {kind} | {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} |")
    lines += ["", "![RSS, file descriptors and threads over time](soak.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--reload-every", type=float, default=30.0, help="seconds between reloads")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mtlrec-soak"), help="cache of the model")
    parser.add_argument("--label", default="full", help="what kind of run this is (written into the results)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    repo = build(args.work)
    port = free_port()
    log_path = args.work / "server.log"
    command = [sys.executable, "-c", "from mtlrec.cli.app import main; main()", "serve", "--repo", str(repo)]
    command += ["--port", str(port), "--poll-seconds", "1", "--grace-seconds", "1", "--log-level", "warning"]
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the server did not become ready; see {log_path}")
                time.sleep(0.2)
            soak = Soak(
                url, repo, server.pid, args.duration, args.rate, args.reload_every, args.sample_every, args.seed
            )
            asyncio.run(soak.run())
            server.send_signal(signal.SIGTERM)
            exit_status = server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command_line = " ".join(["python", *sys.argv])
    result = {
        "command": command_line,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host(),
        **summarize(soak, exit_status, args.label),
        "samples": soak.samples,
        "reload_log": soak.reloads,
    }
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=1))
    plot(soak, RESULTS / "soak.png", args.label)
    (RESULTS / "soak.md").write_text(markdown(result, command_line))
    print(markdown(result, command_line))


if __name__ == "__main__":
    main()
