"""Reading the edge tables: the TV's own transitions and the published edges and pairs it pulled.

Ranking reads the successors of all its recent items at once, so `EdgeReader`
answers a list of sources with one query per table, as plain `(dst, weight)`
tuples: the rows were validated when they were written (the store is the TV's
own), and a record per row cost more than the query.

The support floor on published edges (issue 14, bounded influence) is applied
here, in Python, with each item's volume V(i) (the total support of the global
transitions out of i) computed once and kept while the database is unchanged:
an edge a→b is read only with support ≥ c·√V(a), a pair {a, b} only with
support ≥ c·√max(V(a), V(b)). c = 0.45 asks 4 TVs beside 30 TVs' 60 edges, 7
beside 100 TVs' 200. `omega bench poisoning` with the shipped ranker: at 0.3
three ids reach rank 6 beside 30 honest TVs; at 0.6 honest titles with 4-5
supporters are dropped too (only content orders them). The rows the floor holds back are read in the
same query and kept apart (`successors(..., under_floor=True)`): the ranker orders the items nothing else
scores by them (recommender, tiers), never above an item something scores.

The rows `successors` returns are also kept per source (the last `_SOURCES_KEPT`
of each table) while their table is unchanged: a brain asks for the same
recent items on every call, and a viewing adds one. "Unchanged" is, for the
TV's own transitions, SQLite's count of the rows this connection changed
(`total_changes`: a viewing drops them), and for the published tables the
store's own count of its writes to them (`published_changed`: a pull drops
them, a viewing keeps them, so the first call after a viewing reads the
published rows of its new item only); both also need `data_version` unchanged
(another connection committed). Nothing is kept from inside a transaction,
which may roll back.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter
from typing import Literal

from omega.brain.store.database import Database
# The floor's c and rule are shared with the cloud, which floors pairs before refining them.
from omega.protocol import SUPPORT_FLOOR_C, passes_support_floor

EdgeTable = Literal["transitions", "global_transitions", "global_pairs", "refined_neighbours"]
#: the published tables the support floor applies to (refined neighbours were floored by the cloud)
_FLOORED = ("global_transitions", "global_pairs")
#: (src, dst, weight, count): `count` is viewings for the TV's own transitions, distinct TVs for the published ones
EdgeRow = tuple[int, int, float, int]

#: sources whose successors are kept, per table (a brain ranks with its 10 most recent items)
_SOURCES_KEPT = 64

_COUNT = {"transitions": "count", "global_transitions": "support", "global_pairs": "support",
          "refined_neighbours": "support"}  # fmt: skip


_source = itemgetter(0)


def _held_name(table: EdgeTable) -> str:
    """The kept-successors name of what the floor holds back in `table`."""
    return f"{table}:held"


class EdgeReader:
    """The edge tables of one brain store, read for ranking (`BrainStore.edges`)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        #: c of the support floor on published edges (0 turns it off)
        self.floor_c = SUPPORT_FLOOR_C
        self._volumes: dict[int, int] | None = None
        self._volumes_key: tuple[int, int] | None = None
        self._published_writes = 0  # bumped by `published_changed`: this connection wrote the published edges
        self._kept: dict[str, dict[int, list[tuple[int, float]]]] = {}  # table → src → successors (see module doc)
        self._kept_keys: dict[str, tuple[int, int, float]] = {}  # table → the state its kept successors were read in

    def rows_from(self, table: EdgeTable, srcs: Iterable[int]) -> list[EdgeRow]:
        """The sources' edges, grouped by source in the order given, each heaviest first (ties by dst); the
        published tables' edges only where they pass the support floor."""
        order = list(dict.fromkeys(int(s) for s in srcs))
        found = self._read(table, order)[0]
        if len(order) > 1:
            rank = {src: i for i, src in enumerate(order)}
            found.sort(key=lambda r: rank[r[0]])  # stable: each source keeps its heaviest-first order
        return found

    def successors(
        self, table: EdgeTable, srcs: Iterable[int], *, under_floor: bool = False
    ) -> dict[int, list[tuple[int, float]]]:
        """src → [(dst, weight), ...] heaviest first (ties by dst), for each source that has edges, by source id;
        floored as in `rows_from`, or with `under_floor` only the published rows the floor holds back, as (dst,
        support) (the ranker's last tier, recommender.Recommender._tiers). The lists may be kept for the next call
        (see module doc): read them, never change them."""
        if under_floor and table not in _FLOORED:
            return {}  # only the published tables have a floor
        order = sorted(set(int(s) for s in srcs))
        kept = self._kept_for(table, _held_name(table) if under_floor else table)
        if kept is None:
            return self._successors(table, order)[under_floor]
        missing = [src for src in order if src not in kept]
        answer = {src: kept[src] for src in order if src not in missing}
        if missing:
            # One read keeps both sides of the floor: the ranker asks for the held-back rows right after.
            names = (table, _held_name(table)) if table in _FLOORED else (table,)
            for name, found in zip(names, self._successors(table, missing)):
                into = self._kept.setdefault(name, {})
                for src in missing:
                    into[src] = found.get(src, [])  # a source without edges is remembered too
                if into is kept:
                    answer.update((src, into[src]) for src in missing)
                # Evicting may drop sources of this very call (more than kept asked at once): `answer` holds them.
                while len(into) > _SOURCES_KEPT:
                    into.pop(next(iter(into)))
        return {src: answer[src] for src in order if answer[src]}

    def forget(self) -> None:
        """Drop the kept successors (the next read goes to SQLite; `omega bench brain` times that path as the first
        call after a pull)."""
        self._kept, self._kept_keys = {}, {}

    def release(self) -> None:
        """Drop everything kept in memory, the volumes too (read again on the next floored read): a process
        holding hundreds of stores (the evaluation's fleet) frees a copy of the published volumes per store."""
        self.forget()
        self._volumes, self._volumes_key = None, None

    def _successors(self, table: EdgeTable, srcs: list[int]) -> tuple[dict[int, list[tuple[int, float]]], ...]:
        """(the rows that pass the floor as src → [(dst, weight), ...], those it holds back as src → [(dst,
        support), ...]): the held-back rows order items by how many TVs stand behind them, never by summed weight
        (issue 14), as the recommender's last tier does."""
        passed, held = self._read(table, srcs)
        return (
            {src: [(dst, weight) for _, dst, weight, _ in rows] for src, rows in groupby(passed, _source)},
            {src: [(dst, float(support)) for _, dst, _, support in rows] for src, rows in groupby(held, _source)},
        )

    def _kept_for(self, table: EdgeTable, name: str) -> dict[int, list[tuple[int, float]]] | None:
        """The kept successors `name` of `table` (emptied when that table may have changed: module doc), or None
        inside a transaction."""
        with self._db._lock:
            db = self._db._conn()
            if db.in_transaction:
                return None
            # A held-back name shares its table's key: `successors` fills both sides from one read.
            writes = db.total_changes if table == "transitions" else self._published_writes
            key = (int(db.execute("PRAGMA data_version").fetchone()[0]), writes, float(self.floor_c))
            for kept in (table, _held_name(table)) if table in _FLOORED else (table,):
                if self._kept_keys.get(kept) != key:
                    self._kept[kept], self._kept_keys[kept] = {}, key
            return self._kept[name]

    def _read(self, table: EdgeTable, srcs: list[int]) -> tuple[list[EdgeRow], list[EdgeRow]]:
        """The rows of distinct sources, by source id, each heaviest first: (those that pass the floor, the
        published rows it holds back; none for the other tables or with the floor off)."""
        if not srcs:
            return [], []
        marks = ", ".join("?" * len(srcs))
        sql = f"SELECT src, dst, weight, {_COUNT[table]} FROM {table} WHERE src IN ({marks})"
        found = self._db._query(sql + " ORDER BY src, weight DESC, dst", srcs)
        if table not in _FLOORED or self.floor_c <= 0:
            return found, []
        c, volume = self.floor_c, self.volumes().get
        if table == "global_transitions":
            passes = [passes_support_floor(r[3], volume(r[0], 0), c) for r in found]
        else:
            passes = [passes_support_floor(r[3], max(volume(r[0], 0), volume(r[1], 0)), c) for r in found]
        return [r for r, ok in zip(found, passes) if ok], [r for r, ok in zip(found, passes) if not ok]

    def published_changed(self) -> None:
        """Called by the store whenever it writes a published table (global transitions, pairs, refined
        neighbours): their kept rows and the volumes must be read again."""
        self._published_writes += 1

    def volumes(self) -> dict[int, int]:
        """item → total support of the global transitions out of it.

        Kept while the published edges are unchanged: SQLite's data_version moves when another connection
        commits, `published_changed` when this one writes them (a viewing, which writes other tables, keeps
        them). Never kept from inside a transaction (it may roll back)."""
        with self._db._lock:
            db = self._db._conn()
            key = (int(db.execute("PRAGMA data_version").fetchone()[0]), self._published_writes)
            if self._volumes is not None and key == self._volumes_key:
                return self._volumes
            volumes = {int(src): int(v) for src, v in self._db._query(
                "SELECT src, sum(support) FROM global_transitions GROUP BY src"
            )}  # fmt: skip
            if not db.in_transaction:
                self._volumes, self._volumes_key = volumes, key
            return volumes
