"""Container start time on a real node (containerd + nydus-snapshotter + nydusd): from
`nerdctl run` to the container's first output, and to having read its working set, for the
OCI image pulled whole against the nydus image straight from the registry, through dfagent on
a cold node, on a second node of the swarm, and after preheat. The registry runs in a network namespace of
its own (bench/cluster.py); once its link is capped (tc tbf) with a round-trip delay added by a
relay (bench/link.py), once without either. On the dfagent rows containerd pulls through the
node's agent (a hosts.toml mirror), so the agent sees each image's bootstrap and cuts the data
blob along its chunks, as a node set up by the README does."""

from __future__ import annotations

import contextlib
import random
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import cluster, harness
from bench.link import ShapedLink
from bench.report import Bars, Check, Section, at_most, number, table
from tests.support.agent import AgentProcess
from tests.support.ports import free_ports
from tests.support.registry import Registry
from tests.support.stack import (
    Node,
    busybox_layer,
    convert_and_push,
    nydusd_base_config,
    nydusd_proxy_config,
    pull_hosts_dir,
    push_oci_image,
)
from tests.support.tools import require

REPO = "bench/app"
_PLAIN_HTTP = {"rules": [{"regex": ".*", "use_tls": False}]}  # the bench registry speaks http
ROWS = ("OCI, whole pull", "nydus direct", "dfagent cold", "dfagent node 2", "dfagent preheated")


@dataclass(frozen=True)
class Workload:
    files: dict[str, bytes]
    working_set: list[str]  # paths the container reads after its first output

    @property
    def command(self) -> list[str]:
        reads = " ".join(self.working_set)
        return ["sh", "-c", f"echo first; cat {reads} > /dev/null && echo done"]


def workload(image_mib: int, seed: int = 7) -> Workload:
    """Files of 4 KiB to 512 KiB (random bytes: nothing compresses) adding up to about
    `image_mib`; the working set is every fourth one, spread over the image."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    total = 0
    while total < image_mib << 20:
        size = rng.randint(4 << 10, 512 << 10)
        files[f"data/f-{len(files):04d}"] = rng.randbytes(size)
        total += size
    return Workload(files, [f"/{name}" for name in sorted(files)[::4]])


@dataclass
class Sample:
    first_s: float
    done_s: float
    registry_mb: float


@dataclass
class Profile:
    """The results over one registry link."""

    name: str
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {r: [] for r in ROWS})

    def median(self, row: str, what: str) -> float:
        return statistics.median(getattr(s, what) for s in self.samples[row])


def _start(node: Node, image: str, load: Workload, snapshotter: str) -> tuple[float, float]:
    """Seconds from `nerdctl run` to the container's first line, and to its exit after
    reading the working set."""
    command = [require("nerdctl"), "--snapshotter", snapshotter, "run", "--rm", "--net", "none"]
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, image, *load.command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node.nerdctl_env,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    first_s = time.monotonic() - started
    _, errors = process.communicate(timeout=900)
    done_s = time.monotonic() - started
    if process.returncode != 0 or first != b"first\n":
        raise RuntimeError(f"the container failed ({process.returncode}): {errors.decode()}")
    return first_s, done_s


@contextlib.contextmanager
def _node(root: Path, **options: object) -> Iterator[Node]:
    node = Node(root, **options)  # type: ignore[arg-type]
    try:
        yield node.start()
    finally:
        node.stop()


def _proxy(agent: AgentProcess) -> dict:
    return nydusd_proxy_config(agent.proxy_url, f"{agent.health_url}/healthy")


def _round(work: Path, link: ShapedLink, load: Workload, profile: Profile) -> None:
    oci, nydus = f"{link.host}/{REPO}:oci", f"{link.host}/{REPO}:nydus"

    def measure(row: str, node: Node, image: str, snapshotter: str = "nydus") -> None:
        before = link.carried
        first_s, done_s = _start(node, image, load, snapshotter)
        profile.samples[row].append(Sample(first_s, done_s, (link.carried - before) / 1e6))

    with _node(work / "oci") as node:
        measure("OCI, whole pull", node, oci, "overlayfs")
    with _node(work / "direct", nydusd_config=nydusd_base_config()) as node:
        measure("nydus direct", node, nydus)

    def through(agent: AgentProcess, name: str) -> contextlib.AbstractContextManager[Node]:
        hosts = pull_hosts_dir(work / f"{name}-hosts", link.host, agent.proxy_url)
        return _node(work / name, nydusd_config=_proxy(agent), pull_hosts=hosts)

    with contextlib.ExitStack() as stack:
        agents = stack.enter_context(_swarm(work / "swarm"))
        with through(agents[0], "cold") as node:
            measure("dfagent cold", node, nydus)
        with through(agents[1], "node2") as node:
            measure("dfagent node 2", node, nydus)
        alone = stack.enter_context(harness.agent(work, "preheat-agent", proxy=_PLAIN_HTTP))
        preheat = alone.cli("preheat", "--plain-http", nydus)
        if preheat.returncode != 0:
            raise RuntimeError(f"dfagent preheat failed: {preheat.stderr}")
        with through(alone, "preheated") as node:
            measure("dfagent preheated", node, nydus)


@contextlib.contextmanager
def _swarm(work: Path) -> Iterator[list[AgentProcess]]:
    work.mkdir(parents=True, exist_ok=True)
    token = work / "token"
    token.write_text("bench-stack-token-0123456789\n")
    members = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                harness.agent(
                    work,
                    f"agent{i}",
                    peer={"listen": members[i], "token_file": str(token)},
                    swarm={"peers": members, "advertise": members[i], "refresh": "1s"},
                    proxy=_PLAIN_HTTP,
                )
            )
            for i in range(2)
        ]


def _push(work: Path, registry: Registry, load: Workload) -> None:
    push_oci_image(registry, REPO, "oci", busybox_layer(load.files))
    convert_and_push(work / "convert", registry, REPO, "oci", "nydus")


def run(
    work: Path, image_mib: int = 64, rounds: int = 3, mbit: float = 100, rtt_ms: float = 40
) -> list[Profile]:
    harness.clean(work)
    load = workload(image_mib)
    profiles = [
        Profile(f"registry link {mbit:g} Mbit/s (tc tbf), {rtt_ms:g} ms RTT"),
        Profile("registry link unshaped"),
    ]
    with cluster.topology(0, int(mbit), int(mbit)) as (origin, _):
        registry = Registry(
            work / "registry",
            address=origin.address,
            port=cluster.REGISTRY_PORT,
            command_prefix=origin.prefix,
        ).start()
        try:
            _push(work, registry, load)
            for number_, (profile, rtt) in enumerate(zip(profiles, (rtt_ms, 0.0), strict=True)):
                if not rtt:
                    cluster.uncap(origin)
                link = ShapedLink(registry.port, None, rtt, target_host=origin.address).start()
                try:
                    for i in range(rounds):
                        _round(work / f"link{number_}-{i}", link, load, profile)
                finally:
                    link.stop()
        finally:
            registry.stop()
    return profiles


def section(profiles: list[Profile], image_mib: int) -> Section:
    rows = []
    checks: list[Check] = []
    for profile in profiles:
        direct = profile.median("nydus direct", "done_s")
        whole = profile.median("OCI, whole pull", "done_s")
        for row in ROWS:
            done = profile.median(row, "done_s")
            rows.append(
                [
                    profile.name,
                    row,
                    number(profile.median(row, "first_s")),
                    number(done),
                    f"{done / direct:.2f}x",
                    number(profile.median(row, "registry_mb")),
                ]
            )
        checks += [
            at_most(f"{profile.name}: dfagent cold vs nydus direct",
                    profile.median("dfagent cold", "done_s") / direct, 1.1),
            at_most(f"{profile.name}: dfagent node 2 vs nydus direct",
                    profile.median("dfagent node 2", "done_s") / direct, 0.5),
            at_most(f"{profile.name}: dfagent preheated vs nydus direct",
                    profile.median("dfagent preheated", "done_s") / direct, 0.5),
            at_most(f"{profile.name}: slowest nydus start vs the whole OCI pull",
                    max(profile.median(r, "done_s") for r in ROWS[1:]) / whole, 0.8),
        ]  # fmt: skip
    header = ["registry", "start", "first output s", "working set read s", "vs nydus direct",
              "registry MB"]  # fmt: skip
    return Section(
        scenario="stack",
        title=(
            f"Container start: nerdctl run to first output and to a {image_mib // 4} MiB working "
            f"set read, from a {image_mib} MiB image (medians)"
        ),
        table=table(header, rows),
        checks=checks,
        plots=tuple(
            Bars(
                f"stack-{i}",
                f"Container start ({profile.name})",
                "s",
                ("first output", "working set read"),
                {
                    row: [profile.median(row, "first_s"), profile.median(row, "done_s")]
                    for row in ROWS
                },
            )
            for i, profile in enumerate(profiles)
        ),
    )
