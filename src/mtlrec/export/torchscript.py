"""TorchScript export: ``torch.jit.trace`` of the export wrapper in eval mode, saved with ``torch.jit.save``.

The traced module's ``forward`` takes one argument per spec input, named as in the spec (``sparse_ids``,
``dense``, ``scenario``): Triton's PyTorch backend binds request tensors to those argument names. It returns a
tuple of float32 ``[B, 1]`` tensors in ``spec.output_names`` order, which the backend names ``<output>__<index>``
(:meth:`~mtlrec.export.spec.ExportSpec.backend_output_name`).

Tracing records no batch size: views and gathers take their sizes from the tensors at run time. The trace is
checked by the tracer itself on a second batch of another size, and the export is validated at several batch sizes
by :func:`mtlrec.export.validate.validate_export`.

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
    ...     export_torchscript(model, spec, Path(tmp) / "model.pt").name
    'model.pt'
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from mtlrec.errors import ExportError
from mtlrec.export.spec import ExportSpec
from mtlrec.export.wrapper import eval_mode, example_inputs, named_wrapper, tracing_batch_size
from mtlrec.models.base import MultiTaskModel


def torchscript_input_names(module: torch.jit.ScriptModule) -> list[str]:
    """The argument names of a TorchScript module's ``forward`` (``self`` excluded)."""
    schema = module.forward.schema  # type: ignore[attr-defined]  # TorchScript methods carry a FunctionSchema
    return [arg.name for arg in schema.arguments[1:]]


def export_torchscript(model: MultiTaskModel, spec: ExportSpec, path: Path) -> Path:
    """Trace ``model`` behind the export wrapper in eval mode and save it with ``torch.jit.save``.

    The model's train/eval mode is restored afterwards.

    Args:
        model: the trained model; its schema must be the one the spec was built from.
        spec: input and output names and order.
        path: the ``.pt`` file to write (parent directories are created).

    Returns:
        ``path``.

    Raises:
        ExportError: the spec does not match the model, tracing failed, or the traced ``forward`` lost the input
            names.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    module = named_wrapper(model, spec)
    batch = tracing_batch_size(spec)
    args = example_inputs(spec, model.schema, batch)
    # The tracer re-runs the trace on this second batch size and fails on any size recorded as a constant.
    check = example_inputs(spec, model.schema, 2 * batch + 1, seed=1)
    with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but Triton's libtorch backend still loads TorchScript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)  # type: ignore[attr-defined]  # a Python-level decision on a tensor value
        try:
            traced = torch.jit.trace(module, args, check_inputs=[check], strict=True)  # type: ignore[no-untyped-call]
        except Exception as exc:  # TracingCheckError, TracerWarning, model errors: name the model, keep the cause
            raise ExportError(
                f"TorchScript tracing of model `{spec.model}` failed: {type(exc).__name__}: {exc}",
                hint="the model's forward must not branch on tensor values",
            ) from exc
    names = torchscript_input_names(traced)
    if names != spec.input_names:
        raise ExportError(f"the traced forward takes {names}, the spec's inputs are {spec.input_names}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(path))
    return path
