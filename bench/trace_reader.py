"""Replays a read trace the way nydusd reads a lazily pulled image: a few reader threads, each
on its own keep-alive connection, taking the next range of the trace as they free up. Run in
a node's namespace by bench.lazy; prints JSON with the latency of each read and the time the
whole trace took. Every body is checked against the sha256 the trace gives for it.

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
    latencies: list[float],
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
        body = response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 206, (response.status, body[:200])
        assert hashlib.sha256(body).hexdigest() == sha256, f"bytes differ at {first}"
        latencies.append(elapsed * 1000)  # list.append is atomic under the GIL
    connection.close()


def main() -> None:
    host, port, target, trace_path, readers = sys.argv[1:]
    trace = json.loads(Path(trace_path).read_text())
    reads = iter(trace)
    lock = threading.Lock()
    latencies: list[float] = []
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
    print(json.dumps({"latencies_ms": latencies, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main()
