"""A plain HTTP client that talks to dfagent the way nydusd does."""

from __future__ import annotations

import http.client
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def send(
    proxy_port: int, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Reply:
    """Send one request to the proxy. An absolute URL as `target` is a forward-proxy request
    (nydusd `proxy.url`); a path is a registry-mirror request."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()
