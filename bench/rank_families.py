"""Which ranker family beats tuned seq_transition by ≥ 10 %? Offline, centralised, validation split only (issue 13).

Protocol as `omega eval movielens --validation`: ratings in time order with same-second ties in the eval's
seeded shuffle (`evaluate._subsample`, seed 0), each viewer's test target dropped entirely, the split's
target is the second-to-last rating (split V); full ranking over the catalog minus the history, ties against
the target (`metrics.target_rank` semantics). Every family's parameters are chosen on V's own inner
validation split (split I: targets the third-to-last ratings, histories before them), then it is refitted on
V's histories and scored on V's targets — exactly how the eval tunes and scores seq_transition
(`baselines.tune_and_evaluate`). So the V figures carry no tuning optimism for any row.

Each family is a few parameters over full information (every training history, as seq_transition sees):

- sr: seq_transition itself (the eval's class and grid), the bar;
- sr_wide / sr_pop: sr over a wider grid (window, step decay, recent items, decays, source norm) / its
  popularity blend;
- sr+*: sr's normalised score plus one more part, each part scaled to max 1 per viewer:
  ease_user (EASE on the binary user × item matrix, the most-watched `EASE_ITEMS`), ease_pairs (EASE on
  window co-occurrence counts, what the constellation's item_graph does over published pairs), knn_decay
  (cosine item-kNN over the whole history, time-decayed by position), trend (items watched most by other
  viewers in the days before the target: time-windowed popularity), two_hop (T·T), svd (a rank-r
  factorisation of the transition table, FPMC-style), slit (SLIT, Choi et al. 2021: a ridge regression
  from each prefix's recent items to the next item, closed form), sknn (V-SKNN-style viewer neighbours
  of the recent items: not federable, a central reference);
- slit, ease_pairs, sknn alone (with sr's popularity blend);
- sr_pos: sr with per-position source weights fitted on split I (coordinate search);
- the blends of two of the four best extra parts (by split I), and sr+multi: sr plus every extra part,
  the weights by coordinate ascent on split I.

Output: one JSON object (rows with NDCG@10 / HR@10 on V, ratio to sr, paired bootstrap 95 % interval of the
difference vs sr over V's viewers, tuned parameters and their split-I scores).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/rank_families.py --combos --multi \
        --families sr_pop,sr_wide,sr_pos,sr+trend,sr+two_hop,sr+svd,sr+knn_decay,sr+ease_pairs,sr+ease_user,\
sr+slit,sr+sknn,slit,ease_pairs,sknn > bench/results/rank-families-validation.json

Tie seeds: `--seed S --per-viewer` per seed, then `--combine RUN...` pools them as `omega eval --seeds` does
(bench/results/rank-families-seeds.json). `--fed`: EASE on user histories under a federated release's constraints
(k_min on co-watched pairs, neighbours shipped per item, recent items scored; rank-families-federated.json).
`--fed2`: what that federated form loses, one lever at a time at k_min 3 (`FED2_ROWS`): the TV's scoring (recent
items, decayed, or its whole history), signed vs positive weights, a wider ridge grid, the upload window (each
new viewing paired with its last W items, counted once per TV), the neighbours shipped per item, then SR's weight
retuned on the best row by I (rank-families-fed2.json; `--fed2-rows` runs some rows only, `--combine A,B` merges
two runs of one seed).
`--split I` moves every target one step earlier (scored on the third-to-last ratings, tuned on the fourth-to-last):
a second validation split for rows picked on V (rank-families-fed2-split2.json).
`--users N` samples viewers for a quick look (~1 min for a few families at 300).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.baselines import BASELINES
from omega.sim.evaluation.baselines.interactions import item_popularity, user_item_matrix
from omega.sim.evaluation.baselines.transitions import transition_pairs
from omega.sim.evaluation.evaluate import _subsample
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap
from omega.sim.evaluation.split import Split, leave_last_out_arrays

K = 10
#: items EASE on user histories is computed over (the dense inverse is n² floats)
EASE_ITEMS = 4000
DAY = 86_400.0


@dataclass
class Data:
    """A split plus what time-aware families need: each row's target time and every training interaction's
    (time, item), sorted by time."""

    split: Split
    target_time: np.ndarray  # float64 per row
    hist_time: tuple[np.ndarray, ...]
    all_time: np.ndarray  # every training interaction's time, sorted
    all_item: np.ndarray  # its item
    all_row: np.ndarray  # its row


def build(user: np.ndarray, item: np.ndarray, ts: np.ndarray, catalog: np.ndarray) -> tuple[Data, Data]:
    """Split V (targets = each viewer's last rating in these arrays) and its inner split I (one earlier)."""
    v = leave_last_out_arrays(user, item, catalog)
    order = np.argsort(user, kind="stable")
    us, tss = user[order], ts[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
    times = np.split(tss, starts[1:])
    keep = [i for i, t in enumerate(times) if t.size >= 2]
    times = [times[i] for i in keep]
    assert len(times) == v.n_users
    data_v = _data(v, [t[:-1] for t in times], np.array([t[-1] for t in times]))
    keep_i = [r for r in range(v.n_users) if v.histories[r].size >= 2]
    i_split = Split(
        item_ids=v.item_ids, users=v.users[keep_i],
        histories=tuple(v.histories[r][:-1] for r in keep_i),
        targets=np.array([v.histories[r][-1] for r in keep_i], np.int32),
    )  # fmt: skip
    data_i = _data(i_split, [times[r][:-2] for r in keep_i], np.array([times[r][-2] for r in keep_i]))
    return data_v, data_i


def _data(split: Split, hist_time: list[np.ndarray], target_time: np.ndarray) -> Data:
    rows, items = split.train_interactions()
    t = np.concatenate(hist_time) if hist_time else np.zeros(0)
    order = np.argsort(t, kind="stable")
    return Data(split, target_time, tuple(hist_time), t[order], items[order], rows[order])


# ------------------------------------------------------------------ evaluation


def ranks_of(scores: np.ndarray, split: Split) -> np.ndarray:
    """0-based target ranks of a users × items score matrix, history excluded, ties against the target."""
    rows = np.arange(split.n_users)
    target_score = scores[rows, split.targets]
    at_least = scores >= target_score[:, None]
    lengths = np.fromiter((h.size for h in split.histories), np.int64, split.n_users)
    if lengths.sum():
        hr = np.repeat(rows, lengths)
        hc = np.concatenate(split.histories)
        keep = hc != split.targets[hr]
        at_least[hr[keep], hc[keep]] = False
    return np.count_nonzero(at_least, axis=1).astype(np.int64) - 1


def ndcg(ranks: np.ndarray) -> float:
    return float(ndcg_values(ranks, K).mean())


def row_max_scaled(m: np.ndarray) -> np.ndarray:
    top = m.max(axis=1, keepdims=True)
    return np.divide(m, top, out=np.zeros_like(m), where=top > 0)


def recency_matrix(
    split: Split, n_recent: int, decay: float, positions: Sequence[float] | None = None
) -> sp.csr_matrix:
    """Users × items: the last n_recent items of each history weighted decay^i (i = 0 the latest)."""
    rows, cols, vals = [], [], []
    for r, h in enumerate(split.histories):
        rec = h[::-1][:n_recent]
        w = np.asarray(positions[: rec.size]) if positions is not None else decay ** np.arange(rec.size)
        rows.append(np.full(rec.size, r))
        cols.append(rec)
        vals.append(w)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(split.n_users, split.n_items))  # fmt: skip
    m.sum_duplicates()
    return m


# ------------------------------------------------------------------ parts (each users × items, dense)


def ease_solve(G: np.ndarray, lam: float) -> np.ndarray:
    """EASE's closed form (Steck 2019) from a Gram matrix (changed in place): ridge λ·mean(diag), B = −P / diag(P),
    zero diagonal. P by Cholesky when G + ridge is positive definite (half an LU inverse's work), else by LU."""
    from scipy.linalg import lapack

    diag = np.diag(G).copy()
    G[np.diag_indices_from(G)] = diag + lam * float(diag.mean())
    c, info = lapack.dpotrf(G, lower=1, clean=0)
    if info == 0:
        P, info = lapack.dpotri(c, lower=1)
        P = np.tril(P) + np.tril(P, -1).T
    if info != 0:
        P = np.linalg.inv(G)
    P /= -np.diag(P).copy()[None, :]
    np.fill_diagonal(P, 0.0)
    return P


class Parts:
    """Score parts of one split, fitted on its training histories, cached by parameters."""

    def __init__(self, d: Data) -> None:
        self.d, self.s = d, d.split
        self.cache: dict[tuple, np.ndarray] = {}
        self.pop = item_popularity(self.s).astype(np.float64)

    def get(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def transitions(self, window: int, step_decay: float, source_norm: float) -> sp.csr_matrix:
        def make() -> sp.csr_matrix:
            n = self.s.n_items
            p = [transition_pairs(h, window, step_decay) for h in self.s.histories]
            c = sp.csr_matrix((np.concatenate([x[2] for x in p]), (np.concatenate([x[0] for x in p]),
                              np.concatenate([x[1] for x in p]))), shape=(n, n), dtype=np.float64)  # fmt: skip
            c.sum_duplicates()
            out = np.asarray(c.sum(axis=1)).ravel()
            scale = np.where(out > 0, np.power(np.maximum(out, 1e-12), -source_norm), 0.0)
            return (sp.diags(scale) @ c).tocsr()

        return self.get(("T", window, step_decay, source_norm), make)

    def sr(self, window: int = 5, step_decay: float = 0.8, n_recent: int = 10, recency_decay: float = 0.6,
           source_norm: float = 0.5, positions: tuple[float, ...] | None = None) -> np.ndarray:  # fmt: skip
        """seq_transition's transition part, scaled to max 1 per viewer (its pop blend left to `score`)."""
        def make() -> np.ndarray:
            T = self.transitions(window, step_decay, source_norm)
            R = recency_matrix(self.s, n_recent, recency_decay, positions)
            return row_max_scaled((R @ T).toarray())

        return self.get(("sr", window, step_decay, n_recent, recency_decay, source_norm, positions), make)

    def popularity(self) -> np.ndarray:
        return np.broadcast_to(self.pop / self.pop.max(), (self.s.n_users, self.s.n_items))

    def two_hop(self, window: int = 5, step_decay: float = 0.8, source_norm: float = 0.5) -> np.ndarray:
        def make() -> np.ndarray:
            T = self.transitions(window, step_decay, source_norm)
            R = recency_matrix(self.s, 10, 0.6)
            return row_max_scaled(((R @ T) @ T).toarray())

        return self.get(("2hop", window, step_decay, source_norm), make)

    def svd(self, rank: int) -> np.ndarray:
        """A rank-r approximation of the transition table (window 5, step decay 0.8, source norm 0.5),
        scored from the recent items: FPMC's factorised transitions, without per-user factors."""
        def make() -> np.ndarray:
            from scipy.sparse.linalg import svds

            T = self.transitions(5, 0.8, 0.5)
            u, sv, vt = svds(T, k=rank, random_state=0)
            R = recency_matrix(self.s, 10, 0.6)
            return row_max_scaled(np.clip(((R @ u) * sv) @ vt, 0.0, None))

        return self.get(("svd", rank), make)

    def ease(self, kind: str, lam: float, window: int = 5) -> np.ndarray:
        """EASE (Steck 2019) over the most-watched EASE_ITEMS items: on the binary user × item matrix
        ("user") or on window co-occurrence counts ("pairs", symmetric, the item_graph's input at full
        information); a viewer is scored from their whole history (user) or recency-weighted recent items."""
        def make() -> np.ndarray:
            n = self.s.n_items
            items = np.argsort(-self.pop, kind="stable")[:EASE_ITEMS]
            index = np.full(n, -1)
            index[items] = np.arange(items.size)
            X = user_item_matrix(self.s)[:, items]
            if kind == "user":
                G = (X.T @ X).toarray().astype(np.float64)
            else:
                p = [transition_pairs(h, window, 1.0) for h in self.s.histories]
                a = np.concatenate([x[0] for x in p])
                b = np.concatenate([x[1] for x in p])
                ok = (index[a] >= 0) & (index[b] >= 0)
                G = np.zeros((items.size, items.size))
                np.add.at(G, (index[a[ok]], index[b[ok]]), 1.0)
                G = G + G.T
                G[np.diag_indices_from(G)] = G.sum(axis=1)
            P = ease_solve(G, lam)
            if kind == "user":
                U = X.toarray().astype(np.float64)
            else:
                U = recency_matrix(self.s, 10, 0.6)[:, items].toarray()
            out = np.zeros((self.s.n_users, n))
            out[:, items] = U @ P
            return row_max_scaled(np.clip(out, 0.0, None))

        return self.get(("ease", kind, lam, window), make)

    def cowatch(self, window: int) -> np.ndarray:
        """Over the most-watched EASE_ITEMS items: how many distinct viewers watched both titles within `window`
        positions of each other in their histories (0: anywhere — the binary Gram matrix XᵀX), the diagonal
        each title's viewers. What TVs uploading "each new viewing paired with its last `window` items" would
        add up to, counted once per TV."""
        def make() -> np.ndarray:
            items = np.argsort(-self.pop, kind="stable")[:EASE_ITEMS]
            X = user_item_matrix(self.s)[:, items]
            G = (X.T @ X).toarray().astype(np.float64)
            if window == 0:
                return G
            index = np.full(self.s.n_items, -1)
            index[items] = np.arange(items.size)
            m = items.size
            keys = []
            for h in self.s.histories:  # positions in the whole history, the pairs kept among `items`
                hi = index[h]
                pairs = [(hi[d:], hi[:-d]) for d in range(1, min(window, hi.size - 1) + 1)]
                if pairs:
                    a = np.concatenate([x[0] for x in pairs])
                    b = np.concatenate([x[1] for x in pairs])
                    ok = (a >= 0) & (b >= 0) & (a != b)
                    keys.append(np.unique(np.minimum(a[ok], b[ok]) * m + np.maximum(a[ok], b[ok])))  # once per TV
            counts = np.bincount(np.concatenate(keys), minlength=m * m).reshape(m, m).astype(np.float64)
            W = counts + counts.T
            W[np.diag_indices_from(W)] = np.diag(G)
            return W

        return self.get(("cowatch", window), make)

    def ease_fed(self, lam: float, k_min: int, top: int, recent: int, degree: bool = False, window: int = 0,
                 decay: float = 0.7, signed: bool = False) -> np.ndarray:  # fmt: skip
        """EASE on user histories under what a federated release would impose: a co-watched pair counts only
        with ≥ k_min distinct viewers (the diagonal, an item's viewers, likewise), pairs only within `window`
        positions of each other (0: anywhere in the history, see `cowatch`), each item ships its `top` best
        positive neighbours only (0: all), and a TV scores from its `recent` last items weighted decay^i
        (0: its whole history, unweighted, as EASE does). `signed`: the negative EASE weights kept (dense only;
        the scores clipped at 0 as EASE on user histories does); else only positive weights exist. `degree`:
        the diagonal is each item's summed pair counts, as item_graph.refine builds it (thresholding breaks the
        Gram matrix's positive definiteness; a diagonally dominant G keeps it)."""
        items = np.argsort(-self.pop, kind="stable")[:EASE_ITEMS]

        def weights() -> np.ndarray:
            G = self.cowatch(window).copy()
            G[G < k_min] = 0.0
            if degree:
                np.fill_diagonal(G, 0.0)
                np.fill_diagonal(G, G.sum(axis=1))
            return ease_solve(G, lam)

        def make() -> np.ndarray:
            P = self.get(("ease_fed_B", lam, k_min, degree, window), weights)
            if not signed:
                P = np.clip(P, 0.0, None)
            if top:
                cut = np.partition(P, -top, axis=1)[:, -top][:, None]
                P = np.where(P >= cut, P, 0.0)
            U = (recency_matrix(self.s, recent, decay)[:, items].toarray() if recent
                 else user_item_matrix(self.s)[:, items].toarray().astype(np.float64))  # fmt: skip
            out = np.zeros((self.s.n_users, self.s.n_items))
            out[:, items] = U @ P
            return row_max_scaled(np.clip(out, 0.0, None) if signed else out)

        return self.get(("ease_fed", lam, k_min, top, recent, degree, window, decay, signed), make)

    def slit(self, window: int, step_decay: float, lam: float, target_window: int = 1) -> np.ndarray:
        """SLIT (Choi et al. 2021, session-aware linear item transitions): B = (SᵀS + λ·mean diag·I)⁻¹ SᵀT over
        every (prefix, next) sample of every history, the prefix its last `window` items weighted
        step_decay^(d-1), the target the next `target_window` items (step_decay-weighted); a viewer is scored
        from their own last `window` items weighted the same way. Over the most-watched EASE_ITEMS items."""
        def make() -> np.ndarray:
            n = self.s.n_items
            items = np.argsort(-self.pop, kind="stable")[:EASE_ITEMS]
            index = np.full(n, -1)
            index[items] = np.arange(items.size)
            m = items.size
            rows, cols, vals, trows, tcols, tvals = [], [], [], [], [], []
            base = 0  # one sample row per (history, position t >= 1)
            for h in self.s.histories:
                L = h.size
                if L < 2:
                    continue
                hi = index[h]
                for d in range(1, window + 1):  # prefix item d steps before position t
                    t = np.arange(d, L)
                    ok = hi[t - d] >= 0
                    rows.append(base + t[ok] - 1)
                    cols.append(hi[t - d][ok])
                    vals.append(np.full(ok.sum(), step_decay ** (d - 1)))
                for e in range(target_window):  # target items e steps after position t
                    t = np.arange(1, L - e)
                    ok = hi[t + e] >= 0
                    trows.append(base + t[ok] - 1)
                    tcols.append(hi[t + e][ok])
                    tvals.append(np.full(ok.sum(), step_decay ** e))
                base += L - 1
            S = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(base, m))
            T = sp.csr_matrix((np.concatenate(tvals), (np.concatenate(trows), np.concatenate(tcols))), shape=(base, m))
            SS = (S.T @ S).toarray()
            ST = (S.T @ T).toarray()
            d = np.diag(SS).copy()
            SS[np.diag_indices_from(SS)] = d + lam * float(d.mean())
            B = np.linalg.solve(SS, ST)
            del SS, ST
            U = recency_matrix(self.s, window, step_decay)[:, items].toarray()
            out = np.zeros((self.s.n_users, n))
            out[:, items] = U @ B
            return row_max_scaled(np.clip(out, 0.0, None))

        return self.get(("slit", window, step_decay, lam, target_window), make)

    def knn_decay(self, decay: float, neighbours: int = 100) -> np.ndarray:
        """Cosine item-kNN (the baseline's similarity) over the whole history, item i steps back weighted decay^i."""
        def make() -> np.ndarray:
            from omega.sim.evaluation.baselines.itemknn import ItemKNN

            sim = self.get(("knn-sim", neighbours), lambda: ItemKNN(neighbours).fit(self.s).similarity)
            R = recency_matrix(self.s, 10_000, decay)
            return row_max_scaled(np.asarray((R @ sim).todense()))

        return self.get(("knn", decay, neighbours), make)

    def sknn(self, m: int, k: int, decay: float) -> np.ndarray:
        """Sequence-aware viewer kNN (V-SKNN-style, Ludewig & Jannach 2018): the viewer's last m items
        (weighted decay^i) against every other viewer's whole training history (binary, length-normalised
        by its square root); the k most similar viewers' items, each weighted by that similarity."""
        def make() -> np.ndarray:
            X = user_item_matrix(self.s).astype(np.float64)
            lengths = np.asarray(X.sum(axis=1)).ravel()
            Q = recency_matrix(self.s, m, decay)
            sim = np.asarray((Q @ X.T).todense()) / np.sqrt(np.maximum(lengths, 1.0))[None, :]
            np.fill_diagonal(sim, 0.0)  # not one's own history
            if k < sim.shape[1]:
                cut = np.partition(sim, -k, axis=1)[:, -k][:, None]
                sim = np.where(sim >= cut, sim, 0.0)
            return row_max_scaled(np.asarray(sp.csr_matrix(sim) @ X.todense()))

        return self.get(("sknn", m, k, decay), make)

    def trend(self, days: float, own: bool = False) -> np.ndarray:
        """Per viewer: how many training viewings (of other viewers unless `own`) each item had in the `days`
        before the viewer's target time — popularity as of then, over a sliding window."""
        def make() -> np.ndarray:
            d = self.d
            out = np.zeros((self.s.n_users, self.s.n_items))
            for r, t in enumerate(d.target_time.tolist()):
                lo = np.searchsorted(d.all_time, t - days * DAY, "left")
                hi = np.searchsorted(d.all_time, t, "left")
                items = d.all_item[lo:hi]
                if not own:
                    items = items[d.all_row[lo:hi] != r]
                out[r] = np.bincount(items, minlength=self.s.n_items)
            return row_max_scaled(out)

        return self.get(("trend", days, own), make)


# ------------------------------------------------------------------ families

#: (k_min, neighbours shipped per item (0 all), recent items scored (0 whole history), degree diagonal)
#: (a degree diagonal, item_graph's, scored ×0.90–0.96 of SR even at k_min 1 on seeds 0–2: not in the list)
FED_VARIANTS = [(1, 0, 0, False), (1, 0, 10, False), (3, 0, 0, False), (3, 0, 10, False), (3, 100, 10, False),
                (3, 20, 10, False)]
#: EASE ridges tried per variant: a thresholded co-occurrence matrix is no longer a Gram matrix (not positive
#: semi-definite), and a larger ridge is what keeps its inverse meaningful
FED_LAMBDAS = (0.5, 2.0, 10.0, 50.0)
#: --fed2 (issue 13, what the federated form loses), one lever at a time: (name, k_min, upload window (0: the
#: whole history), neighbours shipped per item (0: all), the TV's scorings tried, signed weights, ridges tried).
#: scorings: (recent items, decay^i); (0, 1.0) is the whole history unweighted. k_min 1 rows are the central
#: reference (EASE on user histories through the same code), not federable.
FED2_SCORINGS = {"recent 10 ×0.7": (10, 0.7), "recent 30 ×0.9": (30, 0.9), "whole ×0.99": (10_000, 0.99),
                 "whole": (0, 1.0)}
FED2_TUNED = ("recent 10 ×0.7", "recent 30 ×0.9", "whole")
#: positive weights only: a thresholded co-occurrence matrix is not a Gram matrix, larger ridges keep its inverse
#: meaningful (the first grid, 0.5–50, picked its top, 50); signed weights want smaller ridges, as central EASE does
FED2_LAMBDAS = (20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
FED2_LAMBDAS_SIGNED = (0.5, 2.0, 5.0, 10.0, 20.0, 50.0)
FED2_ROWS = [
    *((f"scoring {k}", 3, 0, 0, (k,), False, FED2_LAMBDAS) for k in FED2_SCORINGS),
    *((f"scoring {k} signed", 3, 0, 0, (k,), True, FED2_LAMBDAS_SIGNED) for k in FED2_SCORINGS),
    *((f"k_min 1 scoring {k} signed", 1, 0, 0, (k,), True, FED2_LAMBDAS_SIGNED) for k in ("whole", "recent 10 ×0.7")),
    *((f"window all top {t}", 3, 0, t, FED2_TUNED, False, FED2_LAMBDAS) for t in (200, 100, 50, 20)),
    ("window all", 3, 0, 0, FED2_TUNED, False, FED2_LAMBDAS),
    *((f"window {w}{f' top {t}' if t else ''}", 3, w, t, FED2_TUNED, False, FED2_LAMBDAS)
      for w in (10, 25, 50, 100) for t in ((0, 200, 100, 50, 20) if w == 50 else (0,))),
    # the windowed rows picked the grid's lowest ridge (20): below it (a second run, `--fed2-rows`)
    *((f"window {w} low ridge", 3, w, 0, FED2_TUNED, False, (2.0, 5.0, 10.0, 20.0)) for w in (25, 50, 100)),
]
FED2_W = (0.3, 0.6, 1.0, 2.0, 4.0)
POP = 0.02  # seq_transition's pop_weight (its default; the eval's grid does not vary it)
Family = Callable[[Parts, dict[str, Any]], np.ndarray]


def sr_base(p: Parts, prm: dict[str, Any]) -> np.ndarray:
    keys = ("window", "step_decay", "n_recent", "recency_decay", "source_norm")
    return p.sr(**{k: prm[k] for k in keys if k in prm}) + POP * p.popularity()


def blend(extra: Callable[[Parts, dict[str, Any]], np.ndarray]) -> Family:
    return lambda p, prm: sr_base(p, prm) + prm["w"] * extra(p, prm)


FAMILIES: dict[str, tuple[Family, dict[str, Sequence[Any]]]] = {
    "sr_wide": (sr_base, {"window": (5, 10, 20), "step_decay": (0.8, 0.9), "n_recent": (10, 20),
                          "recency_decay": (0.6, 0.7), "source_norm": (0.5, 0.7)}),
    "sr_pop": (lambda p, prm: sr_base(p, prm) + (prm["w"] - POP) * p.popularity(), {"w": (0.0, 0.05, 0.1, 0.2)}),
    "sr+trend": (blend(lambda p, prm: p.trend(prm["days"])),
                 {"days": (7, 30, 90, 365), "w": (0.05, 0.1, 0.2, 0.4, 0.8)}),
    "sr+ease_user": (blend(lambda p, prm: p.ease("user", prm["lam"])),
                     {"lam": (0.1, 0.5, 2.0), "w": (0.1, 0.3, 0.6, 1.0)}),
    "sr+ease_fed": (blend(lambda p, prm: p.ease_fed(prm["lam"], prm["k_min"], prm["top"], prm["recent"],
                                                   prm.get("degree", False))),
                    {"lam": (0.5, 2.0), "k_min": (1,), "top": (0,), "recent": (0,), "w": (0.3, 0.6, 1.0)}),
    "sr+ease_pairs": (blend(lambda p, prm: p.ease("pairs", prm["lam"], prm["pw"])),
                      {"lam": (0.01, 0.05, 0.2), "pw": (3, 5, 10), "w": (0.6, 1.0, 2.0, 4.0)}),
    "ease_pairs": (lambda p, prm: p.ease("pairs", prm["lam"], prm["pw"]) + POP * p.popularity(),
                   {"lam": (0.01, 0.05, 0.2), "pw": (3, 5, 10)}),
    "sr+slit": (blend(lambda p, prm: p.slit(prm["sw"], prm["sd"], prm["lam"])),
                {"sw": (3, 10), "sd": (0.6, 0.9), "lam": (0.1, 1.0), "w": (0.5, 1.0, 3.0)}),
    "slit": (lambda p, prm: p.slit(prm["sw"], prm["sd"], prm["lam"], prm["tw"]) + POP * p.popularity(),
             {"sw": (3, 10), "sd": (0.6, 0.9), "lam": (0.1, 1.0), "tw": (1, 3)}),
    "sr+knn_decay": (blend(lambda p, prm: p.knn_decay(prm["decay"])),
                     {"decay": (0.9, 0.97, 1.0), "w": (0.1, 0.3, 0.6)}),
    "sr+sknn": (blend(lambda p, prm: p.sknn(prm["m"], prm["k"], prm["decay"])),
                {"m": (3, 5, 10, 20), "k": (20, 50, 100, 200), "decay": (0.6, 0.8), "w": (0.3, 1.0, 3.0, 10.0)}),
    "sknn": (lambda p, prm: p.sknn(prm["m"], prm["k"], prm["decay"]) + POP * p.popularity(),
             {"m": (3, 5, 10, 20), "k": (20, 50, 100, 200), "decay": (0.6, 0.8)}),
    "sr+two_hop": (blend(lambda p, prm: p.two_hop()), {"w": (0.05, 0.1, 0.3, 0.6)}),
    "sr+svd": (blend(lambda p, prm: p.svd(prm["rank"])), {"rank": (32, 128), "w": (0.1, 0.3, 0.6)}),
}


def grid(g: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(g)
    return [dict(zip(keys, v)) for v in itertools.product(*(g[k] for k in keys))]


def tune(family: Family, g: dict[str, Sequence[Any]], parts_i: Parts) -> tuple[dict[str, Any], float, list]:
    best, best_v, tried = {}, -1.0, []
    for prm in grid(g):
        v = ndcg(ranks_of(family(parts_i, prm), parts_i.s))
        tried.append([prm, round(v, 5)])
        if v > best_v:
            best, best_v = prm, v
    return best, best_v, tried


def positions_search(parts_i: Parts, rounds: int = 2) -> tuple[tuple[float, ...], float]:
    """sr with one weight per recency position (10), by coordinate search on split I."""
    w = [0.6**i for i in range(10)]

    def score(ws: list[float]) -> float:
        return ndcg(ranks_of(parts_i.sr(positions=tuple(ws)) + POP * parts_i.popularity(), parts_i.s))

    best = score(w)
    for _ in range(rounds):
        for i in range(1, 10):
            for f in (0.5, 0.75, 1.33, 2.0):
                trial = list(w)
                trial[i] = w[i] * f
                v = score(trial)
                if v > best:
                    best, w = v, trial
    return tuple(round(x, 4) for x in w), best


def combine(runs: list[dict[str, Any]], resamples: int = 2000) -> dict[str, Any]:
    """Rows present in every run (one per tie-shuffle seed), pooled as `omega eval --seeds` pools: the mean
    NDCG@10 over seeds, and the difference to sr paired per viewer over all seeds, the bootstrap resampling
    viewers (clustered: a viewer's seeds stay together)."""
    sr = "sr (seq_transition, eval's grid)"
    users = [r["per_viewer"]["users"] for r in runs]
    common = sorted(set.intersection(*(set(u) for u in users)))
    pos = [{u: i for i, u in enumerate(us)} for us in users]
    names = [n for n in runs[0]["per_viewer"] if n != "users" and all(n in r["per_viewer"] for r in runs)]

    def matrix(name: str) -> np.ndarray:  # viewers × seeds
        return np.array([[r["per_viewer"][name][p[u]] for r, p in zip(runs, pos)] for u in common])

    base = matrix(sr)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(common), size=(resamples, len(common)))
    out: dict[str, Any] = {}
    for name in names:
        m = matrix(name)
        d = (m - base).mean(axis=1)
        low, high = np.percentile(d[draws].mean(axis=1), [2.5, 97.5])
        out[name] = {"ndcg@10_per_seed": m.mean(axis=0).tolist(), "ndcg@10": float(m.mean()),
                     "ratio_vs_sr": float(m.mean() / base.mean()), "diff_vs_sr": float(d.mean()),
                     "ci95": [float(low), float(high)],
                     "params_per_seed": [r["rows"][name].get("params") for r in runs]}  # fmt: skip
    if len({r.get("split", "V") for r in runs}) > 1:
        raise SystemExit("--combine: runs of different splits (--split)")
    return {"seeds": [r.get("seed") for r in runs], "split": runs[0].get("split", "V"), "viewers": len(common),
            "rows": out}


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one tie seed (--per-viewer) as one: rows and per-viewer values merged, a later run's row replacing
    an earlier one of the same name (SR, identical in each, checked)."""
    out = runs[0]
    for r in runs[1:]:
        if (r["seed"], r.get("split", "V")) != (out["seed"], out.get("split", "V")) or \
                r["per_viewer"]["users"] != out["per_viewer"]["users"]:
            raise SystemExit("--combine A,B: runs of different seeds or viewers")
        sr = "sr (seq_transition, eval's grid)"
        if r["per_viewer"][sr] != out["per_viewer"][sr]:
            raise SystemExit("--combine A,B: the runs' seq_transition differs")
        out = {**out, "rows": {**out["rows"], **r["rows"]}, "per_viewer": {**out["per_viewer"], **r["per_viewer"]}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--users", type=int, default=None, help="sample viewers (exploration); default all")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--combos", action="store_true", help="also blend the two best extra parts")
    parser.add_argument("--multi", action="store_true", help="sr plus all extra parts, weights by coordinate ascent")
    parser.add_argument("--fed", action="store_true", help="EASE on user histories under federated constraints")
    parser.add_argument("--fed2", action="store_true",
                        help="k_min 3 EASE: the TV's scoring, ridge, upload window, neighbours shipped, SR's weight")
    parser.add_argument("--fed2-rows", default="", help="--fed2: only these rows (names, comma-separated)")
    parser.add_argument("--per-viewer", action="store_true", help="keep each row's per-viewer NDCG@10 (--combine)")
    parser.add_argument("--combine", nargs="+", help="runs of other seeds (--per-viewer) to pool; A.json,B.json: "
                        "two runs of one seed merged (B's rows replace A's of the same name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("V", "I"), default="V",
                        help="I: every target one step earlier (scored on the third-to-last ratings, tuned on the "
                        "fourth-to-last), a second validation split for what was picked on V")
    args = parser.parse_args()
    if args.combine:
        json.dump(combine([merge_runs([json.loads(Path(f).read_text()) for f in arg.split(",")])
                           for arg in args.combine]), sys.stdout, indent=1, default=float)  # fmt: skip
        print()
        return
    started = time.perf_counter()
    data = load_movielens(resolve_data_dir(args.data, "ml-latest-small"), max_tags=0)
    user, item, _, ts = _subsample(data, args.users, args.seed, validation=True)
    if args.split == "I":
        # drop each viewer's V target too: the split scored is V's inner split I (its histories, its targets),
        # and the tuning split one step earlier again, so tuning and scoring never share a target
        last = {u: i for i, u in enumerate(user.tolist())}
        keep = np.ones(user.size, bool)
        keep[list(last.values())] = False
        user, item, ts = user[keep], item[keep], ts[keep]
    dv, di = build(user, item, ts, data.item_ids)
    pv, pi = Parts(dv), Parts(di)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log(f"V: {dv.split.n_users} viewers, I: {di.split.n_users}; load {time.perf_counter() - started:.1f}s")

    # The bar, as the eval computes it: seq_transition tuned on I with its grid, refitted on V.
    factory, sr_grid = BASELINES["seq_transition"]
    sr_prm, sr_i, sr_tried = tune(lambda p, prm: sr_base(p, prm), sr_grid, pi)
    model = factory(**sr_prm).fit(dv.split)
    sr_scores = np.stack([model.scores(r, h) for r, h in enumerate(dv.split.histories)])
    sr_ranks = ranks_of(sr_scores, dv.split)
    mine = ranks_of(sr_base(pv, sr_prm), dv.split)
    mismatch = int((mine != sr_ranks).sum())
    log(f"sr {sr_prm}: I {sr_i:.4f} V {ndcg(sr_ranks):.4f} (own implementation differs on {mismatch} viewers)")
    base_v = ndcg(sr_ranks)
    per_viewer: dict[str, list[float]] = {"sr (seq_transition, eval's grid)": ndcg_values(sr_ranks, K).tolist()}
    rows: dict[str, Any] = {"sr (seq_transition, eval's grid)": {
        "params": sr_prm, "ndcg@10_I": sr_i, "ndcg@10": base_v, "hr@10": float((sr_ranks < K).mean()),
        "own_impl_rank_mismatch": int((mine != sr_ranks).sum())}}  # fmt: skip

    def report(name: str, prm: Any, v_i: float, scores_v: np.ndarray, tried: list | None = None) -> float:
        r = ranks_of(scores_v, dv.split)
        b = paired_bootstrap(ndcg_values(r, K), ndcg_values(sr_ranks, K), seed=args.seed)
        v = ndcg(r)
        per_viewer[name] = ndcg_values(r, K).tolist()
        rows[name] = {"params": prm, "ndcg@10_I": v_i, "ndcg@10": v, "hr@10": float((r < K).mean()),
                      "ratio_vs_sr": v / base_v, "diff_vs_sr": b["diff"], "ci95": [b["ci95_low"], b["ci95_high"]],
                      **({"grid_I": tried} if tried else {})}  # fmt: skip
        log(f"{name} {prm}: I {v_i:.4f} V {v:.4f} ×{v / base_v:.3f} [{b['ci95_low']:+.4f}, {b['ci95_high']:+.4f}]"
            f" ({time.perf_counter() - started:.0f}s)")
        return v_i

    for name in args.families.split(","):
        if name in ("sr_pos", ""):
            continue
        fam, g = FAMILIES[name]
        if name.startswith("sr+") or name == "sr_pop":  # the blend sits on the tuned sr
            g = {**{k: (v,) for k, v in sr_prm.items()}, **g}
        prm, v_i, tried = tune(fam, g, pi)
        for parts in (pi, pv):  # parts are big (users × items): keep the tables and each family's best part only
            for k in [k for k in parts.cache if k[0] not in ("T", "sr", "knn-sim")]:
                parts.cache.pop(k)
        fam(pi, prm)
        report(name, prm, v_i, fam(pv, prm), tried)
    if args.fed:
        # EASE on user histories under a federated release's constraints, one at a time (k_min, top, recent).
        for k_min, top, recent, degree in FED_VARIANTS:
            for parts in (pi, pv):  # one k_min's EASE weights kept at a time (4,000² floats each)
                for k in [k for k in parts.cache if k[0] == "ease_fed_B" and k[2:] != (k_min, degree, 0)]:
                    parts.cache.pop(k)
            g = {**{k: (v,) for k, v in sr_prm.items()}, "lam": FED_LAMBDAS, "k_min": (k_min,), "top": (top,),
                 "recent": (recent,), "degree": (degree,), "w": (0.3, 0.6, 1.0, 3.0)}  # fmt: skip
            fam = FAMILIES["sr+ease_fed"][0]
            prm, v_i, tried = tune(fam, g, pi)
            name = f"sr+ease_fed k_min {k_min} top {top or 'all'} recent {recent or 'all'}{' degree' if degree else ''}"
            report(name, prm, v_i, fam(pv, prm), tried)
            for parts in (pi, pv):
                for k in [k for k in parts.cache if k[0] == "ease_fed"]:
                    parts.cache.pop(k)
    if args.fed2:
        # What the federated form loses, one lever at a time, all at k_min 3 (issue 14's rule); each row's ridge,
        # weight and (where several) the TV's scoring tuned on I. Then SR's weight retuned on the best row by I.
        def fed2(p: Parts, prm: dict[str, Any]) -> np.ndarray:
            recent, decay = FED2_SCORINGS[prm["scoring"]]
            e = p.ease_fed(prm["lam"], prm["k_min"], prm["top"], recent, window=prm["window"], decay=decay,
                           signed=prm["signed"])  # fmt: skip
            return prm.get("s", 1.0) * p.sr(**sr_prm) + POP * p.popularity() + prm["w"] * e

        best_row: tuple[float, str, dict[str, Any]] = (-1.0, "", {})
        only = set(args.fed2_rows.split(",")) if args.fed2_rows else None
        for label, k_min, window, top, scorings, signed, lambdas in FED2_ROWS:
            if only is not None and label not in only:
                continue
            for parts in (pi, pv):  # one window's co-occurrence and one (k_min, window)'s EASE weights at a time
                for k in [k for k in parts.cache if (k[0] == "cowatch" and k[1] != window)
                          or (k[0] == "ease_fed_B" and (k[2], k[4]) != (k_min, window))]:  # fmt: skip
                    parts.cache.pop(k)
            g = {"lam": lambdas, "scoring": scorings, "k_min": (k_min,), "window": (window,), "top": (top,),
                 "signed": (signed,), "w": FED2_W}  # fmt: skip
            prm, v_i, tried = tune(fed2, g, pi)
            name = f"sr+ease {label}" if label.startswith("k_min") else f"sr+ease k_min 3 {label}"
            report(name, prm, v_i, fed2(pv, prm), tried)
            if v_i > best_row[0] and k_min >= 3:
                best_row = (v_i, label, prm)
            for parts in (pi, pv):
                for k in [k for k in parts.cache if k[0] == "ease_fed"]:
                    parts.cache.pop(k)
        v_i, label, prm = best_row
        g = {**{k: (v,) for k, v in prm.items() if k not in ("w", "lam")}, "lam": (prm["lam"],),
             "s": (0.0, 0.5, 1.0), "w": (0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)}  # fmt: skip
        prm, v_i, tried = tune(fed2, g, pi)
        among = " among the rows asked for" if only is not None else ""
        report(f"sr+ease k_min 3 best row by I{among}, SR weight retuned", {"row": label, **prm}, v_i, fed2(pv, prm),
               tried)  # fmt: skip

    if "sr_pos" in args.families.split(","):
        pos, v_i = positions_search(pi)
        report("sr_pos", {"positions": pos}, v_i, pv.sr(positions=pos) + POP * pv.popularity())

    if args.combos:
        extras = sorted((k for k in rows if k.startswith("sr+")), key=lambda k: -rows[k]["ndcg@10_I"])[:4]
        for a, b in itertools.combinations(extras, 2):
            fa, fb = FAMILIES[a][0], FAMILIES[b][0]
            pa, pb = rows[a]["params"], rows[b]["params"]
            g = {"scale_b": (0.25, 0.5, 1.0)}

            def fam(p: Parts, prm: dict[str, Any], fa=fa, fb=fb, pa=pa, pb=pb) -> np.ndarray:
                base = sr_base(p, pa)
                return fa(p, pa) + prm["scale_b"] * (fb(p, pb) - base)

            prm, v_i, tried = tune(fam, g, pi)
            report(f"{a} & {b.removeprefix('sr')}", {"a": pa, "b": pb, **prm}, v_i, fam(pv, prm), tried)

    if args.multi:
        # sr plus every extra part at its own tuned parameters, the weights by coordinate ascent on I.
        names = [k for k in rows if k.startswith("sr+") and " & " not in k]
        fams = {k: FAMILIES[k][0] for k in names}
        prms = {k: rows[k]["params"] for k in names}
        extra = lambda p, k: fams[k](p, prms[k]) - sr_base(p, prms[k])  # noqa: E731

        def multi(p: Parts, ws: dict[str, float]) -> np.ndarray:
            return sr_base(p, sr_prm) + sum(w * extra(p, k) / prms[k]["w"] for k, w in ws.items() if w > 0)

        ws = {k: 0.0 for k in names}
        best = ndcg(ranks_of(multi(pi, ws), pi.s))
        for _ in range(2):
            for k in names:
                for f in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
                    w_k = (f * prms[k]["w"]) if ws[k] == 0 else ws[k] * f
                    trial = dict(ws, **{k: w_k})
                    v = ndcg(ranks_of(multi(pi, trial), pi.s))
                    if v > best + 1e-6:
                        best, ws = v, trial
            log(f"multi round: I {best:.4f} {ws}")
        report("sr+multi", {"parts": {k: prms[k] for k in names}, "weights": ws}, best, multi(pv, ws))

    out = {
        "what": "offline ranker families vs seq_transition, ml-latest-small validation split (issue 13)",
        "protocol": "eval's seeded same-second shuffle (seed %d), test targets dropped; V targets = %s-to-last "
                    "ratings, params tuned on V's inner split (%s-to-last), refitted on V; full ranking, history "
                    "excluded, ties against the target; paired bootstrap 2000 resamples over V's viewers"
                    % ((args.seed, "second", "third") if args.split == "V" else (args.seed, "third", "fourth")),
        "seed": args.seed,
        "split": args.split,
        "viewers_V": dv.split.n_users, "viewers_I": di.split.n_users,
        "bar": "1.1 × seq_transition with the interval above 0",
        "rows": rows,
        **({"per_viewer": {"users": dv.split.users.tolist(), **per_viewer}} if args.per_viewer else {}),
        "wall_s": time.perf_counter() - started,
        "load_avg": os.getloadavg(),
    }
    json.dump(out, sys.stdout, indent=1, default=float)
    print()


if __name__ == "__main__":
    main()
