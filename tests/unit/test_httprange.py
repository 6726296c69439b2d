"""Range parsing and range decisions against RFC 9110 §14, by example and by property (hypothesis).

The model the properties check (RFC 9110 §14.1.2, one range per response, as spegel.httprange documents):
`first-last` and `first-` select `first..min(last, size-1)` and are satisfiable iff `first < size`;
`-n` selects the last `n` bytes and is satisfiable iff `n > 0`; an empty body, a missing, invalid or
non-`bytes` Range, and a multi-range request are all answered with the whole body.
"""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spegel.httprange import (
    MAX_RANGE_HEADER_LENGTH,
    ContentRange,
    Partial,
    RangeSpec,
    Unsatisfiable,
    Whole,
    decide,
    parse_content_range,
    parse_range,
    requested_range,
)

positions = st.one_of(st.integers(0, 300), st.integers(0, 2**70))
sizes = st.one_of(st.integers(1, 300), st.integers(1, 2**64))


@st.composite
def range_specs(draw: st.DrawFn) -> tuple[str, RangeSpec]:
    """A valid range-spec as text, and what it means."""
    kind = draw(st.sampled_from(["int", "open", "suffix"]))
    if kind == "suffix":
        n = draw(positions)
        return f"-{n}", RangeSpec(None, n)
    first = draw(positions)
    if kind == "open":
        return f"{first}-", RangeSpec(first, None)
    last = first + draw(positions)
    return f"{first}-{last}", RangeSpec(first, last)


def expected(spec: RangeSpec, size: int) -> Partial | Unsatisfiable:
    """The RFC 9110 answer to a single range-spec on a non-empty body of `size` bytes."""
    if spec.first is None:
        assert spec.last is not None
        return Partial(max(0, size - spec.last), size - 1, size) if spec.last > 0 else Unsatisfiable(size)
    if spec.first >= size:
        return Unsatisfiable(size)
    last = size - 1 if spec.last is None else min(spec.last, size - 1)
    return Partial(spec.first, last, size)


def check_consistent(decision: Whole | Partial | Unsatisfiable, size: int) -> None:
    """What must hold of every decision, whatever the request."""
    headers = decision.headers()
    if isinstance(decision, Partial):
        assert decision.status == 206
        assert 0 <= decision.start <= decision.end < size
        assert decision.length == decision.end - decision.start + 1 == int(headers["Content-Length"])
        assert parse_content_range(headers["Content-Range"]) == ContentRange(decision.start, decision.end, size)
    elif isinstance(decision, Unsatisfiable):
        assert decision.status == 416
        assert size > 0
        assert headers == {"Content-Range": f"bytes */{size}"}
    else:
        assert decision.status == 200
        assert (decision.start, decision.length, decision.size) == (0, size, size)
        assert headers == {"Content-Length": str(size)}


# --- examples ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "specs"),
    [
        ("bytes=0-499", [RangeSpec(0, 499)]),
        ("bytes=500-", [RangeSpec(500, None)]),
        ("bytes=-500", [RangeSpec(None, 500)]),
        ("bytes=0-0", [RangeSpec(0, 0)]),
        ("BYTES=1-2", [RangeSpec(1, 2)]),  # the range unit is case-insensitive
        ("bytes=0-1, 5-6", [RangeSpec(0, 1), RangeSpec(5, 6)]),
        ("bytes=0-1 ,\t-3", [RangeSpec(0, 1), RangeSpec(None, 3)]),
        ("bytes=,0-1,", [RangeSpec(0, 1)]),  # the list rule allows empty elements
        ("bytes=007-010", [RangeSpec(7, 10)]),
    ],
)
def test_parse_valid(header: str, specs: list[RangeSpec]) -> None:
    assert parse_range(header) == specs


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-a",
        "bytes=5-1",  # last < first makes the whole field invalid
        "bytes=0-1,5-1",
        "bytes=0-1-2",
        "bytes=--1",
        "bytes=1--2",
        "bytes=+1-2",
        "bytes=0x10-",
        "bytes=1.5-2",
        "bytes 0-1",
        "bytes:0-1",
        "items=0-1",
        "bytes=0-1;x",
        "bytes=0 -1",
        "bytes=0-1\n",
        "bytes=\u0661-\u0662",  # non-ASCII digits
        "bytes=0-" + "1" * MAX_RANGE_HEADER_LENGTH,  # over-long header
    ],
)
def test_parse_invalid_and_decide_whole(header: str) -> None:
    assert parse_range(header) is None
    assert decide(requested_range(header), 1000) == Whole(1000)


def test_rfc_examples_on_a_10000_byte_body() -> None:
    size = 10000
    assert decide(requested_range("bytes=0-499"), size) == Partial(0, 499, size)
    assert decide(requested_range("bytes=500-999"), size) == Partial(500, 999, size)
    assert decide(requested_range("bytes=-500"), size) == Partial(9500, 9999, size)
    assert decide(requested_range("bytes=9500-"), size) == Partial(9500, 9999, size)
    assert decide(requested_range("bytes=0-"), size) == Partial(0, 9999, size)
    assert decide(requested_range("bytes=0-99999"), size) == Partial(0, 9999, size)  # last clipped to the size
    assert decide(requested_range("bytes=-20000"), size) == Partial(0, 9999, size)  # suffix longer than the body
    assert decide(requested_range("bytes=10000-"), size) == Unsatisfiable(size)
    assert decide(requested_range("bytes=10000-10001"), size) == Unsatisfiable(size)
    assert decide(requested_range("bytes=-0"), size) == Unsatisfiable(size)
    assert decide(requested_range("bytes=9999-"), size) == Partial(9999, 9999, size)
    assert decide(requested_range("bytes=0-0,-1"), size) == Whole(size)  # multi-range → whole body
    assert decide(requested_range(None), size) == Whole(size)


def test_empty_body_is_always_whole() -> None:
    for header in (None, "bytes=0-", "bytes=-1", "bytes=5-9", "junk"):
        assert decide(requested_range(header), 0) == Whole(0)


def test_header_values() -> None:
    assert Partial(0, 9, 100).headers() == {"Content-Length": "10", "Content-Range": "bytes 0-9/100"}
    assert Unsatisfiable(100).headers() == {"Content-Range": "bytes */100"}
    assert Whole(100).headers() == {"Content-Length": "100"}


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("bytes 0-9/100", ContentRange(0, 9, 100)),
        ("bytes 5-5/*", ContentRange(5, 5, None)),
        (" bytes 0-0/1 ", ContentRange(0, 0, 1)),
        ("bytes 9-0/100", None),
        ("bytes 0-100/100", None),
        ("bytes */100", None),
        ("bytes 0-9", None),
        ("items 0-9/100", None),
        ("bytes 0-9/100/1", None),
        ("", None),
    ],
)
def test_parse_content_range(header: str, parsed: ContentRange | None) -> None:
    assert parse_content_range(header) == parsed


# --- properties ----------------------------------------------------------------------------------------


@given(range_specs(), sizes)
@example(("0-", RangeSpec(0, None)), 1)
@example(("-1", RangeSpec(None, 1)), 1)
def test_single_range_follows_the_rfc(spec: tuple[str, RangeSpec], size: int) -> None:
    text, meaning = spec
    assert parse_range(f"bytes={text}") == [meaning]
    decision = decide(requested_range(f"bytes={text}"), size)
    assert decision == expected(meaning, size)
    check_consistent(decision, size)


@given(range_specs(), sizes)
def test_unsatisfiable_iff_first_not_below_size(spec: tuple[str, RangeSpec], size: int) -> None:
    text, meaning = spec
    decision = decide(requested_range(f"bytes={text}"), size)
    if meaning.first is not None:
        assert isinstance(decision, Unsatisfiable) == (meaning.first >= size)


@given(range_specs(), sizes)
def test_suffix_selects_the_last_bytes(spec: tuple[str, RangeSpec], size: int) -> None:
    _, meaning = spec
    if meaning.first is not None:
        return
    assert meaning.last is not None
    decision = decide(requested_range(f"bytes=-{meaning.last}"), size)
    if meaning.last == 0:
        assert decision == Unsatisfiable(size)
    else:
        assert isinstance(decision, Partial)
        assert decision.end == size - 1
        assert decision.length == min(meaning.last, size)


@given(st.lists(range_specs(), min_size=2, max_size=5), sizes, st.sampled_from([",", ", ", " ,\t"]))
def test_multi_range_is_whole(specs: list[tuple[str, RangeSpec]], size: int, separator: str) -> None:
    header = "bytes=" + separator.join(text for text, _ in specs)
    assert parse_range(header) == [meaning for _, meaning in specs]
    assert decide(requested_range(header), size) == Whole(size)


@given(st.text(max_size=60), sizes)
@example("bytes=0-1", 10)
def test_any_header_gives_a_consistent_decision(header: str, size: int) -> None:
    decision = decide(requested_range(header), size)
    check_consistent(decision, size)
    if parse_range(header) is None:
        assert decision == Whole(size)


@given(st.from_regex(r"\A[bB][yY][tT][eE][sS]=[0-9, \t-]{0,20}\Z"), sizes)
def test_near_valid_headers_give_a_consistent_decision(header: str, size: int) -> None:
    specs = parse_range(header)
    decision = decide(requested_range(header), size)
    check_consistent(decision, size)
    if specs is None or len(specs) != 1:
        assert decision == Whole(size)
    else:
        assert decision == expected(specs[0], size)


@given(positions, positions, sizes)
def test_content_range_round_trips(start: int, length: int, size: int) -> None:
    partial = Partial(start % size, min(start % size + length, size - 1), size)
    assert parse_content_range(partial.headers()["Content-Range"]) == ContentRange(partial.start, partial.end, size)


@given(range_specs(), sizes)
def test_content_still_arriving_is_whole_from_zero_and_partial_past_it(spec: tuple[str, RangeSpec], size: int) -> None:
    """Not `ranged`: a range from byte 0 is answered 200 with the whole body; a resume past 0 stays 206."""
    _, meaning = spec
    ranged = decide(meaning, size)
    arriving = decide(meaning, size, ranged=False)
    if isinstance(ranged, Partial) and ranged.start == 0:
        assert arriving == Whole(size)
    else:
        assert arriving == ranged


@given(range_specs())
def test_range_header_round_trips(spec: tuple[str, RangeSpec]) -> None:
    _, meaning = spec
    assert requested_range(meaning.header()) == meaning


def test_requested_range_is_none_for_no_invalid_or_several_ranges() -> None:
    assert requested_range(None) is None
    assert requested_range("bytes=x") is None
    assert requested_range("bytes=0-1,5-6") is None
    assert requested_range("bytes=5-") == RangeSpec(5, None)
