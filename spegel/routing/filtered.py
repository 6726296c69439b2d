"""A router that never advertises excluded tags (`--registry-filters`), wrapping another router."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from spegel.routing.base import Holder, KeyState, Router


def is_tag_key(key: str) -> bool:
    """Tags are `registry/repository:tag`; digests (`sha256:...`) have no slash."""
    return "/" in key


class TagFilteringRouter:
    """Delegates to `router`, dropping from advertisements every tag key for which `excluded(key)` is true."""

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
        kept = [k for k in keys if not (is_tag_key(k) and self._excluded(k))]
        if kept:
            await self._router.advertise(kept, state, available, since)

    async def withdraw(self, keys: Iterable[str]) -> None:
        await self._router.withdraw(keys)

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        return await self._router.lookup(key, count, timeout)

    def ready(self) -> bool:
        return self._router.ready()
