"""Unit tests of storage.pages: which page a key is in, and which pages a key range covers."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.keycode import INT64_MAX, INT64_MIN, encode, prefix_end
from storage.pages import MAX_RANGE_PAGES, page_of, pages_for_range

quick = settings(database=None, deadline=None, max_examples=300)

INT64 = st.integers(INT64_MIN, INT64_MAX)


def page(k: object) -> str:
    """The page of the one-column key ``(k,)``."""
    return page_of(encode((k,)))


def test_ints_0_to_63_are_one_page():
    """The first 64 non-negative ints share a page."""
    assert {page(k) for k in range(64)} == {page(0)}


def test_64_starts_the_next_page():
    """64 is the first key of the next page, which sorts after the first."""
    assert page(64) != page(63)
    assert {page(k) for k in range(64, 128)} == {page(64)}
    assert page(63) < page(64) < page(128)


def test_page_ids_of_ints_are_fixed_width_hex_after_the_tag():
    """An int page id is the int tag then 15 hex digits, so string order is number order."""
    assert page(0) == "04" + "200000000000000"
    assert page(64) == "04" + "200000000000001"
    assert {len(page(k)) for k in (INT64_MIN, -1, 0, 1, INT64_MAX)} == {17}


def test_negative_ints_order_before_zero_in_pages_of_64():
    """-64..-1 are one page just below 0's, and -65 is in the page below that."""
    assert {page(k) for k in range(-64, 0)} == {page(-1)}
    assert page(-65) < page(-64) < page(0)
    assert page(INT64_MIN) < page(-1_000_000) < page(-65)
    assert page(INT64_MAX) > page(10**12) > page(64)


def test_sequential_keys_1_to_1000_span_16_pages():
    """Keys 1..1000 fill pages of 64: 0..63, ..., 960..1023, 16 pages in all."""
    assert len({page(k) for k in range(1, 1001)}) == 16


def test_a_key_prefix_is_in_the_page_of_its_first_column():
    """Later columns of a key do not change its page."""
    assert page_of(encode((70, "x", 3))) == page(70)
    assert page_of(encode((70,)) + b"\xff") == page(70)


@quick
@given(INT64, INT64)
def test_int_page_ids_sort_like_the_keys(a: int, b: int):
    """For int keys a <= b, page_of(a) <= page_of(b) as strings."""
    a, b = min(a, b), max(a, b)
    assert page(a) <= page(b)


@quick
@given(INT64)
def test_an_int_key_is_in_the_page_of_its_64_block(k: int):
    """Two ints share a page exactly when they are in the same block of 64 (k >> 6)."""
    start = k - (k % 64)
    assert page(start) == page(k)
    if start + 63 <= INT64_MAX:
        assert page(start + 63) == page(k)
    if start > INT64_MIN:
        assert page(start - 1) < page(k)


@quick
@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_double_page_ids_sort_like_the_keys(a: float, b: float):
    """For double keys a <= b, page_of(a) <= page_of(b) as strings."""
    a, b = min(a, b), max(a, b)
    assert page(a) <= page(b)


@quick
@given(st.text(max_size=6), st.text(max_size=6))
def test_string_page_ids_sort_like_the_keys(a: str, b: str):
    """For string keys a <= b (by their encoding), page_of(a) <= page_of(b) as strings."""
    ea, eb = sorted([encode((a,)), encode((b,))])
    assert page_of(ea) <= page_of(eb)


@quick
@given(st.one_of(INT64, st.text(max_size=4), st.booleans(), st.none(),
                 st.floats(allow_nan=False)),
       st.one_of(INT64, st.text(max_size=4), st.booleans(), st.none(),
                 st.floats(allow_nan=False)))
def test_page_ids_of_any_keys_sort_like_their_encodings(a: object, b: object):
    """Across types too, the page order follows the key order (type tag first)."""
    ea, eb = sorted([encode((a,)), encode((b,))])
    assert page_of(ea) <= page_of(eb)


def test_a_small_int_range_lists_its_pages():
    """[10, 200) covers the pages of 0..63, 64..127, 128..191 and 192..255."""
    pages = pages_for_range(encode((10,)), encode((200,)))
    assert pages == [page(0), page(64), page(128), page(192)]


def test_a_range_within_one_page_lists_that_page():
    """[5, 20] is inside the first page."""
    assert pages_for_range(encode((5,)), prefix_end(encode((20,)))) == [page(0)]


def test_a_range_across_zero_lists_the_pages_on_both_sides():
    """[-70, 70) covers -128..-65, -64..-1, 0..63 and 64..127."""
    pages = pages_for_range(encode((-70,)), encode((70,)))
    assert pages == [page(-128), page(-64), page(0), page(64)]


def test_an_unbounded_range_has_no_page_list():
    """No start or no end: the caller locks the table."""
    assert pages_for_range(None, encode((5,))) is None
    assert pages_for_range(encode((5,)), None) is None
    assert pages_for_range(None, None) is None


def test_a_range_of_exactly_max_range_pages_is_listed():
    """64 pages is the most a range lists."""
    pages = pages_for_range(encode((0,)), encode((64 * MAX_RANGE_PAGES - 1,)))
    assert pages is not None
    assert len(pages) == MAX_RANGE_PAGES


def test_a_range_wider_than_max_range_pages_has_no_page_list():
    """One page more than the limit: the caller locks the table instead."""
    assert pages_for_range(encode((0,)), encode((64 * MAX_RANGE_PAGES,))) is None
    assert pages_for_range(encode((INT64_MIN,)), encode((INT64_MAX,))) is None


def test_a_range_across_types_has_no_page_list():
    """Bounds of different first-column types are treated as too wide."""
    assert pages_for_range(encode((1,)), encode(("a",))) is None
    assert pages_for_range(b"", b"\xff") is None


def test_a_string_prefix_range_is_one_page():
    """All keys starting with the string 'abc' (a LIKE 'abc%' scan) are in one page."""
    lo = encode(("abc",))[:-2]  # the string's bytes without its terminator
    assert pages_for_range(lo, prefix_end(lo)) == [page("abc")]
    assert {page(s) for s in ("abc", "abcd", "abc\x00", "abczzz")} == {page("abc")}


def test_a_key_prefix_range_is_one_page():
    """All keys whose first column is 'user-1' (prefix scan of a two-column key) are one page."""
    lo = encode(("user-1",))
    assert pages_for_range(lo, prefix_end(lo)) == [page_of(encode(("user-1", 5)))]


def test_an_empty_int_range_lists_at_most_one_page():
    """[k, k) covers no key; whatever is listed is the page of k."""
    assert pages_for_range(encode((7,)), encode((7,))) == [page(7)]


def test_a_bool_or_null_range_is_the_value_page():
    """A range over one bool or null value is that value's page."""
    lo = encode((True,))
    assert pages_for_range(lo, prefix_end(lo)) == [page(True)]
    lo = encode((None,))
    assert pages_for_range(lo, prefix_end(lo)) == [page(None)]


@st.composite
def int_ranges(draw: st.DrawFn) -> tuple[int, bool, int, bool]:
    """(start, start exclusive, end, end exclusive) of a scan over a few pages of ints."""
    start = draw(st.one_of(st.integers(-2000, 2000), INT64))
    width = draw(st.integers(0, 64 * (MAX_RANGE_PAGES + 2)))
    end = min(start + width, INT64_MAX)
    return start, draw(st.booleans()), end, draw(st.booleans())


def bounds(start: int, start_exclusive: bool, end: int, end_exclusive: bool
           ) -> tuple[bytes, bytes]:
    """Encoded [lo, hi) as nodes.query.byte_range makes them."""
    lo = encode((start,))
    hi = encode((end,))
    return (prefix_end(lo) if start_exclusive else lo), (hi if end_exclusive else prefix_end(hi))


@quick
@given(int_ranges(), st.data())
def test_every_int_key_in_a_range_is_in_a_listed_page(r: tuple[int, bool, int, bool],
                                                      data: st.DataObject):
    """Each key k with lo <= k < hi (alone or with more columns) maps into a listed page."""
    lo, hi = bounds(*r)
    pages = pages_for_range(lo, hi)
    start, _, end, _ = r
    blocks = (end >> 6) - (start >> 6) + 1
    if blocks > MAX_RANGE_PAGES:
        assert pages is None
        return
    assert pages is not None
    assert len(pages) == blocks
    assert pages == sorted(pages)
    candidates = [start, end, start + 1, end - 1,
                  *data.draw(st.lists(st.integers(start, end), max_size=20))]
    for k in candidates:
        if not INT64_MIN <= k <= INT64_MAX:
            continue
        for enc in (encode((k,)), encode((k, "tail"))):
            if lo <= enc < hi:
                assert page_of(enc) in pages, (k, pages)


STR_CHARS = "ab\x00\xff"


@quick
@given(st.text(STR_CHARS, max_size=2), st.text(STR_CHARS, max_size=3),
       st.text(STR_CHARS, max_size=3), st.lists(st.text(STR_CHARS, max_size=4), max_size=20))
def test_every_string_key_in_a_range_is_in_a_listed_page(common: str, x: str, y: str,
                                                         tails: list[str]):
    """For string bounds with a common start (so a few pages apart), each key in [lo, hi)
    maps into a listed page."""
    lo, hi = sorted([encode((common + x,)), encode((common + y,))])
    pages = pages_for_range(lo, hi)
    if pages is None:  # only when the bounds are more than MAX_RANGE_PAGES apart
        assert int(page_of(hi), 16) - int(page_of(lo), 16) + 1 > MAX_RANGE_PAGES
        return
    for k in [common + t for t in tails]:
        enc = encode((k,))
        if lo <= enc < hi:
            assert page_of(enc) in pages, (k, pages)


NEAR_DOUBLES = st.builds(lambda sign, m, e: sign * math.ldexp(m, e), st.sampled_from([1, -1]),
                         st.floats(0.5, 1.0, exclude_max=True), st.integers(-40, 40))


@quick
@given(NEAR_DOUBLES, NEAR_DOUBLES, st.lists(NEAR_DOUBLES, max_size=20))
def test_every_double_key_in_a_range_is_in_a_listed_page(a: float, b: float,
                                                         keys: list[float]):
    """For double bounds a few binary exponents apart, each key in [lo, hi) maps into a
    listed page."""
    lo, hi = sorted([encode((a,)), encode((b,))])
    pages = pages_for_range(lo, hi)
    if pages is None:
        assert int(page_of(hi), 16) - int(page_of(lo), 16) + 1 > MAX_RANGE_PAGES
        return
    for k in [*keys, a, b, (a + b) / 2, 0.0]:
        enc = encode((k,))
        if lo <= enc < hi:
            assert page_of(enc) in pages, (k, pages)
