"""Protocol details of blob answers through a real agent and the real registry: the range
unit in any case, and the download-finished mark on HEAD as on GET."""

from __future__ import annotations

import json
import os

from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import wait_for
from tests.support.registry import Registry

FINISHED = "X-Dragonfly-Task-Download-Finished"


def verified_blobs(agent: AgentProcess) -> int:
    result = agent.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["verified_blobs"]


def test_the_range_unit_is_case_insensitive(agent, origin: CountingOrigin, registry: Registry):
    data = os.urandom(100_000)
    url = f"{origin.url}/v2/test/unit-case/blobs/{registry.push_blob('test/unit-case', data)}"
    for attempt, unit in (("cold", "BYTES"), ("warm", "Bytes")):
        reply = send(agent.proxy_port, url, {"Range": f"{unit}=0-4"})
        assert reply.status == 206, (attempt, reply.body[:200])
        assert reply.headers["Content-Range"] == f"bytes 0-4/{len(data)}"
        assert reply.body == data[:5], attempt


def test_head_on_a_verified_blob_says_the_download_finished(
    agent, origin: CountingOrigin, registry: Registry
):
    data = os.urandom(300_000)
    url = f"{origin.url}/v2/test/head-mark/blobs/{registry.push_blob('test/head-mark', data)}"
    assert send(agent.proxy_port, url, {"Range": "bytes=0-99"}).body == data[:100]
    head = send(agent.proxy_port, url, method="HEAD")
    assert head.status == 200
    assert FINISHED not in head.headers, "a partly cached blob is not finished"

    assert send(agent.proxy_port, url).body == data
    wait_for(lambda: verified_blobs(agent) == 1, "the blob to be verified")
    get = send(agent.proxy_port, url)
    head = send(agent.proxy_port, url, method="HEAD")
    assert get.body == data
    assert get.headers[FINISHED] == "true"
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers[FINISHED] == "true"
