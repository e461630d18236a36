"""Config of who may read what the cache holds."""

from __future__ import annotations

from dataclasses import dataclass

from dfagent.configtypes import Duration

__all__ = ["AuthConfig"]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # Confirm a client's credentials at the origin (HEAD on the blob) before serving it a
    # cached or peer-held blob. Turning this off lets any local client read any blob the
    # node holds: only for single-tenant clusters.
    check_clients: bool = True
    # How long a confirmation (or a blob found public) is trusted.
    cache_ttl: Duration = Duration(300)
