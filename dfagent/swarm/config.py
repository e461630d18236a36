"""Config of the peer server and of swarm membership."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dfagent.configtypes import ByteSize, Duration, ListenAddress

__all__ = ["PeerConfig", "PeerTLS", "SwarmConfig"]


@dataclass(frozen=True, slots=True)
class PeerTLS:
    """Mutual TLS between agents: each presents `cert` (with `key`) and accepts only peers
    whose certificate the cluster CA `ca` signed."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True, slots=True)
class PeerConfig:
    # Where other agents fetch pieces and ask the directory (Dragonfly's peer port).
    listen: ListenAddress = ListenAddress("0.0.0.0", 4000)
    # A file holding the cluster token every agent presents; required once the swarm has
    # members (a Kubernetes Secret mounted as a file).
    token_file: str | None = None
    # Mutual TLS with the cluster CA; may be combined with token_file. One of the two is
    # required once the swarm has members.
    tls: PeerTLS | None = None
    # Bytes per second this agent uploads to peers in all (null: no cap).
    upload_bandwidth: ByteSize | None = None
    # Uploads at once. A request beyond it waits up to hedge_after for a slot, first come
    # first served; then it gets 429 and its sender asks another holder.
    max_uploads: int = 16
    # A peer that does not accept a connection this fast is passed over (fail fast: the next
    # holder, or the origin). A blob's home gets at least HOME_CONNECT_SECONDS (see
    # swarm/client.py).
    connect_timeout: Duration = Duration(0.1)
    # Longest silence while receiving a piece from a peer.
    read_timeout: Duration = Duration(2)
    # A holder that has not delivered a piece this fast gets company: the next holder is
    # asked too, and the first good answer wins.
    hedge_after: Duration = Duration(0.05)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.max_uploads < 1:
            problems.append(("max_uploads", "must be at least 1"))
        if self.upload_bandwidth is not None and self.upload_bandwidth < 64 * 1024:
            problems.append(("upload_bandwidth", "must be at least 64KiB (per second)"))
        return problems


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    # builtin: the agents are their own directory (the peers below). dragonfly: join a
    # Dragonfly cluster (the `dragonfly` section) instead.
    mode: Literal["builtin", "dragonfly"] = "builtin"
    # Peer servers of the other agents (host:port); this agent may be listed too.
    peers: tuple[str, ...] = field(default_factory=tuple)
    # A name whose A/AAAA records are the agents (a Kubernetes headless Service); each is
    # reached on peer.listen's port.
    dns: str | None = None
    # How often `dns` is resolved again, and holder records re-announced.
    refresh: Duration = Duration(30)
    # host:port the other agents reach this one at (how it recognises itself among the
    # members). Default: the local address that routes to the first member, peer.listen's port.
    advertise: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether the builtin swarm runs (it has members to trade with)."""
        return self.mode == "builtin" and (bool(self.peers) or self.dns is not None)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for i, peer in enumerate(self.peers):
            try:
                ListenAddress.parse(peer)
            except ValueError as exc:
                problems.append((f"peers[{i}]", str(exc)))
        if self.advertise is not None:
            try:
                ListenAddress.parse(self.advertise)
            except ValueError as exc:
                problems.append(("advertise", str(exc)))
        if self.refresh <= 0:
            problems.append(("refresh", "must be positive"))
        return problems
