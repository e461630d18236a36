"""Requests that are not cached blob reads go to the registry unchanged, both ways."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request

from tests.support.client import send
from tests.support.registry import Registry


def test_manifest_passes_through_unchanged(agent, registry: Registry):
    manifest = registry.push_manifest(
        "test/pass", "v1", b'{"architecture":"amd64"}', [os.urandom(1000)]
    )
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    reply = send(agent.proxy_port, f"{registry.url}/v2/test/pass/manifests/v1", accept)
    assert reply.status == 200
    assert reply.body == manifest
    assert reply.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    assert (
        reply.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()
    )
    head = send(agent.proxy_port, f"{registry.url}/v2/test/pass/manifests/v1", accept, "HEAD")
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(manifest)
    assert head.body == b""


def test_push_through_the_proxy_streams_request_bodies(agent, registry: Registry):
    """POST, PATCH (a streamed body) and PUT of a blob upload, all through the proxy."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = send(agent.proxy_port, f"{registry.url}/v2/test/push/blobs/uploads/", method="POST")
    assert started.status == 202, started.body
    location = started.headers["Location"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": agent.proxy_url}))

    def chunks():
        for offset in range(0, len(data), 1 << 20):
            yield data[offset : offset + (1 << 20)]

    patch = urllib.request.Request(
        location,
        data=chunks(),
        method="PATCH",
        headers={"Content-Type": "application/octet-stream"},
    )
    with opener.open(patch, timeout=30) as response:
        assert response.status == 202
        location = response.headers["Location"]
    separator = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{separator}digest={digest}", data=b"", method="PUT")
    with opener.open(put, timeout=30) as response:
        assert response.status == 201
    direct = urllib.request.urlopen(f"{registry.url}/v2/test/push/blobs/{digest}", timeout=30)
    assert direct.read() == data


def test_unauthorized_passes_back_with_challenge(agent, auth_registry: Registry):
    reply = send(agent.proxy_port, f"{auth_registry.url}/v2/test/private/manifests/v1")
    assert reply.status == 401
    assert 'realm="dfagent-test"' in reply.headers["WWW-Authenticate"]
    assert json.loads(reply.body)["errors"][0]["code"] == "UNAUTHORIZED"


def test_blob_read_with_and_without_credentials(agent, auth_registry: Registry):
    data = os.urandom(300_000)
    digest = auth_registry.push_blob("test/private", data)
    url = f"{auth_registry.url}/v2/test/private/blobs/{digest}"
    refused = send(agent.proxy_port, url, {"Range": "bytes=0-99"})
    assert refused.status == 401
    assert 'Basic realm="dfagent-test"' in refused.headers["WWW-Authenticate"]
    assert refused.headers["X-Dragonfly-Error-Type"] == "backend"
    wrong = send(
        agent.proxy_port, url, {"Range": "bytes=0-99", "Authorization": "Basic Zm9vOmJhcg=="}
    )
    assert wrong.status == 401
    granted = send(
        agent.proxy_port,
        url,
        {"Range": "bytes=10-99999", "Authorization": auth_registry.auth_header},
    )
    assert granted.status == 206
    assert granted.body == data[10:100000]


def test_hop_by_hop_headers_are_not_forwarded(agent, origin, registry: Registry):
    registry.push_manifest("test/hop", "v1", b"{}", [])
    reply = send(
        agent.proxy_port,
        f"{origin.url}/v2/test/hop/manifests/v1",
        {
            "Accept": "application/vnd.oci.image.manifest.v1+json",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Proxy-Authorization": "Basic cHJveHk6cHc=",
            "X-Dragonfly-Tag": "t",
            "X-End-To-End": "kept",
        },
    )
    assert reply.status == 200
    # The counting origin records what it received; hop-by-hop fields must be gone.
    assert origin.requests[-1].path == "/v2/test/hop/manifests/v1"
    received = origin.received_headers[-1]
    assert "X-Secret-Hop" not in received
    assert "Proxy-Authorization" not in received
    assert "X-Dragonfly-Tag" not in received
    assert received["X-End-To-End"] == "kept"
