"""The real client: nydusd mount time and cold read time of a whole image tree, straight to the
registry against through dfagent, and on a second node whose agent gets the blob from the first."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from bench import harness
from bench.report import Section
from tests.support.agent import AgentProcess
from tests.support.nydus import Mount, build_image, compare_trees, make_tree, nydusd_config
from tests.support.ports import free_port

REPO = "bench/nydus"


def _read(root: Path, bootstrap: Path, config: dict, tree: Path) -> tuple[float, float]:
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
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "dfagent": [], "node 2": []}
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        image = build_image(tree, work / "image")
        for blob in image.blobs:
            registry.push_blob(REPO, blob.read_bytes())
        for round_ in range(rounds):
            base = work / f"round{round_}"
            direct = nydusd_config(
                "proxy", host=registry.host, repo=REPO, proxy={"url": "", "ping_url": ""}
            )
            results["direct"].append(_read(base / "direct", image.bootstrap, direct, tree))
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
            for name, agent in (("dfagent", agents[0]), ("node 2", agents[1])):
                config = nydusd_config(
                    "proxy", host=registry.host, repo=REPO,
                    proxy={"url": agent.proxy_url, "ping_url": f"{agent.health_url}/healthy"},
                )  # fmt: skip
                results[name].append(
                    _read(base / name.replace(" ", ""), image.bootstrap, config, tree)
                )
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    summary = {}
    for name, samples in results.items():
        summary[name] = {
            "mount_s": statistics.median(s[0] for s in samples),
            "cold_read_s": statistics.median(s[1] for s in samples),
            "tree_mb": size / 1e6,
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
        "| path | mount s | cold read of the tree s | read vs direct |",
        "|---|---|---|---|",
    ]
    for name, values in summary.items():
        lines.append(
            f"| {name} | {values['mount_s']:.3f} | {values['cold_read_s']:.3f} | "
            f"{values['cold_read_s'] / base['cold_read_s']:.2f}x |"
        )
    return "\n".join(lines) + f"\n\nTree: {base['tree_mb']:.1f} MB of files."


def section(summary: dict[str, dict[str, float]]) -> Section:
    return Section(
        scenario="nydus",
        title="nydusd: mount and cold read of a whole image, direct against through dfagent",
        table=report(summary),
    )
