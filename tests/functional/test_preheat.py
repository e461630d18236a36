"""Preheat: every blob of an image reaches every agent's cache before anyone reads it."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from dfagent.control import AgentRefused, call_agent
from dfagent.preheat.service import JOBS_AT_ONCE, JOBS_WAITING
from tests.conftest import PASSWORD, TOKEN, USER
from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.ports import free_port
from tests.support.registry import Registry

Blobs = dict[str, bytes]  # digest -> bytes


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_two_platform_image(registry: Registry, repo: str, *, docker: bool = False) -> dict:
    """An index with linux/amd64 and linux/arm64/v8 images sharing one layer; the blobs
    (config and layers) of each platform."""
    shared = os.urandom(300_000)
    images = {
        "linux/amd64": (b'{"architecture":"amd64","os":"linux"}', [os.urandom(700_000), shared]),
        "linux/arm64/v8": (b'{"architecture":"arm64","os":"linux"}', [os.urandom(500_000), shared]),
    }
    manifests, blobs = {}, {}
    for platform, (config, layers) in images.items():
        manifests[platform] = registry.push_manifest(repo, None, config, layers, docker=docker)
        blobs[platform] = {digest_of(b): b for b in (config, *layers)}
    registry.push_index(repo, "v1", manifests, docker=docker)
    return blobs


def read_locally(
    agent: AgentProcess,
    origin: CountingOrigin | Registry,
    repo: str,
    blobs: Blobs,
    headers: dict[str, str] | None = None,
) -> None:
    """Every blob reads back byte for byte from the agent's cache (not from the origin)."""
    served = metric(agent, 'dfagent_served_bytes_total{source="local"}')
    for digest, data in blobs.items():
        before = len(origin.blob_gets(digest)) if isinstance(origin, CountingOrigin) else 0
        reply = send(agent.proxy_port, f"{origin.url}/v2/{repo}/blobs/{digest}", headers)
        assert reply.status == 200
        assert reply.body == data
        if isinstance(origin, CountingOrigin):
            assert len(origin.blob_gets(digest)) == before, "served from the cache"
    assert metric(agent, 'dfagent_served_bytes_total{source="local"}') == served + sum(
        len(b) for b in blobs.values()
    )


def cached(agent: AgentProcess) -> set[str]:
    status = agent.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    return {b["digest"] for b in json.loads(status.stdout)["largest"] if b["verified"]}


def preheat(agent: AgentProcess, image: str, *args: str, **kwargs) -> dict:
    done = agent.cli("preheat", image, "--plain-http", "--json", *args, **kwargs)
    job = json.loads(done.stdout) if done.stdout.startswith("{") else None
    return {"exit": done.returncode, "job": job, "stderr": done.stderr}


def test_preheat_one_platform_then_all_fills_every_agent(swarm, origin, registry):
    blobs = push_two_platform_image(registry, "test/multi")
    agents = swarm(3)
    image = f"{origin.host}/test/multi:v1"

    first = preheat(agents[0], image, "--platform", "linux/arm64")
    assert first["exit"] == 0, first
    job = first["job"]
    assert job["state"] == "succeeded"
    assert [m["platform"] for m in job["manifests"]] == ["linux/arm64/v8"]
    assert {b["digest"] for b in job["blobs"]} == set(blobs["linux/arm64/v8"])
    for blob in job["blobs"]:
        assert blob["state"] == "cached"
        assert sorted(blob["peers"]) == sorted(f"127.0.0.1:{a.peer_port}" for a in agents[1:])
        assert set(blob["peers"].values()) == {"done"}
    amd_only = set(blobs["linux/amd64"]) - set(blobs["linux/arm64/v8"])
    for agent in agents:
        wait_for(lambda a=agent: set(blobs["linux/arm64/v8"]) <= cached(a), "verified copies")
        assert not cached(agent) & amd_only
    for digest, data in blobs["linux/arm64/v8"].items():  # one origin read for the swarm
        assert origin.blob_bytes(digest, len(data)) == len(data)

    every = preheat(agents[1], image, "--all-platforms")
    assert every["exit"] == 0, every
    assert len(every["job"]["manifests"]) == 2
    everything = blobs["linux/amd64"] | blobs["linux/arm64/v8"]
    for agent in agents:
        wait_for(lambda a=agent: set(everything) <= cached(a), "verified copies")
        read_locally(agent, origin, "test/multi", everything)
    for digest, data in everything.items():  # what the first preheat got stayed got
        assert origin.blob_bytes(digest, len(data)) == len(data)


def test_preheat_docker_media_types_and_a_plain_manifest(agent, origin, registry):
    blobs = push_two_platform_image(registry, "test/docker", docker=True)
    done = preheat(agent, f"{origin.host}/test/docker:v1", "--platform", "linux/amd64")
    assert done["exit"] == 0, done
    assert done["job"]["manifests"][0]["media_type"].startswith("application/vnd.docker.")
    read_locally(agent, origin, "test/docker", blobs["linux/amd64"])

    config, layer = b'{"os":"linux"}', os.urandom(200_000)
    registry.push_manifest("test/single", "latest", config, [layer])
    done = preheat(agent, f"{origin.host}/test/single")  # no tag: latest; no index
    assert done["exit"] == 0, done
    read_locally(agent, origin, "test/single", {digest_of(config): config, digest_of(layer): layer})


def test_preheat_of_a_private_image_needs_credentials(agent_factory, auth_registry, tmp_path):
    config, layer = b'{"os":"linux"}', os.urandom(250_000)
    auth_registry.push_manifest("test/private", "v1", config, [layer])
    agent = agent_factory()
    image = f"{auth_registry.host}/test/private:v1"

    refused = preheat(agent, image)
    assert refused["exit"] == 1
    assert refused["job"]["state"] == "failed"
    assert "401 (credentials missing or refused)" in refused["job"]["error"]
    assert metric(agent, 'dfagent_preheat_jobs_total{outcome="failed"}') == 1

    with_flags = preheat(agent, image, "--username", USER, "--password-stdin", stdin=PASSWORD)
    assert with_flags["exit"] == 0, with_flags
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    (docker_config / "config.json").write_text(
        json.dumps(
            {"auths": {f"http://{auth_registry.host}": {"username": USER, "password": PASSWORD}}}
        )
    )
    from_config = preheat(agent, image, env={"DOCKER_CONFIG": str(docker_config)})
    assert from_config["exit"] == 0, from_config
    assert cached(agent) >= {digest_of(config), digest_of(layer)}


def test_preheat_through_the_bearer_token_flow(agent, token_registry):
    config, layer = b'{"os":"linux"}', os.urandom(250_000)
    token_registry.push_manifest("test/bearer", "v1", config, [layer])
    image = f"{token_registry.host}/test/bearer:v1"

    anonymous = preheat(agent, image)
    assert anonymous["exit"] == 1
    assert "401" in anonymous["job"]["error"]
    done = preheat(agent, image, "--username", USER, "--password-stdin", stdin=PASSWORD)
    assert done["exit"] == 0, done
    assert "repository:test/bearer:pull" in token_registry.tokens.issued
    token = token_registry.tokens.token(USER, ["repository:test/bearer:pull"])
    blobs = {digest_of(config): config, digest_of(layer): layer}
    read_locally(agent, token_registry, "test/bearer", blobs, {"Authorization": f"Bearer {token}"})


def call(
    method: str, target: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict, dict[str, str]]:
    """One request to the preheat API over HTTP: status, JSON answer, headers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(target, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def over_the_socket(agent: AgentProcess, path: str) -> dict | None:
    return asyncio.run(call_agent(agent.storage_dir, "GET", path))


def test_preheat_api_on_the_health_port(agent, origin, registry):
    config, layer = b'{"os":"linux"}', os.urandom(100_000)
    registry.push_manifest("test/api", "v2", config, [layer])
    url = f"{agent.health_url}/api/v1/preheat"
    image = {"image": f"{origin.host}/test/api:v2", "plain_http": True, "platform": "linux/amd64"}

    status, job, headers = call("POST", url, image)
    assert status == 202
    assert headers["Location"] == f"/api/v1/preheat/{job['id']}?key={job['key']}"
    mine = f"{agent.health_url}{headers['Location']}"
    wait_for(lambda: call("GET", mine)[1]["state"] == "succeeded", "the job")
    assert {b["digest"] for b in call("GET", mine)[1]["blobs"]} == {
        digest_of(config), digest_of(layer)
    }  # fmt: skip
    read_locally(agent, origin, "test/api", {digest_of(config): config, digest_of(layer): layer})
    listed = over_the_socket(agent, "/api/v1/preheat")
    assert listed is not None
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert over_the_socket(agent, f"/api/v1/preheat/{job['id']}")["state"] == "succeeded"
    human = agent.cli("status")
    assert f"{job['id']}   succeeded" in human.stdout

    for body, field in (
        ({}, "image"),
        ({"image": "UPPER/case"}, "image"),
        ({"image": "r.example/a", "platform": "linux"}, "platform"),
        ({"image": "r.example/a", "platform": "linux/amd64", "all_platforms": True}, "platform"),
        ({"image": "r.example/a", "username": "only-me"}, "username"),
        ({"image": "r.example/a", "surprise": 1}, "surprise"),
        ({"image": "localhost:99999/a:1"}, "image"),
    ):
        status, answer, _ = call("POST", url, body)
        assert status == 400, body
        assert field in answer["error"]
    with pytest.raises(AgentRefused, match="no preheat job no-such-job"):
        over_the_socket(agent, "/api/v1/preheat/no-such-job")
    assert call("DELETE", url)[0] == 405


def test_a_loopback_client_sees_only_the_jobs_it_started(agent, origin, registry):
    """Every local user reaches loopback: the list and others' jobs (digests of images that
    may be private) need the cluster token or the control socket."""
    config, layer = b'{"os":"linux"}', os.urandom(100_000)
    registry.push_manifest("test/others", "v1", config, [layer])
    url = f"{agent.health_url}/api/v1/preheat"
    image = {"image": f"{origin.host}/test/others:v1", "plain_http": True}
    status, theirs, _ = call("POST", url, image)
    assert status == 202
    job_path = f"/api/v1/preheat/{theirs['id']}"
    wait_for(lambda: over_the_socket(agent, job_path)["blobs"], "the job to name its blobs")

    def refused(target: str) -> tuple[int, str]:
        status, answer, _ = call("GET", target)
        flat = json.dumps(answer)
        assert digest_of(layer) not in flat
        assert "test/others" not in flat
        return status, answer.get("error", "")

    status, reason = refused(url)
    assert status == 401
    assert "cluster token or the control socket" in reason
    status, reason = refused(f"{url}/{theirs['id']}")
    assert status == 401
    assert "needs its key" in reason
    assert refused(f"{url}/no-such-job")[0] == 401

    status, mine, where = call("POST", url, image)
    assert status == 202
    assert call("GET", f"{agent.health_url}{where['Location']}")[1]["id"] == mine["id"]
    assert refused(f"{url}/{theirs['id']}?key={mine['key']}")[0] == 403
    assert refused(f"{url}/{theirs['id']}?key=")[0] == 403
    assert "job read with a wrong key" in agent.log()
    assert call("GET", f"{url}/{theirs['id']}?key={theirs['key']}")[1]["blobs"]
    listed = {j["id"] for j in over_the_socket(agent, "/api/v1/preheat")["jobs"]}
    assert listed == {theirs["id"], mine["id"]}


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("Not/A/Reference", "lower-case"),
        ("r.example/app@sha256:12", "sha256"),
        ("localhost:99999/app:1", "1 to 65535"),
    ],
)
def test_preheat_rejects_a_bad_reference_before_asking_the_agent(agent, image, message):
    done = agent.cli("preheat", image)
    assert done.returncode == 2
    assert message in done.stderr


def test_preheat_without_an_agent_says_so(agent):
    agent.stop()
    done = agent.cli("preheat", "r.example/app:1")
    assert done.returncode == 1
    assert "no agent runs on" in done.stderr


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks a source
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_preheat_api_over_the_network_needs_the_cluster_token(swarm):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    (agent,) = swarm(1, health={"listen": "0.0.0.0:0"})
    url = f"http://{address}:{agent.health_port}/api/v1/preheat"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    assert "cluster token" in json.loads(refused.value.read())["error"]
    token = {"Authorization": f"Bearer {TOKEN}"}
    assert call("GET", url, headers=token)[:2] == (200, {"jobs": []})
    assert call("GET", f"{url}/no-such-job", headers=token)[:2] == (
        404,
        {"error": "no preheat job no-such-job"},
    )
    status, answer, _ = call("GET", f"{agent.health_url}/api/v1/preheat")
    assert status == 401, "loopback alone does not list the jobs"
    assert "cluster token" in answer["error"]
    with urllib.request.urlopen(f"http://{address}:{agent.health_port}/healthy") as health:
        assert health.status == 200, "the probes stay open to all"


def raw_request(
    port: int, method: str, path: str, headers: dict[str, bytes], parts: tuple[bytes, ...] = ()
) -> tuple[int, dict]:
    """One request with header values as raw bytes and the body sent in `parts`, a moment
    apart (separate TCP segments): status and JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(sum(map(len, parts))))
        connection.endheaders()
        for part in parts:
            time.sleep(0.2)
            connection.send(part)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_an_authorization_header_that_is_not_utf8_is_a_wrong_token(swarm):
    (agent,) = swarm(1)
    path = "/api/v1/preheat"
    wrong = raw_request(agent.health_port, "GET", path, {"Authorization": b"Bearer wrong"})
    assert wrong[0] == 401
    not_utf8 = raw_request(agent.health_port, "GET", path, {"Authorization": b"Bearer \xff\xfe"})
    assert not_utf8 == wrong
    assert "Traceback" not in agent.log()


def test_a_body_that_arrives_in_pieces_is_read_whole(agent):
    image = f"127.0.0.1:{free_port()}/app:1"
    body = json.dumps({"image": image, "plain_http": True}).encode()
    path = "/api/v1/preheat"
    status, job = raw_request(agent.health_port, "POST", path, {}, (body[:9], body[9:]))
    assert status == 202, job
    assert job["image"] == image
    too_big = body.ljust(64 * 1024 + 1)  # one byte over the limit, all of it read
    status, answer = raw_request(
        agent.health_port, "POST", path, {}, (too_big[:40_000], too_big[40_000:])
    )
    assert status == 400
    assert "the body must be under" in answer["error"]


@pytest.fixture
def tarpit() -> Iterator[tuple[str, list[socket.socket]]]:
    """A registry that takes connections and never answers: host:port, and the connections
    it holds."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}", held
    server.close()
    for connection in held:
        connection.close()


def test_preheat_jobs_beyond_the_running_and_waiting_places_are_refused(agent_factory, tarpit):
    """Jobs share the origin connections with nydusd's reads: only a few run at once, a
    few more wait their turn, and the next is told to come back (429), never dropped."""
    host, held = tarpit
    agent = agent_factory(origin={"read_timeout": "1s", "retries": 0})
    url = f"{agent.health_url}/api/v1/preheat"
    image = {"image": f"{host}/app:1", "plain_http": True}
    places = JOBS_AT_ONCE + JOBS_WAITING
    started = [call("POST", url, image) for _ in range(places)]
    assert [status for status, _, _ in started] == [202] * places
    status, answer, _ = call("POST", url, image)
    assert status == 429
    assert f"{places} preheat jobs are running or queued" in answer["error"]

    def states() -> list[str]:
        return [j["state"] for j in over_the_socket(agent, "/api/v1/preheat")["jobs"]]

    assert sorted(states()) == ["queued"] * JOBS_WAITING + ["resolving"] * JOBS_AT_ONCE
    wait_for(lambda: len(held) >= JOBS_AT_ONCE, "the running jobs to reach the registry")
    time.sleep(0.3)
    assert len(held) <= JOBS_AT_ONCE + states().count("failed"), "a job starts as one ends"
    wait_for(lambda: "failed" in states(), "a running job to time out")  # read_timeout
    assert call("POST", url, image)[0] == 202, "a finished job frees its place"
