"""`dfagent get`: one blob to a file through this node's agent, checked against its digest."""

from __future__ import annotations

import hashlib
import os

import pytest
from aiohttp import web

from tests.conftest import PASSWORD, USER
from tests.support.metrics import metric
from tests.support.registry import Registry


@pytest.fixture(scope="module")
def blob(registry: Registry) -> tuple[str, bytes]:
    data = os.urandom(1_500_000)
    return registry.push_blob("test/get", data), data


def get(agent, target: str, output, *args: str, password: str | None = None):
    env = {"DFAGENT_REGISTRY_PASSWORD": password} if password else None
    return agent.cli("get", target, "-O", str(output), *args, env=env)


def served(agent, source: str) -> float:
    return metric(agent, f'dfagent_served_bytes_total{{source="{source}"}}')


def test_get_through_the_running_agent_then_from_its_cache(agent, origin, blob, tmp_path):
    digest, data = blob
    first = get(agent, f"{origin.url}/v2/test/get/blobs/{digest}", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    assert f"{digest} verified" in first.stdout
    assert (tmp_path / "a").read_bytes() == data
    assert not (tmp_path / "a.part").exists()
    assert served(agent, "origin") == len(data)

    second = agent.cli(
        "get", f"{origin.host}/test/get@{digest}", "--plain-http", "-O", str(tmp_path / "b")
    )
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "b").read_bytes() == data
    assert served(agent, "local") == len(data)

    again = agent.cli(
        "get", f"{origin.host}/test/get@{digest}", "--plain-http", "-O", str(tmp_path / "b")
    )
    assert again.returncode == 0
    assert "already holds" in again.stdout
    assert served(agent, "local") == len(data), "nothing read for a file that is already right"


def test_get_resumes_a_partial_file(agent, origin, blob, tmp_path):
    digest, data = blob
    (tmp_path / "out.part").write_bytes(data[:600_000])
    done = get(agent, f"{origin.url}/v2/test/get/blobs/{digest}", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == data
    assert served(agent, "origin") + served(agent, "local") == len(data) - 600_000


def test_a_wrong_partial_file_is_fetched_again_whole(agent, origin, blob, tmp_path):
    digest, data = blob
    (tmp_path / "out.part").write_bytes(b"\0" * 600_000)
    done = get(agent, f"{origin.url}/v2/test/get/blobs/{digest}", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == data


def test_bytes_that_do_not_match_the_digest_exit_3(agent, origin, registry, tmp_path):
    data = os.urandom(300_000)
    digest = registry.push_blob("test/get", data)

    async def corrupt(request: web.BaseRequest):
        if request.method != "GET" or not request.path.endswith(digest):
            return None
        upstream = await origin.forward(request)
        body = bytearray(upstream.body)
        body[-1] ^= 0xFF
        return web.Response(status=upstream.status, headers=upstream.headers, body=bytes(body))

    origin.faults.append(corrupt)
    done = get(agent, f"{origin.url}/v2/test/get/blobs/{digest}", str(tmp_path / "bad"))
    assert done.returncode == 3
    assert "do not match" in done.stderr
    assert not (tmp_path / "bad").exists()
    assert not (tmp_path / "bad.part").exists()


def test_get_starts_an_agent_in_process_when_none_runs(agent_factory, origin, blob, tmp_path):
    digest, data = blob
    agent = agent_factory()
    agent.stop()
    done = get(agent, f"{origin.url}/v2/test/get/blobs/{digest}", str(tmp_path / "x"))
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256((tmp_path / "x").read_bytes()).hexdigest() == digest[7:]
    status = agent.cli("status", "--json")
    assert '"agent": null' in status.stdout
    assert f'"stored": {len(data)}' in status.stdout, "the blob stays in the node's cache"


def test_get_exit_codes_for_refusals(agent, auth_registry, registry, tmp_path):
    data = os.urandom(10_000)
    digest = auth_registry.push_blob("test/get-private", data)
    target = f"{auth_registry.host}/test/get-private@{digest}"
    out = str(tmp_path / "p")

    refused = get(agent, target, out, "--plain-http")
    assert refused.returncode == 4
    assert "401" in refused.stderr
    wrong = get(agent, target, out, "--plain-http", "-u", USER, password="nope")
    assert wrong.returncode == 4
    allowed = get(agent, target, out, "--plain-http", "-u", USER, password=PASSWORD)
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "p").read_bytes() == data

    missing = agent.cli(
        "get", f"{registry.host}/test/get@sha256:{'0' * 64}", "--plain-http", "-O", out + "2"
    )
    assert missing.returncode == 5
    assert not (tmp_path / "p2").exists()


@pytest.mark.parametrize(
    "target",
    [
        "not a url",
        "https://r.example/v2/app/manifests/latest",
        "r.example/app:1",
        "r.example/app@sha256:zz",
    ],
)
def test_get_rejects_targets_that_are_not_blobs(agent, target, tmp_path):
    done = get(agent, target, str(tmp_path / "o"))
    assert done.returncode == 2
    assert "dfagent get:" in done.stderr
