"""TLS contexts for mutual authentication between agents."""

from __future__ import annotations

import ssl

from dfagent.errors import StartupError
from dfagent.swarm.config import PeerTLS

__all__ = ["client_context", "server_context"]


def server_context(tls: PeerTLS) -> ssl.SSLContext:
    """Serve with our certificate; accept only clients presenting one the cluster CA signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: PeerTLS) -> ssl.SSLContext:
    """Present our certificate; accept only servers whose certificate the cluster CA signed.

    Agents are reached by address and often share one certificate (a DaemonSet mounts one
    Secret), so the chain to the cluster CA is what is checked, not the host name.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load(context: ssl.SSLContext, tls: PeerTLS) -> None:
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"peer.tls.cert/key: cannot load {tls.cert}, {tls.key}: {exc}") from exc
    try:
        context.load_verify_locations(cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"peer.tls.ca: cannot load {tls.ca}: {exc}") from exc
