"""Config of the on-disk piece store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dfagent.configtypes import ByteSize

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

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if not self.dir:
            problems.append(("dir", "cannot be empty"))
        if self.piece_size & (self.piece_size - 1) or not (
            MIN_PIECE_SIZE <= self.piece_size <= MAX_PIECE_SIZE
        ):
            problems.append(("piece_size", "must be a power of two from 64KiB to 64MiB"))
        if self.quota < self.piece_size:
            problems.append(("quota", f"must hold at least one piece ({self.piece_size})"))
        return problems
