"""Refined item neighbours: EASE over the published item graph (the seed's "self-learning GNN layer").

What it learns from is only what the constellation publishes anyway: the unordered
"watched near each other" pairs, each with its distinct support (how many TVs, at
least k_min). It is post-processing of published, k-anonymous state, so it reveals
nothing a TV could not compute from its own pull; no device data is read.

The model is EASE (Steck 2019) on the pair graph: G[a, b] = support of {a, b},
G[a, a] = Σ_b G[a, b] (the item's degree: G stays symmetric and diagonally
dominant, so positive definite), P = (G + λ·mean(diag G)·I)⁻¹ and
B = I − P·diag(1/diag P) with a zero diagonal. B[a, b] is how much "a was
watched" predicts "b is watched" once every other item's co-occurrence is
accounted for: a hub that is near everything gets little, a specific neighbour
more. The TV receives each item's top `neighbours` columns of B (positive only),
scaled to the row's best as a weight on the wire's 1/16 grid.

A pair only enters the graph if it passes the support floor the TV applies when it
reads pairs (`SUPPORT_FLOOR_C`): support ≥ c·√max(V(a), V(b)), V = total support
at an item, so a few sybil ids beside a popular title stay out of the refined
neighbours too.

When TVs upload co-watched pairs (Keyspace.COWATCH: each good viewing with the TV's last W distinct titles,
once per pair and TV), the pairs that reached k_min TVs are the input instead, under the same support floor.

`RefinedRelease` is the shard's current set of refined neighbours: recomputed by a
periodic job (`refresh`, off the pull path: it is a batch job of seconds), served
to TVs page by page in pull replies (`omega.protocol.refined_cursor`), identified
by a hash of its content so an unchanged release is never sent twice.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import numpy as np

from omega.constellation.crdt import ConsolidatedEdge
from omega.errors import OmegaError
from omega.protocol import (
    MAX_TRANSITIONS,
    SUPPORT_FLOOR_C,
    WEIGHT_SCALE,
    Keyspace,
    Transition,
    TransitionBatch,
    passes_support_floor,
    refined_release_of,
)
from omega.protocol import refined_cursor as make_cursor

#: the ridge, as a multiple of the mean degree. Validation (200 viewers, bench/results/refine-grid-validation.json):
#: NDCG@10 0.0565 / 0.0546 / 0.0545 / 0.0527 at 0.02 / 0.05 / 0.1 / 0.5 (flat below 0.1, the degree on the
#: diagonal already regularises); 0.05 is the middle of the flat part.
DEFAULT_LAMBDA = 0.05
#: neighbours shipped per item (validation: 20 vs 50 within noise, 0.0535 vs 0.0545 at λ 0.1; 20 is 2.5× less to pull)
DEFAULT_NEIGHBOURS = 20
#: above this many items the dense inverse (float64, n² · 8 B twice) would not fit a shard's memory budget;
#: the best-supported are kept (4,000 items: 2 × 128 MB while it runs)
MAX_ITEMS = 4000
#: how often a shard recomputes its release: daily, as TVs contribute daily (a changed release is pulled again whole)
REFRESH_S = 86_400.0
#: wire bytes one neighbour takes at most in a TransitionBatch (src delta, dst, weight varints)
NEIGHBOUR_WIRE_BYTES = 8


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One refined neighbour: `dst` is predicted by `src` with weight `steps`/16 (1..16, 16 = the row's best)."""

    src: int
    dst: int
    steps: int


def refine(
    pairs: Iterable[tuple[int, int, float]], edges: Iterable[tuple[int, int, float]] = (), *,
    lam: float = DEFAULT_LAMBDA, neighbours: int = DEFAULT_NEIGHBOURS, floor_c: float = SUPPORT_FLOOR_C,
    max_items: int = MAX_ITEMS,
) -> list[Neighbour]:  # fmt: skip
    """Refined neighbours from published pairs (a, b, support), sorted by (src, dst).

    `edges` (src, dst, support): the published ordered edges, whose total support out of an item is the
    V of the support floor (as the TV computes it)."""
    if not lam > 0 or not np.isfinite(lam):
        raise OmegaError(f"refine: lambda must be a positive number, got {lam!r}")
    if neighbours < 1:
        raise OmegaError(f"refine: neighbours must be >= 1, got {neighbours!r}")
    a, b, s = _arrays(pairs)
    if a.size == 0:
        return []
    volume: dict[int, float] = {}
    for src, _, w in edges:
        volume[int(src)] = volume.get(int(src), 0.0) + float(w)
    a, b, s = _floored(a, b, s, floor_c, volume)
    if a.size == 0:
        return []
    items, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inverse[: a.size], inverse[a.size :]
    n = items.size
    degree = np.bincount(ia, weights=s, minlength=n) + np.bincount(ib, weights=s, minlength=n)
    if n > max_items:  # keep the best-supported items: the dense inverse is O(n²) memory, O(n³) time
        keep = np.zeros(n, bool)
        keep[np.argsort(-degree, kind="stable")[:max_items]] = True
        ok = keep[ia] & keep[ib]
        return refine(
            zip(a[ok].tolist(), b[ok].tolist(), s[ok].tolist()), lam=lam, neighbours=neighbours, floor_c=0.0,
            max_items=max_items,
        )  # fmt: skip
    G = np.zeros((n, n), np.float64)
    G[ia, ib] = s
    G[ib, ia] = s
    G[np.diag_indices(n)] = degree + lam * float(degree.mean())
    B = np.linalg.inv(G)  # P; turned into B in place (a shard's memory: two n × n arrays at most)
    del G
    B /= -np.diag(B).copy()[None, :]
    np.fill_diagonal(B, 0.0)
    return _top_rows(B, items, neighbours)


def _arrays(pairs: Iterable[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [(int(x), int(y), float(w)) for x, y, w in pairs if x != y and w > 0]
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    arr = np.array(rows, dtype=np.float64)
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]


def _floored(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, c: float, volume: dict[int, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs a TV would read: support ≥ c·√max(V(a), V(b)), V = the total edge support out of an item."""
    if c <= 0 or not volume:
        return a, b, s
    va = np.fromiter((volume.get(x, 0.0) for x in a.tolist()), np.float64, a.size)
    vb = np.fromiter((volume.get(x, 0.0) for x in b.tolist()), np.float64, b.size)
    ok = passes_support_floor(s, np.maximum(va, vb), c)
    return a[ok], b[ok], s[ok]


def _top_rows(B: np.ndarray, items: np.ndarray, m: int) -> list[Neighbour]:
    """Each row's m largest positive entries, quantised against the row's best to 1..WEIGHT_SCALE."""
    out: list[Neighbour] = []
    m = min(m, B.shape[1] - 1)
    if m < 1:
        return out
    top = np.argpartition(-B, m - 1, axis=1)[:, :m]
    for row in range(B.shape[0]):
        cols = top[row][B[row, top[row]] > 0]
        if not cols.size:
            continue
        vals = B[row, cols]
        steps = np.clip(np.rint(WEIGHT_SCALE * vals / vals.max()), 1, WEIGHT_SCALE).astype(int)
        src = int(items[row])
        out += [
            Neighbour(src, int(items[c]), int(k))
            for c, k in sorted(zip(cols.tolist(), steps.tolist()), key=lambda t: int(items[t[0]]))
        ]
    return out


class RefinedRelease:
    """The refined neighbours TVs pull (see module docstring), over what `published` returns."""

    def __init__(
        self, published: Callable[[], Awaitable[list]], *, lam: float = DEFAULT_LAMBDA,
        neighbours: int = DEFAULT_NEIGHBOURS, cowatch: Callable[[], Awaitable[list]] | None = None,
    ) -> None:  # fmt: skip
        self._published = published
        self._cowatch = cowatch
        self._lam = lam
        self._neighbours = neighbours
        self.release = 0  # 0: nothing computed yet
        self.items: list[Neighbour] = []
        self._lock = asyncio.Lock()
        # Pages by (start, end): every TV walks the same boundaries for a budget, so each is built once.
        self._pages: dict[tuple[int, int], TransitionBatch] = {}

    async def refresh(self) -> int:
        """Recompute from what is published now; returns the release id (a content hash, never 0)."""
        async with self._lock:
            published = await self._published()
            pairs = [(e.src, e.dst, e.support) for e in published
                     if isinstance(e, ConsolidatedEdge) and e.keyspace == Keyspace.PAIR]  # fmt: skip
            edges = [(e.src, e.dst, e.support) for e in published
                     if isinstance(e, ConsolidatedEdge) and e.keyspace == Keyspace.ITEM]  # fmt: skip
            # The co-watched pairs TVs uploaded (>= k_min TVs each), when there are any, in place of the pairs
            # derived from pushed edges: a wider window of the same fact, the input the offline replay measured
            # (bench/refine_window.py, W 50).
            cowatch = await self._cowatch() if self._cowatch is not None else []
            if cowatch:
                pairs = cowatch
            items = await asyncio.to_thread(refine, pairs, edges, lam=self._lam, neighbours=self._neighbours)
            packed = b"".join(struct.pack("<IIB", n.src, n.dst, n.steps) for n in items)
            self.items, self.release = items, (zlib.crc32(packed) or 1) if items else 0
            self._pages = {}
            return self.release

    def page(self, since: int, max_bytes: int) -> tuple[TransitionBatch, int, bool] | None:
        """Neighbours after `since` (a cursor of another release: from the start) within ~max_bytes as a
        REFINED batch, the cursor after them and whether more follow; None when the TV holds the whole release."""
        if not self.items or since == 0:  # 0: a client that does not take refined neighbours
            return None
        release, position = refined_release_of(since)
        start = position if release == self.release else 0
        if start >= len(self.items):
            return None
        count = max(1, min(MAX_TRANSITIONS, max_bytes // NEIGHBOUR_WIRE_BYTES))
        end = min(len(self.items), start + count)
        batch = self._pages.get((start, end))
        if batch is None:
            edges = tuple(Transition(n.src, n.dst, n.steps / WEIGHT_SCALE, 0) for n in self.items[start:end])
            batch = self._pages[(start, end)] = TransitionBatch(Keyspace.REFINED, edges)
        return batch, make_cursor(self.release, end), end < len(self.items)
