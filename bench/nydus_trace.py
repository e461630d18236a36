"""Cold reads in nydusd's own pattern: the ranges a real nydusd asked a registry for while it
read a working set of a real nydus image (every third file), replayed on one keep-alive
connection straight to the registry, through fresh agents that did and did not see the
image's bootstrap layer, and through a fresh Dragonfly dfdaemon when it is installed (the
proxy dfagent replaces; it proves no chunk). Reports the trace's total time, per-read latency
and origin bytes per byte asked."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench import harness
from bench.cold import Reader
from bench.harness import percentile
from bench.link import registry_links
from bench.report import Section, at_most
from tests.support import dragonfly
from tests.support.counting import CountingOrigin
from tests.support.metrics import sample_sum, wait_for
from tests.support.nydus import Mount, make_tree, nydusd_config
from tests.support.nydus_registry import (
    NydusImage,
    maps_learned,
    pull_bootstrap,
    push_nydus_image,
)

REPO = "bench/trace"
_DFDAEMON_ORIGIN = "dragonfly_client_download_traffic"  # bytes, by type


@dataclass
class Replay:
    name: str
    seconds: float = 0.0
    read_ms: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    origin_bytes: float = 0.0
    asked_bytes: int = 0


def record(work: Path, registry_url: str, image: NydusImage) -> list[tuple[int, int]]:
    """The blob ranges (first, last) a real nydusd asks for while reading every third file."""
    origin = CountingOrigin(registry_url).start()
    try:
        config = nydusd_config(
            "proxy", host=origin.host, repo=REPO, proxy={"url": "", "ping_url": ""}
        )
        mount = Mount(work / "record", image.bootstrap, config)
        try:
            files = sorted(p for p in mount.mountpoint.rglob("*") if p.is_file())
            for path in files[::3]:
                path.read_bytes()
        finally:
            mount.close()
        trace = []
        for seen in origin.blob_gets(image.blob_digest):
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", seen.range or "")
            assert match, f"nydusd asked without a closed range: {seen.range}"
            trace.append((int(match.group(1)), int(match.group(2))))
        return trace
    finally:
        origin.stop()


def run(work: Path, bulk: int = 48) -> dict[str, list[Replay]]:
    harness.clean(work)
    tree = make_tree(work / "src", bulk=bulk)
    results = {}
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        image = push_nydus_image(registry, REPO, tree, work / "image")
        trace = record(work, registry.url, image)
        for number, (profile, port) in enumerate(registry_links(stack, registry.port)):
            results[profile] = _replay(stack, work / f"link{number}", port, image, trace)
    return results


def _replay(
    stack: contextlib.ExitStack,
    work: Path,
    port: int,
    image: NydusImage,
    trace: list[tuple[int, int]],
) -> list[Replay]:
    """`trace` straight to the registry at `port`, through two fresh agents and, when it is
    installed, through a fresh dfdaemon."""
    upstream = f"http://127.0.0.1:{port}"
    path = f"/v2/{REPO}/blobs/{image.blob_digest}"
    replays: list[tuple[Replay, Reader, Callable[[], float] | None]] = [
        (Replay("registry direct"), Reader(port, path), None)
    ]
    for name, learns in (("dfagent, bootstrap seen", True), ("dfagent, no chunk map", False)):
        agent = stack.enter_context(harness.agent(work, name.split(",")[1].strip()))
        if learns:
            pull_bootstrap(agent, upstream, image)
            wait_for(lambda a=agent: maps_learned(a) >= 1, "the chunk map")
        origin = partial(sample_sum, agent.metrics_url, "dfagent_origin_bytes_total")
        replays.append((Replay(name), Reader(agent.proxy_port, upstream + path), origin))
    if dragonfly.available() is None:
        daemon = stack.enter_context(
            dragonfly.cluster(work / "dragonfly", daemons=1, log_level="warn")
        ).daemons[0]
        origin = partial(daemon.metric, _DFDAEMON_ORIGIN, type="BACK_TO_SOURCE")
        replays.append((Replay("dfdaemon"), Reader(daemon.proxy_port, upstream + path), origin))
    for replay, reader, origin_bytes in replays:
        before = origin_bytes() if origin_bytes else 0
        started = time.perf_counter()
        for first, last in trace:
            _, total, body = reader.read(first, last - first + 1)
            assert body == image.blob[first : last + 1], f"{replay.name}: bytes differ"
            replay.read_ms.append(total)
            replay.asked_bytes += last - first + 1
            replay.sizes.append(last - first + 1)
        replay.seconds = time.perf_counter() - started
        replay.origin_bytes = origin_bytes() - before if origin_bytes else float(replay.asked_bytes)
    return [replay for replay, _, _ in replays]


def report(results: dict[str, list[Replay]]) -> str:
    lines = [
        "| registry | path | trace s | vs direct | read p50 ms | read p99 ms | origin bytes / asked |",
        "|---|---|---|---|---|---|---|",
    ]
    for profile, replays in results.items():
        base = replays[0]
        for r in replays:
            lines.append(
                f"| {profile} | {r.name} | {r.seconds:.3f} | {r.seconds / base.seconds:.2f}x | "
                f"{percentile(r.read_ms, 50):.2f} | {percentile(r.read_ms, 99):.2f} | "
                f"{r.origin_bytes / r.asked_bytes:.3f} |"
            )
    base = next(iter(results.values()))[0]
    sizes = sorted(base.sizes)
    return "\n".join(lines) + (
        f"\n\nTrace: {len(base.read_ms)} reads, {base.asked_bytes / 1e6:.1f} MB, "
        f"read sizes {sizes[0]}..{sizes[-1]} bytes (median {sizes[len(sizes) // 2]})."
    )


def section(results: dict[str, list[Replay]]) -> Section:
    checks = []
    for profile, (base, seen, *_) in results.items():
        checks += [
            at_most(f"{profile}: origin / asked", seen.origin_bytes / seen.asked_bytes, 1.05),
            at_most(f"{profile}: trace time vs direct", seen.seconds / base.seconds, 1.1),
        ]
    return Section(
        scenario="nydus-trace",
        title="Cold reads in nydusd's own pattern (a recorded trace), through dfagent (bootstrap "
        "seen) against straight to the registry (and through Dragonfly's dfdaemon when it is "
        "installed)",
        table=report(results),
        checks=checks,
    )
