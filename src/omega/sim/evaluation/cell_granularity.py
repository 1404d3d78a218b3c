"""Codebook-cell granularity for the eval's privacy table, re-keyed offline from what crossed the wire.

The real aggregator serves item→item edges and the unordered item pairs it derives; it keeps no
cell-keyed edges. To show what a cell-keyed global pattern would add or cost, the same run's pushes
are re-keyed: every uplink frame in the fleet's `WireTap`, decoded once for the wire audit
(`wire_audit.decode_uplink`), has each push's ITEM edges (src, dst) become (cell of src, cell of dst) with duplicates
in one push summed, and they are aggregated with the constellation's rule — a retried batch counts
once, one contribution per device, key and epoch (a later one is a duplicate_flood), each clipped to
`AggregationPolicy.edge_w_max`, support = distinct devices, published only with support ≥ k_min.

Upload cost: every push frame re-encoded with the
cell-keyed `TransitionBatch` (Keyspace.CELL) through the real codec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


from omega.protocol import Frame, Keyspace, Push, Transition, TransitionBatch, encode_frame
from omega.sim.evaluation.wire_audit import TappedFrame

CellKey = tuple[int, int]  # (src cell, dst cell)


@dataclass(frozen=True)
class TappedPush:
    """The item edges (src, dst, weight) of one push."""

    device_id: bytes
    batch_id: bytes
    timestamp_ms: int
    edges: tuple[tuple[int, int, float], ...]


def item_pushes(frames: Iterable[TappedFrame]) -> list[TappedPush]:
    """The pushes that carry ITEM-keyed transitions, in wire order."""
    out = []
    for f in frames:
        body = f.frame.body
        if isinstance(body, Push) and body.transitions is not None and body.transitions.keyspace is Keyspace.ITEM:
            edges = tuple((e.src, e.dst, float(e.weight)) for e in body.transitions.edges)
            out.append(TappedPush(f.device_id, body.batch_id, f.frame.timestamp_ms, edges))
    return out


def rekey(edges: Iterable[tuple[int, int, float]], cell_of: Mapping[int, int]) -> dict[CellKey, float]:
    """Item edges → cell edges, weights of edges landing on the same cell pair summed (unknown ids dropped)."""
    out: dict[CellKey, float] = {}
    for src, dst, w in edges:
        if src in cell_of and dst in cell_of:
            key = (cell_of[src], cell_of[dst])
            out[key] = out.get(key, 0.0) + w
    return out


def aggregate_cells(
    pushes: Iterable[TappedPush], cell_of: Mapping[int, int], *, edge_w_max: float, epoch_ms: int
) -> dict[CellKey, tuple[float, int]]:
    """(summed weight, distinct devices) per cell edge, by the constellation's rule (module docstring)."""
    seen_batches: set[tuple[bytes, bytes]] = set()
    last_epoch: dict[tuple[CellKey, bytes], int] = {}
    weight: dict[CellKey, float] = {}
    members: dict[CellKey, set[bytes]] = {}
    for p in pushes:
        if (p.device_id, p.batch_id) in seen_batches:  # a retried batch: idempotent
            continue
        seen_batches.add((p.device_id, p.batch_id))
        epoch = p.timestamp_ms // epoch_ms
        for key, w in rekey(p.edges, cell_of).items():
            if w <= 0 or last_epoch.get((key, p.device_id)) == epoch:  # duplicate_flood
                continue
            last_epoch[(key, p.device_id)] = epoch
            weight[key] = weight.get(key, 0.0) + min(w, edge_w_max)
            members.setdefault(key, set()).add(p.device_id)
    return {key: (weight[key], len(members[key])) for key in weight}


def publish(aggregated: Mapping[CellKey, tuple[float, int]], k_min: int) -> dict[CellKey, float]:
    """The cell edges with at least `k_min` distinct devices, with their weight."""
    return {key: w for key, (w, support) in aggregated.items() if support >= k_min}


def cell_upload_bytes(
    frames: Iterable[TappedFrame], cell_of: Mapping[int, int], key_for: Callable[[bytes], bytes],
    codebook_version: int = 1,
) -> dict[bytes, int]:  # fmt: skip
    """Uplink bytes per device had each push carried cell-keyed edges (same frame otherwise, same codec)."""
    keys: dict[bytes, bytes] = {}
    out: dict[bytes, int] = {}
    for f in frames:
        body = f.frame.body
        size = len(f.data)
        if isinstance(body, Push) and body.transitions is not None and body.transitions.keyspace is Keyspace.ITEM:
            cells = rekey(((e.src, e.dst, float(e.weight)) for e in body.transitions.edges), cell_of)
            batch = TransitionBatch(
                Keyspace.CELL, tuple(Transition(a, b, w) for (a, b), w in cells.items()), codebook_version
            )
            push = Push(body.batch_id, body.patterns, batch if cells else None)
            frame = Frame(f.device_id, f.frame.seq, f.frame.timestamp_ms, push, f.frame.key_id)
            key = keys.get(f.device_id) or keys.setdefault(f.device_id, key_for(f.device_id))
            size = len(encode_frame(frame, key))
        out[f.device_id] = out.get(f.device_id, 0) + size
    return out

