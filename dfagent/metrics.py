"""Every metric the agent exports, registered on a registry the Agent owns.

Label values come only from fixed sets (request kind, status class, source); never a URL,
digest, peer address or header value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """Metric objects, one instance per Agent (tests build fresh ones)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dfagent_proxy_requests",
            "Proxy requests by kind (blob, passthrough, connect) and status code class.",
            ["kind", "status"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "dfagent_proxy_requests_in_flight", "Proxy requests being handled now.", registry=r
        )
        self.served_bytes = Counter(
            "dfagent_served_bytes",
            "Blob bytes sent to clients, by where they came from (local, origin).",
            ["source"],
            registry=r,
        )
        self.origin_requests = Counter(
            "dfagent_origin_requests",
            "Requests sent to origin registries, by purpose and outcome.",
            ["purpose", "outcome"],
            registry=r,
        )
        self.origin_bytes = Counter(
            "dfagent_origin_bytes", "Blob bytes received from origin registries.", registry=r
        )
        self.piece_fetch_seconds = Histogram(
            "dfagent_piece_fetch_seconds",
            "Time to make one piece available, by source.",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_bytes = Gauge(
            "dfagent_cache_bytes", "Bytes of verified pieces held in the local cache.", registry=r
        )
        self.cache_pieces = Gauge(
            "dfagent_cache_pieces", "Pieces held in the local cache.", registry=r
        )
        self.evicted_blobs = Counter(
            "dfagent_evicted_blobs", "Blobs evicted to stay under storage.quota.", registry=r
        )
        self.storage_write_errors = Counter(
            "dfagent_storage_write_errors",
            "Pieces that could not be stored (served without caching).",
            registry=r,
        )
