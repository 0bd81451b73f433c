"""Unit tests of lockmgr.resource: resource names, the etcd key layout and its parsers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockmgr import LockMode, Resource
from lockmgr import resource as rk

quick = settings(database=None, deadline=None, max_examples=300)

# Ids as storage makes them: table ids are decimal, page ids and row ids are hex, and a row's
# page is a function of the row (storage.pages.page_of of its key; here its first hex digits).
# None has "/".
TABLE_IDS = st.integers(0, 10**6).map(str)
HEX = st.text("0123456789abcdef", min_size=1, max_size=20)
RESOURCES = st.one_of(
    st.builds(Resource, TABLE_IDS),
    st.builds(Resource, TABLE_IDS, HEX),
    st.builds(lambda t, r: Resource(t, r[:3], r), TABLE_IDS, HEX),
)
CLUSTERS = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1,
                   max_size=12)
TXN_IDS = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1,
                  max_size=24)
MODES = st.sampled_from(list(LockMode))
LEASES = st.integers(1, 2**63 - 1)


def test_resource_names_say_their_kind():
    """Tables are t/, pages p/ and rows r/ followed by their ids."""
    assert Resource("12").name == "t/12"
    assert Resource("12", "0400").name == "p/12/0400"
    assert Resource("12", "0400", "04abcd").name == "r/12/04abcd"


def test_kinds_and_parents():
    """A row's parents are its table then its page; a page's is its table; a table has none."""
    t, p, r = Resource("3"), Resource("3", "0401"), Resource("3", "0401", "0440")
    assert (t.kind, p.kind, r.kind) == ("table", "page", "row")
    assert r.parents() == [t, p]
    assert p.parents() == [t]
    assert t.parents() == []


def test_a_row_is_named_by_its_table_and_row_id_alone():
    """The page is not part of a row's name: the row id determines the page."""
    assert Resource("1", "04aa", "04aa01").name == Resource("1", "04bb", "04aa01").name


def test_table_1_prefix_does_not_prefix_table_12():
    """The classic trap: the entries of t/12 are not read as entries of t/1."""
    p1 = rk.resource_prefix("c", Resource("1").name)
    p12 = rk.resource_prefix("c", Resource("12").name)
    assert not p12.startswith(p1)
    assert not p1.startswith(p12)
    assert not rk.entry_key("c", "t/12", "tx", "X").startswith(p1)


def test_a_table_prefix_does_not_prefix_its_pages_or_rows():
    """Reading a table's entries never returns the entries of its pages or rows."""
    t = rk.resource_prefix("c", Resource("1").name)
    assert not rk.resource_prefix("c", Resource("1", "04").name).startswith(t)
    assert not rk.resource_prefix("c", Resource("1", "04", "0401").name).startswith(t)


def test_keys_live_under_their_cluster_and_kind_prefixes():
    """Every key sits under /shardless/<cluster>/ and its kind's prefix."""
    c = "prod"
    assert rk.locks_prefix(c) == b"/shardless/prod/locks/"
    assert rk.entry_key(c, "t/1", "tx1", "IX") == b"/shardless/prod/locks/t/1/tx1/IX"
    assert rk.resource_prefix(c, "t/1") == b"/shardless/prod/locks/t/1/"
    assert rk.wait_key(c, "tx1") == b"/shardless/prod/waits/tx1"
    assert rk.wait_key(c, "tx1").startswith(rk.waits_prefix(c))
    assert rk.session_key(c, 0xABC) == b"/shardless/prod/sessions/abc"
    assert rk.session_key(c, 0xABC).startswith(rk.sessions_prefix(c))
    assert rk.live_key(c, 0xABC) == b"/shardless/prod/live/abc"
    assert rk.live_key(c, 0xABC).startswith(rk.live_prefix(c))


def test_the_kind_prefixes_do_not_overlap():
    """Lock entries, wait records, session markers and liveness keys are disjoint ranges."""
    prefixes = [f("c") for f in (rk.locks_prefix, rk.waits_prefix, rk.sessions_prefix,
                                 rk.live_prefix)]
    for a in prefixes:
        for b in prefixes:
            if a != b:
                assert not a.startswith(b), (a, b)


def test_cluster_prefixes_do_not_prefix_each_other():
    """The locks of cluster "a" are not read as locks of cluster "ab" and the reverse."""
    assert not rk.locks_prefix("ab").startswith(rk.locks_prefix("a"))
    assert not rk.locks_prefix("a").startswith(rk.locks_prefix("ab"))


@quick
@given(CLUSTERS, RESOURCES, RESOURCES)
def test_resource_prefixes_never_prefix_each_other(cluster: str, a: Resource, b: Resource):
    """For different resources neither prefix is a prefix of the other, so one range read
    returns exactly one resource's entries."""
    pa, pb = rk.resource_prefix(cluster, a.name), rk.resource_prefix(cluster, b.name)
    if a != b:
        assert not pa.startswith(pb)
        assert not pb.startswith(pa)
    else:
        assert pa == pb


@quick
@given(CLUSTERS, RESOURCES, RESOURCES, TXN_IDS, MODES)
def test_an_entry_is_under_exactly_its_resources_prefix(cluster: str, a: Resource,
                                                        b: Resource, txn_id: str,
                                                        mode: LockMode):
    """An entry key of a starts with a's prefix and with no other resource's prefix."""
    key = rk.entry_key(cluster, a.name, txn_id, mode.value)
    assert key.startswith(rk.resource_prefix(cluster, a.name))
    assert key.startswith(rk.locks_prefix(cluster))
    assert key.startswith(rk.resource_prefix(cluster, b.name)) == (a == b)


@quick
@given(CLUSTERS, RESOURCES, TXN_IDS, MODES)
def test_parse_entry_key_inverts_entry_key(cluster: str, res: Resource, txn_id: str,
                                           mode: LockMode):
    """(resource name, txn id, mode) come back from the key they were put in."""
    key = rk.entry_key(cluster, res.name, txn_id, mode.value)
    assert rk.parse_entry_key(cluster, key) == (res.name, txn_id, mode.value)


def test_parse_entry_key_of_a_row_keeps_the_slashes_of_the_resource_name():
    """A row's name has slashes of its own; only the last two split off."""
    key = rk.entry_key("c", "r/5/04ab/cd", "n1-7", "SIX")
    assert rk.parse_entry_key("c", key) == ("r/5/04ab/cd", "n1-7", "SIX")


@quick
@given(CLUSTERS, LEASES)
def test_lease_of_key_inverts_session_key_and_live_key(cluster: str, lease: int):
    """The lease id comes back from the session marker and the liveness key."""
    assert rk.lease_of_key(rk.session_key(cluster, lease)) == lease
    assert rk.lease_of_key(rk.live_key(cluster, lease)) == lease


@quick
@given(CLUSTERS, LEASES, LEASES)
def test_different_leases_have_different_keys(cluster: str, a: int, b: int):
    """Session markers and liveness keys of different leases never collide."""
    assert (rk.session_key(cluster, a) == rk.session_key(cluster, b)) == (a == b)
    assert (rk.live_key(cluster, a) == rk.live_key(cluster, b)) == (a == b)


@pytest.mark.parametrize("held", list(LockMode))
@pytest.mark.parametrize("wanted", list(LockMode))
def test_a_table_request_reads_every_name_where_a_conflicting_entry_can_be(
        held: LockMode, wanted: LockMode) -> None:
    """Table entries are split by mode (intention under t/, strong under ts/): whatever two
    modes conflict, the request reads the name the other's entry is stored under."""
    stored = rk.entry_name("t/7", held.is_intention())
    reads = rk.read_names("t/7", wanted.is_intention())
    if not held.compatible(wanted):
        assert stored in reads, (held, wanted, stored, reads)
    assert rk.resource_of_entry_name(stored) == "t/7"


def test_intention_requests_read_only_the_strong_entries_and_pages_are_not_split() -> None:
    assert rk.read_names("t/7", True) == ["ts/7"]
    assert rk.read_names("t/7", False) == ["t/7", "ts/7"]
    assert rk.entry_name("p/7/0a", False) == "p/7/0a"
    assert rk.read_names("p/7/0a", True) == ["p/7/0a"]
    assert rk.resource_of_entry_name("p/7/0a") == "p/7/0a"
