"""Replays a read trace the way nydusd reads a lazily pulled image: a few reader threads, each
on its own keep-alive connection, taking the next range of the trace as they free up. Run in
a node's namespace by bench.lazy; prints JSON with the latency of each read (and of its first
byte, in the same order) and the time the whole trace took. Every body is checked against the
sha256 the trace gives for it.

    python3 trace_reader.py HOST PORT TARGET TRACE.json READERS
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def _reader(
    host: str,
    port: int,
    target: str,
    reads: Iterator[list],
    lock: threading.Lock,
    latencies: list[tuple[float, float]],
) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=600)
    while True:
        with lock:
            read = next(reads, None)
        if read is None:
            break
        first, length, sha256 = read
        started = time.perf_counter()
        connection.request("GET", target, headers={"Range": f"bytes={first}-{first + length - 1}"})
        response = connection.getresponse()
        head = response.read(1)
        first_byte = time.perf_counter() - started
        body = head + response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 206, (response.status, body[:200])
        assert hashlib.sha256(body).hexdigest() == sha256, f"bytes differ at {first}"
        latencies.append((elapsed * 1000, first_byte * 1000))  # atomic under the GIL
    connection.close()


def main() -> None:
    host, port, target, trace_path, readers = sys.argv[1:]
    trace = json.loads(Path(trace_path).read_text())
    reads = iter(trace)
    lock = threading.Lock()
    latencies: list[tuple[float, float]] = []
    threads = [
        threading.Thread(target=_reader, args=(host, int(port), target, reads, lock, latencies))
        for _ in range(int(readers))
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A reader that failed has printed its traceback and stopped.
    assert len(latencies) == len(trace), f"{len(trace) - len(latencies)} reads failed"
    print(
        json.dumps(
            {
                "latencies_ms": [total for total, _ in latencies],
                "first_byte_ms": [first_byte for _, first_byte in latencies],
                "seconds": time.monotonic() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
