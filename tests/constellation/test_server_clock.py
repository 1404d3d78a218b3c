"""The server on an injected clock (what the fleet simulator runs it on): every "now" comes from it."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from omega.constellation.app import create_app
from omega.constellation.settings import load_settings
from omega.protocol import ErrorReply, Heartbeat, HeartbeatAck, Tier, now_ms

from .server_support import SECRET, Device, small_codebook

CODEBOOK = small_codebook()
SIM_T0_S = 1_000_000_000.0  # 2001-09-09: far outside the replay window of the real clock


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _app(tmp_path: Path, clock: FakeClock, **overrides):  # noqa: ANN202
    CODEBOOK.save(tmp_path / "codebook.npz")
    settings = load_settings(env={"OMEGA_SECRET": SECRET}, overrides={
        "store": f"sqlite:{tmp_path / 'c.db'}", "codebook": str(tmp_path / "codebook.npz"), **overrides})  # fmt: skip
    return create_app(settings, clock=clock)


def test_the_replay_window_and_replies_follow_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock(SIM_T0_S)
    app = _app(tmp_path, clock, replay_window_s=300)
    dev = Device(41)
    with TestClient(app) as client:

        def send(frame: bytes):  # noqa: ANN202
            return dev.decode(client.post("/v1/sync", content=frame).content)

        # Stamped with the simulated time: fresh. The reply and the ack carry the simulated time too.
        reply = send(dev.frame(Heartbeat(Tier.ACTIVE), timestamp_ms=int(SIM_T0_S * 1000)))
        assert isinstance(reply.body, HeartbeatAck)
        assert reply.body.server_time_ms == int(SIM_T0_S * 1000) == reply.timestamp_ms
        # Stamped with the real wall clock: decades off the server's clock, so a replay.
        err = send(dev.frame(Heartbeat(Tier.ACTIVE), timestamp_ms=now_ms())).body
        assert isinstance(err, ErrorReply) and err.code == "replay" and "from the server clock" in err.message
        # The clock moves on: a frame from t0 is now stale, one from the new time is fresh.
        clock.t = SIM_T0_S + 3600
        stale = send(dev.frame(Heartbeat(Tier.ACTIVE), timestamp_ms=int(SIM_T0_S * 1000))).body
        assert isinstance(stale, ErrorReply) and stale.code == "replay"
        fresh = send(dev.frame(Heartbeat(Tier.ACTIVE), timestamp_ms=int(clock.t * 1000))).body
        assert isinstance(fresh, HeartbeatAck) and fresh.server_time_ms == int(clock.t * 1000)
        service = app.state.omega.service
        assert service.now_ms() == int(clock.t * 1000)


def test_rate_limit_buckets_refill_on_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock(SIM_T0_S)
    app = _app(tmp_path, clock, rate_per_s=1, rate_burst=2)
    dev = Device(42)
    with TestClient(app) as client:

        def code(at_s: float) -> str | None:
            body = dev.decode(client.post("/v1/sync", content=dev.frame(Heartbeat(Tier.CASUAL),
                                                                        timestamp_ms=int(at_s * 1000))).content).body  # fmt: skip
            return body.code if isinstance(body, ErrorReply) else None

        assert [code(clock.t) for _ in range(3)] == [None, None, "rate_limited"]
        clock.t += 1.0  # one simulated second refills one token, however little real time passed
        assert code(clock.t) is None
        assert code(clock.t) == "rate_limited"
