"""A blob's home at capacity: the directory requests one real agent answers a second, as the
home of a blob that many nodes fill at once, and the CPU each costs it.

wrk sends the requests a home gets in a fill (bench/home.lua: lookups, sha256 queries that
record their askers as holders, announcements, from NODES nodes going through the blob piece
by piece) over
keep-alive connections; the agent is one Python process, so once it uses a whole core the
rate it answers is its capacity. Each node count runs twice: with one piece in each request,
and with BATCH pieces in each (as a busy home gets them: see dfagent/swarm/rounds.py); the
difference is what each further piece in a request costs. A last run asks only the question
every node asks first, the blob's size (bench/describe.lua). `bench sim` gives the rate a fill
asks of its home at 4 to 1,000 nodes: where the two meet, the builtin swarm stops scaling.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import harness, resources
from bench.report import Check, Section, info, number, table
from tests.support.ports import free_port

_TOKEN = "bench-home-token-0123456789abcdef"
_ORIGIN = "http://registry.bench:5000"
_PIECES = 512  # a 512 MiB blob of 1 MiB pieces, as `bench swarm` fills
BATCH = 8  # pieces in each request of the second run


@dataclass(frozen=True)
class Row:
    nodes: int  # (0 for describes: the same for any)
    batch: int  # pieces each request asks about
    connections: int
    result: harness.WrkResult
    cpu_seconds: float  # the home's, during the run
    seconds: float
    requests: str = "fill"  # or "describe"

    @property
    def busy(self) -> float:
        """The share of one core the home used."""
        return self.cpu_seconds / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / (self.result.ok_per_second * self.seconds)


def ms_per_further_piece(rows: list[Row], nodes: int) -> float | None:
    """What each piece beyond a request's first cost the home, at `nodes` nodes."""
    costs = {
        row.batch: row.cpu_ms_per_request
        for row in rows
        if row.nodes == nodes and row.requests == "fill"
    }
    if len(costs) < 2:
        return None
    (one, alone), (more, batched) = sorted(costs.items())
    return (batched - alone) / (more - one)


def run(
    work: Path,
    seconds: float = 10,
    nodes: tuple[int, ...] = (8, 100, 1000),
    connections: int = 32,
    batches: tuple[int, ...] = (1, BATCH),
) -> list[Row]:
    """Each node count with each of `batches` pieces in every request (bench/home.lua)."""
    harness.clean(work)
    token = work / "token"
    token.write_text(_TOKEN)
    listen = f"127.0.0.1:{free_port()}"
    swarm = {"peers": [listen], "advertise": listen}  # alone, it is every blob's home
    peer = {"listen": listen, "token_file": str(token)}
    rows = []
    with harness.agent(work, "home", peer=peer, swarm=swarm) as home:
        assert home.process is not None
        port = int(listen.rsplit(":", 1)[1])
        for count in nodes:
            for batch in batches:
                digest = hashlib.sha256(f"bench home {count} {batch}".encode()).hexdigest()
                _check_answers(port, digest)
                settings = {
                    "NODES": str(count),
                    "PIECES": str(_PIECES),
                    "BATCH": str(batch),
                    "DIGEST": digest,
                    "ORIGIN": _ORIGIN,
                    "TOKEN": _TOKEN,
                }
                cpu = resources.cpu_seconds(home.process.pid)
                result = harness.wrk_script(
                    harness.HERE / "home.lua", settings, port, connections, seconds
                )
                used = resources.cpu_seconds(home.process.pid) - cpu
                assert not result.errors, f"{result.errors} unexpected answers (see home.lua)"
                rows.append(Row(count, batch, connections, result, used, max(1, round(seconds))))
        rows.append(_describes(home.process.pid, port, connections, seconds))
    return rows


def _describes(pid: int, port: int, connections: int, seconds: float) -> Row:
    """The home answering describes of a blob it knows (one announced piece)."""
    digest = hashlib.sha256(b"bench home describe").hexdigest()
    _post(port, "/v1/announce", {"holder": "10.9.0.1:4002", "blobs": [{
        "digest": digest, "origin": _ORIGIN, "size": _PIECES * 1024 * 1024,
        "layout": "fixed:1048576", "verified": False, "pieces": {"1": "0" * 64},
    }]})  # fmt: skip
    settings = {"DIGEST": digest, "ORIGIN": _ORIGIN, "TOKEN": _TOKEN}
    cpu = resources.cpu_seconds(pid)
    result = harness.wrk_script(harness.HERE / "describe.lua", settings, port, connections, seconds)
    used = resources.cpu_seconds(pid) - cpu
    assert not result.errors, f"{result.errors} describes not answered 200"
    return Row(0, 0, connections, result, used, max(1, round(seconds)), requests="describe")


def _check_answers(port: int, digest: str) -> None:
    """The home answers as a home: the first node to ask is told to fetch a piece, a node
    asking after its announcement is sent to it with its sha256, a node naming that sha256
    for the copy it received is recorded as holding it, and a request without the cluster
    token is refused."""
    book = {
        "digest": digest,
        "origin": _ORIGIN,
        "size": _PIECES * 1024 * 1024,
        "layout": "fixed:1048576",
    }
    sha256 = "0" * 63 + "1"
    first = _post(port, "/v1/lookup", {**book, "pieces": [1], "requester": "10.9.0.1:4002"})
    assert first["pieces"]["1"]["fetch"] is True, first
    _post(port, "/v1/announce", {"holder": "10.9.0.1:4002", "blobs": [
        {**book, "verified": False, "pieces": {"1": sha256}}
    ]})  # fmt: skip
    second = _post(port, "/v1/lookup", {**book, "pieces": [1], "requester": "10.9.0.2:4002"})
    assert second["pieces"]["1"]["holders"] == ["10.9.0.1:4002"], second
    assert second["pieces"]["1"]["sha256"] == sha256, second
    checked = _post(port, "/v1/recorded", {
        **book, "pieces": [1], "holder": "10.9.0.2:4002", "holding": {"1": sha256}
    })  # fmt: skip
    assert checked == {"pieces": {"1": sha256}, "held": [1]}, checked
    try:
        _post(port, "/v1/lookup", {**book, "pieces": [1], "requester": "x"}, token=None)
    except urllib.error.HTTPError as exc:
        assert exc.code == 401, exc
    else:
        raise AssertionError("a request without the cluster token was answered")


def _post(port: int, path: str, body: object, token: str | None = _TOKEN) -> dict:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict = json.loads(response.read())
        return answer


def section(rows: list[Row]) -> Section:
    checks: list[Check] = []
    for row in rows:
        what = (
            f"{row.nodes} nodes, {row.batch} pieces each"
            if row.requests == "fill"
            else "describes only"
        )
        checks.append(
            info(
                f"home requests/s, {what}",
                f"{number(row.result.ok_per_second)} ({row.busy:.2f} of a core busy)",
            )
        )
    for nodes in sorted({row.nodes for row in rows}):
        further = ms_per_further_piece(rows, nodes)
        if further is not None:
            checks.append(info(f"home CPU ms per further piece, {nodes} nodes", f"{further:.3f}"))
    return Section(
        "home",
        "A blob's home at capacity: directory requests one agent answers a second",
        table(
            [
                "requests",
                "nodes",
                "pieces a request",
                "connections",
                "requests/s",
                "p50 ms",
                "p99 ms",
                "home's share of a core",
                "home CPU ms per request",
            ],
            [
                [
                    row.requests,
                    number(row.nodes) if row.nodes else "-",
                    number(row.batch) if row.batch else "-",
                    number(row.connections),
                    number(row.result.ok_per_second),
                    f"{row.result.p50_ms:.2f}",
                    f"{row.result.p99_ms:.2f}",
                    f"{row.busy:.2f}",
                    f"{row.cpu_ms_per_request:.3f}",
                ]
                for row in rows
            ],
        ),
        checks,
    )
