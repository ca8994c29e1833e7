"""Test helpers for servers under load: a live uvicorn server on 127.0.0.1 and a runner that can hold calls."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import uvicorn


class LiveServer:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 in a daemon thread (lifespan, poller and all)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


class GatedRunner:
    """Wraps a runner: records the rows of every call and, while the gate is closed, holds calls until it opens.

    ``entered`` is set when a call starts waiting at the closed gate, so a test knows the model is busy.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.description = "gated"
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.gate.set()

    def close_gate(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(int(next(iter(tensors.values())).shape[0]))
        if not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(timeout=20), "the test never opened the gate"
        return dict(self.inner.infer(tensors))

    def close(self) -> None:
        self.inner.close()
