"""Static validation of a Triton model repository against Triton's own rules, without a server.

:func:`validate_repository` returns one line per problem (an empty list means valid). It checks what Triton's
core and its onnxruntime/pytorch/python backends check at load time, for any repository (not only ours):

* every model directory has a ``config.pbtxt`` that parses as a ``ModelConfig``, whose ``name`` equals the
  directory name, with a platform or backend;
* numeric version directories exist, each with its model file (``model.onnx``, ``model.pt``, ``model.py`` or
  ``default_model_filename``; nothing for an ensemble); a ``specific`` version policy names existing versions;
* batching: ``max_batch_size >= 0``, dynamic batching only with batching, every preferred batch size
  ``<= max_batch_size``; inputs and outputs have unique names, a data type, valid dims and a reshape of the same
  element count;
* ONNX: the graph's input/output names, data types and dims match the config, and the batch dimension is dynamic
  when ``max_batch_size > 0``;
* TorchScript: ``forward``'s argument count equals the number of config inputs, and its tuple return the number
  of outputs; ``<name>__<index>`` names have indexes in range;
* Python: ``model.py`` compiles;
* ensembles: every step names an existing model (and version), maps only inputs and outputs that model has, feeds
  every input of it, reads only tensors some ensemble input or step output produces, with consistent data types;
  every ensemble output is produced; ``max_batch_size`` is not above a step's.

Example:
    >>> import tempfile
    >>> validate_repository(Path(tempfile.mkdtemp()))[0].endswith("holds no model directory")
    True
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlrec.export.triton_config import ModelConfig, parse
from mtlrec.export.triton_config import type_name as _type_name

_DEFAULT_FILES = {
    "onnxruntime_onnx": "model.onnx",
    "onnxruntime": "model.onnx",
    "pytorch_libtorch": "model.pt",
    "pytorch": "model.pt",
    "python": "model.py",
    "tensorrt_plan": "model.plan",
    "tensorrt": "model.plan",
    "tensorflow_savedmodel": "model.savedmodel",
    "openvino": "model.xml",
}
_ONNX_TO_TRITON = {
    "FLOAT": "TYPE_FP32",
    "DOUBLE": "TYPE_FP64",
    "FLOAT16": "TYPE_FP16",
    "BFLOAT16": "TYPE_BF16",
    "STRING": "TYPE_STRING",
    "BOOL": "TYPE_BOOL",
}
_INDEXED_NAME = re.compile(r"^.+__(\d+)$")


@dataclass
class _Model:
    """A model directory whose config parsed."""

    name: str
    root: Path
    config: ModelConfig
    versions: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.config.platform or self.config.backend)

    def inputs(self) -> dict[str, Any]:
        return {i.name: i for i in self.config.input}

    def outputs(self) -> dict[str, Any]:
        return {o.name: o for o in self.config.output}


def validate_repository(repo: Path) -> list[str]:
    """Every problem of the model repository at ``repo``, one line each (empty when it is valid).

    Args:
        repo: the repository root (one sub-directory per model; hidden entries and files are ignored).

    Returns:
        Lines of the form ``<model>: <problem>``.
    """
    if not repo.is_dir():
        return [f"{repo}: not a directory"]
    problems: list[str] = []
    models: dict[str, _Model] = {}
    for root in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        model = _load(root, problems)
        if model is not None:
            models[model.name] = model
    if not models and not problems:
        return [f"{repo}: holds no model directory"]
    for model in models.values():
        _check_config(model, problems)
        _check_versions(model, problems)
        if model.kind == "ensemble":
            _check_ensemble(model, models, problems)
    return problems


def _load(root: Path, problems: list[str]) -> _Model | None:
    name = root.name
    path = root / "config.pbtxt"
    if not path.is_file():
        problems.append(f"{name}: no config.pbtxt")
        return None
    try:
        config = parse(path.read_text())
    except Exception as err:  # text_format.ParseError, or undecodable bytes
        problems.append(f"{name}: config.pbtxt does not parse: {err}")
        return None
    if config.name != name:
        problems.append(f"{name}: config name {config.name!r} differs from the directory name {name!r}")
    versions = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    return _Model(name, root, config, versions)


def _check_config(model: _Model, problems: list[str]) -> None:
    cfg, name = model.config, model.name
    if not cfg.platform and not cfg.backend:
        problems.append(f"{name}: config sets neither platform nor backend")
    mbs = cfg.max_batch_size
    if mbs < 0:
        problems.append(f"{name}: max_batch_size {mbs} is negative")
    if cfg.HasField("dynamic_batching"):
        if mbs == 0:
            problems.append(f"{name}: dynamic_batching needs max_batch_size > 0")
        for size in cfg.dynamic_batching.preferred_batch_size:
            if size > mbs:
                problems.append(f"{name}: preferred_batch_size {size} > max_batch_size {mbs}")
            if size < 1:
                problems.append(f"{name}: preferred_batch_size {size} is not positive")
    for role, tensors in (("input", cfg.input), ("output", cfg.output)):
        seen: set[str] = set()
        for tensor in tensors:
            where = f"{name}: {role} {tensor.name!r}"
            if not tensor.name:
                problems.append(f"{name}: an {role} has no name")
            if tensor.name in seen:
                problems.append(f"{where} is declared twice")
            seen.add(tensor.name)
            if tensor.data_type == 0:
                problems.append(f"{where} has no data_type")
            dims = list(tensor.dims)
            if not dims:
                problems.append(f"{where} has no dims")
            if any(d == 0 or d < -1 for d in dims):
                problems.append(f"{where} has invalid dims {dims}")
            if tensor.HasField("reshape"):
                shape = list(tensor.reshape.shape)
                if -1 not in dims + shape and _count(dims) != _count(shape):
                    problems.append(f"{where}: reshape {shape} has another element count than dims {dims}")
    if model.kind != "ensemble" and not cfg.output:
        problems.append(f"{name}: config declares no output")


def _count(dims: list[int]) -> int:
    total = 1
    for d in dims:
        total *= d
    return total


def _check_versions(model: _Model, problems: list[str]) -> None:
    cfg, name = model.config, model.name
    if not model.versions:
        problems.append(f"{name}: no numeric version directory")
        return
    policy = cfg.version_policy
    if policy.HasField("specific"):
        missing = sorted(set(policy.specific.versions) - set(model.versions))
        if missing:
            problems.append(f"{name}: version_policy names versions {missing} that have no directory")
    if model.kind == "ensemble":
        return
    filename = cfg.default_model_filename or _DEFAULT_FILES.get(model.kind)
    if filename is None:
        return  # a backend this validator does not know: its files are its own business
    for version in model.versions:
        path = model.root / str(version) / filename
        if not path.exists():
            problems.append(f"{name}: version {version} has no {filename}")
        elif model.kind in ("onnxruntime_onnx", "onnxruntime"):
            problems.extend(_check_onnx(model, version, path))
        elif model.kind in ("pytorch_libtorch", "pytorch"):
            problems.extend(_check_torchscript(model, version, path))
        elif model.kind == "python":
            try:
                compile(path.read_text(), str(path), "exec")
            except SyntaxError as err:
                problems.append(f"{name}: version {version} {filename} does not compile: {err}")


def _onnx_type(elem_type: int) -> str:
    """The Triton ``TYPE_*`` name of an ONNX element type (``FLOAT`` -> ``TYPE_FP32``)."""
    import onnx

    try:
        name = str(onnx.TensorProto.DataType.Name(elem_type))
    except ValueError:
        return f"ONNX type {elem_type}"
    return _ONNX_TO_TRITON.get(name, f"TYPE_{name}")


def _check_onnx(model: _Model, version: int, path: Path) -> list[str]:
    import onnx

    where = f"{model.name}: version {version} {path.name}"
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:
        return [f"{where} is not a readable ONNX model: {err}"]
    initializers = {i.name for i in graph.initializer}
    graph_io = {
        "input": {v.name: v for v in graph.input if v.name not in initializers},
        "output": {v.name: v for v in graph.output},
    }
    config_io = {"input": model.inputs(), "output": model.outputs()}
    mbs = model.config.max_batch_size
    problems = []
    for role in ("input", "output"):
        in_graph, in_config = graph_io[role], config_io[role]
        for name, tensor in in_config.items():
            if name not in in_graph:
                problems.append(
                    f"{where}: config {role} {name!r} is not an {role} of the graph ({', '.join(in_graph)})"
                )
                continue
            value = in_graph[name].type.tensor_type
            graph_type, config_type = _onnx_type(value.elem_type), _type_name(tensor.data_type)
            if graph_type != config_type:
                problems.append(f"{where}: {role} {name!r} is {graph_type} in the graph, {config_type} in the config")
            graph_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.shape.dim]
            dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            expected = [-1, *dims] if mbs > 0 else dims
            if len(graph_dims) != len(expected):
                problems.append(
                    f"{where}: {role} {name!r} has rank {len(graph_dims)} in the graph, the config implies "
                    f"{len(expected)} (shape {expected}, -1 = any)"
                )
                continue
            if mbs > 0 and graph_dims and graph_dims[0] != -1:
                problems.append(
                    f"{where}: {role} {name!r} has a fixed batch dimension {graph_dims[0]}; "
                    "max_batch_size > 0 needs it dynamic"
                )
            for axis, (got, want) in enumerate(zip(graph_dims, expected, strict=True)):
                if axis == 0 and mbs > 0:
                    continue
                if got != -1 and want != -1 and got != want:
                    problems.append(f"{where}: {role} {name!r} dims {graph_dims} disagree with the config {expected}")
                    break
        if role == "input":
            unfed = sorted(set(in_graph) - set(in_config))
            if unfed:
                problems.append(f"{where}: graph inputs {unfed} are not declared in the config")
    return problems


def _check_torchscript(model: _Model, version: int, path: Path) -> list[str]:
    import torch

    where = f"{model.name}: version {version} {path.name}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+ deprecates TorchScript; Triton needs it
            module: Any = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        schema = module.forward.schema
    except Exception as err:
        return [f"{where} is not a loadable TorchScript module: {err}"]
    problems = []
    arguments = [a for a in schema.arguments if a.name != "self"]
    n_inputs, n_outputs = len(model.config.input), len(model.config.output)
    single_dict = len(arguments) == 1 and str(arguments[0].type).startswith("Dict")
    if not single_dict and len(arguments) != n_inputs:
        problems.append(
            f"{where}: forward() takes {len(arguments)} tensors ({', '.join(a.name for a in arguments)}), "
            f"the config declares {n_inputs} inputs"
        )
    returns = schema.returns[0].type if schema.returns else None
    if returns is not None and returns.kind() == "TupleType" and len(returns.elements()) != n_outputs:
        problems.append(
            f"{where}: forward() returns {len(returns.elements())} tensors, the config declares {n_outputs}"
        )
    for role, tensors, count in (("input", model.config.input, n_inputs), ("output", model.config.output, n_outputs)):
        for tensor in tensors:
            match = _INDEXED_NAME.match(tensor.name)
            if match and int(match.group(1)) >= count:
                problems.append(f"{where}: {role} {tensor.name!r} has index {match.group(1)} but there are {count}")
    return problems


def _check_ensemble(model: _Model, models: dict[str, _Model], problems: list[str]) -> None:
    cfg, name = model.config, model.name
    steps = list(cfg.ensemble_scheduling.step)
    if not steps:
        problems.append(f"{name}: ensemble has no ensemble_scheduling steps")
        return
    # Ensemble tensor -> (data type, who produces it); inputs first, then every step's outputs.
    produced: dict[str, tuple[int, str]] = {i.name: (i.data_type, "ensemble input") for i in cfg.input}
    for index, step in enumerate(steps, 1):
        target = models.get(step.model_name)
        if target is None:
            continue
        outputs = target.outputs()
        for key, tensor in step.output_map.items():
            if key in outputs:
                produced.setdefault(tensor, (outputs[key].data_type, f"step {index} ({step.model_name})"))
    for index, step in enumerate(steps, 1):
        where = f"{name}: ensemble step {index}"
        target = models.get(step.model_name)
        if target is None:
            problems.append(f"{where} names model {step.model_name!r}, which is not in the repository")
            continue
        if step.model_version != -1 and step.model_version not in target.versions:
            problems.append(
                f"{where} pins version {step.model_version} of {step.model_name!r}, which has no such version"
            )
        if 0 < target.config.max_batch_size < cfg.max_batch_size:
            problems.append(
                f"{where}: max_batch_size {cfg.max_batch_size} is above {step.model_name!r}'s "
                f"{target.config.max_batch_size}"
            )
        inputs, outputs = target.inputs(), target.outputs()
        for key, tensor in step.input_map.items():
            if key not in inputs:
                problems.append(f"{where} maps input {key!r}, which model {step.model_name!r} does not have")
                continue
            if tensor not in produced:
                problems.append(
                    f"{where} reads ensemble tensor {tensor!r}, which no ensemble input or step output produces"
                )
                continue
            source_type, source = produced[tensor]
            if source_type != inputs[key].data_type:
                problems.append(
                    f"{where}: ensemble tensor {tensor!r} is {_type_name(source_type)} from {source} but input "
                    f"{key!r} of {step.model_name!r} is {_type_name(inputs[key].data_type)}"
                )
        for key, tensor in inputs.items():
            if key not in step.input_map and not tensor.optional:
                problems.append(f"{where} does not feed input {key!r} of model {step.model_name!r}")
        for key in step.output_map:
            if key not in outputs:
                problems.append(
                    f"{where} maps output {key!r}, which model {step.model_name!r} does not have "
                    f"(outputs: {', '.join(outputs)})"
                )
    for output in cfg.output:
        if output.name not in produced:
            problems.append(f"{name}: ensemble output {output.name!r} is produced by no step")
        elif produced[output.name][0] != output.data_type:
            data_type, source = produced[output.name]
            problems.append(
                f"{name}: ensemble output {output.name!r} is {_type_name(output.data_type)} in the config but "
                f"{_type_name(data_type)} from {source}"
            )
