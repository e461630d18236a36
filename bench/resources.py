"""What dfagent itself costs while it serves: peak and final memory, and CPU time per GB sent
to clients. Read from /proc/<pid> (utime + stime, VmHWM, VmRSS) and from each agent's
dfagent_served_bytes_total, over the span a scenario chooses (its load, not its set-up)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import Bars, Check, Section, info
from tests.support.agent import AgentProcess
from tests.support.metrics import sample_sum

_TICKS = os.sysconf("SC_CLK_TCK")
GB = 1e9
MIB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    # Fields after the command name (which may hold spaces) in ")": utime and stime are 14, 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, every core, from /proc/stat:
    idle and iowait count as not busy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already inside user and nice
    return total - fields[3] - fields[4], total


def busy_between(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU (all cores) in use between two `machine_ticks`."""
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def store_cost_ms_per_mib(directory: Path, mib: int = 256) -> float:
    """Milliseconds one core spends writing 1 MiB of new bytes to a new file in `directory`
    (measured as elapsed time, on a quiet machine: a VM's vCPU stalled while its host backs a
    page is charged to no process, but does no other work meanwhile): what an agent pays for
    each piece it stores, before any hashing or network.

    The pages the file takes in the page cache are memory the kernel had free. A VM that hands
    its free memory back to its host (virtio-balloon free page reporting) pays again for each
    page it touches anew, and then this costs about ten times what rewriting cached pages does.
    """
    block = os.urandom(MIB)
    path = directory / "store-cost.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        started = time.perf_counter()
        for i in range(mib):
            os.pwrite(fd, block, i * MIB)
        spent = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return spent * 1000 / mib


def status_kib(pid: int, key: str) -> int:
    """A memory figure from /proc/<pid>/status (VmHWM: peak RSS, VmRSS: RSS now), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def _served(metrics_url: str) -> float:
    return sample_sum(metrics_url, "dfagent_served_bytes_total")


def watched(agent: AgentProcess, metrics_url: str | None = None) -> tuple[int, str]:
    """What a Meter needs of an agent: its pid and metrics URL (`metrics_url` when the agent
    is reached at another address than loopback)."""
    assert agent.process is not None
    return agent.process.pid, metrics_url or agent.metrics_url


@dataclass(frozen=True)
class Resources:
    scenario: str
    agents: int
    served_gb: float
    cpu_seconds: float  # all agents together
    rss_peak_mib: float  # the largest agent's
    rss_after_mib: float  # the largest agent's, when the load was over

    @property
    def cpu_seconds_per_gb(self) -> float:
        return self.cpu_seconds / self.served_gb if self.served_gb else float("nan")


class Meter:
    """Counts from now: CPU time and bytes served of agents given as (pid, metrics URL)."""

    def __init__(self, scenario: str, agents: list[tuple[int, str]]) -> None:
        self._scenario = scenario
        self._agents = agents
        self._cpu = sum(cpu_seconds(pid) for pid, _ in agents)
        self._served = sum(_served(url) for _, url in agents)

    def read(self) -> Resources:
        pids = [pid for pid, _ in self._agents]
        return Resources(
            scenario=self._scenario,
            agents=len(pids),
            served_gb=(sum(_served(url) for _, url in self._agents) - self._served) / GB,
            cpu_seconds=sum(cpu_seconds(pid) for pid in pids) - self._cpu,
            rss_peak_mib=max(status_kib(pid, "VmHWM") for pid in pids) / 1024,
            rss_after_mib=max(status_kib(pid, "VmRSS") for pid in pids) / 1024,
        )


def section(measured: list[Resources]) -> Section:
    lines = [
        "| scenario | agents | served GB | CPU s (all agents) | CPU s / GB served | "
        "RSS peak MiB | RSS after MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    checks: list[Check] = []
    for r in measured:
        lines.append(
            f"| {r.scenario} | {r.agents} | {r.served_gb:.2f} | {r.cpu_seconds:.1f} | "
            f"{r.cpu_seconds_per_gb:.2f} | {r.rss_peak_mib:.0f} | {r.rss_after_mib:.0f} |"
        )
        checks += [
            info(f"{r.scenario}: CPU s / GB served", f"{r.cpu_seconds_per_gb:.2f}"),
            info(
                f"{r.scenario}: RSS peak / after",
                f"{r.rss_peak_mib:.0f} / {r.rss_after_mib:.0f} MiB",
            ),
        ]
    names = tuple(r.scenario for r in measured)
    return Section(
        scenario="resources",
        title="Resources: dfagent's memory and CPU under the cache-hit and swarm-fill loads",
        table="\n".join(lines)
        + "\n\nCPU and bytes count from the start of the load (after warm-up or start-up); "
        "RSS is per agent (peak since start, and at the end of the load).",
        checks=checks,
        plots=(
            Bars(
                "resources-cpu",
                "dfagent CPU seconds per GB served",
                "CPU s / GB",
                names,
                {"CPU s / GB": [r.cpu_seconds_per_gb for r in measured]},
            ),
            Bars(
                "resources-rss",
                "dfagent resident memory (largest agent)",
                "MiB",
                names,
                {
                    "peak (VmHWM)": [r.rss_peak_mib for r in measured],
                    "after (VmRSS)": [r.rss_after_mib for r in measured],
                },
            ),
        ),
    )
