"""The naive baseline server: FastAPI + uvicorn, one ONNX Runtime call per request, no batching, no transform.

The bar ``mtlrec serve`` is measured against (serving.md §5.4: the naive server beat every batching framework on a
small host). It speaks just enough of the KServe v2 protocol for ``tritonclient.http`` with JSON tensors
(``binary_data=False``): health, model metadata, readiness, statistics and ``infer``. Tensors arrive as JSON lists,
are reshaped to the ONNX inputs' rank (``scenario`` ``[B, 1]`` -> ``[B]``), run, and go back as JSON lists.

Usage:
    python benchmarks/baseline_server.py --model-file model_repository/mmoe/1/model.onnx --name mmoe --port 8100
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

_DTYPES = {"INT64": np.int64, "FP32": np.float32}
_ORT_TYPES = {"tensor(int64)": "INT64", "tensor(float)": "FP32"}


def create_app(model_file: Path, name: str, threads: int) -> FastAPI:
    """The app serving ``model_file`` as ``name`` (version 1)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])
    ranks = {i.name: len(i.shape) for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    metadata = {
        "name": name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": i.name, "datatype": _ORT_TYPES[i.type], "shape": [-1, *i.shape[1:]]} for i in session.get_inputs()
        ],
        "outputs": [{"name": o.name, "datatype": "FP32", "shape": [-1, 1]} for o in session.get_outputs()],
    }
    stats = {"inference_count": 0, "execution_count": 0}
    app = FastAPI(title="baseline")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200)

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> Response:
        return Response(status_code=200 if model == name else 404)

    @app.get("/v2/models/{model}")
    async def model_metadata(model: str) -> Any:
        return metadata if model == name else JSONResponse({"error": f"unknown model {model}"}, status_code=404)

    @app.get("/v2/models/{model}/stats")
    async def model_stats(model: str) -> Any:
        return {"model_stats": [{"name": name, "version": "1", **stats}]}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        body = json.loads(await request.body())
        feed = {}
        for item in body["inputs"]:
            array = np.asarray(item["data"], dtype=_DTYPES[item["datatype"]]).reshape(item["shape"])
            feed[item["name"]] = array.reshape(-1) if ranks[item["name"]] == 1 else array
        values = session.run(outputs, feed)  # one runtime call per request, on the event loop: no hop, no batching
        rows = int(values[0].shape[0])
        stats["inference_count"] += rows
        stats["execution_count"] += 1
        answer = {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": [rows, 1], "data": v.reshape(-1).tolist()}
                for n, v in zip(outputs, values, strict=True)
            ],
        }
        return Response(json.dumps(answer), media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--name", default="mmoe")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MTLREC_THREADS", os.cpu_count() or 1)))
    args = parser.parse_args()
    app = create_app(args.model_file, args.name, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
