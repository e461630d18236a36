"""A TCP relay that records what passes through it: to see exactly what one agent receives."""

from __future__ import annotations

import asyncio
import threading

from tests.support.ports import free_port


class Relay:
    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self.received: list[bytes] = []  # what clients sent towards the target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            while data := await src.read(65536):
                if record:
                    self.received.append(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            copy(reader, up_writer, True), copy(up_reader, writer, False), return_exceptions=True
        )

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
