"""Load test of a served mtlrec model: the records API, and the KServe v2 / Triton protocol over HTTP and gRPC.

Three users, one per protocol (name one on the command line):

* ``RecordsUser``: ``POST /v1/models/{model}/predict`` with ``{"records": [...]}`` of raw feature values
  (``mtlrec serve``);
* ``V2HttpUser``: ``tritonclient.http`` ``infer`` on ``/v2/models/{model}/infer`` with the encoded tensors
  (``mtlrec serve`` or Triton; binary tensors by default, ``--v2-encoding json`` for plain JSON);
* ``V2GrpcUser``: ``tritonclient.grpc`` ``infer`` (Triton's gRPC port; ``--grpc-url`` when it is not ``--host``'s).

Payloads come from the exported model's schema (:mod:`mtlrec.loadtest.payloads`): realistic raw records (the
synthetic impression log's distributions when the model was trained on it, else the fitted vocabularies), with
``--records-per-request`` rows per request and an optional ``--scenario-mix``. The v2 users need ``--repo`` (the
served repository) to encode records into tensors with the run's own preprocessor.

Users are closed-loop by default (the next request as soon as the answer is in). ``--target-rps R`` makes the run
open-loop: each of the N users sends on a fixed schedule of R / N requests a second (random phase), never skipping a
slot when it falls behind, and records how late each request left, so the report can count latency from the
scheduled send time (coordinated omission corrected) and say whether the generator kept up.

Every request is timed here with ``time.perf_counter`` and recorded by a request listener (locust's statistics
round sub-100 ms times to the millisecond); ``--timings-out FILE`` writes them as JSON at exit for
``mtlrec loadtest``'s report. A guard greenlet stops the run when more than ``--abort-fail-ratio`` of the requests
fail. Keep runs bounded (``-t``) and on 127.0.0.1: ``mtlrec loadtest`` does both.

Run::

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 20s --host http://127.0.0.1:8000 \\
        --model mmoe --repo model_repository --records-per-request 1 V2HttpUser

Debug one user in-process: ``python loadtests/locustfile.py`` (options from the ``MTLREC_LOAD_*`` variables).
"""

import locust  # noqa: F401  (first: locust monkey-patches the standard library with gevent on import)

# gRPC's C core does not yield to gevent on its own: without this, gRPC users run one at a time. It must run before
# any channel exists; the clients are closed in on_stop, or the process hangs in Channel.close at exit.
try:
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()
except ImportError:  # tritonclient[grpc] is optional; V2GrpcUser then reports the missing module
    pass

import itertools
import json
import logging
import os
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import numpy as np
from locust import User, constant, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, MasterRunner

from mtlrec.loadtest.payloads import (
    load_model_files,
    parse_scenario_mix,
    raw_records,
    record_request_bytes,
    record_requests,
    tensor_requests,
)
from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, SparseField, TaskSpec

logger = logging.getLogger("mtlrec.loadtest")

# Requests and errors as this process measured them: (start, ms, ok, records, late_ms), written by --timings-out.
TIMINGS: list[tuple[float, float, bool, int, float]] = []
ERRORS: Counter[str] = Counter()


# ------------------------------------------------------------------------------------------------ options
@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("mtlrec", "what to send")
    env = os.environ.get
    group.add_argument("--model", default=env("MTLREC_LOAD_MODEL", "mmoe"), help="served model name")
    group.add_argument("--model-version", default=env("MTLREC_LOAD_VERSION", ""), help="version; '' = newest")
    group.add_argument(
        "--repo",
        default=env("MTLREC_LOAD_REPO", ""),
        help="the served model repository: schema and transform of the payloads (required by the v2 users)",
    )
    group.add_argument(
        "--records-per-request", type=int, default=int(env("MTLREC_LOAD_RECORDS", "1")), help="rows per request"
    )
    group.add_argument(
        "--scenario-mix",
        default=env("MTLREC_LOAD_SCENARIO_MIX", "natural"),
        help="NAME=WEIGHT,... scenario shares of the records; 'natural' keeps the data's own mix",
    )
    group.add_argument("--payloads", type=int, default=256, help="distinct requests in the pool each user cycles")
    group.add_argument("--payload-seed", type=int, default=0, help="seed of the payload pool")
    group.add_argument("--v2-encoding", choices=["binary", "json"], default="binary", help="v2 tensor encoding")
    group.add_argument("--grpc-url", default="", help="gRPC address host:port (default: --host's host and port)")
    group.add_argument("--timings-out", default="", help="write every request's timing to this JSON file at exit")
    group.add_argument(
        "--abort-fail-ratio", type=float, default=0.5, help="stop the run when more requests than this share fail"
    )
    group.add_argument(
        "--target-rps",
        type=float,
        default=0.0,
        help="open loop: send this many requests a second in all, on a fixed schedule (0: closed loop)",
    )


def _options(environment: Environment) -> Any:
    options = environment.parsed_options
    if options is None:  # run_single_user without a command line
        raise RuntimeError("no parsed options: run through `locust -f` or `mtlrec loadtest`")
    return options


# ------------------------------------------------------------------------------------------------ payloads
@dataclass
class Payloads:
    """The request pool of this process: records-API bodies and the same rows as v2 tensors."""

    model: str
    records_per_request: int
    bodies: list[bytes] = field(default_factory=list)
    tensors: list[dict[str, np.ndarray]] = field(default_factory=list)


_POOL: Payloads | None = None


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _schema_from_server(host: str, model: str) -> FeatureSchema:
    """A schema good enough for payloads from ``GET /v1/models/{model}`` (no vocabularies: no --repo)."""
    described = _get_json(f"{host.rstrip('/')}/v1/models/{model}")
    sparse = tuple(SparseField(name=f["name"]) for f in described["fields"] if f["kind"] == "categorical")
    dense = tuple(DenseField(name=f["name"]) for f in described["fields"] if f["kind"] == "numeric")
    scenario = described.get("scenario")
    return FeatureSchema(
        sparse=sparse,
        dense=dense,
        scenario=None if scenario is None else ScenarioField(name=scenario["name"], values=tuple(scenario["values"])),
        tasks=tuple(TaskSpec(name=t) for t in described["tasks"]),
    )


def payloads(environment: Environment, with_tensors: bool = False) -> Payloads:
    """The pool, built once per process (at test start, so that building it is not measured)."""
    global _POOL
    if _POOL is not None and (_POOL.tensors or not with_tensors):
        return _POOL
    options = _options(environment)
    rows = max(options.payloads * options.records_per_request, 64)
    mix = parse_scenario_mix(options.scenario_mix)
    pool = Payloads(options.model, options.records_per_request)
    if options.repo:
        version = int(options.model_version) if options.model_version else None
        files = load_model_files(Path(options.repo), options.model, version)
        frame = raw_records(files.schema, files.preprocessor, rows, options.payload_seed, mix)
        pool.tensors = tensor_requests(
            frame, files.preprocessor, files.spec, options.records_per_request, options.payloads, options.payload_seed
        )
    elif with_tensors:
        raise RuntimeError("the v2 users need --repo: tensors are encoded with the served model's preprocessor")
    else:
        frame = raw_records(
            _schema_from_server(environment.host or "", options.model), None, rows, options.payload_seed, mix
        )
    bodies = record_requests(frame, options.records_per_request, options.payloads, options.payload_seed)
    pool.bodies = record_request_bytes(bodies)
    _POOL = pool
    return pool


@events.test_start.add_listener
def _build_pool(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # workers build their own
    users = {cls.__name__ for cls in environment.user_classes}
    payloads(environment, with_tensors=bool(users & {"V2HttpUser", "V2GrpcUser"}))


# ------------------------------------------------------------------------------------------------ timings
@events.request.add_listener
def _record(
    response_time: float,
    exception: BaseException | None,
    context: dict[str, Any] | None = None,
    start_time: float | None = None,
    **_kwargs: Any,
) -> None:
    start = start_time if start_time is not None else time.time() - response_time / 1000.0
    context = context or {}
    late = float(context.get("late_ms", 0.0))
    TIMINGS.append((start, float(response_time), exception is None, int(context.get("records", 0)), late))
    if exception is not None:
        ERRORS[f"{type(exception).__name__}: {str(exception)[:200]}"] += 1


@events.quitting.add_listener
def _write_timings(environment: Environment, **_kwargs: Any) -> None:
    out = environment.parsed_options and environment.parsed_options.timings_out
    if out:
        Path(out).write_text(json.dumps({"timings": TIMINGS, "errors": dict(ERRORS)}))


def _fail_ratio_guard(environment: Environment, limit: float) -> None:
    """Stop the run when more than ``limit`` of at least 50 requests failed (a broken server, not a slow one)."""
    runner = environment.runner
    while runner is not None and runner.state not in ("stopped", "stopping", "cleanup"):
        gevent.sleep(1.0)
        total = environment.stats.total
        if total.num_requests >= 50 and total.fail_ratio > limit:
            logger.error("fail ratio %.2f > %.2f: stopping the run", total.fail_ratio, limit)
            runner.quit()
            return


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, MasterRunner | LocalRunner) and environment.parsed_options is not None:
        gevent.spawn(_fail_ratio_guard, environment, environment.parsed_options.abort_fail_ratio)


# ------------------------------------------------------------------------------------------------ pacing
class Pacer:
    """One user's send schedule: closed loop (never waits) or every ``interval_s`` from a random phase, open loop."""

    def __init__(self, environment: Environment) -> None:
        options = _options(environment)
        target = float(getattr(options, "target_rps", 0.0) or 0.0)
        users = max(1, int(getattr(options, "num_users", 1) or 1))
        self.interval_s = users / target if target > 0 else 0.0
        self.next_s = time.perf_counter() + random.random() * self.interval_s

    def wait(self) -> float:
        """Sleep until this user's next slot; return how late (ms) the request leaves (0 in closed loop)."""
        if not self.interval_s:
            return 0.0
        now = time.perf_counter()
        if now < self.next_s:
            gevent.sleep(self.next_s - now)
            now = time.perf_counter()
        late_ms = max(0.0, now - self.next_s) * 1000.0
        self.next_s += self.interval_s  # a fixed schedule: a slot missed is sent late, never dropped
        return late_ms


# ------------------------------------------------------------------------------------------------ users
class RecordsUser(FastHttpUser):
    """Raw records to ``POST /v1/models/{model}/predict``; a response must hold one prediction per record."""

    wait_time = constant(0)  # closed loop: the next request as soon as the answer is in

    def on_start(self) -> None:
        """Take the pool and start at a random request, so that users do not send the same rows in step."""
        pool = payloads(self.environment)
        self.path = f"/v1/models/{pool.model}/predict"
        self.records = pool.records_per_request
        self.cycle = itertools.islice(itertools.cycle(pool.bodies), random.randrange(len(pool.bodies)), None)
        self.pacer = Pacer(self.environment)

    @task
    def predict(self) -> None:
        """One request."""
        body = next(self.cycle)
        late_ms = self.pacer.wait()
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        with self.client.post(
            self.path,
            data=body,
            headers=headers,
            name="records",
            context={"records": self.records, "late_ms": late_ms},
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            predictions = json.loads(response.content or b"{}").get("predictions", [])
            if len(predictions) != self.records:
                response.failure(f"{len(predictions)} predictions for {self.records} records")


class _TritonUser(User):
    """A tritonclient ``InferenceServerClient`` per user; each call timed and fired as a request event."""

    abstract = True
    wait_time = constant(0)
    protocol = "http"

    def on_start(self) -> None:
        """Open the client and build the requests; a failure is a failed request, and the client is closed.

        locust calls on_stop only when a user is stopped, not when on_start raises: a gRPC client left open there
        hangs the process at exit, so it is closed here before the user stops.
        """
        started = time.time()
        try:
            self._start()
        except Exception as err:  # the server is down or the model unknown: report it and stop this user
            self.on_stop()
            self.environment.events.request.fire(
                request_type=f"v2-{self.protocol}",
                name="connect",
                response_time=(time.time() - started) * 1000.0,
                response_length=0,
                exception=err,
                context={"records": 0},
                start_time=started,
            )
            raise StopUser from None

    def _start(self) -> None:
        """Open the client, read the outputs from the model's metadata, and build the requests once."""
        options = _options(self.environment)
        pool = payloads(self.environment, with_tensors=True)
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module = module
        address = options.grpc_url if self.protocol == "grpc" and options.grpc_url else (self.host or "")
        for prefix in ("http://", "https://", "grpc://"):
            address = address.removeprefix(prefix)
        self.triton: Any = module.InferenceServerClient(address.rstrip("/"))
        self.model = pool.model
        self.version = options.model_version
        if self.protocol == "grpc":
            metadata = self.triton.get_model_metadata(self.model, self.version, as_json=True)
        else:
            metadata = self.triton.get_model_metadata(self.model, self.version)
        binary = options.v2_encoding == "binary"
        self.outputs = [o["name"] for o in metadata["outputs"]]
        self.requests = []
        for tensors in pool.tensors:
            inputs = []
            for name, array in tensors.items():
                tensor = module.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
                if self.protocol == "grpc":
                    tensor.set_data_from_numpy(array)
                else:
                    tensor.set_data_from_numpy(array, binary_data=binary)
                inputs.append(tensor)
            rows = int(next(iter(tensors.values())).shape[0])
            self.requests.append((inputs, rows))
        start = random.randrange(len(self.requests))
        self.cycle = itertools.islice(itertools.cycle(self.requests), start, None)
        self.pacer = Pacer(self.environment)

    def requested_outputs(self) -> list[Any]:
        """Fresh output requests (tritonclient mutates them per call)."""
        binary = _options(self.environment).v2_encoding == "binary"
        if self.protocol == "grpc":
            return [self.module.InferRequestedOutput(n) for n in self.outputs]
        return [self.module.InferRequestedOutput(n, binary_data=binary) for n in self.outputs]

    @task
    def infer(self) -> None:
        """One inference: timed with perf_counter; the answer must hold a score per row of every output."""
        inputs, rows = next(self.cycle)
        outputs = self.requested_outputs()
        late_ms = self.pacer.wait()
        exception: BaseException | None = None
        start_time = time.time()
        started = time.perf_counter()
        try:
            result = self.triton.infer(self.model, inputs, model_version=self.version, outputs=outputs)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            for name in self.outputs:
                value = result.as_numpy(name)
                if value is None or value.shape[0] != rows:
                    raise ValueError(f"output {name}: {None if value is None else value.shape} for {rows} rows")
        except Exception as err:  # every client or server failure is a failed request, never a crash of the user
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            exception = err
        self.environment.events.request.fire(
            request_type=f"v2-{self.protocol}",
            name="infer",
            response_time=elapsed_ms,
            response_length=rows,
            exception=exception,
            context={"records": rows, "late_ms": late_ms},
            start_time=start_time,
        )

    def on_stop(self) -> None:
        """Close the client (a gRPC channel left to the garbage collector hangs the process at exit)."""
        client = getattr(self, "triton", None)
        if client is not None:
            client.close()
            self.triton = None


class V2HttpUser(_TritonUser):
    """KServe v2 tensors through ``tritonclient.http`` (geventhttpclient: cooperates with locust's gevent)."""

    protocol = "http"


class V2GrpcUser(_TritonUser):
    """KServe v2 tensors through ``tritonclient.grpc`` (made gevent-safe at the top of this file)."""

    protocol = "grpc"


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(RecordsUser)
