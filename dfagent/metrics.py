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
            "Blob bytes sent to clients, by where they came from (local, peer, origin).",
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
            "dfagent_cache_bytes", "Bytes of pieces held in the local cache.", registry=r
        )
        self.cache_blobs = Gauge(
            "dfagent_cache_blobs", "Blobs with at least a record in the local cache.", registry=r
        )
        self.cache_quota_bytes = Gauge(
            "dfagent_cache_quota_bytes", "storage.quota: the cache's own byte budget.", registry=r
        )
        self.cache_pieces = Gauge(
            "dfagent_cache_pieces", "Pieces held in the local cache.", registry=r
        )
        self.evicted_blobs = Counter(
            "dfagent_evicted_blobs",
            "Blobs evicted, by reason (quota: over the high watermark; age: storage.max_age).",
            ["reason"],
            registry=r,
        )
        self.evicted_bytes = Counter(
            "dfagent_evicted_bytes", "Bytes freed by eviction.", registry=r
        )
        self.storage_full = Counter(
            "dfagent_storage_full",
            "Pieces not cached because the disk was full (ENOSPC); they were still served.",
            registry=r,
        )
        self.storage_write_errors = Counter(
            "dfagent_storage_write_errors",
            "Pieces not cached because of another write error; they were still served.",
            registry=r,
        )
        self.blob_verify_failures = Counter(
            "dfagent_blob_verify_failures",
            "Whole blobs whose bytes did not match their digest (purged).",
            registry=r,
        )
        self.blob_verify_seconds = Histogram(
            "dfagent_blob_verify_seconds",
            "Time to hash a whole blob against its digest.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.peer_requests = Counter(
            "dfagent_peer_requests",
            "Requests to this agent's peer server, by kind (piece: a held piece sent; relay: a"
            " piece passed on while it arrived here; recorded: the sha256 a home records for a"
            " piece, which records its asker as holding the piece when the copy it names"
            " matches; progress: how far a piece has arrived here; lookup, announce, busy,"
            " refused).",
            ["kind"],
            registry=r,
        )
        self.uploaded_bytes = Counter(
            "dfagent_uploaded_bytes", "Piece bytes sent to other agents.", registry=r
        )
        self.peer_bad_pieces = Counter(
            "dfagent_peer_bad_pieces",
            "Pieces from peers that failed their recorded sha256 (never used; peer reported).",
            registry=r,
        )
        self.directory_lookups = Counter(
            "dfagent_directory_lookups",
            "Directory lookups at blob homes, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.home_requests = Counter(
            "dfagent_home_requests",
            "Lookups and sha256 queries sent to blob homes, by kind (lookup, recorded): one at "
            "a time per blob, each asking about every piece that came up meanwhile.",
            ["kind"],
            registry=r,
        )
        self.home_pieces_asked = Counter(
            "dfagent_home_pieces_asked",
            "Pieces those requests asked about, by kind (over dfagent_home_requests_total: "
            "pieces a request).",
            ["kind"],
            registry=r,
        )
        self.tree_fills = Counter(
            "dfagent_tree_fills",
            "Whole blobs read by taking each piece from this agent's parent in its stripe tree "
            "(no question to the blob's home; staged, proven with the whole blob), by outcome: "
            "verified, not_proven (the blob failed its digest, or a piece could not be stored: "
            "each piece fetched again and proven on its own), not_filled (a parent did not "
            "send a piece before any parent did, say to a member reading the blob alone; or a "
            "piece came neither from its parent nor the usual way, or could not be staged: "
            "read the usual way).",
            ["outcome"],
            registry=r,
        )
        self.tree_fill_pieces = Counter(
            "dfagent_tree_fill_pieces",
            "Pieces those reads took from tree parents (staged).",
            registry=r,
        )
        self.tree_stripes_usual = Counter(
            "dfagent_tree_stripes_usual",
            "Stripes of those reads whose parent did not send a piece once others had (it "
            "began the blob late, or failed): from that piece on, the stripe came the usual "
            "way.",
            registry=r,
        )
        self.directory_lookup_seconds = Histogram(
            "dfagent_directory_lookup_seconds",
            "Latency of directory lookups.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.peer_early_requests = Counter(
            "dfagent_peer_early_requests",
            "Piece requests held here until the piece began to arrive (up to half a second):"
            " from members sent here early as their parent in the piece's stripe tree (or for"
            " a copy this agent no longer has), by outcome (arrived, not_arrived: answered"
            " 404).",
            ["outcome"],
            registry=r,
        )
        self.peer_early_requests_waiting = Gauge(
            "dfagent_peer_early_requests_waiting",
            "Piece requests held here now until the piece begins to arrive.",
            registry=r,
        )
        self.peer_waits = Counter(
            "dfagent_peer_waits",
            "Times the swarm told this agent to ask again shortly for a piece: the node it is to"
            " take it from (its parent in the piece's stripe tree) was about to receive it.",
            registry=r,
        )
        self.peer_fallbacks = Counter(
            "dfagent_peer_fallbacks",
            "Pieces the swarm was asked for that this agent then took from the origin itself,"
            " by why: no_holder (none delivered good bytes, and nobody was fetching it), busy"
            " (every holder stayed busy), stalled (no byte reached the peer fetching it for a"
            " second, and this agent took its fetch over), unreachable (that peer stopped"
            " answering), released (it gave the fetch up, or, a parent in the piece's stripe"
            " tree, never took the piece up), parent_late (told to wait for the peer to take"
            " it from, which did not come), timeout (waited the longest allowed).",
            ["reason"],
            registry=r,
        )
        self.origin_fetches_avoided = Counter(
            "dfagent_origin_fetches_avoided",
            "Pieces fetched from peers instead of the origin.",
            registry=r,
        )
        self.peers_known = Gauge(
            "dfagent_peers_known", "Other agents in the swarm membership.", registry=r
        )
        self.peers_healthy = Gauge(
            "dfagent_peers_healthy",
            "Other agents whose last contact succeeded (or not yet contacted).",
            registry=r,
        )
        self.scrubbed_pieces = Counter(
            "dfagent_scrub_pieces", "Stored pieces re-hashed by the scrub.", registry=r
        )
        self.scrubbed_bytes = Counter(
            "dfagent_scrub_bytes", "Stored bytes re-hashed by the scrub.", registry=r
        )
        self.scrub_bad_pieces = Counter(
            "dfagent_scrub_bad_pieces",
            "Stored pieces whose bytes no longer matched their recorded sha256 (dropped).",
            registry=r,
        )
        self.scrub_passes = Counter(
            "dfagent_scrub_passes", "Completed scrub passes over the whole cache.", registry=r
        )
        self.chunk_maps = Counter(
            "dfagent_chunk_maps",
            "Nydus chunk maps learned, by how (bootstrap: a verified bootstrap layer).",
            ["how"],
            registry=r,
        )
        self.chunk_maps_contested = Counter(
            "dfagent_chunk_maps_contested",
            "Times a nydus data blob's chunk map was set aside: a bootstrap contradicted the map"
            " known for it, with nothing here to prove either, or the blob, read whole and proven"
            " by its digest, contradicted the map; no map is used for it (it is read like a blob"
            " that is not nydus). A blob contested again counts again.",
            registry=r,
        )
        self.chunk_map_vouchers = Counter(
            "dfagent_chunk_map_vouchers",
            "Registries that came to vouch for a chunk map (a bootstrap layer they hold gave it);"
            " chunk-proven pieces serve their clients.",
            registry=r,
        )
        self.chunks_verified = Counter(
            "dfagent_chunks_verified",
            "Nydus chunks whose digest matched the image's before they were served, by digest"
            " algorithm.",
            ["algorithm"],
            registry=r,
        )
        self.chunk_verify_failures = Counter(
            "dfagent_chunk_verify_failures",
            "Pieces holding a nydus chunk that did not match the image's digest (never served;"
            " fetched again), by where the bytes came from (origin, peer, disk).",
            ["source"],
            registry=r,
        )
        self.scheduler_calls = Counter(
            "dfagent_scheduler_calls",
            "Calls to Dragonfly schedulers, by call and result (ok, error, timeout; a"
            " registration also by answer: parents, back_to_source, empty).",
            ["call", "result"],
            registry=r,
        )
        self.dragonfly_download_bytes = Counter(
            "dfagent_dragonfly_download_bytes",
            "Bytes of Dragonfly pieces this agent completed, by where they came from, as"
            " Dragonfly's own traffic types (REMOTE_PEER: a parent, BACK_TO_SOURCE: the origin).",
            ["type"],
            registry=r,
        )
        self.dragonfly_upload_bytes = Counter(
            "dfagent_dragonfly_upload_bytes",
            "Bytes of Dragonfly pieces this agent sent to other members over Vortex.",
            registry=r,
        )
        self.dragonfly_bad_pieces = Counter(
            "dfagent_dragonfly_bad_pieces",
            "Dragonfly pieces from a parent that were not used, by reason (transfer: broken"
            " off or a crc32 mismatch; proof: the bytes failed dfagent's own proof).",
            ["reason"],
            registry=r,
        )
        self.preheat_jobs = Counter(
            "dfagent_preheat_jobs",
            "Finished preheat jobs taken by this agent, by outcome (succeeded, failed).",
            ["outcome"],
            registry=r,
        )
