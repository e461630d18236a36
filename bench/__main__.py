"""`python3 -m bench SCENARIO [--smoke] [knobs]`: run benchmarks, print each table, then a
summary of every figure beside its target; write the report (markdown and PNG plots).

`all` runs every scenario; `resources` runs the two whose agents it measures (cache-hit and
swarm). The report goes to bench/results/<date>.md for `all` and <date>-<scenario>.md for
one scenario, with each knob set away from its default added (<date>-swarm-nodes-8.md);
`--smoke` (tiny sizes, only checks that the harness works) writes it under bench/work/results
instead, so that it never replaces a real one.

A scenario's work (blobs, caches, agents' logs) goes in bench/work/<scenario>; it is removed
when the scenario passes and kept when it fails, or always with `--keep-work`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    cache_hit,
    chunks,
    cold,
    dragonfly_side,
    harness,
    home,
    lazy,
    nydus,
    nydus_trace,
    report,
    resources,
    sim,
    stack,
    storage,
    swarm,
)

HERE = Path(__file__).parent
WORK = HERE / "work"
MIB = 1024 * 1024

# What a scenario hands back: its section of the report, and what its agents cost.
Ran = tuple[report.Section, list[resources.Resources]]


def _cache_hit(args: argparse.Namespace) -> Ran:
    if args.smoke:
        result = cache_hit.run(
            WORK / "cache-hit", size=16 * MIB, seconds=1, connections=(4,), loops=("asyncio",)
        )
    else:
        result = cache_hit.run(WORK / "cache-hit", seconds=args.seconds)
    return cache_hit.section(result), result.resources


def _cold(args: argparse.Namespace) -> Ran:
    series = cold.run(WORK / "cold", samples=4 if args.smoke else args.samples)
    return cold.section(series), []


def _storage(args: argparse.Namespace) -> Ran:
    results = {
        "restart": storage.restart(WORK / "restart", pieces=2_000 if args.smoke else 100_000),
        "stream": storage.stream_and_verify(
            WORK / "stream", size=64 * MIB if args.smoke else 2048 * MIB
        ),
        "verify_reads": storage.verify_reads_cost(
            WORK / "verify-reads", seconds=1 if args.smoke else args.seconds
        ),
    }
    return storage.section(results), []


def _nydus(args: argparse.Namespace) -> Ran:
    summary = nydus.run(WORK / "nydus", bulk=2 if args.smoke else 48, rounds=1 if args.smoke else 3)
    return nydus.section(summary), []


def _nydus_trace(args: argparse.Namespace) -> Ran:
    results = nydus_trace.run(WORK / "nydus-trace", bulk=2 if args.smoke else 48)
    return nydus_trace.section(results), []


def _blob_mib(args: argparse.Namespace, default: int) -> int:
    return default if args.blob_mib is None else args.blob_mib


def _swarm(args: argparse.Namespace) -> Ran:
    fill = swarm.run(
        WORK / "swarm",
        nodes=args.nodes,
        size=(16 if args.smoke else _blob_mib(args, 512)) * MIB,
        node_mbit=args.link_mbit,
        piece=args.piece_kib * 1024,
    )
    return swarm.section(fill), [fill.resources]


def _lazy(args: argparse.Namespace) -> Ran:
    result = lazy.run(
        WORK / "lazy",
        nodes=3 if args.smoke else args.nodes,
        size=(32 if args.smoke else _blob_mib(args, 512)) * MIB,
        node_mbit=args.link_mbit,
        coverage=0.2 if args.smoke else args.coverage,
        readers=2 if args.smoke else args.readers,
        rounds=2 if args.smoke else args.rounds,
        piece=args.piece_kib * 1024,
        max_uploads=args.max_uploads,
    )
    return lazy.section(result), []


def _chunks(args: argparse.Namespace) -> Ran:
    rates = chunks.run(chunks=4 if args.smoke else 64, rounds=1 if args.smoke else 3)
    return chunks.section(rates), []


def _stack(args: argparse.Namespace) -> Ran:
    image_mib = 4 if args.smoke else args.image_mib
    profiles = stack.run(
        WORK / "stack",
        image_mib=image_mib,
        rounds=1 if args.smoke else args.rounds,
        mbit=args.registry_mbit,
        rtt_ms=args.rtt_ms,
    )
    return stack.section(profiles, image_mib), []


def _sim(args: argparse.Namespace) -> Ran:
    if args.smoke:
        plan = sim.runs((4, 16), 16 * MIB, 16 * MIB, 16)
    else:
        counts = tuple(int(n) for n in args.sim_nodes.split(","))
        plan = sim.runs(
            counts, _blob_mib(args, 512) * MIB, args.sim_small_mib * MIB, args.sim_full_up_to
        )
    setting = sim.Setting(
        link_mbit=args.link_mbit,
        rtt=args.sim_rtt_ms / 1000,
        coverage=args.coverage,
        readers=args.readers,
        piece=args.piece_kib * 1024,
        home_request_seconds=args.sim_home_ms / 1000,
        home_piece_seconds=args.sim_home_piece_ms / 1000,
        home_describe_seconds=args.sim_home_describe_ms / 1000,
    )
    results = sim.run(plan, setting)
    return sim.section(results, setting), []


def _home(args: argparse.Namespace) -> Ran:
    if args.smoke:
        rows = home.run(WORK / "home", seconds=1, nodes=(8,), connections=4)
    else:
        rows = home.run(WORK / "home", seconds=args.seconds)
    return home.section(rows), []


def _dragonfly(args: argparse.Namespace) -> Ran:
    if args.smoke:
        sizes = dragonfly_side.Sizes(
            nodes=2,
            fill=16 * MIB,
            lazy=16 * MIB,
            coverage=0.2,
            readers=2,
            wrk_seconds=1,
            cells=((MIB, 4),),
            cold_blobs=2,
            cold_size=8 * MIB,
        )
    else:
        mib = _blob_mib(args, 256)
        sizes = dragonfly_side.Sizes(
            nodes=args.nodes,
            link_mbit=args.link_mbit,
            fill=mib * MIB,
            lazy=mib * MIB,
            coverage=args.coverage,
            readers=args.readers,
            wrk_seconds=args.seconds,
            cold_blobs=args.cold_blobs,
        )
    result = dragonfly_side.run(WORK / "dragonfly", sizes)
    return dragonfly_side.section(result), []


SCENARIOS: dict[str, Callable[[argparse.Namespace], Ran]] = {
    "cache-hit": _cache_hit,
    "cold": _cold,
    "storage": _storage,
    "nydus": _nydus,
    "nydus-trace": _nydus_trace,
    "swarm": _swarm,
    "lazy": _lazy,
    "chunks": _chunks,
    "stack": _stack,
    "sim": _sim,
    "home": _home,
    "dragonfly": _dragonfly,
}
GROUPS = {"all": tuple(SCENARIOS), "resources": ("cache-hit", "swarm")}


_UNNAMED = frozenset({"scenario", "smoke", "keep_work", "out"})  # they name no measurement


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=(*SCENARIOS, *GROUPS))
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run that only checks the harness"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10,
        help="wrk duration per cell (cache-hit, storage, home, dragonfly)",
    )
    parser.add_argument("--samples", type=int, default=64, help="cold reads per path (cold)")
    parser.add_argument("--nodes", type=int, default=4, help="nodes (swarm, lazy, dragonfly)")
    parser.add_argument(
        "--blob-mib",
        type=int,
        help="blob size (swarm, lazy, sim: default 512; dragonfly: default 256)",
    )
    parser.add_argument(
        "--link-mbit",
        type=int,
        default=200,
        help="every link's cap, both ways (swarm, lazy, sim, dragonfly)",
    )
    parser.add_argument(
        "--coverage",
        type=float,
        default=0.15,
        help="share of the blob the trace reads (lazy, sim, dragonfly)",
    )
    parser.add_argument(
        "--readers", type=int, default=4, help="readers per node (lazy, sim, dragonfly)"
    )
    parser.add_argument(
        "--cold-blobs",
        type=int,
        default=16,
        help="blobs nobody read, two 1 MiB reads each (dragonfly)",
    )
    parser.add_argument("--image-mib", type=int, default=64, help="image size (stack)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="starts per row (stack), replays per path (lazy)"
    )
    parser.add_argument(
        "--piece-kib",
        type=int,
        default=1024,
        help="the agents' storage.piece_size (swarm, lazy, sim)",
    )
    parser.add_argument(
        "--max-uploads", type=int, default=None, help="the agents' peer.max_uploads (lazy)"
    )
    parser.add_argument(
        "--registry-mbit", type=float, default=100, help="the registry link's cap (stack)"
    )
    parser.add_argument(
        "--rtt-ms", type=float, default=40, help="the registry link's round trip (stack)"
    )
    parser.add_argument(
        "--sim-nodes",
        default="4,8,16,100,1000",
        help="node counts simulated, comma-separated (sim)",
    )
    parser.add_argument(
        "--sim-small-mib",
        type=int,
        default=16,
        help="the blob every node count is also simulated with; above --sim-full-up-to nodes "
        "the only one",
    )
    parser.add_argument(
        "--sim-full-up-to",
        type=int,
        default=100,
        help="node counts up to this are also simulated with the full blob (sim; 1,000 nodes "
        "with 512 MiB take about 34 minutes on their own)",
    )
    parser.add_argument(
        "--sim-rtt-ms", type=float, default=2, help="round trip between any two hosts (sim)"
    )
    parser.add_argument(
        "--sim-home-ms",
        type=float,
        default=0.16,
        help="CPU a blob's home spends on one request from another node, as `bench home` "
        "measures it (sim; 0: a home that is never busy)",
    )
    parser.add_argument(
        "--sim-home-piece-ms",
        type=float,
        default=0.04,
        help="what each piece beyond a request's first costs the home, as `bench home` "
        "measures it (sim)",
    )
    parser.add_argument(
        "--sim-home-describe-ms",
        type=float,
        default=0.05,
        help="what a node's first question about a blob (its size) costs the home, as `bench "
        "home` measures it (sim)",
    )
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep bench/work/<scenario> after a scenario that passed (it always stays after one "
        "that failed)",
    )
    parser.add_argument(
        "--out", type=Path, help="where the report goes (default: bench/results, see above)"
    )
    args = parser.parse_args()
    if args.nodes < 2:
        parser.error("--nodes: a swarm needs at least 2")
    # Knobs set away from their defaults name the report, so that a run with other knobs never
    # replaces another's (`--nodes 8`: <date>-swarm-nodes-8.md).
    args.knobs = [
        f"{name.replace('_', '-')}-{_file_name_part(value)}"
        for name, value in vars(args).items()
        if name not in _UNNAMED and value != parser.get_default(name)
    ]
    return args


def _file_name_part(value: object) -> str:
    """A knob's value as it can stand in a file name (`--sim-nodes 4,8` -> `4,8`, 1e3 -> 1000)."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^\w.,+-]", "_", text)


def _show(section: report.Section) -> None:
    print(f"## {section.title}\n\n{section.table}\n", flush=True)


def main() -> int:
    args = _arguments()
    run = report.Run.begin(shlex.join(["python3", "-m", "bench", *sys.argv[1:]]))
    sections: list[report.Section] = []
    measured: list[resources.Resources] = []
    failures = 0
    for name in GROUPS.get(args.scenario, (args.scenario,)):
        started = time.monotonic()
        try:
            section, usage = SCENARIOS[name](args)
        except Exception as error:
            traceback.print_exc()
            failures += 1
            section, usage = report.failed(name, error), []
            harness.settle_work(keep=True)
        else:
            harness.settle_work(keep=args.keep_work)
        sections.append(dataclasses.replace(section, seconds=time.monotonic() - started))
        measured += usage
        _show(section)
    if measured:
        sections.append(resources.section(measured))
        _show(sections[-1])
    directory = args.out or (WORK / "results" if args.smoke else HERE / "results")
    stem = run.started.date().isoformat()
    if args.scenario != "all":
        stem += f"-{args.scenario}"
    stem += "".join(f"-{knob}" for knob in args.knobs)
    path = report.write(run, sections, directory, stem)
    print(f"## Summary\n\n{report.summary(sections)}\n\nReport: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
