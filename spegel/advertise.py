"""What this node advertises, as a pure state machine: content facts in, router actions out.

`Advertisements` holds, for every key (a digest string or a `registry/repository:tag`), whether this node
advertises it as complete or in progress. Each input method takes what was just learnt about the node's
content and returns the router actions that bring the advertisements in line with it, in input order:
`Advertise(keys, state, since)` and `Withdraw(keys)`. Nothing here does I/O; the watcher applies the actions to a
`Router`. Rules:

- a complete key is never downgraded to in progress (an ingest seen after its commit is stale news);
- an in-progress key is withdrawn when its download ends without the content (`ingest_gone`), but kept when
  the content is complete (its completion is reported separately);
- `relist` replaces the whole state by a full listing and withdraws everything the listing no longer holds
  (containerd's garbage collection publishes no delete events).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spegel.routing.base import KeyState


@dataclass(frozen=True)
class Advertise:
    keys: tuple[str, ...]
    state: KeyState = KeyState.COMPLETE
    since: float | None = None  # in progress: when this node claimed the downloads (wall-clock seconds)


@dataclass(frozen=True)
class Withdraw:
    keys: tuple[str, ...]


Action = Advertise | Withdraw


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


class Advertisements:
    """The keys this node advertises and their state. Every method returns the actions to apply, in order."""

    def __init__(self) -> None:
        self._state: dict[str, KeyState] = {}

    @property
    def state(self) -> Mapping[str, KeyState]:
        """A read-only view of the advertised keys."""
        return self._state

    def complete(self, keys: Iterable[str]) -> list[Action]:
        """The node now holds `keys` completely."""
        return self._set(keys, KeyState.COMPLETE)

    def in_progress(self, keys: Iterable[str], since: float | None = None) -> list[Action]:
        """Downloads of `keys` have started (claimed at `since`, when this node claims them). Keys already
        advertised (complete or in progress) are unchanged."""
        return self._set([k for k in keys if k not in self._state], KeyState.IN_PROGRESS, since)

    def ingest_gone(self, keys: Iterable[str], committed: Iterable[str] = ()) -> list[Action]:
        """Downloads of `keys` ended; those in `committed` ended with the content on disk and stay as they are.

        An in-progress key whose download ended without the content is withdrawn; complete keys are untouched.
        """
        kept = set(committed)
        gone = [k for k in _unique(keys) if k not in kept and self._state.get(k) is KeyState.IN_PROGRESS]
        return self.withdraw(gone)

    def withdraw(self, keys: Iterable[str]) -> list[Action]:
        """The node no longer holds `keys` (keys not advertised are ignored)."""
        gone = [k for k in _unique(keys) if k in self._state]
        for key in gone:
            del self._state[key]
        return [Withdraw(tuple(gone))] if gone else []

    def relist(self, complete: Iterable[str], in_progress: Iterable[str] = ()) -> list[Action]:
        """Replace the state by a full listing: advertise what is new or changed, withdraw what is gone."""
        wanted = dict.fromkeys(complete, KeyState.COMPLETE)
        for key in in_progress:
            wanted.setdefault(key, KeyState.IN_PROGRESS)
        actions = self.withdraw([k for k in self._state if k not in wanted])
        actions += self._set([k for k, s in wanted.items() if s is KeyState.COMPLETE], KeyState.COMPLETE)
        actions += self._set([k for k, s in wanted.items() if s is KeyState.IN_PROGRESS], KeyState.IN_PROGRESS)
        return actions

    def _set(self, keys: Iterable[str], state: KeyState, since: float | None = None) -> list[Action]:
        changed = [k for k in _unique(keys) if self._state.get(k) is not state]
        for key in changed:
            self._state[key] = state
        return [Advertise(tuple(changed), state, since)] if changed else []
