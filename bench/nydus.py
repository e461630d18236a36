"""The real client: nydusd mount time and cold read time of a whole image tree, straight to the
registry against through dfagent, and on a second node whose agent gets the blob from the first."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from pathlib import Path

from bench import dragonfly, harness
from bench.report import Section, at_most
from bench.resources import cpu_seconds
from tests.support.agent import AgentProcess
from tests.support.metrics import metric, wait_for
from tests.support.nydus import Mount, compare_trees, make_tree, nydusd_config
from tests.support.nydus_registry import maps_learned, pull_bootstrap, push_nydus_image
from tests.support.ports import free_port

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


def run(work: Path, bulk: int = 48, rounds: int = 3) -> dict[str, dict[str, float]]:
    harness.clean(work)
    tree = make_tree(work / "src", bulk=bulk)
    with_dragonfly = dragonfly.available() is None
    paths = ("direct", "dfagent, no chunk map", "dfagent", "node 2")
    if with_dragonfly:
        paths += ("dfdaemon", "dfdaemon node 2")
    # per path and round: (mount s, read s, origin bytes, agent CPU s)
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in paths}
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        image = push_nydus_image(registry, REPO, tree, work / "image")
        for round_ in range(rounds):
            base = work / f"round{round_}"
            direct = nydusd_config(
                "proxy", host=registry.host, repo=REPO, proxy={"url": "", "ping_url": ""}
            )
            mount, read = _read(base / "direct", image.bootstrap, direct, tree)
            results["direct"].append((mount, read, math.nan, math.nan))
            token = base / "token"
            base.mkdir(exist_ok=True)
            token.write_text("bench-cluster-token-0123456789")
            members = [f"127.0.0.1:{free_port()}" for _ in range(2)]
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
                pull_bootstrap(agent, registry.url, image)
                wait_for(lambda a=agent: maps_learned(a) >= 1, "the chunk map")
            runs = (("dfagent, no chunk map", alone), ("dfagent", agents[0]), ("node 2", agents[1]))
            for name, agent in runs:
                config = nydusd_config(
                    "proxy", host=registry.host, repo=REPO,
                    proxy={"url": agent.proxy_url, "ping_url": f"{agent.health_url}/healthy"},
                )  # fmt: skip
                before = metric(agent, "dfagent_origin_bytes_total")
                cpu = cpu_seconds(agent.process.pid)
                mount, read = _read(base / name.replace(" ", ""), image.bootstrap, config, tree)
                cpu = cpu_seconds(agent.process.pid) - cpu
                origin = metric(agent, "dfagent_origin_bytes_total") - before
                results[name].append((mount, read, origin, cpu))
            if with_dragonfly:
                daemons = stack.enter_context(dragonfly.cluster(base / "dragonfly", daemons=2))
                for name, daemon in zip(("dfdaemon", "dfdaemon node 2"), daemons, strict=True):
                    config = nydusd_config(
                        "proxy", host=registry.host, repo=REPO,
                        proxy={"url": daemon.proxy_url, "ping_url": f"{daemon.health_url}/healthy"},
                    )  # fmt: skip
                    before = daemon.metric(_DFDAEMON_ORIGIN, type="BACK_TO_SOURCE")
                    cpu = cpu_seconds(daemon.pid)
                    mount, read = _read(base / name.replace(" ", ""), image.bootstrap, config, tree)
                    cpu = cpu_seconds(daemon.pid) - cpu
                    origin = daemon.metric(_DFDAEMON_ORIGIN, type="BACK_TO_SOURCE") - before
                    results[name].append((mount, read, origin, cpu))
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    summary = {}
    for name, samples in results.items():
        summary[name] = {
            "mount_s": statistics.median(s[0] for s in samples),
            "cold_read_s": statistics.median(s[1] for s in samples),
            "origin_mb": statistics.median(s[2] for s in samples) / 1e6,
            "cpu_s": statistics.median(s[3] for s in samples),
            "tree_mb": size / 1e6,
            "blob_mb": len(image.blob) / 1e6,
        }
    return summary


@contextlib.contextmanager
def _agent(root: Path, overrides: dict):
    agent = AgentProcess(root, overrides).start()
    try:
        yield agent
    finally:
        agent.stop()


def report(summary: dict[str, dict[str, float]]) -> str:
    base = summary["direct"]
    lines = [
        "| path | mount s | cold read of the tree s | read vs direct | origin MB "
        "| agent (or dfdaemon) CPU s per GB of blob |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in summary.items():
        origin = "-" if math.isnan(values["origin_mb"]) else f"{values['origin_mb']:.1f}"
        cpu = (
            "-"
            if math.isnan(values["cpu_s"])
            else f"{values['cpu_s'] / values['blob_mb'] * 1e3:.1f}"
        )
        lines.append(
            f"| {name} | {values['mount_s']:.3f} | {values['cold_read_s']:.3f} | "
            f"{values['cold_read_s'] / base['cold_read_s']:.2f}x | {origin} | {cpu} |"
        )
    return "\n".join(lines) + (
        f"\n\nTree: {base['tree_mb']:.1f} MB of files, data blob {base['blob_mb']:.1f} MB. "
        '"dfagent" saw the image\'s bootstrap layer first (as containerd pulls it through the '
        'node\'s agent) and cut the blob along its chunks; "no chunk map" did not.'
    )


def section(summary: dict[str, dict[str, float]]) -> Section:
    read = {name: values["cold_read_s"] for name, values in summary.items()}
    checks = [at_most("node 2 vs direct", read["node 2"] / read["direct"], 0.5)]
    if "dfdaemon" in read:
        checks.append(at_most("dfagent vs dfdaemon", read["dfagent"] / read["dfdaemon"], 1.0))
    return Section(
        scenario="nydus",
        title="nydusd: mount and cold read of a whole image, direct against through dfagent "
        "(and Dragonfly's dfdaemon when it is installed)",
        table=report(summary),
        checks=checks,
    )
