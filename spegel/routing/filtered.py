"""A router that never advertises excluded tags (`--registry-filters`), wrapping another router."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from spegel.routing.base import ClaimOrder, Holder, KeyState, Router
from spegel.routing.keys import split_tag_digest


def is_tag_key(key: str) -> bool:
    """Tags are `registry/repository:tag`; digests (`sha256:...`) have no slash."""
    return "/" in key


class TagFilteringRouter:
    """Delegates to `router`, dropping from advertisements every tag for which `excluded(tag key)` is true (the
    tag key without the digest advertised with it)."""

    def __init__(self, router: Router, excluded: Callable[[str], bool]) -> None:
        self._router = router
        self._excluded = excluded
        self.name = router.name

    async def advertise(
        self,
        keys: Iterable[str],
        state: KeyState = KeyState.COMPLETE,
        available: int | None = None,
        since: float | None = None,
    ) -> None:
        kept = [k for k in keys if not (is_tag_key(k) and self._excluded(split_tag_digest(k)[0]))]
        if kept:
            await self._router.advertise(kept, state, available, since)

    async def withdraw(self, keys: Iterable[str]) -> None:
        await self._router.withdraw(keys)

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        return await self._router.lookup(key, count, timeout)

    async def order_claim(self, key: str, timeout: float, since: float) -> ClaimOrder | None:
        return await self._router.order_claim(key, timeout, since)

    def ready(self) -> bool:
        return self._router.ready()
