"""Distributed batch scoring on Ray Data: ``mtlrec score INPUT --engine ray``.

The same contract as :func:`mtlrec.serving.score.score_file` (raw CSV/Parquet rows in, THE run's transform, one
float32 column per model output out, next to the id column), spread over a Ray cluster:

* ``ray.data.read_parquet`` / ``read_csv`` read a file, a folder or a list of them (categorical columns of a
  CSV are read as text, as the local engine does, so ``"007"`` stays ``"007"``);
* ``map_batches`` runs on an actor pool of ``num_workers`` actors; each actor holds one runner for its whole life:
  ONNX Runtime (or TorchScript) in process, or a Triton client (``triton_url``), and encodes each batch with the
  preprocessor stored beside the model (:meth:`ServedModel.encode`);
* the scores are written as Parquet files into ``out`` (a folder), through a temporary sibling renamed at the end
  when ``out`` is a local path.

Locally, Ray is started with ``num_cpus`` CPUs (and stopped at the end); with ``address`` the job joins an
existing cluster (``ray://head:10001`` or ``auto``), where ``repo`` and the inputs must be readable by every node.
Rows are identified by the schema's id column, which the input must carry (a distributed reader has no global row
number). A malformed row fails the job with the transform's message; use the local engine's ``--on-error skip``
to locate and skip such rows.

Example::

    result = score_with_ray(Path("events/"), Path("model_repository"), "mmoe", Path("scores/"), num_workers=2)
    print(result.rows, result.rows_per_s)
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.errors import DataError, MtlrecError
from mtlrec.schema import FeatureSchema


@dataclass
class RayScoreResult:
    """What :func:`score_with_ray` did."""

    rows: int
    seconds: float
    rows_per_s: float
    out: Path
    files: int  # Parquet files written
    model: str
    version: int
    runtime: str
    workers: int


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MtlrecError("ray is not installed", hint="pip install 'mtlrec[ray]' to score with --engine ray") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, by name, when a Ray address (``host:port`` or ``ray://host:port``; ``auto`` is not probed) does not
    accept a TCP connection: ``ray.init`` would otherwise retry for a minute before a generic error.

    Raises:
        MtlrecError: nothing listens at the address, or it is malformed.
    """
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MtlrecError(f"--ray-address {address!r} is not host:port", hint="e.g. ray://head:10001 or head:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise MtlrecError(
            f"cannot reach the Ray cluster at {address}: {err}",
            hint="check the address and that the head node is up (`ray status` on it), or drop --ray-address",
        ) from None


def input_files(path: Path) -> tuple[list[Path], str]:
    """The files to read (a file, or every CSV or Parquet file under a folder) and their kind (csv or parquet)."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    else:
        raise DataError(f"input not found: {path}")
    kinds = {_kind(p) for p in files} - {None}
    files = [p for p in files if _kind(p) is not None]
    if not files:
        raise DataError(f"{path} holds no .csv, .csv.gz or .parquet file")
    if len(kinds) > 1:
        raise DataError(f"{path} mixes CSV and Parquet files", hint="score each kind separately")
    return files, str(kinds.pop())


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    return None


def _header(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    import pandas as pd

    return list(pd.read_csv(path, nrows=0).columns)


def _columns(schema: FeatureSchema, header: list[str], path: Path) -> list[str]:
    features = schema.feature_names + ([schema.scenario.name] if schema.scenario else [])
    missing = [c for c in features if c not in header]
    if missing:
        raise DataError(f"{path} lacks the columns {', '.join(missing)}", hint=f"the model reads {features}")
    if schema.id_column is None or schema.id_column not in header:
        raise DataError(
            f"{path} has no id column{f' `{schema.id_column}`' if schema.id_column else ''} to identify the scores",
            hint="the ray engine writes the id column beside the scores; add it, or use --engine local "
            "(which numbers the rows)",
        )
    return [*features, schema.id_column]


class RayScorer:
    """The actor of the pool: one runner for its life; ``__call__`` scores one Arrow batch.

    Args:
        repo: the model repository; model, version: the model to load.
        backend: in-process runtime (``auto``, ``onnxruntime``, ``torchscript``) when ``triton_url`` is None.
        threads: intra-op threads of the in-process runtime.
        triton_url: score through this Triton server instead (``host:port``); protocol ``http`` or ``grpc``.
    """

    def __init__(
        self,
        repo: str,
        model: str,
        version: int,
        backend: str = "auto",
        threads: int = 1,
        triton_url: str | None = None,
        triton_protocol: str = "http",
    ) -> None:
        from mtlrec.serving.repository import ServedModel, open_model

        served = open_model(Path(repo), model, version, backend=backend, threads=threads)
        if triton_url is not None:
            from mtlrec.serving.runners import TritonRunner

            served.runner.close()
            protocol: Any = triton_protocol
            runner = TritonRunner(triton_url, model, served.spec, protocol=protocol)
            served = ServedModel(
                served.name, served.version, served.path, served.spec, served.schema, served.preprocessor, runner
            )
        self.served = served
        self.id_column = served.schema.id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Raw rows -> the id column and one float32 column per output."""
        import pandas as pd

        frame = batch.to_pandas(types_mapper={pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype()}.get)
        tensors, _ = self.served.encode(frame)
        scores = self.served.runner.infer(tensors)
        columns: dict[str, Any] = {str(self.id_column): batch.column(str(self.id_column))}
        columns |= {name: pa.array(np.asarray(v, dtype=np.float32)) for name, v in scores.items()}
        return pa.table(columns)


def score_with_ray(
    input: Path,
    repo: Path,
    model: str,
    out: Path,
    *,
    num_workers: int = 2,
    batch_size: int = 65_536,
    threads: int = 1,
    backend: str = "auto",
    triton_url: str | None = None,
    triton_protocol: str = "http",
    address: str | None = None,
    num_cpus: int | None = None,
    scorer: type[RayScorer] | None = None,
) -> RayScoreResult:
    """Score every row of ``input`` (a CSV/Parquet file or folder) on Ray Data; write Parquet files into ``out``.

    Args:
        input: a file, or a folder of CSV (``.csv``, ``.csv.gz``) or Parquet files.
        repo: the model repository (readable by every Ray node).
        model: the model name; its newest version is used.
        out: the output folder (replaced when the job succeeds).
        num_workers: actors in the pool, each with one runner.
        batch_size: rows per ``map_batches`` call.
        threads: CPUs (and intra-op threads) per actor.
        backend: in-process runtime of the actors.
        triton_url: score through Triton at this address instead of in process.
        triton_protocol: ``http`` or ``grpc``.
        address: join this Ray cluster; None starts a local Ray with ``num_cpus`` CPUs.
        num_cpus: CPUs of a local Ray (default: ``num_workers * threads + 1``, one for reading and writing).
        scorer: the actor class (default :class:`RayScorer`); a subclass may wrap it, e.g. to inject failures.

    Raises:
        DataError: the input is missing, lacks columns or the id column, or a row is malformed.
    """
    from mtlrec.serving.repository import open_model

    if num_workers < 1 or threads < 1 or batch_size < 1:
        raise DataError("--num-workers, --threads and --batch-size must be positive")
    files, kind = input_files(input)
    served = open_model(repo, model, backend=backend, threads=1)
    schema, version, runtime = served.schema, served.version, served.runner.description
    served.close()
    if triton_url is not None:
        runtime = f"triton {triton_protocol}://{triton_url}"
    columns = _columns(schema, _header(files[0], kind), files[0])

    ray = _ray()
    started = False
    # The actors hold num_workers * threads CPUs for the whole job; reading and writing need one more, or the
    # read tasks are never scheduled and the job waits forever.
    needed = num_workers * threads + 1
    if address is not None:
        check_reachable(address)
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=num_cpus or needed, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    available = float(ray.cluster_resources().get("CPU", 0))
    if available < needed:
        if started:
            ray.shutdown()
        raise MtlrecError(
            f"the Ray cluster has {available:g} CPUs; {num_workers} workers of {threads} CPUs need {needed} "
            "(one more for reading and writing)",
            hint="lower --num-workers or --threads, or give Ray more CPUs",
        )
    remote = "://" in str(out)
    target = out if remote else out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    start = time.perf_counter()
    try:
        paths = [str(p.resolve()) for p in files]
        if kind == "parquet":
            dataset = ray.data.read_parquet(paths).select_columns(columns)
        else:
            import pyarrow.csv as pacsv

            text = [*schema.sparse_names, *([schema.scenario.name] if schema.scenario else []), schema.id_column]
            convert = pacsv.ConvertOptions(
                column_types=dict.fromkeys(text, pa.string()), include_columns=columns, strings_can_be_null=True
            )
            dataset = ray.data.read_csv(paths, convert_options=convert)
        scored = dataset.map_batches(
            scorer or RayScorer,
            fn_constructor_kwargs={
                "repo": str(repo.resolve()),
                "model": model,
                "version": version,
                "backend": backend,
                "threads": threads,
                "triton_url": triton_url,
                "triton_protocol": triton_protocol,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            concurrency=num_workers,
            num_cpus=threads,
            # An actor that dies (a node lost, a worker killed for memory) is restarted and its batch retried:
            # Ray Data's default for actor pools (max_restarts=-1, max_task_retries=-1), which we keep; the output
            # stays complete, every input row scored exactly once (tested with an injected death).
        )
        scored.write_parquet(str(target))
    except Exception as err:
        if not remote:
            shutil.rmtree(target, ignore_errors=True)
        cause = getattr(err, "cause", None)
        if isinstance(cause, MtlrecError):
            raise DataError(f"{input}: {cause.message}", hint=cause.hint) from None
        raise
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - start
    if remote:
        return RayScoreResult(0, seconds, 0.0, out, 0, model, version, runtime, num_workers)
    written = sorted(target.glob("*.parquet"))
    rows = sum(int(pq.ParquetFile(p).metadata.num_rows) for p in written)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(target, out)
    return RayScoreResult(
        rows, seconds, rows / seconds if seconds > 0 else 0.0, out, len(written), model, version, runtime, num_workers
    )
