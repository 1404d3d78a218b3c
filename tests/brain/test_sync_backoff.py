"""Backoff with full jitter, retry-after, and the tier schedules."""

from __future__ import annotations

import random
import statistics

import pytest

from omega.brain.sync import Backoff, TransportKind, parse_tier, policy_for
from omega.brain.sync.transport import endpoints, parse_retry_after
from omega.errors import OmegaError
from omega.protocol import Tier


def test_full_jitter_stays_inside_the_capped_exponential_window():
    b = Backoff(1.0, 30.0, rng=random.Random(1))
    for attempt in range(12):
        window = min(30.0, 2.0**attempt)
        assert b.window() == window
        assert 0.0 <= b.next_delay() <= window
    b.reset()
    assert b.attempt == 0 and b.window() == 1.0


def test_backoff_is_deterministic_under_an_injected_rng():
    a = [Backoff(2.0, 60.0, rng=random.Random(7)).next_delay() for _ in range(3)]
    b1, b2 = Backoff(2.0, 60.0, rng=random.Random(7)), Backoff(2.0, 60.0, rng=random.Random(7))
    assert [b1.next_delay() for _ in range(5)] == [b2.next_delay() for _ in range(5)]
    assert len(set(a)) == 1


def test_retry_after_is_a_floor_and_still_jittered():
    delays = []
    for seed in range(50):
        b = Backoff(1.0, 10.0, rng=random.Random(seed))
        delays.append(b.next_delay(retry_after_s=30))
    assert min(delays) >= 30.0 and max(delays) <= 31.0 and len(set(delays)) == 50


def test_a_fleet_recovering_from_an_outage_is_spread_over_the_window():
    # 1000 TVs that all failed for the 5th time: their reconnects cover the whole 16 s window, not one instant.
    delays = []
    for seed in range(1000):
        b = Backoff(1.0, 300.0, rng=random.Random(seed))
        for _ in range(5):
            d = b.next_delay()
        delays.append(d)
    assert 0 <= min(delays) < 0.5 and 15.5 < max(delays) <= 16.0
    assert statistics.pstdev(delays) > 4.0  # uniform over [0, 16] has sd 4.6
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(16)]
    assert max(per_second) < 110  # no stampede second (uniform: ~62 per second)


def test_persistent_reconnects_immediately_first():
    b = policy_for(Tier.PREMIUM).backoff(random.Random(0))
    assert b.next_delay() == 0.0
    assert 0.0 <= b.next_delay() <= 1.0 and b.window() == 2.0


def test_tier_policies():
    premium, active, casual = (policy_for(t) for t in (Tier.PREMIUM, Tier.ACTIVE, Tier.CASUAL))
    assert (premium.transport, premium.interval_s, premium.reconnect_immediately) == (TransportKind.WS_PERSISTENT, 60, True)
    assert (active.transport, active.interval_s, active.backoff_base_s) == (TransportKind.WS_ON_DEMAND, 300, 5)
    assert (casual.transport, casual.interval_s, casual.backoff_base_s) == (TransportKind.HTTP, 900, 30)
    rng = random.Random(3)
    delays = [active.next_sync_delay(rng) for _ in range(200)]
    assert 270 <= min(delays) and max(delays) <= 330 and len(set(delays)) == 200
    assert 90 <= active.next_sync_delay(rng, server_hint_s=100) <= 110  # the server's hint wins
    assert 0 <= casual.first_sync_delay(rng) <= 90
    assert active.with_interval(0.05).interval_s == 0.05
    assert parse_tier(" Premium ") is Tier.PREMIUM
    with pytest.raises(OmegaError, match="tier must be one of"):
        parse_tier("gold")
    with pytest.raises(OmegaError):
        policy_for(Tier.UNSPECIFIED)


def test_endpoints_and_retry_after_parsing():
    e = endpoints("http://tv.example:8700")
    assert (e.http_url, e.ws_url) == ("http://tv.example:8700/v1/sync", "ws://tv.example:8700/v1/ws")
    assert endpoints("wss://h/omega/v1/ws/").http_url == "https://h/omega/v1/sync"
    for bad in ("ftp://x", "localhost:8700", "http://", "http://h:99999", "http://h/?q=1"):
        with pytest.raises(OmegaError):
            endpoints(bad)
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) == 0.0 and parse_retry_after("soon") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
