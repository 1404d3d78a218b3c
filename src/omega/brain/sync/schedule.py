"""When a TV contributes what it learned: once per window at a random time, never right after a viewing.

A push sent in the sync right after a viewing dates that viewing to within the
tier's interval (issue 14). So the TV does not push as it learns: it seals what
it learned into a batch at most once per contribution window (a day by default),
at a time drawn at random inside the window before anything in it is known,
and postpones that moment while the last sync saw a new viewing. The window's
sealed batches then go out (and are retried) at the following syncs; pulls and
heartbeats keep the tier's schedule. Windows are aligned to the epoch, so two
contributions are never in the same window.

What a push then says about time: that the TV learned something before the
random moment of its window, at least one sync after its last viewing. The
frame's own timestamp is the send time (the server's replay window needs it),
which is that random moment or a retry after it. `contribution_period_s = 0`
turns the schedule off (a push at every sync, for tests and benchmarks).

State (in the store's named values, so a restart keeps it): the next moment,
the newest episode id seen by the last successful sync, and the pattern count
at the last contribution (what the heartbeat reports, so that it does not move
with viewings either).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from omega.brain.store import BrainStore
from omega.errors import OmegaError

NEXT_KEY = "sync.contribution.next_at"
SEEN_EPISODE_KEY = "sync.contribution.seen_episode"
PATTERNS_KEY = "sync.contribution.patterns"


def _read_float(store: BrainStore, key: str) -> float | None:
    found = store.get_state(key)
    if found is None:
        return None
    try:
        value = float(found)
    except ValueError:
        return None  # unreadable: drawn again, as if never set
    return value if math.isfinite(value) and value >= 0 else None


class ContributionSchedule:
    """The contribution moments of one TV (see the module docstring)."""

    def __init__(self, store: BrainStore, period_s: float, *, clock: Callable[[], float], rng: random.Random) -> None:
        if not (period_s == 0 or period_s >= 1):
            raise OmegaError(f"contribution period must be 0 (off) or >= 1 s, got {period_s!r}")
        self.store = store
        self.period_s = float(period_s)
        self._clock = clock
        self._rng = rng

    @property
    def enabled(self) -> bool:
        return self.period_s > 0

    def _draw(self, window: int) -> float:
        return (window + self._rng.random()) * self.period_s

    def next_at(self) -> float:
        """The next moment a contribution may be sealed (0 when the schedule is off); drawn once, then kept."""
        if not self.enabled:
            return 0.0
        found = _read_float(self.store, NEXT_KEY)
        if found is None:
            found = self._draw(math.floor(self._clock() / self.period_s))
            self.store.set_state(NEXT_KEY, repr(found))
        return found

    def viewed_since_last_sync(self) -> bool:
        """A viewing was recorded after the last successful sync began (or this TV never synced)."""
        seen = self.store.get_state(SEEN_EPISODE_KEY)
        latest = self.store.last_episode_id()
        try:
            return latest > int(seen) if seen is not None else latest > 0
        except ValueError:
            return True

    def mark(self, episode_id: int) -> None:
        """A sync that began with `episode_id` as the newest episode succeeded."""
        self.store.set_state(SEEN_EPISODE_KEY, str(int(episode_id)))

    def due(self) -> bool:
        """Seal a contribution in this sync? Always when off; else past the moment, and no viewing since the last sync."""
        if not self.enabled:
            return True
        return self._clock() >= self.next_at() and not self.viewed_since_last_sync()

    def contributed(self) -> None:
        """This window's contribution was sealed: the next moment is random in the next window; the count kept."""
        self.store.set_state(PATTERNS_KEY, str(self.store.pattern_count()))
        if self.enabled:
            window = math.floor(max(self._clock(), self.next_at()) / self.period_s) + 1
            self.store.set_state(NEXT_KEY, repr(self._draw(window)))

    def reported_patterns(self) -> int:
        """Pattern count for the heartbeat: as of the last contribution, not live."""
        found = self.store.get_state(PATTERNS_KEY)
        try:
            return max(0, int(found)) if found is not None else 0
        except ValueError:
            return 0
