"""Reading a /metrics page (an agent's, a dfdaemon's) in tests and benchmarks."""

from __future__ import annotations

import re
import time
import urllib.request

from tests.support.agent import AgentProcess


def metrics(agent: AgentProcess) -> dict[str, float]:
    """Every `dfagent_*` sample, keyed by its name with labels as printed."""
    with urllib.request.urlopen(f"{agent.metrics_url}/metrics", timeout=10) as response:
        page = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("dfagent_")
    }


def metric(agent: AgentProcess, name: str) -> float:
    return metrics(agent).get(name, 0.0)


def sample_sum(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` on the /metrics page at `metrics_url` whose labels
    include `labels` (0 when there are none)."""
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as response:
        page = response.read().decode()
    total = 0.0
    for line in page.splitlines():
        sample, _, value = line.rpartition(" ")
        sample_name, _, label_text = sample.partition("{")
        if sample_name != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            total += float(value)
    return total


def wait_for(condition, what: str, timeout: float = 10) -> None:
    """Poll `condition()` until true; the agent does some work just after a response ends."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
