"""Cold start, measured cleanly: a new TV that saw a viewer's first few episodes ranks their next one
with only what the constellation had published by then, and nothing of that viewer in it.

For each sampled viewer (≥ `cold_n` + 1 training episodes), at the time T of episode `cold_n` + 1 the
replay stops (`Fleet.replay` probes: after every sync due by T, before any later viewing), a new TV
watches episodes 1..`cold_n`, pulls everything published from cursor 0 over the real protocol, ranks its
top 10 with `Brain.rank` at T, and is retired. The viewer's own fleet TV stays offline until T (`hold`),
so none of that viewer's viewings reached the published state the cold TV pulled, and the cold TV sends
no edges (its viewings stay local; 3 viewings cannot make a pattern of 10 uses either).

References on the same task: `mostpop_before` (the most-viewed titles among the training viewings of
the other viewers before T: what a popularity list could know then) and, as before, most-popular and
seq_transition trained on every training viewing (later ones included: optimistic).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from omega.brain.brain import context_at
from omega.brain.sync import SyncConfig
from omega.progress import Stage
from omega.sim.evaluation.baselines.mostpop import MostPop
from omega.sim.evaluation.baselines.seq_transition import SeqTransition
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap, summarise, target_rank
from omega.sim.evaluation.scoring import K
from omega.sim.evaluation.split import Split
from omega.sim.fleet.simulator import Fleet, ViewingEvent

#: cold-start TVs are users of their own, far above any MovieLens user id
COLD_USER_OFFSET = 10_000_000

Probe = tuple[float, Callable[[], Awaitable[None]]]


class ColdStart:
    """Plans the cold-start probes of one replay and collects what they measured."""

    def __init__(
        self, fleet: Fleet, split: Split, events: list[ViewingEvent], rows_by_user: dict[int, int], *,
        cold_n: int, cold_users: int, seed: int, stage: Stage,
    ) -> None:  # fmt: skip
        self.fleet, self.split, self.rows_by_user, self.cold_n, self.stage = fleet, split, rows_by_user, cold_n, stage
        firsts: dict[int, list[ViewingEvent]] = {}
        for ev in events:
            got = firsts.setdefault(ev.user, [])
            if len(got) <= cold_n:
                got.append(ev)
        eligible = sorted(u for u, evs in firsts.items() if len(evs) == cold_n + 1)
        rng = np.random.default_rng(seed + 1)
        chosen = rng.choice(eligible, size=min(cold_users, len(eligible)), replace=False).tolist() if eligible else []
        self.firsts = {int(u): firsts[u] for u in chosen}
        # Training viewings in time order, for what was popular before each target.
        self._times = np.array([ev.timestamp for ev in events], np.float64)
        self._rows = split.item_ids.searchsorted(np.array([ev.content_id for ev in events], np.int64))
        self._users = np.array([ev.user for ev in events], np.int64)
        self.ranks: list[int] = []
        self.reference_ranks: dict[str, list[int]] = {"mostpop_before": [], "mostpop": [], "seq_transition": []}
        self._models = {"mostpop": MostPop().fit(split), "seq_transition": SeqTransition().fit(split)}
        self.seconds = 0.0
        self._rng = random.Random(seed + 2)  # the cold TVs' own draws: the fleet's TVs keep theirs

    def hold(self) -> dict[int, float]:
        """Each sampled viewer's fleet TV stays offline until that viewer's cold target time."""
        return {u: evs[self.cold_n].timestamp for u, evs in self.firsts.items()}

    def probes(self) -> list[Probe]:
        """(time, probe) for the replay, in time order."""
        found = [(evs[self.cold_n].timestamp, self._probe_for(u)) for u, evs in self.firsts.items()]
        return sorted(found, key=lambda p: p[0])

    def _probe_for(self, user: int) -> Callable[[], Awaitable[None]]:
        async def probe() -> None:
            await self._measure(user)

        return probe

    async def _measure(self, user: int) -> None:
        started = time.perf_counter()
        fleet, split = self.fleet, self.split
        seen, target = self.firsts[user][: self.cold_n], self.firsts[user][self.cold_n]
        tv = fleet.add_tv(COLD_USER_OFFSET + user, name=f"cold-{user}", sync=SyncConfig(max_edges_per_push=0), rng=self._rng)
        try:
            for ev in seen:
                fleet.watch(tv, ev.content_id, ev.stars, ev.timestamp)
            await fleet.catch_up([tv])  # from cursor 0: what is published now, at the target's time
            ids = [r.content_id for r in tv.brain.rank(context_at(target.timestamp), K).recommendations]
        finally:
            await fleet.retire(tv)
        self.ranks.append(ids.index(target.content_id) if target.content_id in ids else K)
        history = split.item_ids.searchsorted(np.array([ev.content_id for ev in seen], np.int64))
        target_row = int(split.item_ids.searchsorted(target.content_id))
        before = (self._times < target.timestamp) & (self._users != user)
        counts = np.bincount(self._rows[before], minlength=split.n_items).astype(np.float64)
        self.reference_ranks["mostpop_before"].append(target_rank(counts, target_row, history))
        for name, model in self._models.items():
            self.reference_ranks[name].append(target_rank(model.scores(self.rows_by_user[user], history), target_row, history))
        self.seconds += time.perf_counter() - started
        self.stage("cold-start TVs", len(self.ranks), len(self.firsts))

    def summary(self) -> dict[str, Any]:
        refs = {name: summarise(r) for name, r in self.reference_ranks.items()}
        return summarise(self.ranks) | {
            "tvs": len(self.ranks), "episodes": self.cold_n, "target": f"episode {self.cold_n + 1}",
            "published": "only what was published before the target's time; the viewer's own fleet TV offline until then",
            "reference": refs,
            "vs_mostpop_before": _paired(self.ranks, self.reference_ranks["mostpop_before"]),
        }  # fmt: skip


def _paired(mine: list[int], theirs: list[int]) -> dict[str, Any]:
    """NDCG@10 of the cold TVs minus the reference's on the same targets, with a bootstrap 95 % interval."""
    result = paired_bootstrap(ndcg_values(mine), ndcg_values(theirs))
    return {"ndcg_diff": result["diff"], "ci95": [result["ci95_low"], result["ci95_high"]]}
