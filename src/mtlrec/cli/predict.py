"""``mtlrec predict``: raw records to a running ``mtlrec serve`` (records API) or Triton (the ensemble)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mtlrec.cli.common import console, dumps, user_errors
from mtlrec.errors import DataError


class Protocol(StrEnum):
    """Which server and protocol."""

    records = "records"
    triton_http = "triton-http"
    triton_grpc = "triton-grpc"


def _records(record: str | None, file: Path | None) -> list[dict[str, Any]]:
    """The records of ``--record`` (one JSON object, or a list) or ``--file`` (JSON lines)."""
    if (record is None) == (file is None):
        raise DataError("pass exactly one of --record and --file", hint='--record \'{"user_id": "u1", ...}\'')
    if record is not None:
        try:
            value = json.loads(record)
        except json.JSONDecodeError as err:
            raise DataError(f"--record is not JSON: {err}") from None
        records = value if isinstance(value, list) else [value]
        where = "--record"
    else:
        assert file is not None
        records = []
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{file}, line {number}: not JSON: {err}") from None
        where = str(file)
    if not records:
        raise DataError(f"{where} holds no record")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{where}: record {bad} is not a JSON object", hint="one {field: value} object per record")
    return records


def predict_cmd(
    url: Annotated[str, typer.Option("--url", help="server: http://host:8080 (serve) or host:8000/8001 (Triton)")],
    model: Annotated[str, typer.Option("--model", help="model name (Triton: base name or the ensemble)")],
    record: Annotated[str | None, typer.Option("--record", help="one record as a JSON object (or a list)")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", exists=True, dir_okay=False, help="records as JSON lines")
    ] = None,
    protocol: Annotated[
        Protocol, typer.Option("--protocol", help="records (mtlrec serve), triton-http or triton-grpc")
    ] = Protocol.records,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="MTLREC_API_KEY", help="x-api-key of mtlrec serve")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Send raw records to a server and print the per-task probabilities."""
    from mtlrec.serving.client import predict_records

    with user_errors():
        records = _records(record, file)
        predictions = predict_records(url, model, records, protocol=protocol.value, api_key=api_key)
    if as_json:
        console.print_json(dumps({"model": model, "predictions": predictions}))
        return
    outputs = list(predictions[0]) if predictions else []
    table = Table(title=f"{model} via {protocol.value}: {len(predictions)} record(s)")
    table.add_column("record", justify="right")
    for name in outputs:
        table.add_column(name, justify="right")
    for i, prediction in enumerate(predictions):
        table.add_row(str(i), *(f"{prediction.get(n, float('nan')):.6f}" for n in outputs))
    console.print(table)
