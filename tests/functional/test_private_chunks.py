"""The chunks of a private nydus blob reach only clients a registry holding the blob accepts,
wherever they were fetched from: a registry that merely answers for the blob is not one."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.nydus import make_tree
from tests.support.nydus_registry import NydusImage, maps_learned, push_nydus_image
from tests.support.registry import Registry

pytestmark = pytest.mark.slow

VOUCHERS = "dfagent_chunk_map_vouchers_total"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("private-chunks") / "src", seed=14, bulk=8)


@pytest.fixture
def private_image(auth_registry: Registry, tree: Path, tmp_path) -> NydusImage:
    return push_nydus_image(auth_registry, "secret/app", tree, tmp_path / "img")


def says_yes(upstream: str, size: int) -> CountingOrigin:
    """A server that answers 200 to a HEAD of any blob, with a plausible size, and holds
    nothing."""
    server = CountingOrigin(upstream).start()

    async def yes(request: web.BaseRequest) -> web.StreamResponse | None:
        if "/blobs/sha256:" not in request.path:
            return None
        if request.method == "HEAD":
            return web.Response(status=200, headers={"Content-Length": str(size)})
        return web.Response(status=500, text="nothing here")

    server.faults.append(yes)
    return server


def biggest_chunk(image: NydusImage) -> tuple[dict[str, str], bytes]:
    chunk = max(image.chunks, key=lambda c: c.compressed_size)
    spec = {"Range": f"bytes={chunk.compressed_offset}-{chunk.compressed_end - 1}"}
    return spec, image.blob[chunk.compressed_offset : chunk.compressed_end]


@pytest.mark.parametrize("claims_first", [True, False], ids=["claim-first", "owner-first"])
@pytest.mark.parametrize("whole", [False, True], ids=["chunk", "verified-blob"])
def test_a_server_that_merely_answers_for_a_private_blob_reads_none_of_its_chunks(
    agent, auth_registry: Registry, registry: Registry, private_image, claims_first, whole
):
    """An anonymous HEAD naming a server that says yes to anything must not make it the
    blob's provenance (nor the blob public): the chunks the owner then fetches from the private
    registry, with its credentials, would go to anyone naming that server, or naming the
    private registry with no credentials at all."""
    private = CountingOrigin(auth_registry.url).start()
    liar = says_yes(registry.url, len(private_image.blob) + 4096)
    owner = {"Authorization": auth_registry.auth_header}
    spec, secret = biggest_chunk(private_image)
    try:
        assert send(agent.proxy_port, private_image.bootstrap_url(private.url), owner).status == 200
        wait_for(lambda: maps_learned(agent) >= 1, "the chunk map")
        if claims_first:
            send(agent.proxy_port, private_image.blob_url(liar.url), {}, "HEAD")
        if whole:
            read = send(agent.proxy_port, private_image.blob_url(private.url), owner)
            assert read.body == private_image.blob
        else:
            read = send(agent.proxy_port, private_image.blob_url(private.url), {**owner, **spec})
            assert read.body == secret
        if not claims_first:
            send(agent.proxy_port, private_image.blob_url(liar.url), {}, "HEAD")

        via_liar = send(agent.proxy_port, private_image.blob_url(liar.url), spec)
        assert via_liar.status not in (200, 206) and secret not in via_liar.body
        anonymous = send(agent.proxy_port, private_image.blob_url(private.url), spec)
        assert anonymous.status == 401 and secret not in anonymous.body
    finally:
        private.stop()
        liar.stop()


def test_a_client_of_a_second_vouching_registry_is_checked_there_not_refused(
    agent, auth_registry: Registry, private_image
):
    """A private, unverified blob read through registry A; the same image's metadata read
    through B (here the same registry under another name) makes B vouch for its chunks. B's
    client is checked at B (a HEAD with its credentials) and served the cached chunks; before,
    it got 403 ("not an origin") and nydusd failed the read."""
    a = CountingOrigin(auth_registry.url).start()
    b = CountingOrigin(auth_registry.url).start()
    owner = {"Authorization": auth_registry.auth_header}
    spec, secret = biggest_chunk(private_image)
    try:
        assert send(agent.proxy_port, private_image.bootstrap_url(a.url), owner).status == 200
        wait_for(lambda: maps_learned(agent) >= 1, "the chunk map")
        vouched = metric(agent, VOUCHERS)
        assert send(agent.proxy_port, private_image.bootstrap_url(b.url), owner).status == 200
        wait_for(lambda: metric(agent, VOUCHERS) > vouched, "B to vouch for the map")
        through_a = send(agent.proxy_port, private_image.blob_url(a.url), {**owner, **spec})
        assert through_a.body == secret

        through_b = send(agent.proxy_port, private_image.blob_url(b.url), {**owner, **spec})
        assert through_b.status == 206 and through_b.body == secret
        blob_path = f"/blobs/{private_image.blob_digest}"
        from_b = [s for s in b.requests if s.path.endswith(blob_path)]
        assert [s.method for s in from_b] == ["HEAD"], "B checked the client, sent no bytes"
        stranger = send(agent.proxy_port, private_image.blob_url(b.url), spec)
        assert stranger.status == 401 and secret not in stranger.body
    finally:
        a.stop()
        b.stop()
