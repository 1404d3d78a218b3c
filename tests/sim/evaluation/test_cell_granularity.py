"""Cell-keyed edges re-aggregated from tapped pushes with the constellation's rule (omega.sim.evaluation.cell_granularity)."""

from __future__ import annotations


from omega.protocol import (
    UPLINK,
    Frame,
    Keyspace,
    Pull,
    Push,
    Transition,
    TransitionBatch,
    decode_frame,
    derive_device_key,
    encode_frame,
)
from omega.sim.evaluation import cell_granularity as cg
from omega.sim.evaluation.wire_audit import decode_uplink

DAY = 86_400_000
A, B, C = (bytes([i]) * 16 for i in (1, 2, 3))  # three devices
CELL_OF = {10: 0, 11: 0, 20: 1, 21: 1, 30: 2}  # items 10, 11 in cell 0; 20, 21 in cell 1; 30 in cell 2


def push(device: bytes, batch: int, day: int, *edges: tuple[int, int, float]) -> cg.TappedPush:
    return cg.TappedPush(device, bytes([batch]) * 16, day * DAY + 1000, tuple(edges))


def test_rekey_sums_item_edges_that_land_on_one_cell_edge():
    assert cg.rekey([(10, 20, 1.0), (11, 21, 0.5), (20, 30, 2.0), (10, 99, 1.0)], CELL_OF) == {
        (0, 1): 1.5, (1, 2): 2.0,
    }  # fmt: skip


def test_aggregation_counts_each_device_once_and_publishes_at_k_min():
    pushes = [
        # A: two item edges into cell edge (0,1) in one push -> one contribution of 7 + 5 = 12, clipped to 10
        push(A, 1, 0, (10, 20, 7.0), (11, 21, 5.0)),
        push(A, 1, 0, (10, 20, 7.0), (11, 21, 5.0)),  # the same batch retried: ignored
        push(A, 2, 0, (10, 21, 1.0)),  # same device, key and epoch: a duplicate_flood, ignored
        push(A, 3, 1, (11, 20, 1.0)),  # next epoch: accepted, but A still counts once towards support
        push(B, 4, 0, (10, 20, 2.0), (20, 30, 1.0)),
        push(C, 5, 0, (21, 30, 3.0)),
    ]
    agg = cg.aggregate_cells(pushes, CELL_OF, edge_w_max=10.0, epoch_ms=DAY)
    assert agg == {(0, 1): (10.0 + 1.0 + 2.0, 2), (1, 2): (1.0 + 3.0, 2)}
    assert cg.publish(agg, 1) == {(0, 1): 13.0, (1, 2): 4.0}
    assert cg.publish(agg, 2) == {(0, 1): 13.0, (1, 2): 4.0}
    assert cg.publish(agg, 3) == {}


def test_upload_bytes_reencode_pushes_with_cell_keyed_edges():
    secret = b"s" * 32
    key_for = lambda dev: derive_device_key(secret, dev, 1)  # noqa: E731
    edges = tuple(Transition(s, d, 1.0) for s, d in ((10, 20), (11, 21), (10, 21), (20, 30)))
    sent = [
        (A, encode_frame(Frame(A, 1, 5, Push(b"x" * 16, (), TransitionBatch(Keyspace.ITEM, edges)), 1), key_for(A))),
        (A, encode_frame(Frame(A, 2, 6, Pull(0), 1), key_for(A))),
    ]
    frames = decode_uplink(sent, key_for)
    assert [p.edges for p in cg.item_pushes(frames)] == [((10, 20, 1.0), (10, 21, 1.0), (11, 21, 1.0), (20, 30, 1.0))]
    cell_bytes = cg.cell_upload_bytes(frames, CELL_OF, key_for)
    assert 0 < cell_bytes[A] < sum(len(d) for _, d in sent)
    identity = cg.cell_upload_bytes(frames, {c: c for c in CELL_OF}, key_for, codebook_version=0)
    assert identity[A] == sum(len(d) for _, d in sent)  # same ids, same sizes: only the keyspace differs
    # what would have crossed the wire: one cell edge (0,1) of weight 3 and (1,2) of weight 1
    reencoded = Push(b"x" * 16, (), TransitionBatch(Keyspace.CELL, (Transition(0, 1, 3.0), Transition(1, 2, 1.0)), 1))
    data = encode_frame(Frame(A, 1, 5, reencoded, 1), key_for(A))
    assert decode_frame(data, key_for(A), expect=UPLINK).body == reencoded
    assert cell_bytes[A] == len(data) + len(sent[1][1])

