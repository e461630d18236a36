"""Rendezvous (highest random weight) hashing: every agent computes the same home for a blob
from the same member list, and a member joining or leaving moves only its own share."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["home_of", "ranked"]


def _weight(member: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest())


def ranked(members: Sequence[str], key: str) -> list[str]:
    """Members in order of preference for `key`: the first is its home, the next its backups."""
    return sorted(members, key=lambda member: _weight(member, key), reverse=True)


def home_of(members: Sequence[str], key: str) -> str:
    return max(members, key=lambda member: _weight(member, key))
