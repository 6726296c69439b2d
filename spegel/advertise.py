"""What this node advertises and claims, as a pure state machine: content facts in, router actions out.

`Advertisements` holds, for every key (a digest string or a `registry/repository:tag`), whether this node
advertises it as complete or in progress, and the node's open download claims. Each input method takes what
was just learnt about the node's content and returns the router actions that bring the advertisements in line
with it, in input order: `Advertise(keys, state, since)` and `Withdraw(keys)`. Nothing here does I/O or reads a
clock: times are arguments. `spegel.tracker.Tracker` applies the actions to a `Router`. Rules:

- a complete key is never downgraded to in progress (an ingest seen after its commit is stale news);
- an in-progress key is withdrawn when its download ends without the content (`ingest_gone`), but kept when
  the content is complete (its completion is reported separately);
- a claim (`claim`: the mirror is about to let the node download a blob no peer holds complete) advertises the
  key in progress before any download exists; it must show a download by its deadline (`expire_claims`), and
  ends when the key turns complete or is withdrawn;
- `relist` replaces the whole state by a full listing and withdraws everything the listing no longer holds
  (containerd's garbage collection publishes no delete events), except keys claimed whose deadline has not
  passed or whose download is listed: a claim has no bytes on disk yet, so no listing shows it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
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


@dataclass
class _Claim:
    since: float  # wall-clock seconds, as advertised
    deadline: float | None  # monotonic time by which a download must show; None once one has


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


class Advertisements:
    """The keys this node advertises, their state and its claims. Every method returns the actions to apply."""

    def __init__(self) -> None:
        self._state: dict[str, KeyState] = {}
        self._claims: dict[str, _Claim] = {}  # only keys advertised in progress

    @property
    def state(self) -> Mapping[str, KeyState]:
        """A read-only view of the advertised keys."""
        return self._state

    def claim_since(self, key: str) -> float | None:
        """When `key` was claimed, while its claim is open; else None."""
        claim = self._claims.get(key)
        return claim.since if claim is not None else None

    def complete(self, keys: Iterable[str]) -> list[Action]:
        """The node now holds `keys` completely."""
        return self._set(keys, KeyState.COMPLETE)

    def in_progress(self, keys: Iterable[str]) -> list[Action]:
        """Downloads of `keys` have their first bytes on disk. Keys already advertised are unchanged."""
        return self._set([k for k in keys if k not in self._state], KeyState.IN_PROGRESS)

    def claim(self, key: str, since: float, deadline: float) -> list[Action]:
        """Claim the download of `key` at wall-clock time `since`: advertise it in progress now, and withdraw it
        unless a download shows by monotonic time `deadline` (see `expire_claims`). A key already advertised
        (complete, in progress or claimed) is unchanged: its download is under way or done."""
        if key in self._state:
            return []
        self._claims[key] = _Claim(since, deadline)
        return self._set([key], KeyState.IN_PROGRESS, since)

    def due_claims(self, now: float) -> list[str]:
        """Claims whose deadline has come at monotonic time `now` (the caller lists the downloads for them)."""
        return [k for k, c in self._claims.items() if c.deadline is not None and c.deadline <= now]

    def expire_claims(self, now: float, downloading: Collection[str]) -> list[Action]:
        """Settle the claims due at `now`: those whose download is in `downloading` stay (until it ends), the
        others are withdrawn."""
        due = self.due_claims(now)
        for key in due:
            if key in downloading:
                self._claims[key].deadline = None
        return self.withdraw([k for k in due if k not in downloading])

    def ingest_gone(self, keys: Iterable[str], committed: Iterable[str] = ()) -> list[Action]:
        """Downloads of `keys` ended; those in `committed` ended with the content on disk and stay as they are.

        An in-progress key whose download ended without the content is withdrawn; complete keys are untouched.
        """
        kept = set(committed)
        gone = [k for k in _unique(keys) if k not in kept and self._state.get(k) is KeyState.IN_PROGRESS]
        return self.withdraw(gone)

    def withdraw(self, keys: Iterable[str]) -> list[Action]:
        """The node no longer holds `keys` (keys not advertised are ignored); their claims end."""
        gone = [k for k in _unique(keys) if k in self._state]
        for key in gone:
            del self._state[key]
            self._claims.pop(key, None)
        return [Withdraw(tuple(gone))] if gone else []

    def relist(
        self,
        complete: Iterable[str],
        in_progress: Iterable[str] = (),
        now: float = 0.0,
        downloading: Iterable[str] = (),
    ) -> list[Action]:
        """Replace the state by a full listing at monotonic time `now`: advertise what is new or changed, withdraw
        what is gone. `in_progress` are downloads with bytes on disk, `downloading` every download (with bytes or
        not): a claimed key stays while it is downloading or its deadline has not passed."""
        wanted = dict.fromkeys(complete, KeyState.COMPLETE)
        for key in in_progress:
            wanted.setdefault(key, KeyState.IN_PROGRESS)
        listed = set(downloading)
        for key, claim in self._claims.items():
            if key in listed or (claim.deadline is not None and claim.deadline > now):
                wanted.setdefault(key, KeyState.IN_PROGRESS)
        actions = self.withdraw([k for k in self._state if k not in wanted])
        actions += self._set([k for k, s in wanted.items() if s is KeyState.COMPLETE], KeyState.COMPLETE)
        actions += self._set([k for k, s in wanted.items() if s is KeyState.IN_PROGRESS], KeyState.IN_PROGRESS)
        return actions

    def _set(self, keys: Iterable[str], state: KeyState, since: float | None = None) -> list[Action]:
        changed = [k for k in _unique(keys) if self._state.get(k) is not state]
        for key in changed:
            self._state[key] = state
            if state is KeyState.COMPLETE:
                self._claims.pop(key, None)
        return [Advertise(tuple(changed), state, since)] if changed else []
