"""What agents take from each other: a peer server that refuses malformed or unbounded
requests with a 400 naming the field (never a 500), and a swarm that treats a malformed answer
from a home as no answer (the origin serves)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from dfagent.core.digest import Digest
from dfagent.metrics import Metrics
from dfagent.swarm import client as peer_client
from dfagent.swarm.client import PeerClient, PeerError
from dfagent.swarm.directory import Answer, Directory
from dfagent.swarm.hashing import home_of
from dfagent.swarm.server import PeerServer
from dfagent.swarm.swarm import Swarm
from tests.support.peer_home import started_home

TOKEN = "cluster-token-for-unit-tests"
DIGEST = "ab" * 32
ORIGIN = "https://registry:443"
LAYOUT = "fixed:65536"


class _Completions:
    async def start(self, digest: Digest, size: int, url: object) -> tuple[str, str | None]:
        return "running", None

    async def state(self, digest: Digest) -> tuple[str, str | None]:
        return "idle", None


@pytest.fixture
async def home() -> AsyncIterator[tuple[PeerServer, Directory]]:
    directory = Directory(holder_ttl=30, lease_ttl=15)
    server = await started_home(TOKEN, directory)
    server.completions = _Completions()
    yield server, directory
    await server.stop()


async def ask(
    port: int, method: str, path: str, body: bytes = b"", authorization: bytes | None = None
) -> tuple[int, str]:
    """Send one raw HTTP request (any bytes, as a hostile client may); (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = authorization if authorization is not None else f"Bearer {TOKEN}".encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    writer.write(head + b"Authorization: " + auth + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace")


def lookup(pieces: object, **fields: object) -> bytes:
    body = {
        "digest": DIGEST,
        "origin": ORIGIN,
        "size": 4 * 65536,
        "layout": LAYOUT,
        "pieces": pieces,
        "requester": "127.0.0.1:2",
        **fields,
    }
    return json.dumps(body).encode()


def announce(pieces: object, **fields: object) -> bytes:
    entry = {
        "digest": DIGEST,
        "origin": ORIGIN,
        "size": 4 * 65536,
        "layout": LAYOUT,
        "verified": False,
        "pieces": pieces,
        **fields,
    }
    return json.dumps({"holder": "127.0.0.1:3", "blobs": [entry]}).encode()


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


SHA = hashlib.sha256(b"piece").hexdigest()
DIGEST_PATH = f"sha256:{DIGEST}"
INFINITE_SIZE = f'{{"digest": "{DIGEST_PATH}", "size": 1e999, "url": "http://r/x"}}'.encode()


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/lookup", lookup([0]).replace(b'"size": 262144', b'"size": 1e999'), "size"),
        ("POST", "/v1/lookup", lookup([0]).replace(b"[0]", b"[Infinity]"), "pieces[0]"),
        ("POST", "/v1/lookup", lookup([0]).replace(b"[0]", b"[NaN]"), "pieces[0]"),
        ("POST", "/v1/lookup", lookup([0.5]), "pieces[0]"),
        ("POST", "/v1/lookup", lookup([-1]), "pieces[0]"),
        ("POST", "/v1/lookup", lookup([4]), "pieces[0]"),  # the blob has 4 pieces
        ("POST", "/v1/lookup", lookup([0], size=-5), "size"),
        ("POST", "/v1/lookup", lookup([0], size=2**44 + 1), "size"),
        ("POST", "/v1/lookup", lookup([0], digest=""), "digest"),
        ("POST", "/v1/lookup", lookup([0], origin=["x"]), "origin"),
        ("POST", "/v1/lookup", lookup([0], requester=None), "requester"),
        ("POST", "/v1/lookup", lookup([0], layout="fixed:0"), "layout"),
        ("POST", "/v1/lookup", lookup(list(range(120_000)), size=2**40), "pieces"),
        ("POST", "/v1/lookup", b"[1, 2]", "the body"),
        ("POST", "/v1/lookup", b"[" * 100_000, "not JSON"),
        ("POST", "/v1/recorded", lookup("0"), "pieces"),
        ("POST", "/v1/recorded", lookup([0], holder="127.0.0.1:3"), "holding"),
        ("POST", "/v1/recorded", lookup([0], holder="h", holding={"0": "x"}), "holding.0"),
        ("POST", "/v1/recorded", lookup([0], holder="h", holding={"7": SHA}), "holding"),
        ("POST", "/v1/recorded", lookup([0], holder=[1], holding={"0": SHA}), "holder"),
        ("POST", "/v1/announce", announce(["00"]), "blobs[0].pieces"),
        ("POST", "/v1/announce", announce({"0": ""}), "blobs[0].pieces.0"),
        ("POST", "/v1/announce", announce({"0": "zz" * 32}), "blobs[0].pieces.0"),
        ("POST", "/v1/announce", announce({"-1": SHA}), "blobs[0].pieces"),
        ("POST", "/v1/announce", announce({"9": SHA}), "blobs[0].pieces"),
        ("POST", "/v1/announce", announce({"0": SHA}, verified="yes"), "blobs[0].verified"),
        ("POST", "/v1/announce", announce({"0": SHA}, size=1e300), "blobs[0].size"),
        ("POST", "/v1/report", b'{"digest": [1], "index": 0, "holder": "h"}', "digest"),
        ("POST", "/v1/report", body(digest=DIGEST, index=0, holder={}), "holder"),
        ("POST", "/v1/report", body(digest=DIGEST, index=-1, holder="h"), "index"),
        ("POST", "/v1/release", body(digest=DIGEST, origin="o", pieces={}, requester=""), "pieces"),
        ("POST", "/v1/complete", INFINITE_SIZE, "size"),
        ("POST", "/v1/complete", body(digest=DIGEST_PATH, size=1, url=5), "url"),
        ("GET", f"/v1/progress/{DIGEST_PATH}?piece=x", b"", "piece"),
        ("GET", f"/v1/pieces/{DIGEST_PATH}/-1", b"", "index"),
        ("GET", f"/v1/pieces/{DIGEST_PATH}/1e3", b"", "index"),
        ("GET", "/v1/blobs/sha256:zz", b"", "digest"),
    ],
)  # fmt: skip
async def test_a_malformed_request_is_a_400_naming_the_field(
    home, caplog, method, path, body, field
):
    server, directory = home
    with caplog.at_level(logging.INFO):
        status, reason = await ask(server.port, method, path, body)
    assert (status, field in reason) == (400, True), reason
    refused = [r for r in caplog.records if r.getMessage() == "peer request refused"]
    assert len(refused) == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert directory.describe(DIGEST, ORIGIN) is None, "nothing of it reached the directory"


async def test_an_oversized_body_is_a_413_and_logged(home, caplog):
    server, directory = home
    with caplog.at_level(logging.INFO):
        status, reason = await ask(server.port, "POST", "/v1/announce", b" " * (1024 * 1024 + 1))
    assert status == 413 and "over 1048576 bytes" in reason, reason
    assert [r.getMessage() for r in caplog.records].count("peer request refused") == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert directory.describe(DIGEST, ORIGIN) is None


async def test_a_token_that_is_not_utf8_is_a_wrong_token(home, caplog):
    server, _ = home
    with caplog.at_level(logging.INFO):
        assert (await ask(server.port, "GET", "/v1/blobs/sha256:" + DIGEST, b"", b"Bearer \xff"))[
            0
        ] == 401
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_request_within_the_bounds_is_answered(home):
    """The bounds leave room for everything the engine asks: the most indices one request
    may name, a blob of 2**44 bytes, a chunk layout (pieces bounded by the bytes)."""
    most = peer_client.MAX_PIECES_PER_REQUEST
    server, directory = home
    indices = list(range(2**30, 2**30 + most))
    status, reason = await ask(
        server.port,
        "POST",
        "/v1/lookup",
        lookup(indices, size=2**44, layout="chunks:x", origin="https://other:443"),
    )
    assert status == 200, reason
    assert len(json.loads(reason)["pieces"]) == most
    status, reason = await ask(server.port, "POST", "/v1/announce", announce({"3": SHA}))
    assert (status, json.loads(reason)) == (200, {"refused": {}})
    assert directory.recorded(DIGEST, ORIGIN, 4 * 65536, LAYOUT, [3]) == {3: bytes.fromhex(SHA)}


async def test_a_holder_that_checks_a_relayed_piece_is_recorded_when_it_matches(home):
    """A sha256 query that says which copy its holder received records the holder for each
    piece whose copy matches the record (`held`), as an announcement would, and for no other:
    not one with no record yet, not one that differs from it."""
    server, directory = home
    other = hashlib.sha256(b"another piece").hexdigest()
    status, reason = await ask(server.port, "POST", "/v1/announce", announce({"0": SHA}))
    assert status == 200, reason
    query = lookup([0, 1, 2], holder="127.0.0.1:4", holding={"0": SHA, "1": other, "2": SHA})
    status, reason = await ask(server.port, "POST", "/v1/recorded", query)
    assert status == 200, reason
    assert json.loads(reason) == {"pieces": {"0": SHA, "1": None, "2": None}, "held": [0]}
    answer = directory.lookup(
        DIGEST, ORIGIN, 4 * 65536, LAYOUT, indices=[0, 2], requester="127.0.0.1:5"
    )
    assert set(answer[0].holders) == {"127.0.0.1:3", "127.0.0.1:4"}
    assert answer[2].fetch, "no holder recorded for a piece nobody announced"
    # A copy that differs from the record is not taken for the piece.
    query = lookup([0], holder="127.0.0.1:6", holding={"0": other})
    status, reason = await ask(server.port, "POST", "/v1/recorded", query)
    assert (status, json.loads(reason)["held"]) == (200, [])
    answer = directory.lookup(DIGEST, ORIGIN, 4 * 65536, LAYOUT, indices=[0], requester="x:1")
    assert "127.0.0.1:6" not in answer[0].holders


async def test_a_holder_that_gives_a_checked_in_piece_up_is_no_longer_named_for_it(home):
    """A piece checked in (recorded for its holder with the sha256 query) that the holder then
    fails to store is released: nobody is sent to it for that piece any more."""
    server, directory = home
    status, reason = await ask(server.port, "POST", "/v1/announce", announce({"0": SHA}))
    assert status == 200, reason
    query = lookup([0], holder="127.0.0.1:4", holding={"0": SHA})
    status, reason = await ask(server.port, "POST", "/v1/recorded", query)
    assert (status, json.loads(reason)["held"]) == (200, [0])
    given_up = body(digest=DIGEST, origin=ORIGIN, pieces=[0], requester="127.0.0.1:4")
    status, reason = await ask(server.port, "POST", "/v1/release", given_up)
    assert status == 200, reason
    answer = directory.lookup(DIGEST, ORIGIN, 4 * 65536, LAYOUT, indices=[0], requester="x:1")
    assert answer[0].holders == ("127.0.0.1:3",)


async def test_an_announcement_is_taken_whole_or_refused_whole(home):
    server, directory = home
    good = json.loads(announce({"0": SHA}))["blobs"][0]
    bad = {**good, "pieces": {"1": "not a sha256"}}
    body = json.dumps({"holder": "127.0.0.1:3", "blobs": [good, bad]}).encode()
    status, reason = await ask(server.port, "POST", "/v1/announce", body)
    assert status == 400 and "blobs[1].pieces.1" in reason
    assert directory.describe(DIGEST, ORIGIN) is None


# A home that answers whatever a test says ------------------------------------------------------


class _Membership:
    def __init__(self, me: str, members: list[str]) -> None:
        self.me = me
        self._members = members

    def members(self) -> list[str]:
        return self._members

    def others(self) -> list[str]:
        return [m for m in self._members if m != self.me]


@pytest.fixture
async def fake_home() -> AsyncIterator[tuple[str, dict[str, Callable[[Any], Any]]]]:
    """A peer that answers each endpoint with what `answers[endpoint](body)` returns."""
    answers: dict[str, Callable[[Any], Any]] = {}

    async def handle(request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        # A POST's JSON body; for a GET, the rest of its path (pieces: "sha256:<hex>/<index>").
        body = await request.json() if request.method == "POST" else request.match_info.get("rest")
        answer = answers[endpoint](body)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer if isinstance(answer, web.Response) else web.json_response(answer)

    app = web.Application()
    app.router.add_route("*", "/v1/{endpoint}", handle)
    app.router.add_route("*", "/v1/{endpoint}/{rest:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}", answers  # type: ignore[union-attr]
    await runner.cleanup()


def _blob_homed_at(home: str, members: list[str]) -> SimpleNamespace:
    """A blob of 4 pieces of 64 KiB whose home is `home`."""
    n = 0
    while home_of(members, f"{n:064x}") != home:
        n += 1
    return SimpleNamespace(
        digest=Digest(f"{n:064x}"),
        origin=ORIGIN,
        size=4 * 65536,
        layout=SimpleNamespace(key=LAYOUT),
    )


@pytest.fixture
async def asking_swarm(fake_home) -> AsyncIterator[tuple[Swarm, SimpleNamespace, dict]]:
    address, answers = fake_home
    members = ["127.0.0.1:1", address]
    async with PeerClient(TOKEN, 2, 2) as client:
        swarm = Swarm(
            _Membership("127.0.0.1:1", members),  # type: ignore[arg-type]
            Directory(holder_ttl=30, lease_ttl=15),
            client,
            None,  # type: ignore[arg-type]  # (no store: nothing here is stored)
            Metrics(),
            refresh=30,
            hedge_after=0.05,
        )
        yield swarm, _blob_homed_at(address, members), answers
        await swarm.aclose()


def _entry(**fields: object) -> dict[str, object]:
    return {"sha256": None, "holders": [], "fetch": False, "fetching": "127.0.0.1:9", **fields}


def _each(entry: object) -> Callable[[Any], Any]:
    """A lookup answer giving `entry` for every piece asked about."""
    return lambda asked: {"pieces": {str(i): entry for i in asked["pieces"]}}


MALFORMED_LOOKUPS = {
    "sha256 not hex": _each(_entry(sha256="zz")),
    "sha256 short": _each(_entry(sha256="ab")),
    "no pieces": lambda _: {"oops": 1},
    "pieces a list": lambda _: {"pieces": [1, 2]},
    "an answer a list": lambda _: [1, 2],
    "a piece missing": lambda _: {"pieces": {}},
    "holders a string": _each(_entry(holders="h:1")),
    "fetch a string": _each(_entry(fetch="no")),
    "fetching a number": _each(_entry(fetching=7)),
    "wait a string": _each(_entry(wait="yes")),
    "no holders": _each({"fetch": False}),
    "nested too deep": lambda _: web.Response(text="[" * 100_000, content_type="application/json"),
    "too large": lambda asked: web.json_response(  # well formed, but 9 MiB
        {**_each(_entry())(asked), "padding": "x" * (9 << 20)}
    ),
}


@pytest.mark.parametrize("answer", MALFORMED_LOOKUPS.values(), ids=MALFORMED_LOOKUPS)
async def test_a_malformed_lookup_answer_sends_every_piece_to_the_origin(asking_swarm, answer):
    swarm, blob, answers = asking_swarm
    answers["lookup"] = answer
    got = await swarm.lookup(blob, None, [0, 1])  # type: ignore[arg-type]
    assert got == {i: Answer(None, (), True, None) for i in (0, 1)}


async def test_a_home_may_say_wait_and_one_of_an_earlier_version_never_does(asking_swarm):
    swarm, blob, answers = asking_swarm
    answers["lookup"] = _each(_entry(fetching=None, wait=True))
    got = await swarm.lookup(blob, None, [0])  # type: ignore[arg-type]
    assert got == {0: Answer(None, (), False, None, wait=True)}
    answers["lookup"] = _each(_entry())  # no "wait" at all
    assert not (await swarm.lookup(blob, None, [0]))[0].wait  # type: ignore[arg-type]


async def test_a_home_answering_garbage_is_warned_of_once(asking_swarm, caplog):
    swarm, blob, answers = asking_swarm
    answers["lookup"] = MALFORMED_LOOKUPS["sha256 not hex"]
    with caplog.at_level(logging.DEBUG, logger="dfagent.swarm"):
        for _ in range(5):
            await swarm.lookup(blob, None, [0, 1])  # type: ignore[arg-type]
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "pieces.0.sha256" in getattr(warned[0], "error", "")
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(
    "answer",
    [{"size": "big", "layout": "fixed:65536"}, {"size": 2**60, "layout": "fixed:65536"},
     {"size": -1, "layout": "fixed:65536"}, {"size": 10}, [], {"size": 10, "layout": 5}],
)  # fmt: skip
async def test_a_malformed_description_is_no_description(asking_swarm, answer):
    swarm, blob, answers = asking_swarm
    answers["blobs"] = lambda _: answer
    assert await swarm.describe(blob.digest.hex, ORIGIN) is None


@pytest.mark.parametrize(
    "answer", [{"arrived": "x"}, {"piece": None, "arrived": 3}, {"arrived": -4}, [5], {}]
)
async def test_malformed_progress_counts_as_none(asking_swarm, answer):
    swarm, blob, answers = asking_swarm
    answers["progress"] = lambda _: answer
    peer = swarm.home(blob.digest.hex)
    assert await swarm.progress(peer, blob, 0) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "answer", [{"state": 5}, {"error": None}, [], {"state": "done", "error": 1}]
)
async def test_a_malformed_completion_is_a_peer_error(asking_swarm, answer):
    swarm, blob, answers = asking_swarm
    answers["complete"] = lambda _: answer
    peer = swarm.home(blob.digest.hex)
    with pytest.raises(PeerError):
        await swarm.complete_at(peer, str(blob.digest), 10, "http://registry/x")
    with pytest.raises(PeerError):
        await swarm.completion_at(peer, str(blob.digest))


async def test_a_blob_announced_whole_reaches_its_home_however_many_pieces_it_has(home):
    """A blob just verified is announced whole: more pieces than one request to a home may
    name (and more than one request body can hold) go in several requests."""
    server, directory = home
    address = f"127.0.0.1:{server.port}"
    members = ["127.0.0.1:1", address]
    blob = _blob_homed_at(address, members)
    count = 16_000  # announced in one request, over 1 MiB
    blob.size, blob.layout = count * 65536, SimpleNamespace(key=LAYOUT)
    blob.verified, blob.origins = True, {ORIGIN}
    blob.piece_sha256 = {i: hashlib.sha256(str(i).encode()).digest() for i in range(count)}
    async with PeerClient(TOKEN, 2, 2) as client:
        swarm = Swarm(
            _Membership("127.0.0.1:1", members),  # type: ignore[arg-type]
            Directory(holder_ttl=30, lease_ttl=15),
            client,
            None,  # type: ignore[arg-type]
            Metrics(),
            refresh=30,
            hedge_after=0.05,
        )
        swarm.announce_blob(blob)  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0.05)
            recorded = directory.recorded(
                blob.digest.hex, ORIGIN, blob.size, LAYOUT, [0, count - 1]
            )
            if None not in recorded.values():
                break
        await swarm.aclose()
    everything = directory.recorded(blob.digest.hex, ORIGIN, blob.size, LAYOUT, range(count))
    assert everything == blob.piece_sha256


async def test_an_announcement_names_at_most_so_many_pieces(home):
    server, directory = home
    most = peer_client.MAX_PIECES_PER_REQUEST
    entry = json.loads(announce({}))["blobs"][0]
    entry["size"] = (most + 1) * 65536
    blobs = [
        {**entry, "origin": f"https://registry-{n}:443", "pieces": {str(i): SHA for i in part}}
        for n, part in enumerate((range(0, most // 2), range(most // 2, most + 1)))
    ]
    body = json.dumps({"holder": "127.0.0.1:3", "blobs": blobs}).encode()
    status, reason = await ask(server.port, "POST", "/v1/announce", body)
    assert status == 400 and reason.startswith(f"bad request: blobs: at most {most} pieces")
    assert directory.describe(DIGEST, "https://registry-0:443") is None


def _relayed(blob: SimpleNamespace) -> tuple[bytes, bytes]:
    """Make `blob` an unverified blob of 64 KiB pieces that a relay sends; one piece's bytes
    and their sha256."""
    blob.layout.bounds = lambda index: (index * 65536, (index + 1) * 65536)
    blob.arrived, blob.verified, blob.origins = 0, False, {ORIGIN}
    data = bytes(range(256)) * 256
    return data, hashlib.sha256(data).digest()


async def test_a_relayed_piece_checked_in_then_given_up_is_announced_when_stored_later(
    asking_swarm,
):
    """A checked-in piece that this agent failed to store is released (its home forgets the
    holder): when a later fetch stores it, it is announced again, not taken for recorded."""
    swarm, blob, answers = asking_swarm
    data, sha = _relayed(blob)
    released: list[dict[str, Any]] = []
    announced: list[dict[str, Any]] = []
    answers["pieces"] = lambda _: web.Response(body=data)
    answers["recorded"] = lambda _: {"pieces": {"0": sha.hex()}, "held": [0]}
    answers["release"] = lambda asked: released.append(asked) or {}
    answers["announce"] = lambda asked: announced.append(asked) or {"refused": {}}
    got = await swarm.fetch(blob, 0, Answer(None, (), False, swarm.others()[0]))
    assert got is not None and got.data == data
    swarm.release(blob, [0])  # storing it failed
    swarm.announce(blob, 0, sha)  # a later fetch stored it
    for _ in range(100):
        await asyncio.sleep(0.02)
        if announced and released:
            break
    assert [asked["pieces"] for asked in released] == [[0]]
    assert [set(entry["pieces"]) for asked in announced for entry in asked["blobs"]] == [{"0"}]


async def test_lookups_made_while_one_is_on_its_way_go_to_the_home_together(asking_swarm):
    """One lookup at a time goes to a blob's home: pieces looked up meanwhile go together
    in the next request, and each lookup gets the answers for its own pieces."""
    swarm, blob, answers = asking_swarm
    asked: list[list[int]] = []
    go = asyncio.Event()

    async def lookup(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body["pieces"])
        await go.wait()
        return {"pieces": {str(i): _entry(holders=[f"10.0.0.{i}:1"]) for i in body["pieces"]}}

    answers["lookup"] = lookup
    first = asyncio.create_task(swarm.lookup(blob, None, [0]))  # type: ignore[arg-type]
    while not asked:
        await asyncio.sleep(0.01)
    later = [
        asyncio.create_task(swarm.lookup(blob, None, pieces))  # type: ignore[arg-type]
        for pieces in ([1, 2], [3])
    ]
    await asyncio.sleep(0.05)
    go.set()
    got = [await first] + [await task for task in later]
    assert [{i: a.holders for i, a in g.items()} for g in got] == [
        {0: ("10.0.0.0:1",)},
        {1: ("10.0.0.1:1",), 2: ("10.0.0.2:1",)},
        {3: ("10.0.0.3:1",)},
    ]
    assert asked == [[0], [1, 2, 3]]
    metrics = swarm._metrics.registry
    assert metrics.get_sample_value("dfagent_home_requests_total", {"kind": "lookup"}) == 2
    assert metrics.get_sample_value("dfagent_home_pieces_asked_total", {"kind": "lookup"}) == 4


async def test_sha256_queries_made_while_one_is_on_its_way_go_to_the_home_together(
    asking_swarm,
):
    """Relayed pieces checked while a sha256 query is on its way are asked about together in
    the next, each naming its own copy; each is checked against its own record."""
    swarm, blob, answers = asking_swarm
    _relayed(blob)
    pieces = {i: bytes([i]) * 65536 for i in range(3)}
    shas = {i: hashlib.sha256(data).hexdigest() for i, data in pieces.items()}
    shas[2] = hashlib.sha256(b"not piece 2").hexdigest()  # the relay lies about piece 2
    queries: list[dict[str, Any]] = []
    go = asyncio.Event()

    async def recorded(body: dict[str, Any]) -> dict[str, Any]:
        queries.append(body)
        await go.wait()
        return {"pieces": {str(i): shas[i] for i in body["pieces"]}, "held": body["pieces"]}

    answers["recorded"] = recorded
    answers["pieces"] = lambda rest: web.Response(body=pieces[int(rest.rsplit("/", 1)[1])])
    relay = swarm.others()[0]

    async def fetch(index: int) -> bytes | None:
        got = await swarm.fetch(blob, index, Answer(None, (), False, relay))
        return None if got is None else got.data

    first = asyncio.create_task(fetch(0))
    while not queries:
        await asyncio.sleep(0.01)
    later = [asyncio.create_task(fetch(i)) for i in (1, 2)]
    await asyncio.sleep(0.2)
    go.set()
    assert [await first, *[await task for task in later]] == [pieces[0], pieces[1], None]
    assert [sorted(q["pieces"]) for q in queries] == [[0], [1, 2]]  # (in the order checked)
    assert queries[1]["holding"] == {str(i): hashlib.sha256(pieces[i]).hexdigest() for i in (1, 2)}


@pytest.mark.parametrize("home_records_holders", [True, False], ids=["home", "earlier-home"])
async def test_a_relayed_piece_recorded_when_checked_is_not_announced_again(
    asking_swarm, home_records_holders
):
    """A piece taken from a relay before its sha256 was recorded is checked against the
    record, and the home that records the holder in that exchange hears no announcement of
    it again; a home of an earlier version, which does not, hears it as before."""
    swarm, blob, answers = asking_swarm
    data, sha = _relayed(blob)
    queries: list[dict[str, Any]] = []
    announced: list[dict[str, Any]] = []

    def recorded(asked: dict[str, Any]) -> dict[str, Any]:
        queries.append(asked)
        answer: dict[str, Any] = {"pieces": {"0": sha.hex()}}
        if home_records_holders:
            answer["held"] = [0]
        return answer

    answers["pieces"] = lambda _: web.Response(body=data)  # the home relays it, too
    answers["recorded"] = recorded
    answers["announce"] = lambda asked: announced.append(asked) or {"refused": {}}
    relay = swarm.others()[0]
    got = await swarm.fetch(blob, 0, Answer(None, (), False, relay))
    assert got is not None and got.data == data
    assert queries[0]["holding"] == {"0": sha.hex()}
    assert queries[0]["holder"] == swarm.me
    swarm.announce(blob, 0, sha)  # stored: the engine announces it, and another piece
    swarm.announce(blob, 1, hashlib.sha256(b"piece 1").digest())
    for _ in range(100):
        await asyncio.sleep(0.02)
        if announced:
            break
    pieces = [set(entry["pieces"]) for asked in announced for entry in asked["blobs"]]
    assert pieces == ([{"1"}] if home_records_holders else [{"0", "1"}])
