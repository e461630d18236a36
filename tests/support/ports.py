"""Free loopback ports for services started by tests."""

from __future__ import annotations

import contextlib
import random
import socket

# Below the kernel's ephemeral range (32768-60999 by default), from which every outgoing
# connection takes its local port: a port chosen there and released could be taken by one of
# the tests' own connections before the service meant for it binds it.
_FIRST, _LAST = 20000, 32000
_handed: set[int] = set()  # handed out lately in this process: not again
_random = random.SystemRandom()  # apart from the random module's state, which tests may seed


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago. Every socket stays bound until all
    are chosen."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            if len(_handed) > (_LAST - _FIRST) // 2:  # long runs: forget the oldest handouts
                _handed.clear()
            port = _random.randint(_FIRST, _LAST)
            if port in _handed:
                continue
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken
                continue
            _handed.add(port)
            ports.append(port)
        return ports
