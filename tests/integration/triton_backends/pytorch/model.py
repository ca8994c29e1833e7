"""TEST-ONLY Python-based backend named ``pytorch``: runs ``platform: "pytorch_libtorch"`` models in real Triton.

The companion of ``../onnxruntime/model.py`` (read its docstring): the bundled tritonserver has no libtorch backend,
and ``platform: pytorch_libtorch`` means backend ``pytorch``, so Triton runs this file for our TorchScript models.

Binding rules of the real backend (serving.md §3.3), checked at initialize:

* the config must list as many inputs as ``forward()`` has tensor arguments;
* inputs are bound by forward-argument name when every config name is one, else by the ``<name>__<index>``
  convention when every name follows it, else in config order;
* outputs by ``<name>__<index>`` when every name follows it, else in config order; an output name that is a
  forward-argument name is refused.

Like the ORT shim it batches all requests of a dynamic batch into one forward call and answers errors with error
responses. Runs only inside Triton's python-backend stub.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

_INDEXED = re.compile(r"^(.+)__(\d+)$")


def _index_binding(names: list[str]) -> list[int] | None:
    """The ``__<index>`` of every name when all follow the convention with distinct indices, else None."""
    matches = [_INDEXED.match(n) for n in names]
    if not all(matches):
        return None
    indices = [int(m.group(2)) for m in matches if m]
    return indices if sorted(indices) == list(range(len(names))) else None


class TritonPythonModel:
    """One TorchScript module per model instance; see the module docstring."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.inputs: list[dict[str, Any]] = config.get("input", [])
        self.outputs: list[dict[str, Any]] = config.get("output", [])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = params.get("intra_op_thread_count", params.get("INTRA_OP_THREAD_COUNT", "")).strip()
        if threads:
            torch.set_num_threads(int(threads))

        filename = config.get("default_model_filename") or "model.pt"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.exists(path):
            raise FileNotFoundError(f"unable to load model '{self.name}': no TorchScript file at {path}")
        self.module = torch.jit.load(path, map_location="cpu").eval()  # type: ignore[no-untyped-call]

        arguments = [a for a in self.module.forward.schema.arguments if a.name != "self"]
        arg_names = [a.name for a in arguments]
        config_in = [t["name"] for t in self.inputs]
        if len(config_in) != len(arguments):
            raise ValueError(
                f"unable to load model '{self.name}', configuration expects {len(config_in)} inputs, model provides "
                f"{len(arguments)} (forward arguments: {', '.join(arg_names)})"
            )
        if all(n in arg_names for n in config_in):
            self.input_slots = [arg_names.index(n) for n in config_in]
        else:
            self.input_slots = _index_binding(config_in) or list(range(len(config_in)))

        config_out = [t["name"] for t in self.outputs]
        for name in config_out:
            if name in arg_names:
                raise ValueError(
                    f"unable to load model '{self.name}', output name '{name}' is a forward() argument name; "
                    "outputs must follow the '<name>__<index>' convention or be bound in config order"
                )
        self.output_slots = _index_binding(config_out) or list(range(len(config_out)))
        self.np_types = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in self.inputs}
        self.out_types = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in self.outputs}

    def _arrays(self, request: Any) -> list[np.ndarray]:
        arrays = []
        for tensor in self.inputs:
            value = pb_utils.get_input_tensor_by_name(request, tensor["name"])
            if value is None:
                raise ValueError(f"expected input '{tensor['name']}' is missing from the request to '{self.name}'")
            array = value.as_numpy()
            if "reshape" in tensor:
                lead = [array.shape[0]] if self.batching else []
                array = array.reshape(lead + [int(d) for d in tensor["reshape"].get("shape", [])])
            arrays.append(np.ascontiguousarray(array, dtype=self.np_types[tensor["name"]]))
        return arrays

    def _forward(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        args: list[Any] = [None] * len(arrays)
        for slot, array in zip(self.input_slots, arrays, strict=True):
            args[slot] = torch.from_numpy(array)
        with torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        result = list(result)
        if max(self.output_slots, default=-1) >= len(result):
            raise ValueError(
                f"model '{self.name}' returned {len(result)} outputs, the config names {len(self.outputs)}"
            )
        return [result[slot].detach().cpu().numpy() for slot in self.output_slots]

    def _respond(self, outputs: list[np.ndarray]) -> Any:
        tensors = []
        for tensor, array in zip(self.outputs, outputs, strict=True):
            if "reshape" in tensor:
                lead = [array.shape[0]] if self.batching else []
                array = array.reshape(lead + [int(d) for d in tensor.get("dims", [])])
            tensors.append(pb_utils.Tensor(tensor["name"], array.astype(self.out_types[tensor["name"]], copy=False)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, list[np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._arrays(request)))
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if not good:
            return responses
        try:
            if self.batching and len(good) > 1 and self.inputs:
                sizes = [arrays[0].shape[0] for _, arrays in good]
                batch = [np.concatenate([a[k] for _, a in good]) for k in range(len(self.inputs))]
                bounds = np.cumsum(sizes)[:-1]
                per_output = [np.split(out, bounds) for out in self._forward(batch)]
                for j, (i, _) in enumerate(good):
                    responses[i] = self._respond([parts[j] for parts in per_output])
            else:
                for i, arrays in good:
                    responses[i] = self._respond(self._forward(arrays))
        except Exception as exc:
            for i, _ in good:
                if responses[i] is None:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"pytorch shim, model '{self.name}': {exc}")
                    )
        return responses

    def finalize(self) -> None:
        self.module = None
