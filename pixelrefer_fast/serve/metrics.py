"""Prometheus metrics of one server (a private registry, served as text at `GET /metrics`).

- `pixelrefer_requests_total{status}`: chat completion requests by HTTP status;
- `pixelrefer_rows_finished_total{reason}`: answers by finish reason (stop, length, cancelled);
- `pixelrefer_queue_depth`: requests waiting for a batch;
- `pixelrefer_batch_size`: rows per batch (histogram);
- `pixelrefer_completion_tokens_total` and `pixelrefer_decode_tokens_per_second` (last batch);
- `pixelrefer_request_latency_seconds` (request in to last byte) and
  `pixelrefer_time_to_first_token_seconds` (histograms).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The metrics of one app instance (own registry, so several apps in a process do not collide)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pixelrefer_requests", "Chat completion requests by HTTP status", ["status"],
                                registry=r)
        self.rows_finished = Counter("pixelrefer_rows_finished", "Answers by finish reason", ["reason"], registry=r)
        self.queue_depth = Gauge("pixelrefer_queue_depth", "Requests waiting for a batch", registry=r)
        self.batch_size = Histogram("pixelrefer_batch_size", "Rows per batch", buckets=BATCH_BUCKETS, registry=r)
        self.completion_tokens = Counter("pixelrefer_completion_tokens", "Generated tokens", registry=r)
        self.tokens_per_second = Gauge("pixelrefer_decode_tokens_per_second",
                                       "Generated tokens per second of the last batch", registry=r)
        self.latency = Histogram("pixelrefer_request_latency_seconds", "Request latency (in to last byte)",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram("pixelrefer_time_to_first_token_seconds",
                                             "Time from arrival to the first text", buckets=LATENCY_BUCKETS,
                                             registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
