"""A private blob in the cache reaches only clients the registry itself would serve."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import threading
import time

import pytest
from aiohttp import web

from tests.conftest import OTHER_USER, PASSWORD, USER
from tests.support.agent import AgentProcess
from tests.support.client import Reply, send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.ports import free_port
from tests.support.registry import Registry, basic_auth
from tests.support.relay import Relay

PIECE = 256 * 1024


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


def test_credentials_in_the_url_are_refused_not_taken_for_an_anonymous_read(
    agent, private_origin, auth_registry: Registry
):
    """http://user:password@registry/... would reach the registry as Basic auth the access
    checks never see: the blob would count as served to an anonymous caller, and go to
    anyone."""
    data = os.urandom(300_000)
    digest = auth_registry.push_blob("test/userinfo", data)
    plain = f"{private_origin.url}/v2/test/userinfo/blobs/{digest}"
    with_userinfo = plain.replace("http://", f"http://{USER}:{PASSWORD}@")
    spec = {"Range": "bytes=0-99999"}

    refused = send(agent.proxy_port, with_userinfo, spec)
    assert refused.status == 400
    assert b"Authorization header" in refused.body
    assert not private_origin.requests, "nothing went to the registry"
    assert send(agent.proxy_port, plain, spec).status == 401  # still private
    assert PASSWORD not in agent.log()


@pytest.mark.parametrize(
    "request_head",
    [
        # aiohttp refuses these itself, quoting the request in its reason
        b"GET http://puller:S3cretPW@127.0.0.1:99999/v2/r/blobs/sha256:%s?X-Amz-Signature=S1GS3CRET"
        b" HTTP/1.1\r\nHost: x\r\n\r\n" % (b"1" * 64),
        b"GET /v2/r/blobs/sha256:%s HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Basic cHVsbGVyOlMzY3JldFBX\x01\r\n\r\n" % (b"1" * 64),
    ],
    ids=["url", "header"],
)
def test_a_malformed_request_never_puts_its_credentials_in_the_log(agent, request_head):
    with socket.create_connection(("127.0.0.1", agent.proxy_port), timeout=5) as client:
        client.sendall(request_head)
        assert client.recv(65536).split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    wait_for(lambda: "malformed request refused" in agent.log(), "the refusal logged")
    for secret in ("S3cretPW", "S1GS3CRET", "cHVsbGVyOlMzY3JldFBX"):
        assert secret not in agent.log()


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


def test_a_signed_storage_url_never_answers_an_access_check(agent_factory, auth_registry, registry):
    """A private registry redirects blob GETs to a storage URL that serves anyone (as S3 or
    GCS backed registries do). The target is reused for the credentials whose request got it,
    but another client's access check still goes to the registry, and is refused there."""
    agent = agent_factory(storage={"piece_size": "256KiB"})
    data = os.urandom(3 * PIECE)
    digest = auth_registry.push_blob("test/signed", data)
    assert registry.push_blob("test/signed", data) == digest  # the storage behind the URLs
    storage = CountingOrigin(registry.url).start()
    front = CountingOrigin(auth_registry.url).start()
    granted = {auth_registry.auth_header, basic_auth(*OTHER_USER)}

    async def redirect_to_storage(request: web.BaseRequest) -> web.StreamResponse | None:
        if request.method == "GET" and request.headers.get("Authorization") in granted:
            raise web.HTTPTemporaryRedirect(f"{storage.url}{request.path}?X-Signature=s3cr3t")
        return None  # the registry itself answers (and refuses strangers)

    front.faults.append(redirect_to_storage)
    try:
        url = f"{front.url}/v2/test/signed/blobs/{digest}"
        owner = {"Authorization": auth_registry.auth_header}
        first = send(agent.proxy_port, url, {**owner, "Range": "bytes=0-99"})
        assert first.body == data[:100]
        for stranger in ({}, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}):
            refused = send(agent.proxy_port, url, {**stranger, "Range": "bytes=0-99"})
            assert refused.status == 401
            assert data[:100] not in refused.body
            assert send(agent.proxy_port, url, stranger, "HEAD").status == 401
        later = send(
            agent.proxy_port, url, {**owner, "Range": f"bytes={2 * PIECE}-{2 * PIECE + 9}"}
        )
        assert later.body == data[2 * PIECE : 2 * PIECE + 10]
        assert len(front.blob_gets(digest)) == 1, "the owner's later piece went straight to storage"
        assert [seen.method for seen in storage.requests] == ["GET", "GET"]
        assert all(seen.authorization is None for seen in storage.requests)
    finally:
        front.stop()
        storage.stop()


def slow_checks(origin: CountingOrigin, digest: str, seconds: float):
    """A fault that holds every HEAD (an access check) of `digest` for `seconds`."""

    async def slow(request: web.BaseRequest) -> web.StreamResponse | None:
        if request.method == "HEAD" and digest in request.path:
            await asyncio.sleep(seconds)
        return None

    origin.faults.append(slow)


def test_a_client_that_hangs_up_does_not_fail_others_waiting_on_its_check(
    agent, private_origin, auth_registry: Registry
):
    data = os.urandom(PIECE)
    digest = auth_registry.push_blob("test/secret", data)
    url = f"{private_origin.url}/v2/test/secret/blobs/{digest}"
    owner = {"Authorization": auth_registry.auth_header, "Range": "bytes=0-999"}
    assert send(agent.proxy_port, url, owner).body == data[:1000]
    slow_checks(private_origin, digest, 1.0)
    other = {"Authorization": basic_auth(*OTHER_USER), "Range": "bytes=0-999"}
    leaving = socket.create_connection(("127.0.0.1", agent.proxy_port))
    head = "".join(f"{k}: {v}\r\n" for k, v in other.items())
    leaving.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    time.sleep(0.3)  # its access check is under way
    replies: list[Reply] = []
    staying = threading.Thread(target=lambda: replies.append(send(agent.proxy_port, url, other)))
    staying.start()
    time.sleep(0.3)  # the second client waits on the same check
    leaving.close()
    staying.join(30)
    assert replies[0].status == 206
    assert replies[0].body == data[:1000]
    heads = [s for s in private_origin.requests if s.method == "HEAD"]
    assert len(heads) == 1, "one check, shared"


def test_a_blob_is_pinned_from_lookup_to_its_last_byte(agent_factory, origin, registry):
    """The cache goes over its quota while a reader's access check runs: the blob it was
    handed is not evicted under it (else: 206 headers, then an empty body)."""
    agent = agent_factory(storage={"piece_size": "256KiB", "quota": "1MiB"})
    data = os.urandom(3 * PIECE)
    digest = registry.push_blob("test/pinned", data)
    url = f"{origin.url}/v2/test/pinned/blobs/{digest}"
    assert send(agent.proxy_port, url, {"Authorization": "Bearer first"}).body == data
    slow_checks(origin, digest, 1.5)
    replies: list[Reply | Exception] = []

    def read() -> None:
        try:
            replies.append(send(agent.proxy_port, url, {"Authorization": "Bearer second"}))
        except (http.client.HTTPException, OSError) as exc:
            replies.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # the reader has its handle and waits for its check
    for _ in range(2):  # push the cache over its quota
        other = os.urandom(3 * PIECE)
        other_url = f"{origin.url}/v2/test/pinned/blobs/{registry.push_blob('test/pinned', other)}"
        assert send(agent.proxy_port, other_url).body == other
    wait_for(lambda: metric(agent, 'dfagent_evicted_blobs_total{reason="quota"}') >= 1, "eviction")
    reader.join(30)
    assert isinstance(replies[0], Reply), replies[0]
    assert replies[0].body == data
