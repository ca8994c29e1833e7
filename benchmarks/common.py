"""Helpers shared by the benchmark scripts: where the real data is, how results are written."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def shared_data(name: str) -> Path:
    """``../shared/data/<name>`` beside the repository, or under $MTLREC_SHARED_DATA."""
    root = Path(os.environ.get("MTLREC_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root / name
    if not path.exists():
        sys.exit(f"real data not found at {path}: set MTLREC_SHARED_DATA to the folder holding `{name}`")
    return path


def host() -> dict[str, Any]:
    """CPU, cores and library versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def git_sha() -> str:
    """The commit the benchmark ran on (with -dirty when the tree has changes)."""
    try:
        sha = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], text=True).strip()
        dirty = subprocess.call(["git", "-C", str(REPO), "diff", "--quiet", "HEAD"]) != 0
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` with the command, host, commit and time added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    full = {
        "command": " ".join(["python", *sys.argv]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_sha(),
        "host": host(),
        **payload,
    }
    path.write_text(json.dumps(full, indent=1))
    return path
