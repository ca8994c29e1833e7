"""Prometheus metrics of the server: one private registry per app, served at ``GET /metrics``.

Histograms (not summaries) so that a fleet's percentiles can be aggregated; labels are bounded: the route template
(never the raw path), the served model name (``-`` for an unknown one), the HTTP status code and a few fixed
reasons. Overload shows as the queue depth (a gauge now, a histogram of what each arrival found), the time spent
queued, and counters of requests refused (``queue_full``), expired (by stage) and abandoned by their client.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
QUEUE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class ModelMetrics:
    """The series of one model that every request or batch updates (children of :class:`ServerMetrics`' metrics)."""

    rows: Counter
    queue_at_arrival: Histogram
    queue_wait: Histogram
    batch_size: Histogram
    batch_requests: Histogram
    batch_latency: Histogram


class ServerMetrics:
    """Request, batch, OOV and queue metrics of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "mtlrec_request_latency_seconds",
            "Time from request arrival to response, per route and model",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "mtlrec_requests",
            "Prediction requests, per route, model and status",
            ["route", "model", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "mtlrec_request_errors",
            "Prediction requests answered with an error status",
            ["route", "model", "code"],
            registry=self.registry,
        )
        self.rows = Counter("mtlrec_rows", "Rows (records) scored, per model", ["model"], registry=self.registry)
        self.oov = Counter(
            "mtlrec_oov_values",
            "Categorical values unseen in training, per model and field",
            ["model", "field"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mtlrec_batch_size_rows",
            "Rows per runner call (after micro-batching)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "mtlrec_batch_requests",
            "Requests merged into one runner call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "mtlrec_batch_latency_seconds",
            "Duration of one runner call",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "mtlrec_queue_depth_rows", "Rows waiting for a runner call", ["model"], registry=self.registry
        )
        self.model_version = Gauge(
            "mtlrec_model_version", "Version being served, per model", ["model"], registry=self.registry
        )
        self.reloads = Counter(
            "mtlrec_model_reloads",
            "Model reloads, per model and outcome",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.queue_requests = Gauge(
            "mtlrec_queue_depth_requests", "Requests waiting for a runner call", ["model"], registry=self.registry
        )
        self.queue_at_arrival = Histogram(
            "mtlrec_queue_depth_at_arrival_requests",
            "Requests already waiting when a request reached the model's queue",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "mtlrec_queue_wait_seconds",
            "Time a request waited in the queue before its runner call",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "mtlrec_rejected_requests",
            "Requests refused without queueing, per model and reason (queue_full)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.expired = Counter(
            "mtlrec_expired_requests",
            "Requests whose deadline passed, per model and stage: arrival or queue (no model call), compute",
            ["model", "stage"],
            registry=self.registry,
        )
        self.abandoned = Counter(
            "mtlrec_abandoned_requests",
            "Queued requests dropped because their client disconnected (no model call)",
            ["model"],
            registry=self.registry,
        )
        self.warmup = Histogram(
            "mtlrec_model_warmup_seconds",
            "Warm-up of a model version (every warm-up batch size) before it was served",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "mtlrec_ready", "1 when /v2/health/ready answers 200 (loaded, warmed, not draining)", registry=self.registry
        )
        self.inflight = Gauge(
            "mtlrec_inflight_requests", "HTTP requests accepted and not yet answered", registry=self.registry
        )

    def for_model(self, name: str) -> ModelMetrics:
        """The per-model series of ``name``, looked up once (a label lookup takes a lock; requests then skip it)."""
        return ModelMetrics(
            rows=self.rows.labels(name),
            queue_at_arrival=self.queue_at_arrival.labels(name),
            queue_wait=self.queue_wait.labels(name),
            batch_size=self.batch_size.labels(name),
            batch_requests=self.batch_requests.labels(name),
            batch_latency=self.batch_latency.labels(name),
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
