"""https asked of a registry that speaks plain http (a forgotten --plain-http, containerd's
`?ns=host:port`): every way in names host:port and says what to do."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.client import send
from tests.support.registry import Registry

HINT = "answered plain HTTP to a TLS handshake"


@pytest.fixture(scope="module")
def blob(registry: Registry) -> tuple[str, bytes]:
    data = os.urandom(200_000)
    return registry.push_blob("test/plain", data), data


def test_get_without_plain_http(agent, registry, blob, tmp_path):
    digest, data = blob
    target = f"{registry.host}/test/plain@{digest}"
    done = agent.cli("get", target, "-O", str(tmp_path / "blob"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"origin {registry.host} {HINT}" in line
    assert "--plain-http" in line
    assert not (tmp_path / "blob").exists()

    fixed = agent.cli("get", target, "--plain-http", "-O", str(tmp_path / "blob"))
    assert fixed.returncode == 0, fixed.stderr
    assert (tmp_path / "blob").read_bytes() == data


def test_preheat_without_plain_http(agent, registry):
    registry.push_manifest("test/plain", "v1", b'{"os":"linux"}', [os.urandom(1000)])
    done = agent.cli("preheat", f"{registry.host}/test/plain:v1", "--json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = json.loads(done.stdout)["error"]
    assert f"registry {registry.host} {HINT}" in error
    assert "--plain-http" in error


@pytest.mark.parametrize("how", ["ns", "header"])
def test_the_proxy_502_explains_itself(agent, registry, blob, how):
    digest, _ = blob
    path = f"/v2/test/plain/blobs/{digest}"
    if how == "ns":  # containerd's mirror request for a registry it assumes speaks https
        reply = send(agent.proxy_port, f"{path}?ns={registry.host}")
    else:
        reply = send(agent.proxy_port, path, {"X-Dragonfly-Registry": f"https://{registry.host}"})
    assert reply.status == 502
    assert reply.headers["X-Dragonfly-Error-Type"] == "proxy"
    body = reply.body.decode()
    assert f"{registry.host} {HINT}" in body
    assert "use_tls: false" in body and "http:// in X-Dragonfly-Registry" in body


def test_an_unreachable_registry_is_named_with_its_port(agent, blob):
    digest, _ = blob
    closed = "127.0.0.1:9"  # discard: nothing listens there
    reply = send(
        agent.proxy_port,
        f"/v2/test/plain/blobs/{digest}",
        {"X-Dragonfly-Registry": f"http://{closed}"},
    )
    assert reply.status == 502
    assert f"cannot reach origin {closed}: " in reply.body.decode()
