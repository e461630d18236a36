"""Config of the on-disk piece store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dfagent.configload import Problem
from dfagent.configtypes import ByteSize, Duration

__all__ = ["StorageConfig", "default_storage_dir"]

MIN_PIECE_SIZE = 64 * 1024
MAX_PIECE_SIZE = 64 * 1024 * 1024


def default_storage_dir() -> str:
    """`/var/cache/dfagent` for root (the DaemonSet), else the user's cache directory."""
    if os.geteuid() == 0:
        return "/var/cache/dfagent"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "dfagent")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    dir: str = field(default_factory=default_storage_dir)
    # dfagent's own bytes on disk (never the filesystem's usage); least recently used blobs
    # are evicted to stay under it.
    quota: ByteSize = ByteSize(20 * 1024**3)
    # Blobs are cut into pieces of this size: the unit of caching, hashing and sharing.
    piece_size: ByteSize = ByteSize(1024 * 1024)
    # Eviction starts when the cache holds more than high_watermark x quota and frees least
    # recently used blobs down to low_watermark x quota.
    high_watermark: float = 0.9
    low_watermark: float = 0.7
    # Blobs not read for this long are evicted (null: never).
    max_age: Duration | None = Duration(30 * 86400)
    # How often the eviction passes run (they also run as soon as the high watermark is passed).
    gc_interval: Duration = Duration(60)
    # A slow background pass re-hashes every stored piece against its recorded sha256 this
    # often (null: never), reading at most scrub_rate bytes per second.
    scrub_interval: Duration | None = Duration(86400)
    scrub_rate: ByteSize = ByteSize(16 * 1024 * 1024)
    # Re-hash every piece read from the cache before sending it (slower: no sendfile).
    verify_reads: bool = False

    def check(self) -> list[Problem]:
        problems: list[Problem] = []
        if not 0 < self.high_watermark <= 1:
            problems.append(("high_watermark", f"must be > 0 and <= 1, got {self.high_watermark}"))
        if not 0 < self.low_watermark < 1:
            problems.append(("low_watermark", f"must be > 0 and < 1, got {self.low_watermark}"))
        if self.low_watermark >= self.high_watermark:
            problems.append(
                (
                    ("low_watermark", "high_watermark"),
                    f"must be below high_watermark ({self.high_watermark}), "
                    f"got {self.low_watermark}",
                )
            )
        if self.gc_interval <= 0:
            problems.append(("gc_interval", "must be positive"))
        if self.max_age is not None and self.max_age <= 0:
            problems.append(("max_age", "must be positive (null turns age eviction off)"))
        if self.scrub_interval is not None and self.scrub_interval <= 0:
            problems.append(("scrub_interval", "must be positive (null turns the scrub off)"))
        if self.scrub_rate < 64 * 1024:
            problems.append(("scrub_rate", "must be at least 64KiB (per second)"))
        if not self.dir:
            problems.append(("dir", "cannot be empty"))
        if self.piece_size & (self.piece_size - 1) or not (
            MIN_PIECE_SIZE <= self.piece_size <= MAX_PIECE_SIZE
        ):
            problems.append(("piece_size", "must be a power of two from 64KiB to 64MiB"))
        if self.quota < self.piece_size:
            problems.append(
                (("quota", "piece_size"), f"must hold at least one piece ({self.piece_size})")
            )
        return problems
