"""Every runtime behind one interface: ``Runner.infer(tensors) -> {output: array [B]}``.

Inputs are the export spec's tensors by name (``sparse_ids`` int64 [B, F], ``dense`` float32 [B, D], ``scenario``
int64 [B]); outputs are float32 [B] per output name (the ``[B, 1]`` of the artifact is flattened). Parity tests,
the server, batch scoring and the load generator all go through a runner, so changing the runtime is one argument.

Example::

    with OnnxRuntimeRunner(Path("model_repository/mmoe/1/model.onnx"), spec, threads=2) as runner:
        scores = runner.infer({"sparse_ids": ids, "dense": dense})   # {"ctr": [B], "cvr": [B]}
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np

from mtlrec.errors import MtlrecError
from mtlrec.export.spec import ExportSpec


class RunnerError(MtlrecError):
    """A runtime could not be started or failed on a request."""


class Runner(Protocol):
    """What every runtime offers."""

    spec: ExportSpec

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: spec inputs by name in, float32 [B] per output name out."""

    def close(self) -> None:
        """Release the runtime."""

    @property
    def description(self) -> str:
        """Runtime and device, for reports (e.g. ``onnxruntime 1.32 CPUExecutionProvider``)."""


class _Closing:
    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def default_threads() -> int:
    """Intra-op threads for an in-process runtime: every core, unless MTLREC_THREADS says otherwise."""
    return int(os.environ.get("MTLREC_THREADS", os.cpu_count() or 1))


def _check_feed(spec: ExportSpec, tensors: dict[str, np.ndarray]) -> None:
    missing = [n for n in spec.input_names if n not in tensors]
    if missing:
        raise RunnerError(f"the request lacks the input tensors {missing}", hint=f"inputs are {spec.input_names}")


class OnnxRuntimeRunner(_Closing):
    """ONNX Runtime in process: the CUDA execution provider when present and asked for, else the CPU.

    Args:
        path: the ``model.onnx`` file.
        spec: its export spec.
        threads: intra-op threads (default: :func:`default_threads`).
        device: ``cpu``, ``cuda`` (fails without onnxruntime-gpu and a GPU) or ``auto``.
    """

    def __init__(self, path: Path, spec: ExportSpec, threads: int | None = None, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort  # type: ignore[import-untyped]
        except ImportError:
            raise RunnerError(
                "onnxruntime is not installed", hint="pip install 'mtlrec[onnx]' (or 'mtlrec[gpu]' on a GPU host)"
            ) from None
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise RunnerError(
                "the CUDA execution provider is not available",
                hint="install onnxruntime-gpu (`mtlrec[gpu]`) on a host with an NVIDIA GPU, or use --device cpu",
            )
        use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        self.spec = spec
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.providers: list[str] = list(self.session.get_providers())
        self._version = ort.__version__

    @property
    def description(self) -> str:
        """Runtime version and providers."""
        return f"onnxruntime {self._version} {','.join(self.providers)}"

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""
        _check_feed(self.spec, tensors)
        feed = {n: tensors[n] for n in self.spec.input_names}
        values = self.session.run(self.spec.output_names, feed)
        # [B, 1] per output -> [B]
        return {
            n: np.asarray(v, dtype=np.float32).reshape(-1) for n, v in zip(self.spec.output_names, values, strict=True)
        }


class TorchScriptRunner(_Closing):
    """A TorchScript module (``model.pt``) in process, on the CPU or CUDA."""

    def __init__(self, path: Path, spec: ExportSpec, threads: int | None = None, device: str = "cpu") -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RunnerError("CUDA is not available to torch", hint="use --device cpu")
        self.device = "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.module: Any = torch.jit.load(str(path), map_location=self.device)  # type: ignore[no-untyped-call]
        self.module.eval()

    @property
    def description(self) -> str:
        """Runtime and device."""
        import torch

        return f"torchscript (torch {torch.__version__}) {self.device}"

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""
        import torch

        _check_feed(self.spec, tensors)
        inputs = [torch.from_numpy(np.ascontiguousarray(tensors[n])).to(self.device) for n in self.spec.input_names]
        with torch.inference_mode():
            outputs = self.module(*inputs)
        return {
            n: out.detach().to("cpu").numpy().astype(np.float32).reshape(-1)
            for n, out in zip(self.spec.output_names, outputs, strict=True)
        }
