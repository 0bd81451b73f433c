"""Unit tests of lockmgr.modes: the compatibility matrix, the covers order and its supremum."""

from __future__ import annotations

import itertools

import pytest

from lockmgr import LockMode

IS, IX, S, SIX, X = LockMode.IS, LockMode.IX, LockMode.S, LockMode.SIX, LockMode.X
MODES = list(LockMode)
PAIRS = list(itertools.product(MODES, MODES))
TRIPLES = list(itertools.product(MODES, MODES, MODES))

# The standard multiple-granularity matrix (Gray, Lorie, Putzolu and Traiger), written out
# independently of the module: row = held, column = requested.
STANDARD = """
        IS   IX   S    SIX  X
  IS    yes  yes  yes  yes  no
  IX    yes  yes  no   no   no
  S     yes  no   yes  no   no
  SIX   yes  no   no   no   no
  X     no   no   no   no   no
"""


def standard_matrix() -> dict[tuple[LockMode, LockMode], bool]:
    """The table above as (held, requested) -> compatible."""
    lines = [line.split() for line in STANDARD.strip().splitlines()]
    columns = [LockMode(c) for c in lines[0]]
    out = {}
    for row in lines[1:]:
        held = LockMode(row[0])
        for requested, cell in zip(columns, row[1:], strict=True):
            out[held, requested] = cell == "yes"
    return out


def test_compatibility_matrix_is_the_standard_table():
    """Every one of the 25 (held, requested) cells matches the standard table."""
    expected = standard_matrix()
    assert len(expected) == 25
    actual = {(a, b): a.compatible(b) for a, b in PAIRS}
    assert actual == expected


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda m: m.value)
def test_compatibility_is_symmetric(a: LockMode, b: LockMode):
    """a is compatible with b exactly when b is compatible with a."""
    assert a.compatible(b) == b.compatible(a)


def test_intention_modes_never_conflict_with_each_other():
    """IS and IX are pairwise compatible, so writers' intention locks never make writers wait."""
    for a, b in itertools.product([IS, IX], repeat=2):
        assert a.compatible(b)


def test_x_is_compatible_with_nothing():
    """X conflicts with every mode, X included."""
    assert not any(X.compatible(m) or m.compatible(X) for m in MODES)


def test_is_is_compatible_with_everything_but_x():
    """IS conflicts only with X."""
    assert [m for m in MODES if not IS.compatible(m)] == [X]


def test_covers_is_reflexive():
    """Every mode covers itself."""
    assert all(m.covers(m) for m in MODES)


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda m: m.value)
def test_covers_is_antisymmetric(a: LockMode, b: LockMode):
    """Two different modes never cover each other."""
    if a != b:
        assert not (a.covers(b) and b.covers(a))


def test_covers_is_transitive():
    """If a covers b and b covers c then a covers c."""
    for a, b, c in TRIPLES:
        if a.covers(b) and b.covers(c):
            assert a.covers(c), (a, b, c)


def test_covers_is_the_standard_order():
    """IS < IX < SIX < X and IS < S < SIX, and IX and S are incomparable."""
    expected = {
        IS: {IS},
        IX: {IS, IX},
        S: {IS, S},
        SIX: {IS, IX, S, SIX},
        X: {IS, IX, S, SIX, X},
    }
    assert {a: {b for b in MODES if a.covers(b)} for a in MODES} == expected


def test_x_covers_every_mode():
    """X gives every right any mode gives."""
    assert all(X.covers(m) for m in MODES)


def test_a_stronger_mode_is_compatible_with_no_more_than_a_weaker_one():
    """If a covers b, every mode compatible with a is compatible with b (strength costs
    concurrency, never gains it)."""
    for a, b in PAIRS:
        if a.covers(b):
            for m in MODES:
                if a.compatible(m):
                    assert b.compatible(m), (a, b, m)


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda m: m.value)
def test_supremum_is_commutative(a: LockMode, b: LockMode):
    """sup(a, b) == sup(b, a)."""
    assert a.supremum(b) == b.supremum(a)


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda m: m.value)
def test_supremum_covers_both(a: LockMode, b: LockMode):
    """The supremum covers each of its arguments."""
    s = a.supremum(b)
    assert s.covers(a)
    assert s.covers(b)


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda m: m.value)
def test_supremum_is_the_least_mode_covering_both(a: LockMode, b: LockMode):
    """Every mode that covers a and b also covers their supremum."""
    s = a.supremum(b)
    for m in MODES:
        if m.covers(a) and m.covers(b):
            assert m.covers(s), (a, b, s, m)


def test_supremum_is_idempotent_and_associative():
    """sup(a, a) == a and sup(sup(a, b), c) == sup(a, sup(b, c))."""
    assert all(m.supremum(m) == m for m in MODES)
    for a, b, c in TRIPLES:
        assert a.supremum(b).supremum(c) == a.supremum(b.supremum(c)), (a, b, c)


def test_supremum_of_a_mode_it_covers_is_the_stronger_mode():
    """When a covers b, sup(a, b) is a (an upgrade to a weaker mode changes nothing)."""
    for a, b in PAIRS:
        if a.covers(b):
            assert a.supremum(b) == a


def test_supremum_of_s_and_ix_is_six():
    """A reader that also writes below (S with IX) needs SIX, the classic case."""
    assert S.supremum(IX) == SIX
    assert IX.supremum(S) == SIX


def test_supremum_with_x_is_x():
    """X absorbs every mode."""
    assert all(X.supremum(m) == X and m.supremum(X) == X for m in MODES)


@pytest.mark.parametrize(("mode", "expected"), [(IS, IS), (S, IS), (IX, IX), (SIX, IX), (X, IX)],
                         ids=lambda m: m.value)
def test_intention_is_is_under_reads_and_ix_under_writes(mode: LockMode, expected: LockMode):
    """A parent gets IS for an IS or S child and IX for any child lock that may write."""
    assert mode.intention() == expected


def test_intention_is_covered_by_the_mode_it_comes_from():
    """Every mode covers its own intention mode (so the intention is never the stronger)."""
    for m in MODES:
        assert m.covers(m.intention()), m


def test_mode_values_are_their_short_names():
    """Each mode's value (what etcd keys hold) is its name."""
    assert [m.value for m in MODES] == ["IS", "IX", "S", "SIX", "X"]
    assert all(LockMode(m.name) is m for m in MODES)
