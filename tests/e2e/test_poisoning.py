"""Issue 14's attack, end to end: a real server process (`omega serve`'s start-up), real TV brains.

30 honest TVs watched a source title and then two of eight other titles (Zipf-like popularity);
three device ids (valid tokens: ids are cheap) pushed source → target at weight 10 five times.
A victim TV that watched the source syncs and ranks: the target stays out of its top 10, and
the edge it holds for the target weighs its distinct support (3), not the attackers' sum.
Before the second and third ids push, a first victim ranks beside the first id alone (unpublished,
under k_min): every title more than one honest TV leads to from the source is listed above the target,
those under the support floor too (the ranking's last tier; MMR's variety once put the target first).

The attackers push signed frames with the edge only, as in the issue. (Embedding patterns planted
at the target by three ids are published at k_min 3; the victim's prior drops them by its support
floor: tests/sim/bench/test_pattern_poisoning.py.)
"""

from __future__ import annotations

import hashlib
import os
import random

import httpx
import pytest

from omega.protocol import (
    DOWNLINK,
    Frame,
    Keyspace,
    SUPPORT_FLOOR_C,
    Push,
    Transition,
    TransitionBatch,
    decode_frame,
    derive_device_key,
    encode_frame,
    now_ms,
)

from omega.sim.bench.poisoning import SOURCE, TARGET, TITLES, VICTIM_CONTEXT, poisoning_catalog

from .support import SECRET, TV

pytestmark = pytest.mark.timeout(240)

CATALOG = poisoning_catalog()  # the bench's: target and titles unrelated in content to the source


async def test_three_ids_at_the_cap_do_not_steer_a_victim(server_factory, tmp_path) -> None:
    catalog = CATALOG
    server = server_factory()  # the shipped k_min (3)
    server.start()
    # Honest supports 21/13/10/6/5/3/2 (titles 3, 4, 5, 9, 6, 8, 7): title 8 under the floor, as in the bench.
    rng = random.Random(9)
    titles = list(TITLES)
    weights = [1.0 / (r + 1) for r in range(len(titles))]
    tvs: list[TV] = []
    try:
        honest_support: dict[int, int] = {}
        for i in range(30):
            tv = TV.create(tmp_path / f"honest-{i}.db", catalog, server.url, seed=i)
            tvs.append(tv)
            a = rng.choices(titles, weights)[0]
            b = rng.choices([t for t in titles if t != a], [w for t, w in zip(titles, weights) if t != a])[0]
            tv.watch([SOURCE, a, b], rounds=1)
            for t in (a, b):
                honest_support[t] = honest_support.get(t, 0) + 1
            await tv.sync_until_idle()
        # Three ids, each pushing source → target at the old per-device cap (weight 10), five times.
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            for n in range(3):
                if n == 1:  # one id so far: what a victim ranks beside it
                    first = TV.create(tmp_path / "victim-1.db", catalog, server.url, seed=998)
                    tvs.append(first)
                    first.watch([SOURCE], rounds=1)
                    await first.sync_until_idle()
                    held = first.global_edges()
                    assert (SOURCE, TARGET) not in held
                    listed = [r.content_id for r in first.brain.recommend(VICTIM_CONTEXT, k=100)]
                    at = lambda item: listed.index(item) if item in listed else len(listed)  # noqa: E731
                    # Published titles only (one that 2 honest TVs lead to is under k_min, unknown to the TV).
                    stronger = [t for t, m in honest_support.items() if m > 1 and (SOURCE, t) in held]
                    volume = sum(n for (src, _), (_, n) in held.items() if src == SOURCE)
                    floor = SUPPORT_FLOOR_C * volume**0.5
                    assert any(held[(SOURCE, t)][1] < floor for t in stronger), held  # the bench's s = 1 case
                    assert all(at(t) < at(TARGET) for t in stronger), (honest_support, listed)
                device = hashlib.sha256(b"sybil-%d" % n).digest()[:16]
                key = derive_device_key(SECRET.encode(), device, 1)
                for seq in range(1, 6):
                    edge = TransitionBatch(Keyspace.ITEM, (Transition(SOURCE, TARGET, 10.0),))
                    frame = Frame(device, seq, now_ms(), Push(batch_id=os.urandom(16), transitions=edge), key_id=1)
                    reply = await client.post("/v1/sync", content=encode_frame(frame, key),
                                              headers={"content-type": "application/octet-stream"})  # fmt: skip
                    ack = decode_frame(reply.content, key, expect=DOWNLINK).body
                    # The first push counts; repeats in the same epoch are refused, not added.
                    assert ack.accepted == (1 if seq == 1 else 0), ack

        victim = TV.create(tmp_path / "victim.db", catalog, server.url, seed=999)
        tvs.append(victim)
        victim.watch([SOURCE], rounds=1)
        await victim.sync_until_idle()
        held = victim.global_edges()
        assert held[(SOURCE, TARGET)] == (3.0, 3)  # published, at its distinct support only
        top = [r.content_id for r in victim.brain.recommend(VICTIM_CONTEXT, k=10)]
        assert TARGET not in top, top
        # Every title that more than 3 honest TVs lead to from the source scores above the target.
        scores = {r.content_id: r.score for r in victim.brain.recommend(VICTIM_CONTEXT, k=100)}
        stronger = [t for t, n in honest_support.items() if n > 3]
        assert stronger and all(scores[t] > scores.get(TARGET, -1.0) for t in stronger), (honest_support, scores)
    finally:
        for tv in tvs:
            await tv.close()
        server.stop()
