"""Pull pages: consolidated changes as a signed `PullReply` frame that fits a byte budget.

A page is built once per (served head, cursor, budget) and its signed blob shared by every
device at that cursor (the pull cache holds it); per device only the header varints differ.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from omega.constellation.crdt import ConsolidatedCell, ConsolidatedEdge
from omega.protocol import (
    WEIGHT_SCALE,
    ConsolidatedPattern,
    Frame,
    Keyspace,
    PullReply,
    TaskType,
    Transition,
    TransitionBatch,
    encode_frame,
    quantize,
)

#: Room kept in a page budget for what varies per device: seq and timestamp varints.
_REPLY_SLACK = 24
_U32 = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_ZERO_ID = bytes(16)


class PageBuilder:
    """Builds pull pages signed with the page key; memoises the wire form of consolidated patterns."""

    def __init__(self, page_key: bytes, codebook_version: Callable[[], int], now_ms: Callable[[], int]) -> None:
        self._page_key = page_key
        self._codebook_version = codebook_version
        self._now_ms = now_ms
        # Wire forms (8-bit quantised) of consolidated patterns by (task type, cell, change seq).
        self._wire: OrderedDict[tuple[int, int, int], tuple] = OrderedDict()
        self._wire_entries = 4096
        # Bytes a device's reply frame may add to a page blob (seq, timestamp, key id varints).
        probe = PullReply(cursor=0)
        self._frame_extra = len(encode_frame(Frame(_ZERO_ID, _U32, _U64_MAX, probe, key_id=_U32), page_key,
                                             compress=False)) - len(
            encode_frame(Frame(_ZERO_ID, 0, 0, probe), page_key, compress=False))  # fmt: skip

    def page(self, items: list, cursor: int, more: bool, budget: int) -> PullReply:
        """A PullReply of `items` whose signed frame fits `budget`; cut (more=True) if it does not.

        A cut page ends at the last item kept and its cursor is that item's
        change position (`version`), so the next pull resumes right after it.
        """
        return self.build(items, cursor, more, budget)[0]

    def build(
        self, items: list, cursor: int, more: bool, budget: int, *, reset: bool = False
    ) -> tuple[PullReply, bytes]:
        """`page` plus the page as a frame signed with the page key (what the pull cache holds); `reset`: the
        page starts a full snapshot that replaces what the TV holds (PullReply.reset)."""
        cut = len(items)
        keyspace = None
        for n, item in enumerate(items):  # one reply carries one ordered keyspace (item or cell) besides pairs
            if isinstance(item, ConsolidatedEdge) and item.keyspace != Keyspace.PAIR:
                if keyspace is None:
                    keyspace = item.keyspace
                elif item.keyspace != keyspace:
                    cut = n
                    break
        first = True
        while True:
            reply = self._reply(items[:cut], cursor if cut == len(items) else items[cut - 1].version,
                                more or cut < len(items), reset)  # fmt: skip
            blob = None
            if first:
                first = False
                blob = self.blob(reply)
                if len(blob) + self._frame_extra + _REPLY_SLACK <= budget:
                    # Fits uncompressed, so it fits as sent too (a reply is deflated only when that
                    # is smaller): no need to deflate it just to measure it.
                    return reply, blob
            size = len(encode_frame(Frame(_ZERO_ID, _U32, self._now_ms(), reply), self._page_key)) + _REPLY_SLACK
            if size <= budget or cut <= 1:
                return reply, blob if blob is not None else self.blob(reply)
            cut = max(1, min(cut - 1, int(cut * budget / size)))

    @staticmethod
    def refined(cursor: int, batch: TransitionBatch, refined_cursor: int) -> PullReply:
        """A page of the refined-neighbour release, sent instead of consolidated changes (`cursor` unchanged,
        more = True: the changes follow). Sized by the release (`NEIGHBOUR_WIRE_BYTES` each), not cut here."""
        return PullReply(cursor=int(cursor), more=True, refined=batch, refined_cursor=int(refined_cursor))

    def blob(self, reply: PullReply) -> bytes:
        return encode_frame(Frame(_ZERO_ID, 0, 0, reply), self._page_key, compress=False, max_size=1 << 20)

    def _wire_pattern(self, item: ConsolidatedCell) -> ConsolidatedPattern:
        """The wire form of a consolidated pattern; memoised, since many devices pull the same change."""
        memo = self._wire
        key = (int(item.task_type), int(item.cluster_id), int(item.version))
        fields = (float(item.success_rate), int(item.support), float(item.trend_score))
        hit = memo.get(key)
        if hit is not None and hit[1] == fields and (hit[0] is item.embedding or np.array_equal(hit[0], item.embedding)):
            memo.move_to_end(key)
            return hit[2]
        wire = ConsolidatedPattern(
            cluster_id=key[1],
            version=min(key[2], _U32),
            embedding=quantize(item.embedding, 8),
            task_type=TaskType(key[0]),
            success_rate=min(1.0, max(0.0, fields[0])),
            support=min(fields[1], _U32),
            trend_score=fields[2],
        )
        memo[key] = (item.embedding, fields, wire)
        if len(memo) > self._wire_entries:
            memo.popitem(last=False)
        return wire

    def _reply(self, items: list, cursor: int, more: bool, reset: bool = False) -> PullReply:
        patterns = []
        edges = []
        pairs = []
        keyspace = None
        for item in items:
            if isinstance(item, ConsolidatedCell):
                patterns.append(self._wire_pattern(item))
                continue
            weight = min(float(item.weight), _U32 / WEIGHT_SCALE)
            edge = Transition(int(item.src), int(item.dst), weight, min(int(item.support), _U32))
            if item.keyspace == Keyspace.PAIR:
                pairs.append(edge)
            else:
                keyspace = item.keyspace
                edges.append(edge)
        transitions = None
        if edges:
            ks = Keyspace(int(keyspace))
            transitions = TransitionBatch(ks, tuple(edges), self._codebook_version() if ks is Keyspace.CELL else 0)
        return PullReply(
            cursor=int(cursor),
            more=bool(more),
            patterns=tuple(patterns),
            transitions=transitions,
            pairs=TransitionBatch(Keyspace.PAIR, tuple(pairs)) if pairs else None,
            reset=reset,
        )
