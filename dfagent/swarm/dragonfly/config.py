"""Config of Dragonfly mode: the schedulers to join and how this host presents itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dfagent.configtypes import Duration, ListenAddress

__all__ = ["DragonflyConfig", "SchedulerTLS"]


@dataclass(frozen=True, slots=True)
class SchedulerTLS:
    """TLS to the schedulers: their certificates must chain to `ca`; `cert` and `key`, when
    given, are this host's client certificate (mutual TLS)."""

    ca: str
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class DragonflyConfig:
    # Scheduler gRPC addresses (host:port, Dragonfly's default port 8002). A blob's downloads
    # go to one of them, chosen by its task id, so every member asks the same scheduler.
    schedulers: tuple[str, ...] = field(default_factory=tuple)
    tls: SchedulerTLS | None = None
    # How this host is known in the cluster. Default: the machine's host name, and the local
    # address that routes to the first scheduler. The host id is "<ip>-<hostname>".
    hostname: str | None = None
    ip: str | None = None
    # Where dfdaemons (and other members) ask which pieces this host has (gRPC) and fetch them
    # (Vortex over TCP): Dragonfly's upload and TCP ports.
    upload: ListenAddress = ListenAddress("0.0.0.0", 4000)
    vortex: ListenAddress = ListenAddress("0.0.0.0", 4005)
    # How a blob's task is named, so that other members find it: "digest" (the blob's digest,
    # as dfdaemon's proxy names registry blobs by default) or "url" (the URL's hash, as dfget
    # and a proxy with enableTaskIDBasedBlobDigest off name them).
    task_id: Literal["digest", "url"] = "digest"
    # A seed peer (Dragonfly host type "super"): the scheduler may send it first fetches.
    seed: bool = False
    # How often the host is announced again.
    announce_interval: Duration = Duration(300)
    # How long lazy reads of a blob new here wait for the scheduler's answer before they read
    # from the origin; the registration goes on, and later reads use the parents it names.
    # A whole read waits for the answer (up to 30 s): it is served once proven whole anyway.
    schedule_timeout: Duration = Duration(2)
    # A parent that does not start sending a piece this fast is passed over.
    piece_timeout: Duration = Duration(5)
    # Dragonfly pieces kept in memory after a download, for neighbouring reads.
    piece_cache_bytes: int = 64 * 1024 * 1024

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for i, address in enumerate(self.schedulers):
            try:
                ListenAddress.parse(address)
            except ValueError as exc:
                problems.append((f"schedulers[{i}]", str(exc)))
        for name in ("announce_interval", "schedule_timeout", "piece_timeout"):
            if getattr(self, name) <= 0:
                problems.append((name, "must be positive"))
        if self.piece_cache_bytes < 0:
            problems.append(("piece_cache_bytes", "must not be negative"))
        if self.tls is not None and (self.tls.cert is None) != (self.tls.key is None):
            problems.append(("tls", "cert and key go together"))
        return problems
