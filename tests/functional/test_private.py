"""A private blob in the cache reaches only clients the registry itself would serve."""

from __future__ import annotations

import os

import pytest

from tests.conftest import OTHER_USER
from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.ports import free_port
from tests.support.registry import Registry, basic_auth
from tests.support.relay import Relay


@pytest.fixture
def private_origin(auth_registry: Registry):
    counting = CountingOrigin(auth_registry.url).start()
    yield counting
    counting.stop()


def test_cached_private_blob_needs_the_clients_own_credentials(
    agent, private_origin, auth_registry: Registry
):
    data = os.urandom(500_000)
    digest = auth_registry.push_blob("test/secret", data)
    url = f"{private_origin.url}/v2/test/secret/blobs/{digest}"
    spec = {"Range": "bytes=0-99999"}

    first = send(agent.proxy_port, url, {**spec, "Authorization": auth_registry.auth_header})
    assert first.body == data[:100_000]  # client A: now cached
    gets = len(private_origin.blob_gets(digest))

    anonymous = send(agent.proxy_port, url, spec)
    assert anonymous.status == 401
    assert 'Basic realm="dfagent-test"' in anonymous.headers["WWW-Authenticate"]
    assert data[:1000] not in anonymous.body
    wrong = send(agent.proxy_port, url, {**spec, "Authorization": "Basic d3Jvbmc6d3Jvbmc="})
    assert wrong.status == 401
    head = send(agent.proxy_port, url, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}, "HEAD")
    assert head.status == 401

    other = send(agent.proxy_port, url, {**spec, "Authorization": basic_auth(*OTHER_USER)})
    assert other.status == 206
    assert other.body == data[:100_000]
    assert len(private_origin.blob_gets(digest)) == gets, "served from the cache, not fetched"
    log = agent.log()
    for secret in (auth_registry.auth_header, basic_auth(*OTHER_USER), "d3Jvbmc6d3Jvbmc="):
        assert secret.split()[-1] not in log, "credentials must never be logged"
    checks = [s.authorization for s in private_origin.requests if s.method == "HEAD"]
    wrong_auth = "Basic d3Jvbmc6d3Jvbmc="
    assert checks == [None, wrong_auth, wrong_auth, basic_auth(*OTHER_USER)]


def test_public_blob_is_checked_once(agent, origin, registry: Registry):
    data = os.urandom(100_000)
    digest = registry.push_blob("test/public", data)
    url = f"{origin.url}/v2/test/public/blobs/{digest}"
    assert send(agent.proxy_port, url).body == data  # anonymous: the origin serves anyone
    for token in ("Bearer a", "Bearer b", None):
        headers = {"Authorization": token} if token else {}
        assert send(agent.proxy_port, url, headers).body == data
    assert [s.method for s in origin.requests] == ["GET"], "public: no check per client"


def test_switch_off_for_single_tenant_clusters(agent_factory, private_origin, auth_registry):
    agent = agent_factory(auth={"check_clients": False})
    data = os.urandom(50_000)
    digest = auth_registry.push_blob("test/secret", data)
    url = f"{private_origin.url}/v2/test/secret/blobs/{digest}"
    assert send(agent.proxy_port, url, {"Authorization": auth_registry.auth_header}).body == data
    assert send(agent.proxy_port, url).body == data  # the documented risk


@pytest.fixture
def swarm_pair(tmp_path):
    """Two agents; everything the second sends to the first passes a recording relay (the
    first is known to the swarm by the relay's address)."""
    token = tmp_path / "token"
    token.write_text("private-test-token-0123456789")
    first_port, second_port = free_port(), free_port()
    relay = Relay(first_port).start()
    members = [f"127.0.0.1:{relay.port}", f"127.0.0.1:{second_port}"]
    agents = []
    for i, listen in enumerate((first_port, second_port)):
        agents.append(
            AgentProcess(
                tmp_path / f"agent{i}",
                {
                    "peer": {"listen": f"127.0.0.1:{listen}", "token_file": str(token)},
                    "swarm": {"peers": members, "advertise": members[i]},
                },
            ).start()
        )
    yield agents[0], agents[1], relay.received
    for agent in agents:
        agent.kill()
    relay.stop()


def test_client_credentials_never_reach_peers(swarm_pair, origin, registry):
    """Only the cluster token travels between agents."""
    first, second, seen = swarm_pair
    data = os.urandom(300_000)
    digest = registry.push_blob("test/creds", data)
    url = f"{origin.url}/v2/test/creds/blobs/{digest}"
    secret = "Bearer client-secret-token"
    assert send(first.proxy_port, url, {"Authorization": secret}).body == data
    assert send(second.proxy_port, url, {"Authorization": secret}).body == data
    stream = b"".join(seen)
    assert b"/v1/" in stream, "the second agent asked the first"
    assert b"Bearer private-test-token" in stream  # the cluster token, and only that
    assert b"client-secret-token" not in stream
