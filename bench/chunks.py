"""Nydus chunk verification cost per core: decode each chunk and hash its content, as dfagent
does before serving it. Reports the content rate and the CPU seconds a gigabyte of chunks costs."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from bench.report import Check, Section, number, table
from dfagent.nydus import Chunk, Compression, DigestAlgorithm, verify_chunk
from tests.support.nydus_layout import compress, digest

MIB = 1024 * 1024
PAIRS = (("zstd", "blake3"), ("lz4_block", "sha256"), ("none", "blake3"), ("none", "sha256"))


@dataclass(frozen=True)
class Rate:
    compression: str
    algorithm: str
    content_mib: float
    stored_mib: float
    cpu_seconds: float

    @property
    def mib_per_second(self) -> float:
        return self.content_mib / self.cpu_seconds

    @property
    def cpu_seconds_per_gib(self) -> float:
        return self.cpu_seconds / self.content_mib * 1024


def _contents(count: int, seed: int) -> list[bytes]:
    """1 MiB chunks, half text-like (compressible), half random."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(500)]
    contents = []
    for i in range(count):
        if i % 2:
            contents.append(rng.randbytes(MIB))
        else:
            text = b" ".join(rng.choice(words) for _ in range(MIB // 8))
            contents.append(text[:MIB].ljust(MIB, b"."))
    return contents


def measure(compression: str, algorithm: str, contents: list[bytes], rounds: int) -> Rate:
    chunks = []
    for index, content in enumerate(contents):
        stored = compress(content, compression)
        how = Compression(compression) if len(stored) < len(content) else Compression.NONE
        stored = stored if how is not Compression.NONE else content
        chunk = Chunk(
            index,
            0,
            len(stored),
            0,
            len(content),
            how,
            DigestAlgorithm(algorithm),
            digest(content, algorithm),
        )
        chunks.append((chunk, stored))
    started = time.process_time()
    for _ in range(rounds):
        for chunk, stored in chunks:
            verify_chunk(chunk, stored)
    cpu = time.process_time() - started
    content_mib = rounds * sum(len(c) for c in contents) / MIB
    stored_mib = rounds * sum(len(s) for _, s in chunks) / MIB
    return Rate(compression, algorithm, content_mib, stored_mib, cpu)


def run(chunks: int = 64, rounds: int = 3) -> list[Rate]:
    contents = _contents(chunks, seed=14)
    return [measure(c, a, contents, rounds) for c, a in PAIRS]


def section(rates: list[Rate]) -> Section:
    rows = [
        [
            f"{r.compression} + {r.algorithm}",
            number(r.content_mib),
            number(r.stored_mib),
            number(r.mib_per_second),
            number(r.cpu_seconds_per_gib),
        ]
        for r in rates
    ]
    return Section(
        "chunks",
        "Nydus chunk verification per core (decode + digest)",
        table(
            [
                "chunks",
                "content MiB",
                "stored MiB",
                "content MiB/s per core",
                "CPU s per GiB of content",
            ],
            rows,
        ),
        [
            Check(f"verify {r.compression}+{r.algorithm}", f"{number(r.mib_per_second)} MiB/s")
            for r in rates
        ],
    )


if __name__ == "__main__":
    for rate in run():
        print(
            f"{rate.compression}+{rate.algorithm}: {rate.mib_per_second:.0f} MiB/s per core, "
            f"{rate.cpu_seconds_per_gib:.2f} CPU s per GiB"
        )
