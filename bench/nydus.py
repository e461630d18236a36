"""The real client: nydusd mount time and cold read time of a whole image tree, straight to the
registry against through dfagent (with and without the image's chunk map), on a second node
whose agent gets the blob from the first, and through Dragonfly's dfdaemon when it is
installed; once with the registry on loopback, once behind a paced, delayed link."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from pathlib import Path

from bench import harness
from bench.link import registry_links
from bench.report import Section, at_most
from bench.resources import cpu_seconds
from tests.support import dragonfly
from tests.support.agent import AgentProcess
from tests.support.metrics import metric, wait_for
from tests.support.nydus import Mount, compare_trees, make_tree, nydusd_config
from tests.support.nydus_registry import (
    NydusImage,
    maps_learned,
    pull_bootstrap,
    push_nydus_image,
)
from tests.support.ports import free_ports

REPO = "bench/nydus"
_DFDAEMON_ORIGIN = "dragonfly_client_download_traffic"  # bytes, by type


def _read(root: Path, bootstrap: Path, config: dict, tree: Path) -> tuple[float, float]:
    """(mount seconds, seconds to read and compare the whole tree) through a fresh nydusd."""
    mount = Mount(root, bootstrap, config)
    try:
        started = time.monotonic()
        compare_trees(tree, mount.mountpoint)
        return mount.mount_seconds, time.monotonic() - started
    finally:
        mount.close()


Summary = dict[str, dict[str, dict[str, float]]]  # registry link -> path -> figure -> value


def run(work: Path, bulk: int = 48, rounds: int = 3) -> Summary:
    harness.clean(work)
    tree = make_tree(work / "src", bulk=bulk)
    summary: Summary = {}
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        image = push_nydus_image(registry, REPO, tree, work / "image")
        for number, (profile, port) in enumerate(registry_links(stack, registry.port)):
            host = f"127.0.0.1:{port}"
            summary[profile] = _profile(work / f"link{number}", host, image, tree, rounds)
    return summary


def _profile(
    work: Path, host: str, image: NydusImage, tree: Path, rounds: int
) -> dict[str, dict[str, float]]:
    """Every path's medians over `rounds`, the registry reached at `host`."""
    with_dragonfly = dragonfly.available() is None
    paths = ("direct", "dfagent, no chunk map", "dfagent", "node 2", "dfagent, warm")
    if with_dragonfly:
        paths += ("dfdaemon", "dfdaemon node 2")
    # per path and round: (mount s, read s, origin bytes, agent CPU s)
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in paths}

    def nydusd(proxy_url: str, health_url: str) -> dict:
        proxy = {"url": proxy_url, "ping_url": f"{health_url}/healthy" if health_url else ""}
        return nydusd_config("proxy", host=host, repo=REPO, proxy=proxy)

    with contextlib.ExitStack() as stack:
        for round_ in range(rounds):
            base = work / f"round{round_}"
            mount, read = _read(base / "direct", image.bootstrap, nydusd("", ""), tree)
            results["direct"].append((mount, read, math.nan, math.nan))
            token = base / "token"
            base.mkdir(parents=True, exist_ok=True)
            token.write_text("bench-cluster-token-0123456789")
            members = [f"127.0.0.1:{port}" for port in free_ports(2)]
            agents = [
                stack.enter_context(_agent(base / f"agent{i}", {
                    "log": {"level": "info"},
                    "peer": {"listen": members[i], "token_file": str(token)},
                    "swarm": {"peers": members, "advertise": members[i]},
                }))
                for i in range(2)
            ]  # fmt: skip
            alone = stack.enter_context(_agent(base / "alone", {"log": {"level": "info"}}))
            for agent in agents:  # containerd pulls the bootstrap layer through each node
                pull_bootstrap(agent, f"http://{host}", image)
                wait_for(lambda a=agent: maps_learned(a) >= 1, "the chunk map")
            runs = (
                ("dfagent, no chunk map", alone),
                ("dfagent", agents[0]),
                ("node 2", agents[1]),
                ("dfagent, warm", agents[0]),  # its cache holds the whole blob now
            )
            for name, agent in runs:
                config = nydusd(agent.proxy_url, agent.health_url)
                before = metric(agent, "dfagent_origin_bytes_total")
                cpu = cpu_seconds(agent.process.pid)
                mount, read = _read(base / name.replace(" ", ""), image.bootstrap, config, tree)
                cpu = cpu_seconds(agent.process.pid) - cpu
                origin = metric(agent, "dfagent_origin_bytes_total") - before
                results[name].append((mount, read, origin, cpu))
            if with_dragonfly:
                daemons = stack.enter_context(
                    dragonfly.cluster(base / "dragonfly", daemons=2, log_level="warn")
                ).daemons
                for name, daemon in zip(("dfdaemon", "dfdaemon node 2"), daemons, strict=True):
                    config = nydusd(daemon.proxy_url, daemon.health_url)
                    before = daemon.metric(_DFDAEMON_ORIGIN, type="BACK_TO_SOURCE")
                    cpu = cpu_seconds(daemon.pid)
                    mount, read = _read(base / name.replace(" ", ""), image.bootstrap, config, tree)
                    cpu = cpu_seconds(daemon.pid) - cpu
                    origin = daemon.metric(_DFDAEMON_ORIGIN, type="BACK_TO_SOURCE") - before
                    results[name].append((mount, read, origin, cpu))
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    return {
        name: {
            "mount_s": statistics.median(s[0] for s in samples),
            "cold_read_s": statistics.median(s[1] for s in samples),
            "origin_mb": statistics.median(s[2] for s in samples) / 1e6,
            "cpu_s": statistics.median(s[3] for s in samples),
            "tree_mb": size / 1e6,
            "blob_mb": len(image.blob) / 1e6,
        }
        for name, samples in results.items()
    }


@contextlib.contextmanager
def _agent(root: Path, overrides: dict):
    agent = AgentProcess(root, overrides).start()
    try:
        yield agent
    finally:
        agent.stop()


def report(summary: Summary) -> str:
    lines = [
        "| registry | path | mount s | cold read of the tree s | read vs direct | origin MB "
        "| agent (or dfdaemon) CPU s per GB of blob |",
        "|---|---|---|---|---|---|---|",
    ]
    for profile, paths in summary.items():
        base = paths["direct"]
        for name, values in paths.items():
            origin = "-" if math.isnan(values["origin_mb"]) else f"{values['origin_mb']:.1f}"
            cpu_s = values["cpu_s"]
            cpu = "-" if math.isnan(cpu_s) else f"{cpu_s / values['blob_mb'] * 1e3:.1f}"
            lines.append(
                f"| {profile} | {name} | {values['mount_s']:.3f} | {values['cold_read_s']:.3f} | "
                f"{values['cold_read_s'] / base['cold_read_s']:.2f}x | {origin} | {cpu} |"
            )
    base = next(iter(summary.values()))["direct"]
    return "\n".join(lines) + (
        f"\n\nTree: {base['tree_mb']:.1f} MB of files, data blob {base['blob_mb']:.1f} MB. "
        '"dfagent" saw the image\'s bootstrap layer first (as containerd pulls it through the '
        'node\'s agent) and cut the blob along its chunks; "no chunk map" did not. '
        '"warm" is the first agent read again by a fresh nydusd, every piece in its cache: '
        "what nydusd itself costs, a floor for every row."
    )


def section(summary: Summary) -> Section:
    checks = []
    for profile, paths in summary.items():
        read = {name: values["cold_read_s"] for name, values in paths.items()}
        checks.append(at_most(f"{profile}: node 2 vs direct", read["node 2"] / read["direct"], 0.5))
        if "dfdaemon" in read:
            checks.append(
                at_most(f"{profile}: dfagent vs dfdaemon", read["dfagent"] / read["dfdaemon"], 1.0)
            )
    return Section(
        scenario="nydus",
        title="nydusd: mount and cold read of a whole image, direct against through dfagent "
        "(and Dragonfly's dfdaemon when it is installed)",
        table=report(summary),
        checks=checks,
    )
