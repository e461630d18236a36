"""Config of the client that talks to origin registries."""

from __future__ import annotations

from dataclasses import dataclass

from dfagent.configtypes import ByteSize, Duration

__all__ = ["OriginConfig"]


@dataclass(frozen=True, slots=True)
class OriginConfig:
    connect_timeout: Duration = Duration(5)
    # Longest silence allowed while reading an origin response.
    read_timeout: Duration = Duration(30)
    # Extra attempts for connection errors and 5xx answers, with jittered backoff.
    retries: int = 3
    # Cap on how long a blob's redirect target (a signed storage URL) is reused.
    redirect_ttl: Duration = Duration(600)
    max_connections: int = 100
    # Extra CA certificates (PEM) to trust for origins, on top of the system's.
    ca_file: str | None = None
    # Do not verify origin certificates. Only for testing; never in production.
    insecure_skip_verify: bool = False
    # Bytes per second that origin reads nobody waits for (background completions, a doubted
    # chunk map's whole reads) may take together (null: no cap).
    prefetch_bandwidth: ByteSize | None = ByteSize(32 * 1024 * 1024)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if not 0 <= self.retries <= 10:
            problems.append(("retries", "must be from 0 to 10"))
        if self.connect_timeout <= 0:
            problems.append(("connect_timeout", "must be positive"))
        if self.read_timeout <= 0:
            problems.append(("read_timeout", "must be positive"))
        if self.max_connections < 1:
            problems.append(("max_connections", "must be at least 1"))
        if self.prefetch_bandwidth is not None and self.prefetch_bandwidth < 64 * 1024:
            problems.append(("prefetch_bandwidth", "must be at least 64KiB (per second)"))
        return problems
