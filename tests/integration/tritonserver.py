"""Start the real ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel, for tests; see README.md here.

:func:`locate_triton` finds the Triton tier's virtual environment (``.venv-triton``, made by
``scripts/setup_triton.sh``) and the server inside it, or says why it cannot. :func:`triton_server` is a context
manager that assembles a backend directory (the wheel's python backend and stub + our test-only ``onnxruntime`` and
``pytorch`` shims from ``triton_backends/``), starts the server on free 127.0.0.1 ports with explicit model control,
no metrics and a short exit timeout, waits for readiness with a deadline and always kills the server (and its
python-backend stub processes) on exit.

The environment follows serving.md §1.4: the wheel's ``nvidia_pytriton.libs`` and the venv interpreter's
``sysconfig`` LIBDIR first on ``LD_LIBRARY_PATH`` (vendored libcudart; the right libpython), the venv's ``bin`` first
on ``PATH`` (the stub's embedded Python finds the venv's packages, numpy<2 among them).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-triton"
SHIMS = Path(__file__).resolve().parent / "triton_backends"
SETUP_HINT = (
    "run `bash scripts/setup_triton.sh` to create it; that script fails, and this tier skips, only where the "
    "nvidia-pytriton wheel cannot be installed (no PyPI access, or not Linux x86_64/aarch64 with glibc >= 2.35)"
)


@dataclass(frozen=True)
class TritonInstall:
    """Where the Triton tier's pieces are.

    Attributes:
        venv: the virtual environment whose Python runs inside Triton (numpy<2, onnxruntime, torch, mtlrec).
        server_dir: ``.../site-packages/pytriton/tritonserver`` (``bin/``, ``backends/python/``, stubs).
        libs: the wheel's ``nvidia_pytriton.libs`` (libtritonserver, vendored libcudart...).
        libdir: the venv interpreter's ``sysconfig`` LIBDIR (its libpython).
        python_version: ``"3.11"``-style version of the venv's interpreter: which stub to use.
    """

    venv: Path
    server_dir: Path
    libs: Path
    libdir: str
    python_version: str

    @property
    def binary(self) -> Path:
        """The ``tritonserver`` executable."""
        return self.server_dir / "bin" / "tritonserver"


def locate_triton(venv: Path = DEFAULT_VENV) -> TritonInstall | str:
    """The Triton install in ``venv``, or a sentence saying what is missing (a skip reason)."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"no Triton tier environment at {venv}: {SETUP_HINT}"
    probe = (
        "import json, pathlib, sys, sysconfig, numpy, pytriton\n"
        "d = pathlib.Path(pytriton.__file__).parent\n"
        "print(json.dumps({'server_dir': str(d / 'tritonserver'), 'libs': str(d.parent / 'nvidia_pytriton.libs'),"
        " 'libdir': sysconfig.get_config_var('LIBDIR'), 'numpy': numpy.__version__,"
        " 'version': '%d.%d' % sys.version_info[:2]}))\n"
    )
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python}: {exc}; {SETUP_HINT}"
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"{venv} lacks nvidia-pytriton or numpy ({last[0]}); {SETUP_HINT}"
    found = json.loads(done.stdout)
    if int(found["numpy"].split(".")[0]) >= 2:
        return f"{venv} has numpy {found['numpy']}; Triton 2.51's python backend needs numpy<2: {SETUP_HINT}"
    install = TritonInstall(
        venv=venv,
        server_dir=Path(found["server_dir"]),
        libs=Path(found["libs"]),
        libdir=found["libdir"],
        python_version=found["version"],
    )
    stub = install.server_dir / "python_backend_stubs" / install.python_version / "triton_python_backend_stub"
    for needed in (install.binary, install.server_dir / "backends" / "python" / "libtriton_python.so", stub):
        if not needed.exists():
            return f"the nvidia-pytriton install in {venv} lacks {needed}; {SETUP_HINT}"
    return install


@dataclass
class TritonServer:
    """A running server: ``host:port`` URLs as tritonclient wants them, and the log file."""

    http_url: str
    grpc_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """The server's log so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")


def assemble_backends(install: TritonInstall, target: Path) -> Path:
    """A ``--backend-directory``: the wheel's python backend and stub, plus our ``onnxruntime``/``pytorch`` shims."""
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (install.server_dir / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    stub = install.server_dir / "python_backend_stubs" / install.python_version / "triton_python_backend_stub"
    shutil.copy2(stub, python / stub.name)
    for shim in ("onnxruntime", "pytorch"):
        (target / shim).mkdir(exist_ok=True)
        shutil.copy2(SHIMS / shim / "model.py", target / shim / "model.py")
    return target


def server_env(install: TritonInstall) -> dict[str, str]:
    """The process environment of serving.md §1.4 (library paths, PATH, no foreign Python settings)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    front = [str(install.libs), install.libdir]
    env["LD_LIBRARY_PATH"] = ":".join(front + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    env["PATH"] = f"{install.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["VIRTUAL_ENV"] = str(install.venv)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ready(http_url: str, grpc_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as reply:
            if reply.status != 200:
                return False
    except (urllib.error.URLError, OSError):
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", grpc_port), timeout=2):
        return True
    return False


def _post(http_url: str, path: str, timeout_s: float) -> Any:
    request = urllib.request.Request(f"http://{http_url}/{path}", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        body = reply.read()
    return json.loads(body) if body else None


def _unload_all(http_url: str, deadline_s: float) -> None:
    """Unload every model so that the python-backend stubs exit cleanly (and free their shared memory)."""
    deadline = time.monotonic() + deadline_s
    with contextlib.suppress(OSError, ValueError):
        for model in _post(http_url, "v2/repository/index", 5):
            if model.get("state") == "READY":
                _post(http_url, f"v2/repository/models/{urllib.parse.quote(model['name'])}/unload", 5)
        while time.monotonic() < deadline:
            states = {m.get("state") for m in _post(http_url, "v2/repository/index", 5)}
            if not states & {"READY", "UNLOADING", "LOADING"}:
                return
            time.sleep(0.1)


def _stop(server: TritonServer, grace_s: float, shm_prefix: str) -> None:
    """Unload the models, SIGTERM the server, SIGKILL its whole process group after ``grace_s``, free its shm."""
    process = server.process
    if process.poll() is None:
        _unload_all(server.http_url, deadline_s=15)
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the group is ours (start_new_session=True): stubs included
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    # Stubs killed mid-way leave their regions behind; the prefix is unique to this server.
    for region in Path("/dev/shm").glob(f"{shm_prefix}*"):
        with contextlib.suppress(OSError):
            region.unlink()


@contextlib.contextmanager
def triton_server(
    install: TritonInstall,
    repository: Path,
    workdir: Path,
    *,
    startup_timeout_s: float = 60.0,
    exit_timeout_s: int = 2,
    extra_args: tuple[str, ...] = (),
) -> Iterator[TritonServer]:
    """Run tritonserver over ``repository`` (explicit model control: nothing loaded) on 127.0.0.1.

    Raises:
        RuntimeError: the server exited or was not ready within ``startup_timeout_s``; the message ends with the log.
    """
    backends = assemble_backends(install, workdir / "backends")
    shm_prefix = f"mtlrec_triton_{os.getpid()}_{secrets.token_hex(4)}_"
    attempts = 3  # a free port can be taken between probing it and the server binding it
    for attempt in range(1, attempts + 1):
        http_port, grpc_port = _free_ports(2)
        log_path = workdir / f"tritonserver-{attempt}.log"
        command = [
            str(install.binary),
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            f"--exit-timeout-secs={exit_timeout_s}",
            "--strict-readiness=true",
            "--log-verbose=0",
            *extra_args,
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(install),
                cwd=workdir,
                start_new_session=True,
            )
        server = TritonServer(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process, log_path)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not _ready(server.http_url, grpc_port):
                if process.poll() is not None:
                    text = server.log()
                    if "already in use" in text.lower() and attempt < attempts:
                        break
                    raise RuntimeError(f"tritonserver exited with {process.returncode} before ready; log:\n{text}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tritonserver not ready after {startup_timeout_s:.0f} s; log:\n{server.log()}")
                time.sleep(0.2)
            else:
                yield server
                return
        finally:
            _stop(server, grace_s=exit_timeout_s + 5, shm_prefix=shm_prefix)
    raise RuntimeError("tritonserver could not bind free ports on 127.0.0.1")
