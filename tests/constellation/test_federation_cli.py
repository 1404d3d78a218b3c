"""`omega aggregator` and `omega hub` against the real NATS server (skipped without one)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import typer
from typer.testing import CliRunner

from omega.cli import federation
from omega.constellation.federation import JetStreamBus, Topology
from omega.constellation.federation.messages import encode_chunks, message_id
from omega.errors import OmegaError

from .test_federation_roles import NATS_URL, merged, shard_delta


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        pass

    federation.register(app)
    return app


def test_help_lists_the_options() -> None:
    runner = CliRunner()
    out = runner.invoke(make_app(), ["aggregator", "--help"]).output
    assert "--region" in out and "--nats" in out and "--interval" in out
    assert "--nats" in runner.invoke(make_app(), ["hub", "--help"]).output


def test_aggregator_and_hub_once_carry_a_shard_delta_to_the_broadcast() -> None:
    tag = uuid.uuid4().hex[:10]
    topology = Topology(prefix=f"t{tag}.fed", stream_prefix=f"T{tag}")
    delta = shard_delta("s1", 1, [4])

    async def setup() -> JetStreamBus:
        bus = await JetStreamBus.connect(NATS_URL, connect_timeout_s=1.0)
        await bus.ensure_streams(topology)
        subject = topology.shard_subject("eu", "s1")
        for payload in encode_chunks(delta):
            await bus.publish(subject, payload, message_id(subject, payload))
        await bus.close()

    try:
        asyncio.run(setup())
    except OmegaError as exc:
        pytest.skip(f"no NATS server: {exc}")
    prefixes = ["--subject-prefix", topology.prefix, "--stream-prefix", topology.stream_prefix]
    runner = CliRunner()
    try:
        res = runner.invoke(make_app(), ["aggregator", "--region", "eu", "--nats", NATS_URL, "--once", *prefixes])
        assert res.exit_code == 0, res.output
        res = runner.invoke(make_app(), ["hub", "--nats", NATS_URL, "--once", *prefixes])
        assert res.exit_code == 0, res.output

        async def broadcast() -> object:
            from omega.constellation.crdt import decode_delta

            bus = await JetStreamBus.connect(NATS_URL)
            sub = await bus.subscribe(topology.broadcast_stream, topology.global_subject)
            got = merged()

            async def take(msg) -> None:  # noqa: ANN001
                got.merge(decode_delta(msg.data))

            await sub.pull(take)
            await sub.close()
            await bus.close()
            return got

        assert asyncio.run(broadcast()) == delta
    finally:

        async def teardown() -> None:
            bus = await JetStreamBus.connect(NATS_URL)
            await bus.delete_streams(topology)
            await bus.close()

        asyncio.run(teardown())


def test_unreachable_nats_is_an_omega_error() -> None:
    res = CliRunner().invoke(make_app(), ["hub", "--nats", "nats://127.0.0.1:1", "--once"])
    assert res.exit_code != 0 and isinstance(res.exception, OmegaError)
