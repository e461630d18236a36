"""The swarm settings `Membership` acts on: `swarm.advertise` left unset, and `swarm.dns`."""

from __future__ import annotations

import threading

from dfagent.configtypes import ListenAddress
from dfagent.swarm import membership as membership_module
from dfagent.swarm.config import PeerConfig, SwarmConfig
from dfagent.swarm.membership import Membership, resolve


async def test_without_advertise_the_local_address_is_found_off_the_event_loop(monkeypatch):
    """Finding the route to a member resolves its host name: a blocking call."""
    asked_on: list[int] = []

    def towards(address: ListenAddress) -> str:
        asked_on.append(threading.get_ident())
        assert address == ListenAddress("peer.example", 4000)
        return "10.0.0.7"

    monkeypatch.setattr(membership_module, "local_address_towards", towards)
    membership = Membership(SwarmConfig(peers=("peer.example:4000",)), PeerConfig(), 4123)
    await membership.start()
    assert membership.me == "10.0.0.7:4123"
    assert asked_on
    assert threading.get_ident() not in asked_on


async def test_a_dns_name_no_resolver_takes_leaves_the_members_as_they_were():
    """`a..b` has an empty label: getaddrinfo raises UnicodeError, not OSError."""
    swarm = SwarmConfig(peers=("10.0.0.2:4000",), dns="a..b", advertise="10.0.0.1:4000")
    membership = Membership(swarm, PeerConfig(), 4000, resolver=resolve)
    await membership.start()
    await membership.refresh()
    assert membership.members() == ["10.0.0.1:4000", "10.0.0.2:4000"]
