"""Which tags may be shared through peers (pure). The mirror's other decisions are in `decide.py`."""

from __future__ import annotations

import re
from collections.abc import Iterable


class RegistryFilters:
    """Regular expressions on `registry/repository:tag`; a matching tag is neither served nor advertised."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._patterns = [re.compile(p) for p in patterns]

    def excludes(self, tag_key: str) -> bool:
        return any(p.search(tag_key) for p in self._patterns)
