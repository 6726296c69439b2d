"""HTTP Range arithmetic (RFC 9110 §14): parse a `Range` header and decide the answer. No I/O.

A request's `Range` header is parsed once, at the edge, by `requested_range` into the one `RangeSpec` it asks
for (or None); everything after works on that value. The decision for a representation of `size` bytes is one of:

- `Whole`: answer 200 with the whole body. Chosen when there is no Range header, when it is not a
  syntactically valid `bytes` range set (RFC 9110 §14.2: a server ignores an invalid Range), when it asks for
  several ranges (we serve one range per response, as the RFC allows), or when the representation is empty
  (every range of an empty body is unsatisfiable, but a 200 with nothing is the useful answer).
- `Partial(start, end)`: answer 206 with bytes `start..end` inclusive and `Content-Range: bytes start-end/size`.
- `Unsatisfiable`: answer 416 with `Content-Range: bytes */size`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RANGE_HEADER_LENGTH = 1024
_RANGE_SPEC_RE = re.compile(r"^(?:(?P<first>[0-9]+)-(?P<last>[0-9]*)|-(?P<suffix>[0-9]+))\Z")


@dataclass(frozen=True)
class RangeSpec:
    """One range as requested: `first-last`, `first-` (last None) or the suffix `-n` (first None)."""

    first: int | None
    last: int | None

    def header(self) -> str:
        """The `Range` header value that asks for this range."""
        if self.first is None:
            return f"bytes=-{self.last}"
        return f"bytes={self.first}-{'' if self.last is None else self.last}"

    def resolve(self, size: int) -> Partial | None:
        """The bytes this spec selects in a body of `size` bytes, or None when it selects none."""
        if self.first is None:  # suffix-range: the last `last` bytes
            assert self.last is not None
            if self.last == 0 or size == 0:
                return None
            return Partial(max(0, size - self.last), size - 1, size)
        if self.first >= size:
            return None
        end = size - 1 if self.last is None else min(self.last, size - 1)
        return Partial(self.first, end, size)


@dataclass(frozen=True)
class Whole:
    size: int
    status = 200

    @property
    def start(self) -> int:
        return 0

    @property
    def length(self) -> int:
        return self.size

    def headers(self) -> dict[str, str]:
        return {"Content-Length": str(self.size)}


@dataclass(frozen=True)
class Partial:
    start: int
    end: int  # inclusive
    size: int
    status = 206

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def headers(self) -> dict[str, str]:
        return {"Content-Length": str(self.length), "Content-Range": f"bytes {self.start}-{self.end}/{self.size}"}


@dataclass(frozen=True)
class Unsatisfiable:
    size: int
    status = 416

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


Decision = Whole | Partial | Unsatisfiable


def parse_range(header: str) -> list[RangeSpec] | None:
    """Parse a `Range` header value into its range specs; None when it is not a valid `bytes` range set."""
    if len(header) > MAX_RANGE_HEADER_LENGTH:
        return None
    unit, eq, range_set = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    specs = []
    for part in range_set.split(","):
        part = part.strip(" \t")
        if not part:
            continue  # the list rule allows empty elements
        match = _RANGE_SPEC_RE.match(part)
        if match is None:
            return None
        if match["suffix"] is not None:
            specs.append(RangeSpec(None, int(match["suffix"])))
            continue
        first = int(match["first"])
        last = int(match["last"]) if match["last"] else None
        if last is not None and last < first:
            return None  # RFC 9110 §14.1.1: an invalid range-spec makes the whole field invalid
        specs.append(RangeSpec(first, last))
    return specs or None


def requested_range(header: str | None) -> RangeSpec | None:
    """The one range a request's `Range` header asks for. None when there is no header, when it is not a
    valid `bytes` range set, or when it asks for several ranges: each of those is answered with the whole body."""
    specs = parse_range(header) if header is not None else None
    return specs[0] if specs is not None and len(specs) == 1 else None


def decide(requested: RangeSpec | None, size: int, ranged: bool = True) -> Decision:
    """What to answer to a request for `requested` (None: the whole body) of a body of `size` bytes.

    `ranged` False marks content still arriving (see `BlobReader.ranged`): a range that starts at 0 is then
    answered `Whole`, so that containerd streams it in one request instead of opening parallel chunks; a
    resume (a range starting past 0) is still `Partial`.
    """
    if requested is None or size == 0:
        return Whole(size)
    selected = requested.resolve(size)
    if selected is None:
        return Unsatisfiable(size)
    if not ranged and selected.start == 0:
        return Whole(size)
    return selected


@dataclass(frozen=True)
class ContentRange:
    """A parsed `Content-Range: bytes start-end/size` answer header (size None when `*`)."""

    start: int
    end: int
    size: int | None


_CONTENT_RANGE_RE = re.compile(r"^bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)\Z")


def parse_content_range(header: str) -> ContentRange | None:
    """Parse a 206's `Content-Range`; None when it is not a valid byte range."""
    match = _CONTENT_RANGE_RE.match(header.strip())
    if match is None:
        return None
    start, end = int(match[1]), int(match[2])
    size = None if match[3] == "*" else int(match[3])
    if end < start or (size is not None and end >= size):
        return None
    return ContentRange(start, end, size)
