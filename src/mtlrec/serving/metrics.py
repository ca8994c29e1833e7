"""Prometheus metrics of the server: one private registry per app, served at ``GET /metrics``.

Histograms (not summaries) so that a fleet's percentiles can be aggregated; labels are bounded: the route template
(never the raw path), the served model name (``-`` for an unknown one) and the HTTP status code.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


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

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
