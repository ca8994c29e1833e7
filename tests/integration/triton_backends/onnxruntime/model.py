"""TEST-ONLY Python-based backend named ``onnxruntime``: runs ``platform: "onnxruntime_onnx"`` models in real Triton.

The tritonserver bundled with ``nvidia-pytriton`` has the python backend but not the C++ ONNX Runtime backend.
Triton runs ``backends/<name>/model.py`` for any model declaring backend ``<name>`` (a "Python-based backend"),
and ``platform: onnxruntime_onnx`` means backend ``onnxruntime``, so this file lets the exported repository load
UNCHANGED (serving.md §1.3). It is not the real backend: no config autocomplete, no CUDA/TensorRT execution
providers, other threading and an extra process hop; passing through it is necessary, not sufficient.

What it does, like the real backend where it matters to our tests:

* initialize: opens ``<model dir>/<version>/model.onnx`` (or ``default_model_filename``) on the CPU provider,
  honouring the ``intra_op_thread_count`` / ``inter_op_thread_count`` parameters, and checks the config against
  the graph (input/output names, data types, ranks and fixed dims, a dynamic batch dim when max_batch_size > 0,
  ``reshape`` included); a mismatch fails the load with a message naming the tensor;
* execute: concatenates the inputs of all requests of a dynamic batch, runs the session once, splits the outputs
  back, one response per request in order; a failure becomes error responses, never an exception.

Runs only inside Triton's python-backend stub (``triton_python_backend_utils`` exists only there).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# ONNX Runtime type strings and the Triton config types they correspond to.
_ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}


def _dims(tensor: dict[str, Any]) -> list[int]:
    """The per-request dims of a config tensor: ``reshape.shape`` when set (what the graph sees), else ``dims``."""
    if "reshape" in tensor:
        return [int(d) for d in tensor["reshape"].get("shape", [])]
    return [int(d) for d in tensor.get("dims", [])]


def _check_tensor(model: str, kind: str, tensor: dict[str, Any], node: Any, batching: bool) -> None:
    """Raise ValueError, worded like the real backend, when a config tensor disagrees with the ONNX graph."""
    name = tensor["name"]
    expected = _ORT_TO_TRITON.get(node.type, node.type)
    if tensor["data_type"] != expected:
        raise ValueError(
            f"unable to load model '{model}', unexpected datatype {tensor['data_type']} for inference {kind} "
            f"'{name}', expecting {expected}"
        )
    shape = list(node.shape)
    config_dims = _dims(tensor)
    full = ([-1] if batching else []) + config_dims
    if len(shape) != len(full):
        raise ValueError(
            f"model '{model}', tensor '{name}': the model expects {len(shape)} dimensions (shape {shape}) but the "
            f"model configuration specifies {len(full)} dimensions (shape {full}"
            + (", an initial batch dimension because max_batch_size > 0" if batching else "")
            + ")"
        )
    if batching and isinstance(shape[0], int) and shape[0] != -1:
        raise ValueError(
            f"model '{model}', tensor '{name}': for the model to support batching the shape should have at least 1 "
            f"dimension and the first dimension must be -1; but shape expected by the model is {shape}"
        )
    for got, want in zip(shape[1:] if batching else shape, config_dims, strict=True):
        if isinstance(got, int) and got >= 0 and got != want:
            raise ValueError(
                f"model '{model}', tensor '{name}': the model expects shape {shape} but the model configuration "
                f"specifies shape {full}"
            )


class TritonPythonModel:
    """One ONNX Runtime session per model instance; see the module docstring."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.inputs: list[dict[str, Any]] = config.get("input", [])
        self.outputs: list[dict[str, Any]] = config.get("output", [])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

        # args["model_repository"] is the model's directory (<repository>/<model>) for the python backend.
        model_dir = args["model_repository"]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(model_dir, args["model_version"], filename)
        if not os.path.exists(path):
            raise FileNotFoundError(f"unable to load model '{self.name}': no ONNX file at {path}")

        options = ort.SessionOptions()
        if params.get("intra_op_thread_count", "").strip():
            options.intra_op_num_threads = int(params["intra_op_thread_count"])
        if params.get("inter_op_thread_count", "").strip():
            options.inter_op_num_threads = int(params["inter_op_thread_count"])
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

        graph_inputs = {n.name: n for n in self.session.get_inputs()}
        graph_outputs = {n.name: n for n in self.session.get_outputs()}
        if len(self.inputs) != len(graph_inputs):  # ORT lists only the inputs that are not initializers
            raise ValueError(
                f"unable to load model '{self.name}', configuration expects {len(self.inputs)} inputs, model "
                f"provides {len(graph_inputs)}"
            )
        for tensor in self.inputs:
            if tensor["name"] not in graph_inputs:
                raise ValueError(
                    f"unable to load model '{self.name}', unexpected inference input '{tensor['name']}', allowed "
                    f"inputs are: {', '.join(graph_inputs)}"
                )
            _check_tensor(self.name, "input", tensor, graph_inputs[tensor["name"]], self.batching)
        for tensor in self.outputs:
            if tensor["name"] not in graph_outputs:
                raise ValueError(
                    f"unable to load model '{self.name}', unexpected inference output '{tensor['name']}', allowed "
                    f"outputs are: {', '.join(graph_outputs)}"
                )
            _check_tensor(self.name, "output", tensor, graph_outputs[tensor["name"]], self.batching)
        self.np_types = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in self.inputs}

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        """The graph feeds of one request: config input names, graph dtypes, ``reshape`` applied."""
        feeds: dict[str, np.ndarray] = {}
        for tensor in self.inputs:
            name = tensor["name"]
            value = pb_utils.get_input_tensor_by_name(request, name)
            if value is None:
                raise ValueError(f"expected input '{name}' is missing from the request to model '{self.name}'")
            array = value.as_numpy()
            if "reshape" in tensor:
                lead = [array.shape[0]] if self.batching else []
                array = array.reshape(lead + _dims(tensor))
            if tensor["data_type"] == "TYPE_STRING":
                array = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])(array)
            else:
                array = np.ascontiguousarray(array, dtype=self.np_types[name])
            feeds[name] = array
        return feeds

    def _respond(self, outputs: list[np.ndarray]) -> Any:
        tensors = []
        for tensor, array in zip(self.outputs, outputs, strict=True):
            if "reshape" in tensor:
                lead = [array.shape[0]] if self.batching else []
                array = array.reshape(lead + [int(d) for d in tensor.get("dims", [])])
            tensors.append(pb_utils.Tensor(tensor["name"], array))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._feeds(request)))
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if not good:
            return responses
        names = [t["name"] for t in self.outputs]
        try:
            if self.batching and len(good) > 1:  # one run for the whole dynamic batch
                sizes = [feeds[self.inputs[0]["name"]].shape[0] for _, feeds in good] if self.inputs else []
                batch = {t["name"]: np.concatenate([f[t["name"]] for _, f in good]) for t in self.inputs}
                results = self.session.run(names, batch)
                bounds = np.cumsum(sizes)[:-1]
                per_request = [np.split(r, bounds) for r in results]
                for k, (i, _) in enumerate(good):
                    responses[i] = self._respond([parts[k] for parts in per_request])
            else:
                for i, feeds in good:
                    responses[i] = self._respond(self.session.run(names, feeds))
        except Exception as exc:
            for i, _ in good:
                if responses[i] is None:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"onnxruntime shim, model '{self.name}': {exc}")
                    )
        return responses

    def finalize(self) -> None:
        self.session = None
