"""The stripe trees a blob's home sends each member's pieces down (dfagent.swarm.trees)."""

from __future__ import annotations

from collections import Counter

import pytest

from dfagent.swarm.trees import FAN_OUT, FEWEST_MEMBERS, StripeTrees


def _members(count: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250}:4000" for i in range(count)]


def _trees(members: list[str], fan_out: int = FAN_OUT) -> StripeTrees:
    trees = StripeTrees(fan_out=fan_out, fewest_members=1)
    trees.set_members(members)
    return trees


@pytest.mark.parametrize("fan_out", [2, 3, 4])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 101])
def test_every_member_reaches_the_root_of_each_stripe_and_no_parent_has_too_many(count, fan_out):
    members = _members(count)
    trees = _trees(members, fan_out)
    for index in range(2 * fan_out):
        parents = {m: trees.parent("d", index, m) for m in members}
        assert sum(p is None for p in parents.values()) == 1  # one root fetches from the origin
        assert max(Counter(p for p in parents.values() if p).values(), default=0) <= fan_out
        for member in members:
            seen, peer = set(), member
            while peer is not None:  # up to the root, never in a loop
                assert peer not in seen
                seen.add(peer)
                peer = parents[peer]
        assert all(parents[m] == trees.parent("d", index + fan_out, m) for m in members)


def test_each_member_passes_on_about_one_copy_of_the_blob():
    """Inner in one stripe only: FAN_OUT copies of a FAN_OUT-th of the pieces, so no uplink
    carries most of the blob (and the leaves' uplinks are the inner ones of other stripes)."""
    members = _members(1000)
    trees = _trees(members)
    sent = Counter(trees.parent("d", index, m) for index in range(FAN_OUT) for m in members)
    del sent[None]
    assert sum(sent.values()) == FAN_OUT * (len(members) - 1)
    assert max(sent.values()) <= FAN_OUT
    assert min(sent[m] for m in members) >= FAN_OUT - 1
    roots = {m for m in members for index in range(FAN_OUT) if trees.parent("d", index, m) is None}
    assert len(roots) == FAN_OUT  # the origin's copy is split among FAN_OUT members


def test_each_blob_has_its_own_trees_and_strangers_have_no_parent():
    members = _members(50)
    trees = _trees(members)
    roots = {
        digest: next(m for m in members if trees.parent(digest, 0, m) is None)
        for digest in ("a", "b", "c", "d", "e", "f")
    }
    assert len(set(roots.values())) > 1
    assert trees.parent("a", 0, "10.9.9.9:4000") is None


def test_a_membership_change_re_ranks_the_members():
    members = _members(20)
    trees = _trees(members)
    before = {m: trees.parent("d", 1, m) for m in members}
    trees.set_members(members[:10])
    after = {m: trees.parent("d", 1, m) for m in members[:10]}
    assert set(after.values()) <= set(members[:10]) | {None}
    assert trees.parent("d", 1, members[15]) is None
    trees.set_members(members[::-1])  # the same members in another order: the same trees
    trees.set_members(members)
    assert {m: trees.parent("d", 1, m) for m in members} == before


def test_a_swarm_smaller_than_the_fewest_members_has_no_trees():
    trees = StripeTrees()
    trees.set_members(_members(FEWEST_MEMBERS - 1))
    assert all(trees.parent("d", 0, m) is None for m in _members(FEWEST_MEMBERS - 1))
    trees.set_members(_members(FEWEST_MEMBERS))
    assert sum(trees.parent("d", 0, m) is None for m in _members(FEWEST_MEMBERS)) == 1


def test_a_fan_out_below_two_is_refused():
    with pytest.raises(ValueError, match="fan-out"):
        StripeTrees(fan_out=1)
