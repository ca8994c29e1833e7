"""Running the app on uvicorn with the shutdown a Kubernetes rollout needs.

On SIGTERM, :class:`GracefulServer`:

1. marks the registry as draining at once: ``/v2/health/ready`` and the model ready routes answer 503, so the load
   balancer stops sending new traffic, while every request that still arrives is served normally (each response
   carries ``Connection: close``);
2. after ``grace_seconds`` (the time a readiness probe and the endpoint controller need to notice), stops accepting
   connections and lets uvicorn finish every request already accepted (up to ``drain_timeout_seconds``);
3. drains and closes the models, then returns, so ``mtlrec serve`` exits 0.

uvicorn alone would stop accepting at the first SIGTERM (requests routed during the probe delay are refused) and
re-raise the signal once it has stopped, so the process would end "killed by SIGTERM" (exit status 143) instead of
0. A second SIGTERM, or SIGINT (Ctrl-C), skips the grace period.

Example::

    app = create_app(Path("model_repository"), load_in_background=True)
    serve(app, host="127.0.0.1", port=8000, grace_seconds=5.0)
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger("mtlrec.serving")

DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_DRAIN_TIMEOUT_SECONDS = 30.0


class GracefulServer(uvicorn.Server):
    """uvicorn's server with a readiness-first, grace-period SIGTERM (see the module docstring).

    Args:
        config: the uvicorn config (its app is the one of :func:`~mtlrec.serving.app.create_app`).
        registry: the app's :class:`~mtlrec.serving.app.ModelRegistry` (its ``draining`` flag is set on SIGTERM).
        grace_seconds: seconds between SIGTERM and closing the listening socket.
    """

    def __init__(self, config: uvicorn.Config, registry: Any, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        super().__init__(config)
        self.registry = registry
        self.grace_seconds = grace_seconds
        self.stop_at: float | None = None  # time.monotonic() at which to stop accepting connections

    def begin_drain(self) -> None:
        """Report not ready now and stop accepting connections after the grace period (what SIGTERM does)."""
        if self.stop_at is not None:
            self.should_exit = True  # asked twice: stop now
            return
        self.registry.draining = True
        self.stop_at = time.monotonic() + self.grace_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: SIGTERM drains (and is not re-raised, so the exit status is 0); others as uvicorn."""
        if sig == signal.SIGTERM:
            self.begin_drain()  # flags only: this runs inside a signal handler
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 100 ms tick: also ends the grace period."""
        if self.stop_at is not None and not self.should_exit and time.monotonic() >= self.stop_at:
            logger.info("grace period over: no new connections; answering the requests accepted")
            self.should_exit = True
        return await super().on_tick(counter)


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
    log_level: str = "info",
    access_log: bool = False,
) -> Any:
    """Run ``app`` (from :func:`~mtlrec.serving.app.create_app`) until SIGTERM or SIGINT; see the module docstring.

    Args:
        app: the FastAPI app; ``app.state.registry`` is its model registry.
        host: interface to bind.
        port: TCP port.
        grace_seconds: after SIGTERM, how long to keep accepting connections while reporting not ready.
        drain_timeout_seconds: after that, how long accepted requests may take before they are cancelled.
        log_level: uvicorn's log level.
        access_log: log every request (uvicorn's access log). Off by default: a log line per request costs ~0.1 ms
            of CPU, as much as a small model's whole answer; /metrics counts requests per route, model and status.

    Returns:
        The app's request counters (``accepted``, ``answered``) at exit.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(max(1, drain_timeout_seconds)),
    )
    server = GracefulServer(config, app.state.registry, grace_seconds)
    server.run()
    return app.state.lifecycle
