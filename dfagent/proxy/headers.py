"""Header names the proxy speaks, and hop-by-hop filtering (RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

__all__ = [
    "DOWNLOAD_FINISHED",
    "ERROR_TYPE",
    "PREFETCH",
    "REGISTRY",
    "TASK_ID",
    "end_to_end",
]

REGISTRY = "X-Dragonfly-Registry"
TASK_ID = "X-Dragonfly-Task-ID"
ERROR_TYPE = "X-Dragonfly-Error-Type"
PREFETCH = "X-Dragonfly-Prefetch"
DOWNLOAD_FINISHED = "X-Dragonfly-Task-Download-Finished"
DRAGONFLY_PREFIX = "x-dragonfly-"

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def end_to_end(headers: Mapping[str, str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy of `headers` without hop-by-hop fields, fields named in `Connection`, the
    agent's own `X-Dragonfly-*` fields, and any in `drop` (lower-case names)."""
    listed = {
        token.strip().lower()
        for value in _all(headers, "Connection")
        for token in value.split(",")
        if token.strip()
    }
    excluded = _HOP_BY_HOP | listed | set(drop)
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower not in excluded and not lower.startswith(DRAGONFLY_PREFIX):
            kept.add(name, value)
    return kept


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [value] if value is not None else []
