"""Reading an agent's /metrics page in tests."""

from __future__ import annotations

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


def wait_for(condition, what: str, timeout: float = 10) -> None:
    """Poll `condition()` until true; the agent does some work just after a response ends."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
