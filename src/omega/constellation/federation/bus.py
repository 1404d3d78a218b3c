"""The federation bus: persistent streams with dedupe and consumers that resume or replay.

Two implementations of one small interface:
- `InProcessBus`: the embedded default (`omega demo`, single node): streams are
  lists in memory, one process, no NATS.
- `JetStreamBus`: NATS JetStream (nats-py). Publishes carry a `Nats-Msg-Id`
  header so the server drops a re-publish inside the stream's duplicate window;
  consumers are pull consumers — durable (a shard resumes where it stopped) or
  ephemeral starting at the stream's first message (a region or hub rebuilds its
  state by replaying its input).

Delivery is at-least-once (a message is acked after its handler returned); the
CRDT merge makes redelivery harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from omega.constellation.federation.topology import Topology
from omega.errors import OmegaError

log = logging.getLogger(__name__)

FETCH_BATCH = 256


@dataclass(frozen=True)
class BusMessage:
    subject: str
    data: bytes
    seq: int  # position in its stream (1-based)


Handler = Callable[[BusMessage], Awaitable[None]]


class Subscription(ABC):
    """A consumer of one stream, filtered by subject."""

    @abstractmethod
    async def pull(self, handler: Handler, max_msgs: int = 100_000) -> int:
        """Hand every message available now to `handler` in stream order, acking each after it returns.

        Returns how many were handled. If the handler raises, that message is not
        acked (it comes again) and the error propagates.
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop consuming. A durable consumer keeps its position for the next `subscribe`."""


class Bus(ABC):
    @abstractmethod
    async def ensure_streams(self, topology: Topology) -> None:
        """Create the federation streams if missing (existing ones are left as they are)."""

    @abstractmethod
    async def publish(self, subject: str, data: bytes, msg_id: str) -> bool:
        """Store a message durably; False when `msg_id` was seen within the duplicate window (dropped)."""

    @abstractmethod
    async def subscribe(self, stream: str, filter_subject: str, durable: str | None = None) -> Subscription:
        """A consumer from the stream's first message, or resuming the durable consumer `durable`."""

    @abstractmethod
    async def close(self) -> None: ...


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` is one or more tokens."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


# ---- in-process ---------------------------------------------------------------------
@dataclass
class _MemoryStream:
    subjects: tuple[str, ...]
    duplicate_window_s: float
    messages: list[BusMessage] = field(default_factory=list)
    seen_ids: dict[str, float] = field(default_factory=dict)  # msg id → monotonic publish time


class InProcessBus(Bus):
    """Streams in memory: the same roles and semantics as JetStream, inside one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._streams: dict[str, _MemoryStream] = {}
        self._durable: dict[tuple[str, str], int] = {}  # (stream, consumer) → last acked seq
        self._clock = clock

    async def ensure_streams(self, topology: Topology) -> None:
        for spec in topology.streams():
            self._streams.setdefault(spec.name, _MemoryStream(spec.subjects, topology.duplicate_window_s))

    def _stream_for(self, subject: str) -> _MemoryStream:
        for stream in self._streams.values():
            if any(subject_matches(p, subject) for p in stream.subjects):
                return stream
        raise OmegaError(f"no federation stream takes subject {subject!r} (call ensure_streams first)")

    async def publish(self, subject: str, data: bytes, msg_id: str) -> bool:
        stream = self._stream_for(subject)
        now = self._clock()
        seen = stream.seen_ids.get(msg_id)
        if seen is not None and now - seen < stream.duplicate_window_s:
            return False
        stream.seen_ids = {k: t for k, t in stream.seen_ids.items() if now - t < stream.duplicate_window_s}
        stream.seen_ids[msg_id] = now
        stream.messages.append(BusMessage(subject, bytes(data), len(stream.messages) + 1))
        return True

    async def subscribe(self, stream: str, filter_subject: str, durable: str | None = None) -> Subscription:
        if stream not in self._streams:
            raise OmegaError(f"no federation stream {stream!r}")
        return _MemorySubscription(self, stream, filter_subject, durable)

    async def close(self) -> None:
        pass


class _MemorySubscription(Subscription):
    def __init__(self, bus: InProcessBus, stream: str, filter_subject: str, durable: str | None) -> None:
        self._bus = bus
        self._stream = stream
        self._filter = filter_subject
        self._durable = durable
        self._position = bus._durable.get((stream, durable), 0) if durable else 0

    async def pull(self, handler: Handler, max_msgs: int = 100_000) -> int:
        handled = 0
        messages = self._bus._streams[self._stream].messages
        while handled < max_msgs and self._position < len(messages):
            msg = messages[self._position]
            if subject_matches(self._filter, msg.subject):
                await handler(msg)
                handled += 1
            self._position = msg.seq
            if self._durable:
                self._bus._durable[(self._stream, self._durable)] = self._position
        return handled

    async def close(self) -> None:
        pass


# ---- NATS JetStream -----------------------------------------------------------------
class JetStreamBus(Bus):
    """Federation over NATS JetStream. Build with `await JetStreamBus.connect(url)`."""

    def __init__(self, nc: object, fetch_timeout_s: float = 0.5) -> None:
        self._nc = nc
        self._js = nc.jetstream()  # type: ignore[attr-defined]
        self.fetch_timeout_s = fetch_timeout_s

    @classmethod
    async def connect(cls, url: str, name: str = "omega-federation", connect_timeout_s: float = 3.0) -> JetStreamBus:
        """Connect to one or more comma-separated `nats://` servers; keeps reconnecting after that."""
        import nats

        servers = [s.strip() for s in url.split(",") if s.strip()]
        if not servers or not all(s.startswith(("nats://", "tls://")) for s in servers):
            raise OmegaError(f"NATS URL must be nats://HOST:PORT (comma-separated for a cluster), got {url!r}")
        connected = False

        async def on_error(exc: Exception) -> None:
            # nats-py reports every failed (re)connect here; before the first connection we raise instead.
            if connected:
                log.warning("NATS %s: %s: %s", url, type(exc).__name__, exc)

        try:
            nc = await nats.connect(
                servers=servers,
                name=name,
                connect_timeout=connect_timeout_s,
                reconnect_time_wait=1.0,
                max_reconnect_attempts=1,  # first connection: fail fast with a clear error
                error_cb=on_error,
            )
        except Exception as exc:  # nats raises several unrelated types for "cannot connect"
            raise OmegaError(f"cannot connect to NATS at {url}: {type(exc).__name__}: {exc}") from exc
        connected = True
        nc.options["max_reconnect_attempts"] = -1  # from now on, ride out server restarts forever
        return cls(nc)

    async def ensure_streams(self, topology: Topology) -> None:
        from nats.js import api
        from nats.js.errors import NotFoundError

        for spec in topology.streams():
            try:
                info = await self._js.stream_info(spec.name)
                if set(info.config.subjects or ()) != set(spec.subjects):
                    raise OmegaError(
                        f"NATS stream {spec.name} exists with subjects {info.config.subjects}, expected {list(spec.subjects)}"
                    )
            except NotFoundError:
                await self._js.add_stream(
                    name=spec.name,
                    subjects=list(spec.subjects),
                    num_replicas=topology.replicas,
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                    discard=api.DiscardPolicy.OLD,
                    max_age=topology.max_age_s,
                    duplicate_window=topology.duplicate_window_s,
                )

    async def delete_streams(self, topology: Topology) -> None:
        """Remove the streams (tests and teardown); missing ones are fine."""
        from nats.js.errors import NotFoundError

        for spec in topology.streams():
            try:
                await self._js.delete_stream(spec.name)
            except NotFoundError:
                pass

    async def publish(self, subject: str, data: bytes, msg_id: str) -> bool:
        ack = await self._js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        return not ack.duplicate

    async def subscribe(self, stream: str, filter_subject: str, durable: str | None = None) -> Subscription:
        from nats.js import api

        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            # An ephemeral consumer is removed by the server once idle (e.g. its process died).
            inactive_threshold=None if durable else 300.0,
        )
        psub = await self._js.pull_subscribe(filter_subject, durable=durable, stream=stream, config=config)
        return _JetStreamSubscription(self, psub, stream, durable)

    async def close(self) -> None:
        await self._nc.drain()  # type: ignore[attr-defined]


class _JetStreamSubscription(Subscription):
    def __init__(self, bus: JetStreamBus, psub: object, stream: str, durable: str | None) -> None:
        self._bus = bus
        self._psub = psub
        self._stream = stream
        self._durable = durable

    async def pull(self, handler: Handler, max_msgs: int = 100_000) -> int:
        info = await self._psub.consumer_info()  # type: ignore[attr-defined]
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return 0  # nothing to wait for: skip the fetch timeout
        handled = 0
        while handled < max_msgs:
            try:
                msgs = await self._psub.fetch(  # type: ignore[attr-defined]
                    batch=min(FETCH_BATCH, max_msgs - handled), timeout=self._bus.fetch_timeout_s
                )
            except asyncio.TimeoutError:
                # nats.errors.TimeoutError subclasses it, and nats-py 2.16 raises the bare one when its deadline
                # runs out between the no-wait probe and the lingering request (seen under load)
                break
            for m in msgs:
                await handler(BusMessage(m.subject, m.data, m.metadata.sequence.stream))
                await m.ack()
                handled += 1
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
        await self._bus._nc.flush()  # type: ignore[attr-defined]  # acks reach the server before we report
        return handled

    async def close(self) -> None:
        from nats.js.errors import NotFoundError

        name = None
        if not self._durable:
            try:
                name = (await self._psub.consumer_info()).name  # type: ignore[attr-defined]
            except Exception:  # already gone on the server: nothing to delete
                name = None
        await self._psub.unsubscribe()  # type: ignore[attr-defined]
        if name:
            try:
                await self._bus._js.delete_consumer(self._stream, name)
            except NotFoundError:
                pass
