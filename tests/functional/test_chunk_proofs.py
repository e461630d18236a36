"""Nydus chunk proofs through real agents: a bootstrap layer passing through the proxy (or a
preheat) teaches an agent the data blob's chunk map; from then on reads of that blob fetch from
the origin only the chunks they cover, and every chunk is proven against the image's own digest
before a byte of it is served, whether it came from the origin, a peer or the agent's disk."""

from __future__ import annotations

import gzip
import http.client
import io
import itertools
import json
import os
import random
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin, Fault
from tests.support.metrics import metric, metrics, wait_for
from tests.support.nydus import bootstrap_layer, make_tree
from tests.support.nydus_registry import (
    NydusImage,
    digest_of,
    maps_learned,
    pull_bootstrap,
    push_nydus_image,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.slow

LARGE = 1024 * 1024  # a chunk this big is a piece of its own for any piece budget up to 1 MiB
RATIO = 1.10  # origin bytes per byte asked, for runs of whole chunks
VOUCHERS = "dfagent_chunk_map_vouchers_total"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("proofs") / "src", seed=14, bulk=8)


@pytest.fixture(scope="module")
def image(registry: Registry, tree: Path, tmp_path_factory: pytest.TempPathFactory) -> NydusImage:
    return push_nydus_image(registry, "proofs/app", tree, tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def second_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    other = Registry(tmp_path_factory.mktemp("second-registry")).start()
    yield other
    other.stop()


def sparse_runs(image: NydusImage) -> list[tuple[int, int]]:
    """Runs of whole chunks as nydusd asks for them, far apart and in no order: every third
    large chunk, alternately alone and together with the chunks up to the next large one.
    Each run starts and ends on a large chunk, so it is exactly a run of whole pieces."""
    large = [i for i, chunk in enumerate(image.chunks) if chunk.compressed_size >= LARGE]
    assert len(large) >= 9, "the test tree makes enough large chunks"
    runs = []
    for n, k in enumerate(range(0, len(large), 3)):
        last = large[k + 1] if n % 2 and k + 1 < len(large) else large[k]
        runs.append(image.span(large[k], last))
    random.Random(3).shuffle(runs)
    return runs


def chunks_in(image: NydusImage, start: int, end: int) -> int:
    return sum(start <= c.compressed_offset and c.compressed_end <= end for c in image.chunks)


def asked(start: int, end: int) -> dict[str, str]:
    return {"Range": f"bytes={start}-{end - 1}"}


@dataclass
class Outcome:
    """What a client got: `status` None when no response head came, `whole` False when the
    body broke off before its Content-Length."""

    status: int | None
    body: bytes
    whole: bool


def fetch(agent: AgentProcess, url: str, headers: dict[str, str]) -> Outcome:
    """One request through the proxy that may fail at any point; keeps what arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", agent.proxy_port, timeout=60)
    body = bytearray()
    try:
        connection.request("GET", url, headers=headers)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException):
        connection.close()
        return Outcome(None, b"", False)
    try:
        while block := response.read(64 * 1024):
            body += block
    except http.client.IncompleteRead as cut:
        return Outcome(response.status, bytes(body + cut.partial), False)
    except (OSError, http.client.HTTPException):
        return Outcome(response.status, bytes(body), False)
    finally:
        connection.close()
    length = response.getheader("Content-Length")
    whole = length is None or int(length) == len(body)
    return Outcome(response.status, bytes(body), whole)


def read_exact(agent: AgentProcess, image: NydusImage, url: str, start: int, end: int) -> None:
    reply = send(agent.proxy_port, url, asked(start, end))
    assert reply.status == 206, (reply.status, reply.body[:300])
    assert reply.body == image.blob[start:end], f"bytes {start}..{end} differ"


def verified(agent: AgentProcess, algorithm: str) -> float:
    return metric(agent, f'dfagent_chunks_verified_total{{algorithm="{algorithm}"}}')


def failures(agent: AgentProcess, source: str) -> float:
    return metric(agent, f'dfagent_chunk_verify_failures_total{{source="{source}"}}')


def get_ranges(origin: CountingOrigin, image: NydusImage) -> list[tuple[int, int]]:
    """Blob bytes `start .. end - 1` of every GET of the data blob the origin received."""
    ranges = []
    for seen in origin.blob_gets(image.blob_digest):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", seen.range or "")
        if match is None:
            ranges.append((0, len(image.blob)))
        else:
            last = int(match.group(2)) if match.group(2) else len(image.blob) - 1
            ranges.append((int(match.group(1)), min(last, len(image.blob) - 1) + 1))
    return ranges


def gets_covering(origin: CountingOrigin, image: NydusImage, offset: int) -> int:
    return sum(start <= offset < end for start, end in get_ranges(origin, image))


def flipping(origin: CountingOrigin, image: NydusImage, offset: int, times: int | None) -> Fault:
    """A fault: GETs of the data blob whose body holds blob byte `offset` get it with one bit
    flipped, the first `times` of them (every one for None)."""
    flipped = 0

    async def flip(request: web.BaseRequest) -> web.StreamResponse | None:
        nonlocal flipped
        if request.method != "GET" or not request.path.endswith(image.blob_digest):
            return None
        if times is not None and flipped >= times:
            return None
        upstream = await origin.forward(request)
        assert isinstance(upstream, web.Response) and upstream.body is not None
        body = bytearray(upstream.body)
        content_range = upstream.headers.get("Content-Range", "bytes 0-")
        start = int(re.match(r"bytes (\d+)-", content_range).group(1))
        if upstream.status in (200, 206) and start <= offset < start + len(body):
            body[offset - start] ^= 0x01
            flipped += 1
        return web.Response(status=upstream.status, body=bytes(body), headers=upstream.headers)

    return flip


def learn_map(agent: AgentProcess, origin: CountingOrigin, image: NydusImage) -> None:
    pull_bootstrap(agent, origin.url, image)
    wait_for(lambda: maps_learned(agent) >= 1, "the chunk map learned from the bootstrap")


def flip_target(image: NydusImage) -> tuple[tuple[int, int], int]:
    """A run of the sparse series and a blob byte inside a large chunk of it."""
    start, end = sparse_runs(image)[0]
    chunk = next(c for c in image.chunks if c.compressed_offset == start)
    return (start, end), chunk.compressed_offset + chunk.compressed_size // 2


FORMATS = [
    pytest.param(6, "zstd", "blake3", id="v6-zstd-blake3"),
    pytest.param(6, "lz4_block", "sha256", id="v6-lz4-sha256"),
    pytest.param(5, "zstd", "sha256", id="v5-zstd-sha256"),
    pytest.param(5, "none", "blake3", id="v5-none-blake3"),
]


@pytest.mark.parametrize(("fs_version", "compressor", "digester"), FORMATS)
def test_a_bootstrap_through_the_proxy_makes_sparse_reads_cost_what_they_ask(
    agent, origin, registry, tree, tmp_path, fs_version, compressor, digester
):
    image = push_nydus_image(
        registry,
        f"proofs/v{fs_version}-{compressor}-{digester}",
        tree,
        tmp_path / "image",
        fs_version=fs_version,
        compressor=compressor,
        digester=digester,
    )
    learn_map(agent, origin, image)
    assert maps_learned(agent) == 1, "one data blob, one map"
    url = image.blob_url(origin.url)
    runs = sparse_runs(image)
    for start, end in runs:
        read_exact(agent, image, url, start, end)
    asked_bytes = sum(end - start for start, end in runs)
    fetched = origin.blob_bytes(image.blob_digest, len(image.blob))
    assert fetched / asked_bytes <= RATIO, (
        f"the origin sent {fetched} bytes for {asked_bytes} asked: {get_ranges(origin, image)}"
    )
    read = sum(chunks_in(image, start, end) for start, end in runs)
    assert verified(agent, digester) >= read, f"{read} chunks read, each proven"
    assert all(failures(agent, source) == 0 for source in ("origin", "peer", "disk"))
    status = json.loads(agent.cli("status", "--json").stdout)
    (entry,) = [b for b in status["recent"] if b["digest"] == image.blob_digest]
    assert entry["chunk_mapped"] and entry["chunks"] == len(image.chunks)
    assert read <= entry["chunks_verified"] < entry["chunks"], entry
    assert "proven" in agent.cli("status").stdout


def test_preheat_of_the_manifest_teaches_the_chunk_map(agent, origin, image):
    done = agent.cli("preheat", f"{origin.host}/{image.repo}:{image.tag}", "--plain-http", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert {b["digest"] for b in job["blobs"]} >= {image.blob_digest, image.bootstrap_digest}
    wait_for(lambda: maps_learned(agent) >= 1, "the chunk map learned from the preheated image")
    assert maps_learned(agent) == 1
    gets = len(origin.blob_gets(image.blob_digest))
    for start, end in sparse_runs(image):
        read_exact(agent, image, image.blob_url(origin.url), start, end)
    assert len(origin.blob_gets(image.blob_digest)) == gets, "served from the preheated cache"
    # The bootstrap was preheated first, so the data blob was cut along its chunks.
    status = json.loads(agent.cli("status", "--json").stdout)
    (entry,) = [b for b in status["largest"] if b["digest"] == image.blob_digest]
    assert entry["chunk_mapped"] and entry["verified"], entry


def test_a_chunk_the_origin_always_flips_never_reaches_the_client(agent, origin, image):
    (start, end), offset = flip_target(image)
    learn_map(agent, origin, image)
    origin.faults.append(flipping(origin, image, offset, times=None))
    got = fetch(agent, image.blob_url(origin.url), asked(start, end))
    expected = image.blob[start:end]
    if got.status is not None and 200 <= got.status < 300:
        # The origin never sends that chunk right: a 2xx answer can only be cut short, and
        # what did arrive must be exact.
        assert expected.startswith(got.body), "a wrong byte reached the client"
        assert not got.whole, "a 2xx body that looks whole"
    assert gets_covering(origin, image, offset) >= 1
    assert failures(agent, "origin") >= 1
    # The agent still serves every other chunk of the blob exactly.
    other_start, other_end = next(run for run in sparse_runs(image) if run != (start, end))
    read_exact(agent, image, image.blob_url(origin.url), other_start, other_end)


def test_a_chunk_the_origin_flips_once_is_fetched_again_and_served_exact(agent, origin, image):
    (start, end), offset = flip_target(image)
    learn_map(agent, origin, image)
    origin.faults.append(flipping(origin, image, offset, times=1))
    got = fetch(agent, image.blob_url(origin.url), asked(start, end))
    assert (got.status, got.whole) == (206, True), got.body[:300]
    assert got.body == image.blob[start:end]
    assert gets_covering(origin, image, offset) >= 2, "the bad chunk was fetched again"
    assert failures(agent, "origin") >= 1


def test_a_chunk_flipped_on_disk_is_caught_after_a_restart(agent, origin, image):
    (start, end), offset = flip_target(image)
    learn_map(agent, origin, image)
    url = image.blob_url(origin.url)
    read_exact(agent, image, url, start, end)
    assert agent.stop() == 0  # everything fetched is written and recorded
    assert agent.data_file(image.blob_digest).read_bytes()[start:end] == image.blob[start:end]
    agent.flip_stored_bit(image.blob_digest, offset)
    agent.start()
    before = gets_covering(origin, image, offset)
    got = fetch(agent, url, asked(start, end))
    assert (got.status, got.whole) == (206, True), got.body[:300]
    assert got.body == image.blob[start:end], "the flipped byte was served"
    assert failures(agent, "disk") >= 1
    assert gets_covering(origin, image, offset) == before + 1, "the chunk came again, once"


def test_a_peer_serving_a_flipped_chunk_is_caught(swarm, origin, image):
    holder, reader = swarm(2)
    for agent in (holder, reader):  # each node's client pulls the bootstrap, as in production
        learn_map(agent, origin, image)
    url = image.blob_url(origin.url)
    assert send(holder.proxy_port, url).body == image.blob
    wait_for(lambda: metric(holder, "dfagent_blob_verify_seconds_count") == 2, "verified")
    time.sleep(0.3)  # and announced
    _, offset = flip_target(image)
    holder.flip_stored_bit(image.blob_digest, offset)  # the holder's disk goes bad under it
    gets = gets_covering(origin, image, offset)
    got = fetch(reader, url, {})
    assert (got.status, got.whole) == (200, True), got.body[:300]
    assert got.body == image.blob, "the peer's flipped chunk was served"
    bad = metric(reader, "dfagent_peer_bad_pieces_total") + failures(reader, "peer")
    assert bad >= 1, "the reader counts the bad peer piece"
    assert gets_covering(origin, image, offset) == gets + 1, "that chunk came from the origin"
    assert metric(reader, 'dfagent_served_bytes_total{source="peer"}') > 0


@pytest.mark.parametrize("other", ["another-name", "another-registry"])
def test_chunk_proven_bytes_serve_a_client_of_another_registry(
    agent, origin, registry, second_registry, image, other
):
    """The same image under registry A and registry B (the same registry under another
    name, or a second registry holding a copy): chunks A's client read are served to B's
    client from the cache once B's bootstrap went through the proxy too."""
    upstream = registry
    if other == "another-registry":
        image.push_to(second_registry)
        upstream = second_registry
    b = CountingOrigin(upstream.url).start()
    try:
        learn_map(agent, origin, image)
        runs = sparse_runs(image)
        for start, end in runs:
            read_exact(agent, image, image.blob_url(origin.url), start, end)
        vouched = metric(agent, VOUCHERS)
        pull_bootstrap(agent, b.url, image)
        # B proves in the background that it holds the bootstrap, then vouches for its map.
        wait_for(lambda: metric(agent, VOUCHERS) > vouched, "registry B to vouch for the map")
        for start, end in runs:
            read_exact(agent, image, image.blob_url(b.url), start, end)
        from_b = [end - start for start, end in get_ranges(b, image)]
        assert all(size <= 64 for size in from_b), f"B sent blob bytes A had delivered: {from_b}"
    finally:
        b.stop()


def gzip_layer(seed: int) -> bytes:
    """An ordinary image layer: a gzip tar of a few random files."""
    rng = random.Random(seed)
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for i in range(4):
            data = rng.randbytes(rng.randrange(50_000, 400_000))
            member = tarfile.TarInfo(f"usr/lib/file-{i}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return gzip.compress(packed.getvalue(), mtime=0)


def test_blobs_that_are_not_nydus_keep_pieces_and_the_whole_blob_check(
    agent_factory, origin, registry
):
    piece = 256 * 1024
    agent = agent_factory(storage={"piece_size": "256KiB"})
    plain = os.urandom(3 * piece + 500)
    layer = gzip_layer(seed=5)
    blobs = {registry.push_blob("proofs/plain", data): data for data in (plain, layer)}
    plain_digest = digest_of(plain)
    plain_url = f"{origin.url}/v2/proofs/plain/blobs/{plain_digest}"
    reply = send(agent.proxy_port, plain_url, {"Range": "bytes=1000-1999"})
    assert reply.body == plain[1000:2000]
    # the head of the piece (bytes 0..999) comes in a request of its own, maybe just after
    wait_for(lambda: origin.blob_bytes(plain_digest, len(plain)) >= piece, "the piece's head")
    assert origin.blob_bytes(plain_digest, len(plain)) == piece, "the whole first piece"
    for digest, data in blobs.items():
        assert send(agent.proxy_port, f"{origin.url}/v2/proofs/plain/blobs/{digest}").body == data
    wait_for(lambda: metric(agent, "dfagent_blob_verify_seconds_count") == 2, "whole checks")
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["verified_blobs"] == 2
    assert maps_learned(agent) == 0, "a gzip layer is no bootstrap"
    proven = {k: v for k, v in metrics(agent).items() if k.startswith("dfagent_chunks_verif")}
    assert not any(proven.values()), proven


def file_ends(image: NydusImage) -> list[int]:
    """Blob offsets where a file's data ends (after its short last chunk), in blob order."""
    full = max(chunk.uncompressed_size for chunk in image.chunks)
    return [c.compressed_end for c in image.chunks if c.uncompressed_size < full]


def read_chunks_in_order(agent, origin, image, first: int, until: int) -> int:
    """Read the chunks from blob position `first` on, one request each, in blob order, up to
    the one that ends at blob byte `until`; returns the bytes asked."""
    url = image.blob_url(origin.url)
    position = first
    while True:
        chunk = image.chunks[position]
        read_exact(agent, image, url, chunk.compressed_offset, chunk.compressed_end)
        if chunk.compressed_end == until:
            return until - image.chunks[first].compressed_offset
        position += 1


def test_a_walk_from_file_to_file_is_read_ahead_across_files(agent, origin, image):
    """Reads that went on from one file into the next (a whole-tree copy) walk the image in
    blob order: at the end of a file the agent already fetches the files after it."""
    learn_map(agent, origin, image)
    ends = file_ends(image)
    # Stop at a file end at least 2 MiB in, with two others behind the walk (the walk goes
    # on into a next file before its last read starts).
    stop = next(end for end in ends[2:] if end >= 2 * 1024 * 1024)
    read_chunks_in_order(agent, origin, image, 0, stop)
    wait_for(
        lambda: any(end > stop for _, end in get_ranges(origin, image)),
        "a fetch of the files after the last one read",
    )


def test_a_walk_in_blob_order_reaches_the_origin_in_runs_not_piece_by_piece(agent, origin, image):
    """Read-ahead tops up its window in one request once half of it is used up, so a walk
    through the whole image costs the origin about one request per half window (2 MiB), not
    one per piece (1 MiB) as the reader moves on; and each byte only once."""
    learn_map(agent, origin, image)
    read_chunks_in_order(agent, origin, image, 0, image.chunks[-1].compressed_end)
    gets = get_ranges(origin, image)
    pieces = len(image.blob) / (1024 * 1024)
    assert len(gets) <= pieces / 2 + 3, f"{len(gets)} origin requests for {pieces:.0f} pieces"
    ordered = sorted(gets)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), f"fetched twice: {gets}"


def test_a_reader_of_one_file_is_read_ahead_only_to_its_end(agent, origin, image):
    """One file read in order, chunk by chunk, costs the origin that file's bytes and nothing
    of the files after it, which its reader may never want, even when its last read also
    takes the next file along (nydusd merges neighbouring chunks into one request)."""
    learn_map(agent, origin, image)
    ends = file_ends(image)
    # the longest file with another after it: from one file end to the next
    files = zip(ends, ends[1:], ends[2:], strict=False)
    start, stop, after = max(files, key=lambda ends: ends[1] - ends[0])
    assert stop - start >= 2 * 1024 * 1024, "the test tree has a file of several chunks"
    first = next(i for i, chunk in enumerate(image.chunks) if chunk.compressed_offset == start)
    last = next(i for i, chunk in enumerate(image.chunks) if chunk.compressed_end == stop)
    asked_bytes = read_chunks_in_order(
        agent, origin, image, first, image.chunks[last - 1].compressed_end
    )
    read_exact(
        agent, image, image.blob_url(origin.url), image.chunks[last].compressed_offset, after
    )
    asked_bytes += after - image.chunks[last].compressed_offset
    time.sleep(0.5)  # a read-ahead would have been asked for at the last read
    assert all(end <= after for _, end in get_ranges(origin, image)), get_ranges(origin, image)
    assert origin.blob_bytes(image.blob_digest, len(image.blob)) == asked_bytes


def chunk_holding(image: NydusImage, offset: int) -> int:
    """The position in `image.chunks` of the chunk holding blob byte `offset`."""
    return next(
        n for n, c in enumerate(image.chunks) if c.compressed_offset <= offset < c.compressed_end
    )


def forged(image: NydusImage, registry: Registry, out: Path, chunk: int) -> NydusImage:
    """Another image, pushed by anyone who can push, whose bootstrap describes `image`'s data
    blob with one chunk digest changed: a planted chunk map."""
    raw = bytearray(image.bootstrap.read_bytes())
    wanted = image.chunks[chunk].digest
    assert raw.count(wanted) == 1, "the chunk's digest appears once in the bootstrap"
    raw[raw.index(wanted)] ^= 0xFF
    out.mkdir(parents=True, exist_ok=True)
    bootstrap = out / "image.boot"
    bootstrap.write_bytes(bytes(raw))
    planted = NydusImage(
        repo="mallory/app",
        tag="latest",
        bootstrap=bootstrap,
        bootstrap_layer=bootstrap_layer(bootstrap),
        blob=image.blob,
        chunks=image.chunks,
    )
    planted.push_to(registry)
    return planted


def contested(agent: AgentProcess) -> float:
    return metric(agent, "dfagent_chunk_maps_contested_total")


@pytest.mark.parametrize("planted_first", [True, False], ids=["planted-first", "planted-after"])
def test_a_planted_chunk_map_costs_the_blob_its_chunk_proofs_never_its_reads(
    agent, origin, registry, image, tmp_path, planted_first
):
    """Two bootstraps contradict each other on a data blob and nothing here is verified: the
    blob is read like one that is not nydus, in either order. A copy cut along the first map
    (a chunk read in between) is forgotten. A map planted first used to fail every read of
    the chunk it lies about."""
    (start, end), offset = flip_target(image)
    planted = forged(image, registry, tmp_path / "planted", chunk_holding(image, offset))
    first, second = (planted, image) if planted_first else (image, planted)
    other_start, other_end = sparse_runs(image)[1]  # chunks both maps describe alike
    assert not other_start <= offset < other_end
    pull_bootstrap(agent, origin.url, first)
    wait_for(lambda: maps_learned(agent) == 1, "the first map learned")
    read_exact(agent, image, first.blob_url(origin.url), other_start, other_end)
    wait_for(lambda: metric(agent, "dfagent_cache_bytes") > 0, "stored along the first map")
    pull_bootstrap(agent, origin.url, second)
    wait_for(lambda: contested(agent) == 1, "the blob contested")
    for bootstrap in (image, planted):
        read_exact(agent, image, bootstrap.blob_url(origin.url), start, end)
    assert failures(agent, "origin") == 0  # no read was proven against the planted map
    assert maps_learned(agent) == 1
    assert "Traceback" not in agent.log()


def test_a_verified_copy_keeps_its_chunk_map_against_a_contradicting_one(
    agent, origin, registry, image, tmp_path
):
    (start, end), offset = flip_target(image)
    learn_map(agent, origin, image)
    reply = send(agent.proxy_port, image.blob_url(origin.url))  # the whole blob, chunk-proven
    assert reply.status == 200 and reply.body == image.blob
    wait_for(  # the bootstrap layer and the data blob
        lambda: metric(agent, "dfagent_blob_verify_seconds_count") == 2, "the blob verified whole"
    )
    planted = forged(image, registry, tmp_path / "planted", chunk_holding(image, offset))
    pull_bootstrap(agent, origin.url, planted)
    wait_for(lambda: "vouch for nothing of that blob" in agent.log(), "the planted map refused")
    assert contested(agent) == 0
    read_exact(agent, image, image.blob_url(origin.url), start, end)


def test_a_verified_copy_in_ordinary_pieces_proves_no_map(agent, origin, registry, image, tmp_path):
    """Read whole before any bootstrap was seen, the blob's verified copy is in ordinary
    pieces: it proved no chunk against a map, so a planted map learned first gives way when
    the image's own contradicts it (kept, it would fail reads once the copy is gone)."""
    (start, end), offset = flip_target(image)
    reply = send(agent.proxy_port, image.blob_url(origin.url))
    assert reply.status == 200 and reply.body == image.blob
    wait_for(lambda: metric(agent, "dfagent_blob_verify_seconds_count") == 1, "verified whole")
    planted = forged(image, registry, tmp_path / "planted", chunk_holding(image, offset))
    pull_bootstrap(agent, origin.url, planted)
    wait_for(lambda: maps_learned(agent) == 1, "the planted map learned")
    pull_bootstrap(agent, origin.url, image)
    wait_for(lambda: contested(agent) == 1, "the blob contested")
    read_exact(agent, image, image.blob_url(origin.url), start, end)  # the verified copy stays
    assert metric(agent, 'dfagent_served_bytes_total{source="local"}') >= end - start


def test_a_planted_map_alone_is_refuted_by_the_blob_itself(
    agent, origin, registry, image, tmp_path
):
    """Only the planted bootstrap is seen here. Its lie fails the first read of that chunk
    (502: the origin or the map lies), then the blob read whole matches its digest and
    contradicts the map: the map goes, and reads get the blob's bytes."""
    (start, end), offset = flip_target(image)
    planted = forged(image, registry, tmp_path / "planted", chunk_holding(image, offset))
    learn_map(agent, origin, planted)
    url = image.blob_url(origin.url)
    assert send(agent.proxy_port, url, asked(start, end)).status == 502
    wait_for(lambda: contested(agent) == 1, "the map refuted by the blob")
    read_exact(agent, image, url, start, end)
    assert "contradicts its chunk map" in agent.log()


def test_a_lying_origin_never_refutes_a_true_map(agent, origin, image):
    """The origin flips a byte of a chunk in every answer: the blob it gives whole does not
    match its digest, so the map stands and the chunk is never served."""
    (start, end), offset = flip_target(image)
    learn_map(agent, origin, image)
    origin.faults.append(flipping(origin, image, offset, times=None))
    assert send(agent.proxy_port, image.blob_url(origin.url), asked(start, end)).status == 502
    wait_for(lambda: "its chunk proof stands" in agent.log(), "the whole blob read and refused")
    assert contested(agent) == 0
    assert send(agent.proxy_port, image.blob_url(origin.url), asked(start, end)).status == 502


def test_an_origin_lying_only_to_ranged_reads_never_refutes_a_true_map(agent, origin, image):
    """The origin flips a chunk's byte in ranged answers but gives the blob whole honestly:
    the whole read matches the digest, and the piece in it passes the true map, so the map
    stands (the flipped bytes were the origin's lie) and the chunk is never served."""
    (start, end), offset = flip_target(image)
    learn_map(agent, origin, image)
    flip = flipping(origin, image, offset, times=None)
    whole = f"bytes=0-{len(image.blob) - 1}"

    async def ranged_only(request: web.BaseRequest) -> web.StreamResponse | None:
        return None if request.headers.get("Range") == whole else await flip(request)

    origin.faults.append(ranged_only)
    assert send(agent.proxy_port, image.blob_url(origin.url), asked(start, end)).status == 502
    wait_for(lambda: "pass their chunk proof now" in agent.log(), "the whole blob read")
    assert contested(agent) == 0
    assert send(agent.proxy_port, image.blob_url(origin.url), asked(start, end)).status == 502
