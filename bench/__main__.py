"""`python -m bench SCENARIO [--smoke]`: run a benchmark and print its table."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import cache_hit, cold, nydus, storage, swarm

WORK = Path(__file__).parent / "work"
MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "scenario", choices=("cache-hit", "cold", "storage", "nydus", "swarm", "all")
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run that only checks the harness"
    )
    parser.add_argument("--seconds", type=float, default=10, help="wrk duration per cell")
    args = parser.parse_args()
    if args.scenario in ("cache-hit", "all"):
        if args.smoke:
            rows = cache_hit.run(
                WORK / "cache-hit", size=16 * MIB, seconds=1, connections=(4,), loops=("asyncio",)
            )
        else:
            rows = cache_hit.run(WORK / "cache-hit", seconds=args.seconds)
        print("## Cache hit: random ranges, dfagent against nginx\n")
        print(cache_hit.report(rows), "\n")
    if args.scenario in ("cold", "all"):
        samples = 4 if args.smoke else 64
        print(
            "## Cold path: ranges never read before, through dfagent against straight to the registry\n"
        )
        print(cold.report(cold.run(WORK / "cold", samples=samples)), "\n")
    if args.scenario in ("storage", "all"):
        results = {
            "restart": storage.restart(WORK / "restart", pieces=2_000 if args.smoke else 100_000),
            "stream": storage.stream_and_verify(
                WORK / "stream", size=64 * MIB if args.smoke else 2048 * MIB
            ),
            "verify_reads": storage.verify_reads_cost(
                WORK / "verify-reads", seconds=1 if args.smoke else args.seconds
            ),
        }
        print("## Storage: restart, streaming memory, verification\n")
        print(storage.report(results), "\n")
    if args.scenario in ("nydus", "all"):
        summary = nydus.run(
            WORK / "nydus", bulk=2 if args.smoke else 48, rounds=1 if args.smoke else 3
        )
        print("## nydusd: mount and cold read of a whole image, direct against through dfagent\n")
        print(nydus.report(summary), "\n")
    if args.scenario in ("swarm", "all"):
        result = swarm.run(WORK / "swarm", size=(16 if args.smoke else 512) * MIB)
        print("## Swarm fill: every node reads one blob at once, capped links\n")
        print(swarm.report(result), "\n")


if __name__ == "__main__":
    main()
