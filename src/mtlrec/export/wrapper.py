"""The export-time module: positional tensors in, a tuple of ``[B, 1]`` probabilities out.

The training model stays dict-in / dict-out (``forward(features) -> {output: [B]}``). Exporters and runtimes need
positional tensors with fixed names instead, so :class:`ExportWrapper` adapts one to the other, in the order of an
:class:`~mtlrec.export.spec.ExportSpec`:

* inputs: ``spec.input_names`` (``sparse_ids`` [B, F], ``dense`` [B, D], ``scenario`` [B], as the schema has);
* outputs: one float32 ``[B, 1]`` per ``spec.output_names``, in that order.

:func:`named_wrapper` goes one step further for the exporters: its ``forward`` takes one *named* argument per spec
input, because ``torch.export`` and ``torch.jit.trace`` name the graph inputs after the Python arguments (and
Triton's PyTorch backend binds requests to a TorchScript model by those names).

:func:`example_inputs` draws valid random inputs for tracing and parity checks: ids over each field's whole
vocabulary (the reserved OOV and missing ids included), dense values with a few extremes.

Example:
    >>> from mtlrec.models import build_model
    >>> from mtlrec.export.spec import build_export_spec
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=5),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = build_model("shared_bottom", {"bottom": {"hidden": [4]}}, schema).eval()
    >>> spec = build_export_spec(schema, "shared_bottom", model.output_names)
    >>> inputs = example_inputs(spec, schema, batch_size=3)
    >>> [tuple(t.shape) for t in ExportWrapper(model, spec)(*inputs)]
    [(3, 1), (3, 1)]
"""

from __future__ import annotations

import contextlib
import keyword
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlrec.errors import ExportError
from mtlrec.export.spec import ExportSpec
from mtlrec.models.base import MultiTaskModel
from mtlrec.schema import DENSE, MISSING_ID, OOV_ID, SCENARIO, SPARSE_IDS, FeatureSchema

# Why ±40: normalised dense values are clipped to ±50 by the preprocessor (DenseField.clip), so ±40 is a legal
# input far in the tails, where a sigmoid or an exp is the most likely to overflow or lose precision.
EXTREME_DENSE = 40.0
_NUMPY_DTYPES: dict[str, type[np.generic]] = {"int64": np.int64, "float32": np.float32}
_TORCH_DTYPES: dict[str, torch.dtype] = {"int64": torch.int64, "float32": torch.float32}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def check_model_matches_spec(model: MultiTaskModel, spec: ExportSpec) -> None:
    """Refuse a model whose schema, inputs or outputs are not the ones ``spec`` describes.

    Raises:
        ExportError: naming the first difference (schema hash, input names or output names).
    """
    if spec.schema_hash != model.schema.hash():
        raise ExportError(
            f"the export spec was built for schema {spec.schema_hash}, the model has schema {model.schema.hash()}",
            hint="build the spec from the model's own schema (build_export_spec(model.schema, ...))",
        )
    if spec.input_names != model.schema.input_names:
        raise ExportError(
            f"the export spec's inputs {spec.input_names} differ from the model's {model.schema.input_names}",
            hint="build the spec from the model's own schema",
        )
    if spec.output_names != model.output_names:
        raise ExportError(
            f"the export spec's outputs {spec.output_names} differ from the model's {model.output_names}",
            hint="build the spec with output_names=model.output_names",
        )


class ExportWrapper(nn.Module):
    """Positional tensors in ``spec.input_names`` order in, one float32 ``[B, 1]`` per spec output out.

    Args:
        model: the trained model (dict in, dict of [B] out). It is held, not copied: put it in eval mode before
            tracing (the exporters do).
        spec: the export contract the model must match.

    Raises:
        ExportError: the spec was not built for this model (schema, inputs or outputs differ).
    """

    def __init__(self, model: MultiTaskModel, spec: ExportSpec) -> None:
        super().__init__()
        check_model_matches_spec(model, spec)
        self.model = model
        self.input_names = tuple(spec.input_names)
        self.output_names = tuple(spec.output_names)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """Run the model on positional inputs.

        Args:
            *inputs: one tensor per spec input, in order (``sparse_ids`` [B, F], ``dense`` [B, D], ``scenario`` [B]).

        Returns:
            One float32 ``[B, 1]`` tensor per spec output, in order.
        """
        if len(inputs) != len(self.input_names):
            raise ExportError(f"expected {len(self.input_names)} inputs {list(self.input_names)}, got {len(inputs)}")
        features = dict(zip(self.input_names, inputs, strict=True))
        outputs = self.model(features)  # {name: [B]}
        return tuple(outputs[name].unsqueeze(-1) for name in self.output_names)  # [B, 1] each


def named_wrapper(model: MultiTaskModel, spec: ExportSpec) -> nn.Module:
    """An :class:`ExportWrapper` behind a ``forward`` with one named argument per spec input.

    ``torch.export`` and ``torch.jit.trace`` take graph input names from the Python signature of ``forward``; a
    ``*inputs`` signature gives them none. The small class built here has
    ``forward(self, sparse_ids, dense, scenario)`` (the spec's names) and calls the wrapper.

    Args:
        model: the model to wrap.
        spec: the export contract; its input names must be Python identifiers (the schema constants are).

    Returns:
        A module whose ``forward`` argument names equal ``spec.input_names``; its ``wrapper`` attribute is the
        :class:`ExportWrapper`.

    Raises:
        ExportError: an input name is not a usable argument name, or the spec does not match the model.
    """
    names = spec.input_names
    bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n) or n in {"self", "wrapper", "Tensor"}]
    if bad:
        raise ExportError(f"input names {bad} cannot be Python argument names", hint="rename the model inputs")
    wrapper = ExportWrapper(model, spec)
    arguments = ", ".join(f"{n}: Tensor" for n in names)
    # Generated rather than written out: one forward per input layout (sparse and/or dense, scenario or not).
    source = f"def forward(self, {arguments}) -> tuple[Tensor, ...]:\n    return self.wrapper({', '.join(names)})\n"
    namespace: dict[str, Any] = {"Tensor": Tensor}
    exec(source, namespace)
    cls = type("NamedExportWrapper", (nn.Module,), {"forward": namespace["forward"], "__module__": __name__})
    module: nn.Module = cls()
    module.wrapper = wrapper
    module.train(model.training)
    return module


def tracing_batch_size(spec: ExportSpec) -> int:
    """The batch size to trace with: at least 3 (a size-1 axis is specialised, 2 is a common test size) and
    different from every other input dimension, so that no axis can be mistaken for the batch axis."""
    taken = {d for t in spec.inputs for d in t.shape}
    size = 3
    while size in taken:
        size += 1
    return size


def example_inputs(spec: ExportSpec, schema: FeatureSchema, batch_size: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Valid random inputs in ``spec.input_names`` order.

    Sparse ids are uniform over each field's whole vocabulary, the reserved ids included; with at least two rows,
    row 0 is all OOV (id 0) and row 1 all missing (id 1), so every batch exercises both. Dense values are standard
    normal with a few entries set to ±40. Scenario ids are uniform over the scenarios.

    Args:
        spec: the export contract (input names and dtypes).
        schema: the fitted schema the spec was built from (vocabulary sizes, scenarios).
        batch_size: number of rows B (>= 1).
        seed: seed of a private generator.

    Returns:
        ``sparse_ids`` int64 [B, F], ``dense`` float32 [B, D], ``scenario`` int64 [B], those the spec has.
    """
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, Tensor] = {}
    if schema.sparse:
        columns = [torch.randint(0, size, (batch_size,), generator=gen) for size in schema.vocab_sizes()]
        ids = torch.stack(columns, dim=1)  # [B, F]
        ids[0] = OOV_ID
        if batch_size > 1:
            ids[1] = MISSING_ID
        tensors[SPARSE_IDS] = ids
    if schema.dense:
        dense = torch.randn(batch_size, len(schema.dense), generator=gen)  # [B, D]
        extreme = torch.rand(batch_size, len(schema.dense), generator=gen) < 0.05  # ~5% of the entries
        signs = torch.where(torch.rand(batch_size, len(schema.dense), generator=gen) < 0.5, -1.0, 1.0)
        tensors[DENSE] = torch.where(extreme, signs * EXTREME_DENSE, dense)
    if schema.scenario is not None:
        tensors[SCENARIO] = torch.randint(0, schema.num_scenarios, (batch_size,), generator=gen)  # [B]
    missing = [n for n in spec.input_names if n not in tensors]
    if missing:
        raise ExportError(f"the schema has no input for spec inputs {missing}", hint="use the spec's own schema")
    return tuple(tensors[t.name].to(_TORCH_DTYPES[t.dtype]) for t in spec.inputs)


def to_numpy_feed(spec: ExportSpec, inputs: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    """Name positional ``inputs`` after ``spec.input_names``, as contiguous numpy arrays of the spec's dtypes."""
    if len(inputs) != len(spec.inputs):
        raise ExportError(f"expected {len(spec.inputs)} inputs {spec.input_names}, got {len(inputs)}")
    return {
        t.name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=_NUMPY_DTYPES[t.dtype])
        for t, x in zip(spec.inputs, inputs, strict=True)
    }
