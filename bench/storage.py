"""The cache's own costs: time to ready with a big index, whole-blob verification speed,
memory while streaming a large blob, and what re-verifying every local read costs."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import harness
from bench.report import Section, number
from bench.resources import status_kib
from tests.support.agent import AgentProcess
from tests.support.cache import synthetic_cache

MIB = 1024 * 1024


def _time_to_ready(work: Path, storage_dir: Path) -> float:
    agent = AgentProcess(
        work, {"storage": {"dir": str(storage_dir), "quota": "1TiB"}, "log": {"level": "info"}}
    )
    agent.write_config()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "dfagent", "run", "--config", str(agent.config_path)],
        stdout=subprocess.DEVNULL, stderr=(work / "agent.log").open("wb"),
    )  # fmt: skip
    try:
        agent.process = process
        while True:
            log = (work / "agent.log").read_text()
            if "msg=ready" in log:
                agent_ports = log.split("admin=")[1].split()[0].split(",")
                break
            time.sleep(0.005)
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{agent_ports[0]}/readyz", timeout=5
                ) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                time.sleep(0.005)
    finally:
        process.terminate()
        process.wait(30)


def restart(work: Path, pieces: int = 100_000) -> dict[str, float]:
    harness.clean(work)
    synthetic_cache(work / "big", pieces, per_blob=100, piece_size=MIB)
    (work / "empty").mkdir()
    empty = min(_time_to_ready(work / "run-empty", work / "empty") for _ in range(3))
    full = min(_time_to_ready(work / "run-full", work / "big") for _ in range(3))
    return {"pieces": pieces, "ready_empty_s": empty, "ready_full_s": full}


def stream_and_verify(work: Path, size: int = 2 * 1024 * MIB) -> dict[str, float]:
    """Stream a blob cold through dfagent (peak RSS), then time `dfagent verify` over it."""
    harness.clean(work)
    data = os.urandom(size)
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        digest = registry.push_blob("bench/big", data)
        del data
        agent = stack.enter_context(harness.agent(work, "agent", storage={"quota": "8GiB"}))
        assert agent.process is not None
        rss_before = status_kib(agent.process.pid, "VmHWM")
        connection = http.client.HTTPConnection("127.0.0.1", agent.proxy_port, timeout=600)
        started = time.monotonic()
        connection.request("GET", f"{registry.url}/v2/bench/big/blobs/{digest}")
        response = connection.getresponse()
        hasher = hashlib.sha256()
        while chunk := response.read(4 * MIB):
            hasher.update(chunk)
        elapsed = time.monotonic() - started
        assert f"sha256:{hasher.hexdigest()}" == digest, "streamed bytes differ"
        rss_peak = status_kib(agent.process.pid, "VmHWM")
        deadline = time.monotonic() + 120
        metrics = ""
        while (
            "dfagent_blob_verify_seconds_count 1.0" not in metrics and time.monotonic() < deadline
        ):
            time.sleep(0.2)
            with urllib.request.urlopen(f"{agent.metrics_url}/metrics") as page:
                metrics = page.read().decode()
        verify_seconds = float(metrics.split("dfagent_blob_verify_seconds_sum ")[1].split()[0])
        agent.stop()
        result = subprocess.run(
            [sys.executable, "-m", "dfagent", "verify", "--json", "-c", str(agent.config_path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        scrub = json.loads(result.stdout)
    return {
        "blob_mib": size / MIB,
        "stream_mb_s": size / 1e6 / elapsed,
        "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": rss_peak / 1024,
        "whole_blob_verify_mb_s": size / 1e6 / verify_seconds,
        "scrub_verify_mb_s": scrub["mb_per_second"],
    }


def verify_reads_cost(work: Path, seconds: float = 8) -> dict[str, float]:
    harness.clean(work)
    size = 256 * MIB
    data = os.urandom(size)
    results = {}
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        digest = registry.push_blob("bench/paranoid", data)
        target = f"{registry.url}/v2/bench/paranoid/blobs/{digest}"
        for name, verify in (("sendfile", False), ("verify_reads", True)):
            agent = stack.enter_context(harness.agent(work, name, storage={"verify_reads": verify}))
            connection = http.client.HTTPConnection("127.0.0.1", agent.proxy_port, timeout=300)
            connection.request("GET", target)
            assert connection.getresponse().read() == data
            results[name] = harness.wrk(agent.proxy_port, target, size, MIB, 16, seconds)
    base = results["sendfile"]
    checked = results["verify_reads"]
    return {
        "sendfile_req_s": base.requests_per_second,
        "verify_reads_req_s": checked.requests_per_second,
        "ratio": checked.requests_per_second / base.requests_per_second,
        "sendfile_p99_ms": base.p99_ms,
        "verify_reads_p99_ms": checked.p99_ms,
    }


def report(results: dict[str, dict[str, float]]) -> str:
    lines = ["| measure | value |", "|---|---|"]
    for section, values in results.items():
        for key, value in values.items():
            lines.append(f"| {section}: {key} | {number(value)} |")
    return "\n".join(lines)


def section(results: dict[str, dict[str, float]]) -> Section:
    return Section(
        scenario="storage",
        title="Storage: restart, streaming memory, verification",
        table=report(results),
    )
