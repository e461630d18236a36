"""Free loopback ports for services started by tests."""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are chosen (one at a
    time, the kernel may hand the same port out twice)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
