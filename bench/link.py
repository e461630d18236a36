"""A registry behind a link like a real one: a TCP relay on loopback that delays every chunk by
half the round trip in each direction (netem is not available here) and, when given a cap,
paces what comes back from the registry to it, shared by all connections (one link); where
the kernel can cap the link (tc tbf on a veth, bench/cluster.py) the relay only delays. It
counts the bytes it carried back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from tests.support.ports import free_port


class _Pacer:
    """A shared cap: each chunk may leave once the link has sent the chunks before it."""

    def __init__(self, mbit: float) -> None:
        self._seconds_per_byte = 8 / (mbit * 1e6)
        self._free_at = 0.0

    async def take(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._free_at)
        self._free_at = start + size * self._seconds_per_byte
        await asyncio.sleep(self._free_at - loop.time())


class ShapedLink:
    """`127.0.0.1:port` relays to `target_host:target_port` with `rtt_ms` of round trip and,
    towards the client, at most `mbit` (None: no cap of its own)."""

    def __init__(
        self,
        target_port: int,
        mbit: float | None,
        rtt_ms: float,
        target_host: str = "127.0.0.1",
    ) -> None:
        self.port = free_port()
        self.carried = 0  # bytes from the target back to clients
        self._target = (target_host, target_port)
        self._half_rtt = rtt_ms / 2000
        self._mbit = mbit
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ShapedLink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        self._pacer = _Pacer(self._mbit) if self._mbit is not None else None
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2 * self._half_rtt)  # the TCP handshake's round trip
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._copy(reader, up_writer, paced=False),
            self._copy(up_reader, writer, paced=True),
            return_exceptions=True,
        )

    async def _copy(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, paced: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    sink.close()
                    return
                if paced:
                    if self._pacer is not None:
                        await self._pacer.take(len(data))
                    self.carried += len(data)
                sink.write(data)
                await sink.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await source.read(65536):
                queue.put_nowait((loop.time() + self._half_rtt, data))
        finally:
            queue.put_nowait((loop.time() + self._half_rtt, b""))
            await delivering

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# The registry links the nydus benches compare: plain loopback, and a paced, delayed link.
LINKS = {"loopback": None, "registry link 200 Mbit/s, 10 ms RTT": (200.0, 10.0)}


def registry_links(stack: contextlib.ExitStack, registry_port: int) -> Iterator[tuple[str, int]]:
    """(profile, port to reach the registry at on 127.0.0.1) for each of LINKS; the links stay
    up until `stack` closes."""
    for profile, shape in LINKS.items():
        if shape is None:
            yield profile, registry_port
            continue
        link = ShapedLink(registry_port, *shape).start()
        stack.callback(link.stop)
        yield profile, link.port
