"""The sync server over real HTTP: auth, replay, rate limits, sizes, pushes, k_min, poisoning bounds, metrics."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from omega.constellation.privacy import DEFAULT_W_MAX
from omega.protocol import (
    ErrorReply,
    Heartbeat,
    HeartbeatAck,
    Keyspace,
    PullReply,
    PushAck,
    TaskType,
    Tier,
    Transition,
    TransitionBatch,
    decode_frame,
    now_ms,
)

from omega.protocol.codec import FLAG_COMPRESSED

from .server_support import Device, ServerProcess, near, pattern, small_codebook

CODEBOOK = small_codebook()
METRIC_NAMES = (
    "omega_connections", "omega_syncs_total", "omega_rejections_total", "omega_sync_latency_seconds",
    "omega_store_latency_seconds", "omega_aggregation_lag_seconds", "omega_federation_lag_seconds",
    "omega_bytes_total", "omega_cache_fallbacks_total", "omega_consolidated_patterns",
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("server-http")
    CODEBOOK.save(folder / "codebook.npz")
    proc = ServerProcess(folder, codebook=folder / "codebook.npz", OMEGA_RATE_PER_S="2", OMEGA_RATE_BURST="30").start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


_counter = iter(range(1000, 10_000))


def fresh() -> Device:
    return Device(next(_counter))


def error_of(dev: Device | None, resp: httpx.Response) -> ErrorReply:
    frame = decode_frame(resp.content, dev.key if dev else bytes(32))
    assert isinstance(frame.body, ErrorReply)
    return frame.body


def test_health_ready_and_metric_names(server: ServerProcess, client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["ready"] is True
    text = client.get("/metrics").text
    for name in METRIC_NAMES:
        assert f"# TYPE {name}" in text, name


def test_push_is_acked_and_a_retry_is_a_duplicate(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    batch, data = dev.push([pattern(near(CODEBOOK, 1, 1))])
    resp = server.post(data, client)
    assert resp.status_code == 200
    ack = dev.decode(resp.content)
    assert ack.authenticated and isinstance(ack.body, PushAck)
    assert (ack.body.batch_id, ack.body.accepted, ack.body.duplicate, ack.body.rejected) == (batch, 1, False, ())
    # The retry is a new frame (new seq) carrying the same batch.
    _, again = dev.push([pattern(near(CODEBOOK, 1, 1))], batch_id=batch)
    retry = dev.decode(server.post(again, client).content).body
    assert isinstance(retry, PushAck) and retry.duplicate and retry.accepted == 1


def test_a_push_ack_is_deflated_only_with_refusals_to_repeat(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    # A batch id, a count and at most one refusal go out as they are, even a batch id that would deflate.
    batch, data = dev.push([pattern(near(CODEBOOK, 1, 3))], batch_id=b"a" * 16)
    resp = server.post(data, client)
    assert dev.decode(resp.content).body.batch_id == batch
    assert not resp.content[2] & FLAG_COMPRESSED
    # Refusals repeat their reason: deflated, as every frame is when that makes it smaller.
    _, data = dev.push([pattern(near(CODEBOOK, 1, 4), uses=3, seed=i) for i in range(3)])
    resp = server.post(data, client)
    assert [r.reason for r in dev.decode(resp.content).body.rejected] == ["too_few_samples"] * 3
    assert resp.content[2] & FLAG_COMPRESSED


def test_heartbeat_gets_the_tier_interval(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    before = now_ms()
    reply = dev.decode(server.post(dev.frame(Heartbeat(Tier.CASUAL)), client).content).body
    assert isinstance(reply, HeartbeatAck)
    assert reply.next_sync_s == 900 and reply.server_time_ms >= before


def test_forged_tag_is_401_with_an_unsigned_error(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    before = server.metric("omega_rejections_total", reason="bad_signature")
    _, data = dev.push([pattern(near(CODEBOOK, 2, 2))])
    forged = data[:-1] + bytes([data[-1] ^ 1])
    resp = server.post(forged, client)
    assert resp.status_code == 401
    frame = decode_frame(resp.content, dev.key)
    assert not frame.authenticated and frame.body.code == "bad_signature"
    assert server.metric("omega_rejections_total", reason="bad_signature") == before + 1


def test_token_of_another_secret_or_unknown_key_id_is_rejected(server: ServerProcess, client: httpx.Client) -> None:
    stranger = Device(next(_counter), secret=b"some-other-server-secret-000000000")
    resp = server.post(stranger.push([pattern(near(CODEBOOK, 2, 3))])[1], client)
    assert resp.status_code == 401 and error_of(None, resp).code == "bad_signature"
    unknown = Device(next(_counter), key_id=9)
    resp = server.post(unknown.push([pattern(near(CODEBOOK, 2, 3))])[1], client)
    assert resp.status_code == 401 and error_of(None, resp).code == "unauthorized"


def test_device_a_cannot_push_as_device_b(server: ServerProcess, client: httpx.Client) -> None:
    a, b = fresh(), fresh()
    head = server.stats()["head"]
    # A signs a frame that claims B's id with A's own key.
    from omega.protocol import Push

    data = a.frame(Push(batch_id=os.urandom(16), patterns=(pattern(near(CODEBOOK, 3, 4)),)), device_id=b.device_id)
    resp = server.post(data, client)
    assert resp.status_code == 401 and error_of(None, resp).code == "bad_signature"
    assert server.stats()["head"] == head


def test_replayed_seq_and_stale_timestamp_are_replay(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    first = dev.frame(Heartbeat(Tier.ACTIVE))
    assert server.post(first, client).status_code == 200
    resp = server.post(first, client)  # the very same bytes again
    assert resp.status_code == 200
    err = dev.decode(resp.content)
    assert err.authenticated and isinstance(err.body, ErrorReply) and err.body.code == "replay"
    lower = dev.frame(Heartbeat(Tier.ACTIVE), seq=dev.seq - 1)
    assert dev.decode(server.post(lower, client).content).body.code == "replay"
    stale = dev.frame(Heartbeat(Tier.ACTIVE), timestamp_ms=now_ms() - 10 * 60_000)
    assert dev.decode(server.post(stale, client).content).body.code == "replay"
    assert isinstance(dev.decode(server.post(dev.frame(Heartbeat(Tier.ACTIVE)), client).content).body, HeartbeatAck)


def test_rate_limit_is_429_with_retry_after(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    statuses = [server.post(dev.frame(Heartbeat(Tier.PREMIUM)), client) for _ in range(32)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert int(limited[0].headers["retry-after"]) >= 1
    err = dev.decode(limited[0].content).body
    assert err.code == "rate_limited" and err.retry_after_s >= 1
    # Another device is not affected.
    other = fresh()
    assert server.post(other.frame(Heartbeat(Tier.PREMIUM)), client).status_code == 200


def test_oversize_malformed_and_unknown_version(server: ServerProcess, client: httpx.Client) -> None:
    before = server.metric("omega_rejections_total", reason="too_large")
    resp = server.post(os.urandom(17 * 1024), client)
    assert resp.status_code == 413 and error_of(None, resp).code == "too_large"
    assert server.metric("omega_rejections_total", reason="too_large") == before + 1
    resp = server.post(b"\x00not a frame", client)
    assert resp.status_code == 400 and error_of(None, resp).code == "malformed"
    dev = fresh()
    data = bytearray(dev.frame(Heartbeat(Tier.ACTIVE)))
    data[1] = 9
    resp = server.post(bytes(data), client)
    assert resp.status_code == 400 and error_of(None, resp).code == "unsupported_version"


def test_item_rejections_are_reported_and_counted(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    before = server.metric("omega_rejections_total", reason="too_few_samples")
    stale_cells = TransitionBatch(Keyspace.CELL, (Transition(1, 2, 1.0),), codebook_version=CODEBOOK.version + 1)
    bad_norm = near(CODEBOOK, 4, 5) * 3.0
    _, data = dev.push([pattern(near(CODEBOOK, 4, 5), uses=3), pattern(bad_norm, seed=1), pattern(near(CODEBOOK, 5, 6), seed=2)],
                       transitions=stale_cells)  # fmt: skip
    ack = dev.decode(server.post(data, client).content).body
    assert isinstance(ack, PushAck) and ack.accepted == 1
    assert [(r.index, r.reason) for r in ack.rejected] == [(0, "too_few_samples"), (1, "bad_embedding"), (3, "stale_codebook")]
    assert server.metric("omega_rejections_total", reason="too_few_samples") == before + 1
    assert server.metric("omega_rejections_total", reason="stale_codebook") >= 1


def _pull_all(server: ServerProcess, client: httpx.Client, dev: Device, since: int = 0) -> tuple[list, list, int]:
    patterns, edges = [], []
    cursor, more = since, True
    while more:
        reply = dev.decode(server.post(dev.pull(cursor), client).content).body
        assert isinstance(reply, PullReply), reply
        patterns += reply.patterns
        # Ordered item edges only: the pairs the server derives from them are checked where they matter.
        if reply.transitions is not None and reply.transitions.keyspace is Keyspace.ITEM:
            edges += reply.transitions.edges
        cursor, more = reply.cursor, reply.more
    return patterns, edges, cursor


def test_k_min_gates_publication_and_one_device_is_clipped(server: ServerProcess, client: httpx.Client) -> None:
    cell, task = 7, TaskType.GENRE_AFFINITY
    reader = fresh()
    _, _, cursor = _pull_all(server, client, reader)
    honest = [fresh() for _ in range(3)]
    vectors = [near(CODEBOOK, cell, 70 + i) for i in range(3)]
    edge = TransitionBatch(Keyspace.ITEM, (Transition(4242, 4343, 2.0),))
    for i, (dev, v) in enumerate(zip(honest, vectors, strict=True)):
        ack = dev.decode(server.post(dev.push([pattern(v, task=task)], transitions=edge)[1], client).content).body
        assert ack.accepted == 2
        patterns, edges, _ = _pull_all(server, client, reader, cursor)
        mine = [p for p in patterns if p.cluster_id == cell and p.task_type == task]
        if i < 2:  # fewer than k_min=3 distinct TVs: nothing published
            assert mine == [] and not [e for e in edges if (e.src, e.dst) == (4242, 4343)]
    assert len(mine) == 1 and mine[0].support == 3
    assert [(e.support, e.weight) for e in edges if (e.src, e.dst) == (4242, 4343)] == [(3, 3.0)]  # weight = support
    honest_mean = np.mean([v * 18.0 for v in vectors], axis=0) / 18.0
    honest_mean /= np.linalg.norm(honest_mean)
    assert float(mine[0].embedding.dequantize() @ honest_mean) > 0.999

    # An attacker claims a million uses of a vector far from the honest mean (but in the same cell).
    attacker = fresh()
    far = near(CODEBOOK, cell, 99, spread=0.8)
    ack = attacker.decode(server.post(attacker.push([pattern(far, uses=1_000_000, rate=1.0, task=task)])[1], client).content).body
    assert ack.accepted == 1
    patterns, _, cursor2 = _pull_all(server, client, reader, cursor)
    moved = [p for p in patterns if p.cluster_id == cell and p.task_type == task][-1]
    got = moved.embedding.dequantize().astype(np.float64)
    # Weight clipped to w_max against the honest 3 × 18 (each clipped too): the weighted mean moves at most
    # w_max / (3·min(18, w_max) + w_max) of the way — a quarter at the shipped w_max (each TV weighs the same).
    honest_w = min(18.0, DEFAULT_W_MAX)
    w = DEFAULT_W_MAX / (3 * honest_w + DEFAULT_W_MAX)
    bound_mix = (1 - w) * np.mean(vectors, axis=0) + w * far
    expected = bound_mix / np.linalg.norm(bound_mix)
    assert float(got @ expected) > 0.999  # exactly the clipped mix (up to 8-bit quantisation)
    unclipped = 0.999 * far + 0.001 * np.mean(vectors, axis=0)
    assert float(got @ (unclipped / np.linalg.norm(unclipped))) < float(got @ expected)
    # Pushing again in the same epoch is a duplicate flood: no further movement.
    ack = attacker.decode(server.post(attacker.push([pattern(far, uses=1_000_000, rate=1.0, task=task, seed=5)])[1], client).content).body
    assert ack.accepted == 0 and [r.reason for r in ack.rejected] == ["duplicate_flood"]


def test_every_frame_rejection_is_counted(server: ServerProcess, client: httpx.Client) -> None:
    dev = fresh()
    before = {r: server.metric("omega_rejections_total", reason=r) for r in ("replay", "malformed")}
    data = dev.frame(Heartbeat(Tier.ACTIVE))
    server.post(data, client)
    server.post(data, client)
    server.post(b"junk", client)
    assert server.metric("omega_rejections_total", reason="replay") == before["replay"] + 1
    assert server.metric("omega_rejections_total", reason="malformed") == before["malformed"] + 1
    assert server.metric("omega_syncs_total", kind="heartbeat") >= 1
    assert server.metric("omega_bytes_total", direction="in") > 0


def test_signed_error_for_an_authentic_but_invalid_body(server: ServerProcess, client: httpx.Client) -> None:
    """A frame with a valid tag but an out-of-range field gets a SIGNED error (the sender is known)."""
    from omega.protocol import compute_tag
    from omega.protocol import omega_pb2 as pb
    from omega.protocol.codec import MAGIC, PROTOCOL_VERSION

    dev = fresh()
    msg = pb.Frame(device_id=dev.device_id, seq=1, timestamp_ms=now_ms(), key_id=dev.key_id)
    msg.heartbeat.tier = 77  # no such tier
    body = msg.SerializeToString()
    head = bytes((MAGIC, PROTOCOL_VERSION, 0))
    data = head + body + compute_tag(dev.key, head + body)
    resp = server.post(data, client)
    assert resp.status_code == 400
    frame = dev.decode(resp.content)
    assert frame.authenticated and frame.body.code == "malformed"


def test_a_client_that_disconnects_mid_body_is_no_traceback(server: ServerProcess, client: httpx.Client) -> None:
    """A TV dropping off mid-request is routine: counted, no traceback in the log, the server keeps serving."""
    import socket
    import time

    before = server.stats()["client_disconnects"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/sync HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"x" * 10)  # fmt: skip
        time.sleep(0.2)  # let the server start reading the body
    deadline = time.monotonic() + 10
    while server.stats()["client_disconnects"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats()["client_disconnects"] == before + 1
    assert client.get("/healthz").status_code == 200
    dev = fresh()
    assert isinstance(dev.decode(server.post(dev.frame(Heartbeat(Tier.ACTIVE)), client).content).body, HeartbeatAck)
    text = server.log.read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text, text


def test_sync_route_reads_chunked_bodies_caps_them_and_takes_only_post(server: ServerProcess,
                                                                       client: httpx.Client) -> None:  # fmt: skip
    """POST /v1/sync is served outside Starlette: a body in pieces is one frame, the size cap holds without a
    Content-Length (chunked), an empty body is a malformed frame, and other methods still get 405."""
    dev = fresh()
    data = dev.frame(Heartbeat(Tier.PREMIUM))
    pieces = [data[:7], data[7:20], data[20:]]
    resp = client.post("/v1/sync", content=iter(pieces), headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/octet-stream"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert isinstance(dev.decode(resp.content).body, HeartbeatAck)
    before = server.metric("omega_rejections_total", reason="too_large")
    resp = client.post("/v1/sync", content=iter([os.urandom(8 * 1024)] * 3))  # 24 KiB, never announced
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413 and error_of(None, resp).code == "too_large"
    assert server.metric("omega_rejections_total", reason="too_large") == before + 1
    resp = client.post("/v1/sync", content=b"")
    assert resp.status_code == 400 and error_of(None, resp).code == "malformed"
    assert client.get("/v1/sync").status_code == 405
    assert client.put("/v1/sync", content=data).status_code == 405


def test_cowatch_pairs_are_taken_counted_and_hostile_ones_get_an_error_frame(server: ServerProcess) -> None:
    """A push's co-watched pairs are numbered after its transitions in the ack; they are never pulled; a frame with
    more pairs than a push may carry, or a forged one (src > dst), is refused whole with a signed error."""
    with httpx.Client(base_url=server.url, timeout=10) as client:  # its own connection: the test before it ends
        _cowatch_round(server, client)                               # the module client's on a refused request


def _cowatch_round(server: ServerProcess, client: httpx.Client) -> None:
    from omega.protocol import MAX_COWATCH_PER_PUSH, Push, compute_tag
    from omega.protocol import omega_pb2 as pb
    from omega.protocol.codec import MAGIC, PROTOCOL_VERSION

    reader = fresh()
    _, _, cursor = _pull_all(server, client, reader)
    pairs = TransitionBatch(Keyspace.COWATCH, (Transition(7001, 7002, 1.0), Transition(7001, 7003, 1.0)))
    edge = TransitionBatch(Keyspace.ITEM, (Transition(7001, 7002, 1.0),))
    for _ in range(3):
        dev = fresh()
        ack = dev.decode(server.post(dev.frame(Push(os.urandom(16), transitions=edge, cowatch=pairs)), client).content)
        assert isinstance(ack.body, PushAck) and ack.body.accepted == 3 and ack.body.rejected == ()
    again = dev.decode(server.post(dev.frame(Push(os.urandom(16), cowatch=pairs)), client).content).body
    assert [(r.index, r.reason) for r in again.rejected] == [(0, "duplicate_flood"), (1, "duplicate_flood")]
    seen = []
    more = True
    while more:  # everything published since: the edge and its pair, never a co-watched pair
        reply = reader.decode(server.post(reader.pull(cursor), client).content).body
        seen += [(b.keyspace, e.src, e.dst) for b in (reply.transitions, reply.pairs) if b is not None for e in b.edges]
        cursor, more = reply.cursor, reply.more
    assert (Keyspace.ITEM, 7001, 7002) in seen and all(k is not Keyspace.COWATCH for k, _, _ in seen)

    for src, dst, n in ((1, 2, MAX_COWATCH_PER_PUSH + 1), (9, 3, 1)):
        dev = fresh()
        msg = pb.Frame(device_id=dev.device_id, seq=1, timestamp_ms=now_ms(), key_id=dev.key_id)
        msg.push.batch_id = os.urandom(16)
        msg.push.cowatch.keyspace = int(Keyspace.COWATCH)
        msg.push.cowatch.src_delta.extend([src] * n)
        msg.push.cowatch.dst.extend([dst] * n)
        msg.push.cowatch.weight.extend([16] * n)
        head = bytes((MAGIC, PROTOCOL_VERSION, 0))
        body = msg.SerializeToString()
        resp = server.post(head + body + compute_tag(dev.key, head + body), client)
        frame = dev.decode(resp.content)
        code = "too_large" if n > 1 else "invalid_pattern"
        assert frame.authenticated and frame.body.code == code
        assert resp.status_code == {"too_large": 413, "invalid_pattern": 200}[code]  # the transport contract
