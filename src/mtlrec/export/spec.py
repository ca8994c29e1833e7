"""The export contract, derived from the schema by one function and saved as ``export_spec.json``.

Nothing downstream types a tensor name by hand: the ONNX graph, the TorchScript module, ``config.pbtxt``, the
servers and the clients all read the names, dtypes and shapes from an :class:`ExportSpec`.

Inputs (positional, in this order; each only where the schema has it):

* ``sparse_ids`` int64 ``[B, F]``: vocabulary ids of the sparse fields, in schema order;
* ``dense`` float32 ``[B, D]``: normalised dense values, in schema order;
* ``scenario`` int64 ``[B]``: scenario ids.

Outputs: one float32 ``[B, 1]`` tensor per model output (task name, plus extra outputs such as ESMM's ``ctcvr``),
in the model's ``output_names`` order. The PyTorch (libtorch) backend of Triton binds outputs by the
``<name>__<index>`` convention, so TorchScript models carry ``ctr__0``, ``cvr__1``:
:meth:`ExportSpec.backend_output_name`.

Example:
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=5),), tasks=(TaskSpec(name="ctr"),))
    >>> spec = build_export_spec(schema, "mmoe", ["ctr"])
    >>> [(t.name, t.dtype, t.shape) for t in spec.inputs]
    [('sparse_ids', 'int64', [1])]
    >>> spec.backend_output_name("ctr", "pytorch_libtorch")
    'ctr__0'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mtlrec.config import StrictModel
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema

DEFAULT_OPSET = 18
SPEC_VERSION = 1
Platform = Literal["onnxruntime_onnx", "pytorch_libtorch"]
Dtype = Literal["int64", "float32"]


class TensorSpec(StrictModel):
    """One input or output tensor: name, dtype and per-row shape (the batch axis is implicit and dynamic)."""

    name: str
    dtype: Dtype
    shape: list[int] = Field(description="dims after the batch axis; [] for one value per row")


class ExportSpec(StrictModel):
    """Names, dtypes and shapes of an exported model, with its tolerance; see the module docstring."""

    version: int = SPEC_VERSION
    model: str = Field(description="registry name of the exported model")
    schema_hash: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_axis: str = "batch"
    opset: int = DEFAULT_OPSET
    atol: dict[str, float] = Field(description="max abs difference allowed per output against eager PyTorch")

    @property
    def input_names(self) -> list[str]:
        """Input tensor names, in positional order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output tensor names (model output names), in order."""
        return [t.name for t in self.outputs]

    def backend_output_name(self, output: str, platform: Platform) -> str:
        """The tensor name of ``output`` for a Triton platform (``<name>__<index>`` for pytorch_libtorch)."""
        if platform == "pytorch_libtorch":
            return f"{output}__{self.output_names.index(output)}"
        return output

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path) -> ExportSpec:
        """Read a spec written by :meth:`save`."""
        return cls.model_validate_json(path.read_text())


def build_export_spec(
    schema: FeatureSchema, model: str, output_names: list[str], *, opset: int = DEFAULT_OPSET, atol: float = 1e-5
) -> ExportSpec:
    """The export spec of a model with ``output_names`` over a fitted ``schema``."""
    shapes: dict[str, tuple[Dtype, list[int]]] = {
        SPARSE_IDS: ("int64", [len(schema.sparse)]),
        DENSE: ("float32", [len(schema.dense)]),
        SCENARIO: ("int64", []),
    }
    inputs = [TensorSpec(name=n, dtype=shapes[n][0], shape=shapes[n][1]) for n in schema.input_names]
    outputs = [TensorSpec(name=n, dtype="float32", shape=[1]) for n in output_names]
    return ExportSpec(
        model=model,
        schema_hash=schema.hash(),
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        atol=dict.fromkeys(output_names, atol),
    )
