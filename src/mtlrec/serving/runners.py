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
import threading
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

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
        # No spin-waiting: by default the intra-op threads spin for a while after every run, burning a core that a
        # server shares with its event loop (and, on a small host, its clients). Measured on the census MMoE served
        # at 8 users on 2 cores: 1.2 ms of server CPU per request with spinning, 0.57 ms without.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.spec = spec
        self.session: Any = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.providers: list[str] = list(self.session.get_providers())
        self._version = ort.__version__

    def close(self) -> None:
        """Release the session now (its memory and intra-op threads), not whenever the garbage collector runs."""
        self.session = None

    @property
    def description(self) -> str:
        """Runtime version and providers."""
        return f"onnxruntime {self._version} {','.join(self.providers)}"

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""
        _check_feed(self.spec, tensors)
        if self.session is None:
            raise RunnerError("the ONNX Runtime session is closed")
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; Triton still serves it
            self.module: Any = torch.jit.load(str(path), map_location=self.device)  # type: ignore[no-untyped-call]
        self.module.eval()

    def close(self) -> None:
        """Release the module now."""
        self.module = None

    @property
    def description(self) -> str:
        """Runtime and device."""
        import torch

        return f"torchscript (torch {torch.__version__}) {self.device}"

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""
        import torch

        _check_feed(self.spec, tensors)
        if self.module is None:
            raise RunnerError("the TorchScript module is closed")
        inputs = [torch.from_numpy(np.ascontiguousarray(tensors[n])).to(self.device) for n in self.spec.input_names]
        with torch.inference_mode():
            outputs = self.module(*inputs)
        return {
            n: out.detach().to("cpu").numpy().astype(np.float32).reshape(-1)
            for n, out in zip(self.spec.output_names, outputs, strict=True)
        }


# --------------------------------------------------------------------------------------------------- Triton
TritonProtocol = Literal["http", "grpc"]
_TRITON_DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32", np.dtype(object): "BYTES"}


def triton_module(protocol: TritonProtocol) -> Any:
    """``tritonclient.http`` or ``tritonclient.grpc``, imported on first use (a RunnerError when not installed)."""
    if protocol not in ("http", "grpc"):
        raise RunnerError(f"unknown Triton protocol `{protocol}`", hint="use http or grpc")
    try:
        if protocol == "http":
            import tritonclient.http as module  # type: ignore[import-untyped]
        else:
            import tritonclient.grpc as module  # type: ignore[import-untyped]
    except ImportError:
        raise RunnerError(
            f"tritonclient[{protocol}] is not installed", hint="pip install 'tritonclient[http,grpc]'"
        ) from None
    return module


def triton_client(url: str, protocol: TritonProtocol) -> Any:
    """An ``InferenceServerClient`` for ``url`` (``host:port``; an ``http://``/``grpc://`` prefix is dropped)."""
    module = triton_module(protocol)
    address = url.strip()
    ssl = address.startswith("https://")
    for prefix in ("http://", "https://", "grpc://"):
        if address.startswith(prefix):
            address = address[len(prefix) :]
    address = address.rstrip("/")
    try:
        return module.InferenceServerClient(address, ssl=ssl)
    except Exception as err:  # tritonclient raises plain exceptions for a malformed address
        raise RunnerError(f"cannot open a Triton {protocol} client for {url}: {err}") from None


class TritonClients:
    """The tritonclient client of the calling thread: one per thread over HTTP, one shared over gRPC.

    ``tritonclient.http`` runs on geventhttpclient, whose connections belong to the thread (gevent hub) that opened
    them: used from another thread (a Ray Data actor's worker thread, a server's thread pool) it fails with
    "Cannot switch to a different thread". The gRPC client is thread-safe and shared.
    """

    def __init__(self, url: str, protocol: TritonProtocol) -> None:
        self.url, self.protocol = url, protocol
        self._local = threading.local()
        self._lock = threading.Lock()
        self._shared = triton_client(url, protocol)  # opened here: a bad address fails at construction
        self._local.client = self._shared
        self._opened: list[Any] = [self._shared]

    def get(self) -> Any:
        """This thread's client (opened on first use)."""
        if self.protocol == "grpc":
            return self._shared
        client = getattr(self._local, "client", None)
        if client is None:
            client = triton_client(self.url, self.protocol)
            self._local.client = client
            with self._lock:
                self._opened.append(client)
        return client

    def close(self) -> None:
        """Close every client opened."""
        with self._lock:
            opened, self._opened = self._opened, []
        for client in opened:
            close = getattr(client, "close", None)
            if callable(close):
                close()


def triton_call(what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``; a tritonclient or connection failure becomes a RunnerError naming ``what``."""
    try:
        return call(*args, **kwargs)
    except Exception as err:  # InferenceServerException, connection refused, timeouts: all user-facing
        text = err.message() if hasattr(err, "message") and callable(err.message) else str(err)
        raise RunnerError(
            f"Triton {what} failed: {text or type(err).__name__}",
            hint="check --url, that the server is up and that the model is loaded (GET /v2/models/<name>/ready)",
        ) from None


def triton_metadata(client: Any, protocol: TritonProtocol, model: str, version: str = "") -> dict[str, Any]:
    """The model's metadata as a dict (``name``, ``platform``, ``inputs``/``outputs`` with ``name``/``datatype``)."""
    if protocol == "grpc":
        meta = triton_call(f"metadata of {model}", client.get_model_metadata, model, version, as_json=True)
    else:
        meta = triton_call(f"metadata of {model}", client.get_model_metadata, model, version)
    return dict(meta)


def triton_max_batch_size(client: Any, protocol: TritonProtocol, model: str, version: str = "") -> int:
    """The model's ``max_batch_size`` (0 = no batching dimension)."""
    if protocol == "grpc":
        config = triton_call(f"config of {model}", client.get_model_config, model, version, as_json=True)
        config = config.get("config", config)
    else:
        config = triton_call(f"config of {model}", client.get_model_config, model, version)
    return int(config.get("max_batch_size", 0) or 0)


def triton_infer(
    client: Any,
    protocol: TritonProtocol,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    version: str = "",
    timeout_s: float | None = 60.0,
) -> dict[str, np.ndarray]:
    """One Triton inference: named arrays in (INT64, FP32 or object/bytes), the named output arrays out."""
    module = triton_module(protocol)
    wire = []
    for name, array in inputs.items():
        datatype = _TRITON_DATATYPES.get(array.dtype)
        if datatype is None:
            raise RunnerError(f"input `{name}` has dtype {array.dtype}, which is not sent to Triton")
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        wire.append(tensor)
    requested = [module.InferRequestedOutput(n) for n in outputs]
    bound = {"client_timeout": timeout_s} if protocol == "grpc" else {}
    result = triton_call(f"inference on {model}", client.infer, model, wire, version, outputs=requested, **bound)
    out: dict[str, np.ndarray] = {}
    for name in outputs:
        value = result.as_numpy(name)
        if value is None:
            raise RunnerError(f"Triton's answer from {model} lacks the output `{name}`")
        out[name] = np.asarray(value)
    return out


class TritonRunner(_Closing):
    """A model served by Triton (HTTP or gRPC), behind the same interface as the in-process runners.

    Inputs are the spec's tensors (``scenario`` ``[B]`` is sent as ``[B, 1]``: Triton's dims ``[1]`` + reshape);
    outputs come back float32 ``[B]`` per spec output, whatever the platform's tensor names (``ctr__0`` for
    ``pytorch_libtorch``, read from the model's metadata). Batches above the model's ``max_batch_size`` are split.

    Args:
        url: the server, ``host:port`` (HTTP default port 8000, gRPC 8001).
        model: the Triton model name (``mmoe`` or ``mmoe_torchscript``; not the ensemble).
        spec: the model's export spec.
        protocol: ``http`` or ``grpc``.
        version: the model version; ``""`` = the server's choice (the newest).
        timeout_s: the gRPC client timeout per request (HTTP uses tritonclient's 60 s network timeout).
    """

    def __init__(
        self,
        url: str,
        model: str,
        spec: ExportSpec,
        protocol: TritonProtocol = "http",
        version: str = "",
        timeout_s: float | None = 60.0,
    ) -> None:
        self.spec = spec
        self.url = url
        self.model = model
        self.protocol: TritonProtocol = protocol
        self.version = version
        self.timeout_s = timeout_s
        self.clients = TritonClients(url, protocol)
        metadata = triton_metadata(self.client, protocol, model, version)
        self.platform = str(metadata.get("platform", ""))
        served = {str(o["name"]) for o in metadata.get("outputs", [])}
        self.output_map: dict[str, str] = {}
        for name in spec.output_names:
            wire = spec.backend_output_name(name, "pytorch_libtorch") if self.platform == "pytorch_libtorch" else name
            if served and wire not in served:
                raise RunnerError(
                    f"Triton model {model} has no output `{wire}` (it serves {sorted(served)})",
                    hint="the export spec and the served model disagree: re-export, or check --model",
                )
            self.output_map[name] = wire
        self.max_batch_size = triton_max_batch_size(self.client, protocol, model, version)

    @property
    def client(self) -> Any:
        """The calling thread's tritonclient client."""
        return self.clients.get()

    @property
    def description(self) -> str:
        """Server, protocol and platform."""
        return f"triton {self.protocol}://{self.url} {self.model} ({self.platform or 'unknown platform'})"

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch on the server (split into ``max_batch_size`` requests when larger)."""
        _check_feed(self.spec, tensors)
        feed = {n: tensors[n].reshape(-1, 1) if tensors[n].ndim == 1 else tensors[n] for n in self.spec.input_names}
        rows = len(next(iter(feed.values())))
        if rows == 0:
            return {n: np.zeros(0, dtype=np.float32) for n in self.spec.output_names}
        step = self.max_batch_size if self.max_batch_size > 0 else rows
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.spec.output_names}
        wire_names = [self.output_map[n] for n in self.spec.output_names]
        for start in range(0, rows, step):
            chunk = {n: v[start : start + step] for n, v in feed.items()}
            answer = triton_infer(
                self.client, self.protocol, self.model, chunk, wire_names, self.version, self.timeout_s
            )
            for name in self.spec.output_names:
                parts[name].append(answer[self.output_map[name]].astype(np.float32).reshape(-1))
        return {n: np.concatenate(v) for n, v in parts.items()}

    def close(self) -> None:
        """Close the clients' connections."""
        self.clients.close()
