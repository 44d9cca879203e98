"""Prometheus metrics of the serving path, in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
_ENTROPY_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """Requests, latency, entropy, per-adapter use, batch sizes, cache hits."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kizuna_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "kizuna_request_latency_seconds",
            "Request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.entropy = Histogram(
            "kizuna_entropy_mean",
            "Mean token entropy of replies (nats)",
            ["persona"],
            buckets=_ENTROPY_BUCKETS,
            registry=self.registry,
        )
        self.adapter_requests = Counter(
            "kizuna_adapter_requests",
            "Rows served per adapter version",
            ["persona", "version"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kizuna_batch_size",
            "Rows per engine batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_personas = Histogram(
            "kizuna_batch_distinct_adapters",
            "Distinct adapters per engine batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "kizuna_cache_lookups", "Result cache lookups", ["result"], registry=self.registry
        )

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
