"""Health, readiness and metrics endpoints of a real agent process."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from tests.support.client import send
from tests.support.metrics import metric, metrics, wait_for


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthy_and_ready(agent):
    assert get(f"{agent.health_url}/healthy") == (200, "ok\n")
    assert get(f"{agent.health_url}/readyz") == (200, "ready\n")
    assert get(f"{agent.health_url}/nothing")[0] == 404


def test_metrics_count_requests_bytes_and_sources(agent, origin, registry):
    data = os.urandom(2_500_000)
    digest = registry.push_blob("test/metrics", data)
    url = f"{origin.url}/v2/test/metrics/blobs/{digest}"
    assert send(agent.proxy_port, url).body == data
    wait_for(lambda: metric(agent, "dfagent_cache_bytes") == len(data), "pieces stored")
    assert send(agent.proxy_port, url).body == data
    values = metrics(agent)
    assert values['dfagent_proxy_requests_total{kind="blob",status="2xx"}'] == 2
    assert values['dfagent_served_bytes_total{source="origin"}'] == len(data)
    assert values['dfagent_served_bytes_total{source="local"}'] == len(data)
    assert values["dfagent_origin_bytes_total"] == len(data)
    assert values["dfagent_cache_bytes"] == len(data)
    assert values['dfagent_piece_fetch_seconds_count{source="origin"}'] == 3
    assert values["dfagent_proxy_requests_in_flight"] == 0
    assert 'dfagent_origin_requests_total{outcome="ok",purpose="range"}' in values
