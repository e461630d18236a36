"""How a registry that could not be reached is named to an operator: by `host:port`, with
what to do when the cause is a common mistake (https asked of a registry that speaks http)."""

from __future__ import annotations

import ssl

from yarl import URL

__all__ = ["unreachable"]

# What OpenSSL says when the first bytes back from a TLS handshake are an HTTP answer.
_PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"})

PLAIN_HTTP_HINT = (
    "use --plain-http (dfagent get/preheat; plain_http in the preheat API), or for proxied "
    "requests a proxy.rules entry with use_tls: false, or http:// in X-Dragonfly-Registry"
)


def unreachable(what: str, url: URL, error: BaseException) -> str:
    """`cannot reach registry host:port: ...`, or the plain-HTTP explanation and its fix."""
    address = f"{url.host}:{url.port}" if url.port is not None else str(url.host)
    if url.scheme == "https" and _answered_plain_http(error):
        return f"{what} {address} answered plain HTTP to a TLS handshake: {PLAIN_HTTP_HINT}"
    return f"cannot reach {what} {address}: {str(error) or type(error).__name__}"


def _answered_plain_http(error: BaseException | None) -> bool:
    """Whether an SSL error that means "the server spoke plain HTTP" caused `error`."""
    for _ in range(8):  # the causes of one connection error; a bound against cycles
        if error is None:
            return False
        reason = getattr(error, "reason", None)
        if isinstance(error, ssl.SSLError) and reason in _PLAIN_HTTP_REASONS:
            return True
        # aiohttp keeps the ssl error it wraps as `os_error`
        error = getattr(error, "os_error", None) or error.__cause__ or error.__context__
    return False
