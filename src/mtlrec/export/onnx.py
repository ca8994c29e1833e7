"""ONNX export of a model through the ``torch.export``-based exporter (``torch.onnx.export(dynamo=True)``).

Why this exporter: in torch 2.13 it is the default and the maintained one, it names the batch dimension after the
``Dim`` it is given (``spec.batch_axis``), and it keeps inputs the graph does not use (a model that ignores
``scenario`` still takes it). The legacy TorchScript-based exporter (``dynamo=False``) is deprecated and silently
drops unused inputs (pytorch #64480), which would break every client that sends the schema's inputs.

The export runs in eval mode (dropout off, batch-norm running statistics) with a tracing batch of at least 3
(a size-1 axis would be specialised to 1, pytorch #157621) and a symbolic batch axis on every input and output.
The written file is then checked: ``onnx.checker``, input and output names, dtypes and shapes against the spec,
a symbolic batch axis everywhere. Missing graph inputs are restored rather than refused, so any exporter's
dropping of unused inputs is repaired.

Example:
    >>> from pathlib import Path
    >>> from tempfile import TemporaryDirectory
    >>> from mtlrec.models import build_model
    >>> from mtlrec.export.spec import build_export_spec
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=5),), tasks=(TaskSpec(name="ctr"),))
    >>> model = build_model("shared_bottom", {"bottom": {"hidden": [4]}}, schema)
    >>> spec = build_export_spec(schema, "shared_bottom", model.output_names)
    >>> with TemporaryDirectory() as tmp:
    ...     export_onnx(model, spec, Path(tmp) / "model.onnx").name
    'model.onnx'
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtlrec.errors import ExportError
from mtlrec.export.spec import ExportSpec, TensorSpec
from mtlrec.export.wrapper import eval_mode, example_inputs, named_wrapper, tracing_batch_size
from mtlrec.models.base import MultiTaskModel

if TYPE_CHECKING:
    import onnx


def export_onnx(model: MultiTaskModel, spec: ExportSpec, path: Path) -> Path:
    """Export ``model`` to an ONNX file with a dynamic batch axis, in eval mode.

    The model's train/eval mode is restored afterwards.

    Args:
        model: the trained model; its schema must be the one the spec was built from.
        spec: input and output names, dtypes and shapes, batch axis name and opset.
        path: the ``.onnx`` file to write (parent directories are created); weights are stored inside it.

    Returns:
        ``path``.

    Raises:
        ExportError: the spec does not match the model, the exporter failed, or the written graph does not match
            the spec (names, dtypes, shapes, a batch axis that is not symbolic).
    """
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    module = named_wrapper(model, spec)
    args = example_inputs(spec, model.schema, tracing_batch_size(spec))
    batch = torch.export.Dim(spec.batch_axis)
    dynamic_shapes = {name: {0: batch} for name in spec.input_names}
    with eval_mode(module), torch.no_grad(), _quiet():
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=spec.opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; name the model and keep the cause
            raise ExportError(
                f"ONNX export of model `{spec.model}` failed: {type(exc).__name__}: {exc}",
                hint="run torch.export.export on the model to see which operation cannot be exported",
            ) from exc
    proto = onnx.load(str(path))
    if _restore_inputs(proto, spec):
        onnx.save(proto, str(path))
    check_onnx_graph(proto, spec)
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress lines and warnings (they do not concern a correct export).

    The registry logs "torchvision is not installed" through ``logging``; that logger is lowered for the export only.
    """
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        registry_log.setLevel(level)


def _value_info(tensor: TensorSpec, batch_axis: str) -> onnx.ValueInfoProto:
    """The ONNX declaration of a spec tensor: ``[batch_axis, *shape]`` of its dtype."""
    import onnx

    elem = onnx.TensorProto.INT64 if tensor.dtype == "int64" else onnx.TensorProto.FLOAT
    return onnx.helper.make_tensor_value_info(tensor.name, elem, [batch_axis, *tensor.shape])


def _restore_inputs(proto: onnx.ModelProto, spec: ExportSpec) -> bool:
    """Add the spec inputs the exporter dropped (unused by the graph) and put the inputs in spec order.

    Returns:
        Whether the graph was changed.
    """
    graph = proto.graph
    present = {i.name: i for i in graph.input}
    initializers = {i.name for i in graph.initializer}
    extra = [i for i in graph.input if i.name not in spec.input_names and i.name not in initializers]
    if extra:
        raise ExportError(f"the ONNX graph has inputs the spec does not declare: {[i.name for i in extra]}")
    wanted = [present[t.name] if t.name in present else _value_info(t, spec.batch_axis) for t in spec.inputs]
    rest = [i for i in graph.input if i.name not in spec.input_names]
    if [i.name for i in graph.input] == [i.name for i in wanted + rest]:
        return False
    copies = [type(i)() for i in wanted + rest]
    for copy, original in zip(copies, wanted + rest, strict=True):
        copy.CopyFrom(original)
    del graph.input[:]
    graph.input.extend(copies)
    return True


def check_onnx_graph(proto: onnx.ModelProto, spec: ExportSpec) -> None:
    """Check an exported graph against the spec: valid ONNX, names, dtypes, shapes, a symbolic batch axis.

    Args:
        proto: the loaded model.
        spec: the contract.

    Raises:
        ExportError: naming the first tensor that differs.
    """
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model is invalid: {exc}") from exc
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    for kind, declared, wanted in (("input", inputs, spec.inputs), ("output", list(graph.output), spec.outputs)):
        names = [v.name for v in declared]
        if names != [t.name for t in wanted]:
            raise ExportError(f"the ONNX graph's {kind}s are {names}, the spec's {[t.name for t in wanted]}")
        for value, tensor in zip(declared, wanted, strict=True):
            elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            if str(elem) != tensor.dtype:
                raise ExportError(f"ONNX {kind} `{tensor.name}` has dtype {elem}, the spec {tensor.dtype}")
            dims = list(value.type.tensor_type.shape.dim)
            if not dims or dims[0].dim_param != spec.batch_axis:
                got = dims[0].dim_param or dims[0].dim_value if dims else "no axis"
                raise ExportError(
                    f"ONNX {kind} `{tensor.name}` has batch axis {got!r}, expected the symbolic `{spec.batch_axis}`",
                    hint="the batch size was specialised during export; trace with a batch of at least 2",
                )
            rest = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims[1:]]
            if rest != tensor.shape:
                raise ExportError(
                    f"ONNX {kind} `{tensor.name}` has shape [batch, {rest}], the spec [batch, {tensor.shape}]"
                )
