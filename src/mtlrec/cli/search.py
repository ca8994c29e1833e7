"""``mtlrec search``: AutoMTL architecture search (DESAN + PD-DARTS) on a prepared data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mtlrec.cli.common import console, err_console, fmt, user_errors
from mtlrec.cli.train import RichProgress


class SearchProgress(RichProgress):
    """The training bar per epoch, then one line per epoch with the architecture's state."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """Print the epoch's phase, losses, validation AUC and how much of the architecture is decided."""
        self.bar.remove_task(self.task)
        self.bar.stop()
        state = record["architecture"]
        losses = " ".join(f"{k}={v:.4f}" for k, v in record["train_loss"].items())
        val = " ".join(f"{k}={fmt(m.get('auc', float('nan')))}" for k, m in record["val"].items())
        blocks = state["blocks"]
        fixed = sum(b["fixed"] for b in blocks.values())
        fields = " ".join(f"{n}:{v['fields_on']}" for n, v in state["navigators"].items())
        err_console.print(
            f"epoch {record['epoch']:>2} {record['phase']:<6} τ={record['temperature']:.2f} "
            f"{record['samples_per_s']:>8,.0f} rows/s  loss {losses}  val {val}  "
            f"blocks fixed {fixed}/{len(blocks)}  fields on {fields}",
            highlight=False,
        )


def search_cmd(
    data: Annotated[Path, typer.Option("--data", help="a prepared data directory (`mtlrec data prepare`)")],
    out: Annotated[Path, typer.Option("--out", help="the architecture JSON file to write")],
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML with `space` and `search` sections", dir_okay=False)
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="override search.mode: joint (release) or bilevel (architecture on val)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="override search.seed", min=0)] = None,
    threads: Annotated[int | None, typer.Option(help="override search.num_threads", min=1)] = None,
) -> None:
    """Search an AutoMTL architecture; write OUT (JSON), OUT's .search.jsonl log and .supernet.safetensors weights.

    Train the result with `mtlrec train --model automtl --arch OUT --data DIR --out RUN_DIR`.
    """
    from mtlrec.data.dataset import open_prepared
    from mtlrec.nas.search import load_search_config, search, write_search

    with user_errors():
        cfg = load_search_config(config, {"mode": mode, "seed": seed, "num_threads": threads})
        prepared = open_prepared(data)
        s = cfg.search
        err_console.print(
            f"searching on {data} ({prepared.info.get('rows', {}).get('train', '?'):,} train rows): "
            f"{s.mode} mode, {s.warmup_epochs} warm-up + {s.search_epochs} search epochs",
            highlight=False,
        )
        result = search(prepared, cfg, progress=SearchProgress())
        files = write_search(result, out)
    console.print(result.architecture.summary(), highlight=False)
    repairs = result.architecture.search["repairs"] if result.architecture.search else []
    if repairs:
        console.print("repairs: " + "; ".join(repairs), highlight=False)
    console.print(
        f"architecture written to {files.architecture} (log {files.log.name}, inherited weights "
        f"{files.weights.name}); search took {result.seconds:,.0f} s",
        highlight=False,
    )
