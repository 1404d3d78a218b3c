"""Typed messages of the sync protocol (the Python face of proto/omega.proto).

Every message validates itself on construction, on both sides of the wire, so
the encoder never emits what the decoder would reject and a decoded message
is always in range. Floats are rounded to float32 (what the wire holds), so
`decode(encode(m)) == m`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar, Union

import numpy as np

from omega.protocol.errors import FrameTooLarge, InvalidPattern, MalformedFrame, ProtocolError
from omega.protocol.quantize import QuantizedEmbedding

#: Dimensions of every embedding in protocol v1 (all-MiniLM-L6-v2).
EMBEDDING_DIM = 384
UUID_BYTES = 16
MAX_PATTERNS_PER_PUSH = 10
#: Transition edges in one batch (a push or a reply page).
MAX_TRANSITIONS = 4096
#: Co-watched pairs in one push (Keyspace.COWATCH): a 1 KB push holds ~220 at ~4.3 B a pair, so this only
#: bounds what a hostile frame makes the cloud build and hash (counted on the raw message, as MAX_TRANSITIONS).
MAX_COWATCH_PER_PUSH = 1024
#: Transition weights travel in fixed point: wire value = round(weight * WEIGHT_SCALE).
WEIGHT_SCALE = 16
#: Support floor on published edges and pairs (issue 14, bounded influence), shared by the TV that reads
#: them and the constellation that refines them (omega.constellation.item_graph): an edge a→b counts only
#: with support ≥ c·√V(a), a pair {a, b} with support ≥ c·√max(V(a), V(b)), V(i) = the total support of
#: the published edges out of i. Why 0.45: see omega.brain.store.brain_store.
SUPPORT_FLOOR_C = 0.45
DEFAULT_PULL_BYTES = 5000
MAX_ERROR_CODE_CHARS = 32
#: Longer error messages are cut (the code carries the meaning).
MAX_ERROR_MESSAGE_CHARS = 256


def passes_support_floor(support, volume, c: float = SUPPORT_FLOOR_C):  # noqa: ANN001, ANN201 — float or array
    """The support floor's one rule (`SUPPORT_FLOOR_C`): support ≥ c·√volume, compared squared in doubles
    (no square root, so the TV's read, the cloud's refinement and the evaluation agree at the boundary).
    `volume` is V(a) for an edge a→b, max(V(a), V(b)) for a pair; scalars or numpy arrays."""
    if isinstance(support, np.ndarray):
        s = support.astype(np.float64)
        return s * s >= float(c) ** 2 * np.asarray(volume, np.float64)
    return float(support) * support >= float(c) ** 2 * volume


_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


class TaskType(IntEnum):
    """What an embedding pattern encodes (same numbers as omega.v1.TaskType)."""

    UNSPECIFIED = 0
    CONTENT_MATCH = 1
    CONTEXT_MATCH = 2
    GENRE_AFFINITY = 3
    TIME_OF_DAY = 4
    CONTINUATION = 5


class Tier(IntEnum):
    """Sync tier of a TV (docs/architecture.md §4)."""

    UNSPECIFIED = 0
    PREMIUM = 1
    ACTIVE = 2
    CASUAL = 3

    @property
    def label(self) -> str:
        """The lower-case name ("premium", ...) the CLI, the metrics and the capacity figures use."""
        return self.name.lower()


#: The tiers a TV syncs in (UNSPECIFIED only means "not said"), in the seed's order.
SYNC_TIERS: tuple[Tier, ...] = (Tier.PREMIUM, Tier.ACTIVE, Tier.CASUAL)


class Keyspace(IntEnum):
    """What the ids of a transition batch name."""

    UNSPECIFIED = 0
    ITEM = 1
    CELL = 2
    PAIR = 3  # unordered item pairs (src < dst), published by the constellation only
    REFINED = 4  # refined item neighbours (EASE over the published pairs), in pull replies only
    #: co-watched item pairs (src < dst) a TV pushes, each once; the constellation counts distinct TVs per
    #: pair and refines its neighbours from them; never served in a pull
    COWATCH = 5


_E = TypeVar("_E", bound=IntEnum)


def _enum(enum: type[_E], name: str, value: object, error: type[ProtocolError]) -> _E:
    try:
        return enum(value)
    except (ValueError, TypeError):
        raise error(f"{name} has unknown value {value!r}") from None


def _uint(name: str, value: object, top: int, error: type[ProtocolError]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise error(f"{name} must be an integer in [0, {top}], got {value!r}")


def _float32(name: str, value: object, lo: float, hi: float, error: type[ProtocolError]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or abs(value) > float(np.finfo(np.float32).max):
        raise error(f"{name} must be finite, got {value!r}")
    rounded = float(np.float32(value))
    if not lo <= rounded <= hi:
        raise error(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return rounded


def _uuid(name: str, value: object, error: type[ProtocolError]) -> None:
    if not isinstance(value, bytes) or len(value) != UUID_BYTES:
        size = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise error(f"{name} must be {UUID_BYTES} bytes, got {size}")


def _embedding(name: str, value: object) -> None:
    if not isinstance(value, QuantizedEmbedding):
        raise InvalidPattern(f"{name} must be a QuantizedEmbedding, got {type(value).__name__}")
    if value.dim != EMBEDDING_DIM:
        raise InvalidPattern(
            f"{name} has {len(value.q)} bytes at {value.bits} bits; "
            f"expected {EMBEDDING_DIM * value.bits // 8} ({EMBEDDING_DIM} dimensions)"
        )


_set = object.__setattr__  # what a frozen dataclass's own __init__ uses
_new = object.__new__


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True)
class EmbeddingPattern:
    """A TV's learned pattern: a context vector and how well recommending from it worked."""

    id: bytes
    version: int
    embedding: QuantizedEmbedding
    success_rate: float
    uses: int
    successes: int
    task_type: TaskType = TaskType.UNSPECIFIED
    #: Codebook cell the TV mapped the pattern to, if any.
    cell: int | None = None
    codebook_version: int = 0

    def __post_init__(self) -> None:
        _uuid("pattern id", self.id, InvalidPattern)
        _uint("pattern version", self.version, _U32, InvalidPattern)
        _embedding("pattern embedding", self.embedding)
        _set(self, "success_rate", _float32("success_rate", self.success_rate, 0.0, 1.0, InvalidPattern))
        _uint("uses", self.uses, _U32, InvalidPattern)
        _uint("successes", self.successes, self.uses if isinstance(self.uses, int) else 0, InvalidPattern)
        _set(self, "task_type", _enum(TaskType, "task_type", self.task_type, InvalidPattern))
        if self.cell is not None:
            _uint("cell", self.cell, _U32 - 1, InvalidPattern)  # travels as cell + 1
        _uint("codebook_version", self.codebook_version, _U32, InvalidPattern)


@dataclass(frozen=True, slots=True)
class Transition:
    """One edge "after src, the viewer happily watched dst" with its quality-weighted count."""

    src: int
    dst: int
    #: Quality-weighted count, kept on a 1/WEIGHT_SCALE grid.
    weight: float
    #: Distinct TVs behind the edge (consolidated replies only; 0 in pushes).
    support: int = 0

    def __post_init__(self) -> None:
        _uint("transition src", self.src, _U32, InvalidPattern)
        _uint("transition dst", self.dst, _U32, InvalidPattern)
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
            raise InvalidPattern(f"transition weight must be a number, got {w!r}")
        if not 0.0 <= w <= _U32 / WEIGHT_SCALE:  # also rejects NaN
            raise InvalidPattern(f"transition weight must be in [0, {_U32 / WEIGHT_SCALE}], got {w!r}")
        # Snap to the fixed-point grid the wire uses (exact in float64).
        _set(self, "weight", round(float(w) * WEIGHT_SCALE) / WEIGHT_SCALE)
        _uint("transition support", self.support, _U32, InvalidPattern)

    @classmethod
    def _in_range(cls, src: int, dst: int, weight: float, support: int) -> Transition:
        """The Transition of values this class's checks already hold for: ints in [0, 2^32 - 1] and a
        weight w / WEIGHT_SCALE of such an int (on the grid). Only for what a decoded batch carries in
        uint32 wire fields (`convert._transitions_from_pb`: a push holds tens, and the checks cost 4x
        the object); everything else goes through the constructor."""
        t = _new(cls)
        _set(t, "src", src)
        _set(t, "dst", dst)
        _set(t, "weight", weight)
        _set(t, "support", support)
        return t


@dataclass(frozen=True, slots=True)
class TransitionBatch:
    """Order-aware patterns over one keyspace; edges are kept sorted by (src, dst) and unique."""

    keyspace: Keyspace
    edges: tuple[Transition, ...] = ()
    codebook_version: int = 0

    def __post_init__(self) -> None:
        edges = tuple(self.edges)
        self._check_header(len(edges))
        for edge in edges:
            if not isinstance(edge, Transition):
                raise InvalidPattern(f"transition edges must be Transition, got {type(edge).__name__}")
        edges = tuple(sorted(edges, key=lambda e: (e.src, e.dst)))
        for prev, cur in zip(edges, edges[1:]):
            if (prev.src, prev.dst) == (cur.src, cur.dst):
                raise InvalidPattern(f"transition ({cur.src} -> {cur.dst}) appears twice")
        _set(self, "edges", edges)

    def _check_header(self, n_edges: int) -> None:
        keyspace = _enum(Keyspace, "keyspace", self.keyspace, InvalidPattern)
        if keyspace is Keyspace.UNSPECIFIED:
            raise InvalidPattern("transition keyspace must be ITEM or CELL")
        _set(self, "keyspace", keyspace)
        _uint("codebook_version", self.codebook_version, _U32, InvalidPattern)
        if n_edges > MAX_TRANSITIONS:
            raise FrameTooLarge(f"{n_edges} transitions in one batch; at most {MAX_TRANSITIONS}")

    @classmethod
    def _in_order(cls, keyspace: object, edges: tuple[Transition, ...], codebook_version: int) -> TransitionBatch:
        """The batch of `edges`, Transitions already sorted by (src, dst) without a repeat, as a decoded
        batch's are by construction (`convert._transitions_from_pb`: src gaps, dst gaps within a src, a
        zero dst gap refused). Keyspace, version and size are checked as by the constructor; the edges
        are not checked and sorted again."""
        batch = _new(cls)
        _set(batch, "keyspace", keyspace)
        _set(batch, "edges", edges)
        _set(batch, "codebook_version", codebook_version)
        batch._check_header(len(edges))
        return batch


# --------------------------------------------------------------------------- TV -> cloud


@dataclass(frozen=True, slots=True)
class Push:
    """Up to 10 high-quality embedding patterns and/or a batch of transitions and/or co-watched pairs."""

    #: Idempotency key: a retried push reuses it.
    batch_id: bytes
    patterns: tuple[EmbeddingPattern, ...] = ()
    transitions: TransitionBatch | None = None
    #: Co-watched pairs (keyspace COWATCH, src < dst, weight 1, at most MAX_COWATCH_PER_PUSH).
    cowatch: TransitionBatch | None = None

    def __post_init__(self) -> None:
        _uuid("batch_id", self.batch_id, MalformedFrame)
        patterns = tuple(self.patterns)
        if len(patterns) > MAX_PATTERNS_PER_PUSH:
            raise FrameTooLarge(f"{len(patterns)} patterns in one push; at most {MAX_PATTERNS_PER_PUSH}")
        for p in patterns:
            if not isinstance(p, EmbeddingPattern):
                raise InvalidPattern(f"push patterns must be EmbeddingPattern, got {type(p).__name__}")
        _set(self, "patterns", patterns)
        if self.transitions is not None:
            if not isinstance(self.transitions, TransitionBatch):
                raise InvalidPattern("push transitions must be a TransitionBatch")
            if any(e.support for e in self.transitions.edges):
                raise InvalidPattern("transition support is set by the cloud, never in a push")
            if self.transitions.keyspace is Keyspace.COWATCH:
                raise InvalidPattern("co-watched pairs go in `cowatch`, not in `transitions`")
        if self.cowatch is not None:
            batch = self.cowatch
            if not isinstance(batch, TransitionBatch) or batch.keyspace is not Keyspace.COWATCH:
                raise InvalidPattern("push cowatch must be a TransitionBatch of keyspace COWATCH")
            if len(batch.edges) > MAX_COWATCH_PER_PUSH:
                raise FrameTooLarge(f"{len(batch.edges)} co-watched pairs in one push; at most {MAX_COWATCH_PER_PUSH}")
            if any(e.src >= e.dst or e.support or e.weight != 1.0 for e in batch.edges):
                raise InvalidPattern("a co-watched pair must have src < dst, weight 1 and no support")


#: Bits of a refined-release cursor that count neighbours read; the release id sits above them.
REFINED_POSITION_BITS = 24
#: `Pull.refined_since` of a TV that takes refined neighbours and holds none yet (0: it does not take
#: them, so a client that predates them is never sent pages it would not advance past).
REFINED_WANTED = 1


def refined_cursor(release: int, position: int) -> int:
    """The `refined_since` / `refined_cursor` value of `position` neighbours read in `release`."""
    return (int(release) << REFINED_POSITION_BITS) + int(position)


def refined_release_of(cursor: int) -> tuple[int, int]:
    """(release, position) of a refined cursor."""
    return int(cursor) >> REFINED_POSITION_BITS, int(cursor) & ((1 << REFINED_POSITION_BITS) - 1)


@dataclass(frozen=True, slots=True)
class Pull:
    """Ask for consolidated deltas after `since`."""

    since: int = 0
    #: Page budget; 0 on the wire means DEFAULT_PULL_BYTES.
    max_bytes: int = DEFAULT_PULL_BYTES
    codebook_version: int = 0
    #: Position in the refined-neighbour release the TV holds (`refined_cursor`); 0: it takes none,
    #: REFINED_WANTED: it takes them and holds none yet.
    refined_since: int = 0

    def __post_init__(self) -> None:
        _uint("since", self.since, _U64, MalformedFrame)
        _uint("max_bytes", self.max_bytes, _U32, MalformedFrame)
        if self.max_bytes == 0:
            _set(self, "max_bytes", DEFAULT_PULL_BYTES)
        _uint("codebook_version", self.codebook_version, _U32, MalformedFrame)
        _uint("refined_since", self.refined_since, _U64, MalformedFrame)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness of a TV, with a few optional counters."""

    tier: Tier
    outbox: int = 0
    patterns: int = 0

    def __post_init__(self) -> None:
        _set(self, "tier", _enum(Tier, "tier", self.tier, MalformedFrame))
        _uint("outbox", self.outbox, _U32, MalformedFrame)
        _uint("patterns", self.patterns, _U32, MalformedFrame)


# --------------------------------------------------------------------------- cloud -> TV


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why pattern number `index` of a push was not taken (`reason` is an error code)."""

    index: int
    reason: str

    def __post_init__(self) -> None:
        _uint("rejection index", self.index, _U32, MalformedFrame)
        if not isinstance(self.reason, str) or not 0 < len(self.reason) <= MAX_ERROR_CODE_CHARS:
            raise MalformedFrame(f"rejection reason must be a code of 1..{MAX_ERROR_CODE_CHARS} characters")


@dataclass(frozen=True, slots=True)
class PushAck:
    """The cloud's answer to a push."""

    batch_id: bytes
    accepted: int = 0
    rejected: tuple[Rejection, ...] = ()
    #: The batch was seen before; nothing changed.
    duplicate: bool = False

    def __post_init__(self) -> None:
        _uuid("batch_id", self.batch_id, MalformedFrame)
        _uint("accepted", self.accepted, _U32, MalformedFrame)
        rejected = tuple(self.rejected)
        for r in rejected:
            if not isinstance(r, Rejection):
                raise MalformedFrame(f"rejected entries must be Rejection, got {type(r).__name__}")
        _set(self, "rejected", rejected)
        if not isinstance(self.duplicate, bool):
            raise MalformedFrame("duplicate must be a bool")


@dataclass(frozen=True, slots=True)
class ConsolidatedPattern:
    """A global pattern merged from many TVs (the ReasoningBank record)."""

    cluster_id: int
    version: int
    embedding: QuantizedEmbedding
    task_type: TaskType
    success_rate: float
    #: Distinct TVs behind it.
    support: int
    trend_score: float = 0.0

    def __post_init__(self) -> None:
        _uint("cluster_id", self.cluster_id, _U64, InvalidPattern)
        _uint("version", self.version, _U32, InvalidPattern)
        _embedding("consolidated embedding", self.embedding)
        _set(self, "task_type", _enum(TaskType, "task_type", self.task_type, InvalidPattern))
        _set(self, "success_rate", _float32("success_rate", self.success_rate, 0.0, 1.0, InvalidPattern))
        _uint("support", self.support, _U32, InvalidPattern)
        _set(self, "trend_score", _float32("trend_score", self.trend_score, -math.inf, math.inf, InvalidPattern))


@dataclass(frozen=True, slots=True)
class PullReply:
    """One page of consolidated deltas.

    A pattern, transition or pair of support 0 is a removal: the key was published and no longer is
    (its supporters left the contribution window, or the day's DP release did not select it), so a TV
    drops what it holds of it. Removals are idempotent (dropping what is not held changes nothing)."""

    #: Pass as `since` in the next Pull.
    cursor: int
    #: Another page is waiting.
    more: bool = False
    patterns: tuple[ConsolidatedPattern, ...] = ()
    #: Ordered edges: item or codebook-cell keyspace.
    transitions: TransitionBatch | None = None
    #: Unordered item pairs (keyspace PAIR), in the same page as the item edges of the same changes.
    pairs: TransitionBatch | None = None
    #: A page of the refined-neighbour release (keyspace REFINED), and the position after it.
    refined: TransitionBatch | None = None
    refined_cursor: int = 0
    #: The pull's `since` is too old for removals to bring the TV up to date (under DP, a release
    #: outside the contribution window): the TV drops every consolidated pattern, transition and pair
    #: it holds, then merges this page, the first of a full snapshot.
    reset: bool = False

    def __post_init__(self) -> None:
        _uint("cursor", self.cursor, _U64, MalformedFrame)
        if not isinstance(self.more, bool):
            raise MalformedFrame("more must be a bool")
        if not isinstance(self.reset, bool):
            raise MalformedFrame("reset must be a bool")
        patterns = tuple(self.patterns)
        for p in patterns:
            if not isinstance(p, ConsolidatedPattern):
                raise InvalidPattern(f"reply patterns must be ConsolidatedPattern, got {type(p).__name__}")
        _set(self, "patterns", patterns)
        if self.transitions is not None:
            if not isinstance(self.transitions, TransitionBatch):
                raise InvalidPattern("reply transitions must be a TransitionBatch")
            if self.transitions.keyspace in (Keyspace.PAIR, Keyspace.REFINED, Keyspace.COWATCH):
                raise InvalidPattern("reply transitions must be item or cell edges; pairs go in `pairs`")
        if self.pairs is not None:
            if not isinstance(self.pairs, TransitionBatch):
                raise InvalidPattern("reply pairs must be a TransitionBatch")
            if self.pairs.keyspace is not Keyspace.PAIR:
                raise InvalidPattern(f"reply pairs must be keyspace PAIR, got {self.pairs.keyspace.name}")
        if self.refined is not None:
            if not isinstance(self.refined, TransitionBatch):
                raise InvalidPattern("reply refined must be a TransitionBatch")
            if self.refined.keyspace is not Keyspace.REFINED:
                raise InvalidPattern(f"reply refined must be keyspace REFINED, got {self.refined.keyspace.name}")
        _uint("refined_cursor", self.refined_cursor, _U64, MalformedFrame)


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """The cloud's answer to a heartbeat; it may slow the fleet down."""

    server_time_ms: int
    #: 0: keep the tier's own interval.
    next_sync_s: int = 0
    #: 0: no back-off requested.
    retry_after_s: int = 0

    def __post_init__(self) -> None:
        _uint("server_time_ms", self.server_time_ms, _U64, MalformedFrame)
        _uint("next_sync_s", self.next_sync_s, _U32, MalformedFrame)
        _uint("retry_after_s", self.retry_after_s, _U32, MalformedFrame)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refused frame. `code` is one of errors.ERROR_CODES; the message is cut to 256 characters."""

    code: str
    message: str = ""
    retry_after_s: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not 0 < len(self.code) <= MAX_ERROR_CODE_CHARS:
            raise MalformedFrame(f"error code must be 1..{MAX_ERROR_CODE_CHARS} characters")
        if not isinstance(self.message, str):
            raise MalformedFrame("error message must be a string")
        _set(self, "message", self.message[:MAX_ERROR_MESSAGE_CHARS])
        _uint("retry_after_s", self.retry_after_s, _U32, MalformedFrame)


# --------------------------------------------------------------------------- envelope

Body = Union[Push, Pull, Heartbeat, PushAck, PullReply, HeartbeatAck, ErrorReply]

#: Bodies a TV sends, and bodies the cloud sends (pass as `expect=` to decode_frame).
UPLINK: tuple[type, ...] = (Push, Pull, Heartbeat)
DOWNLINK: tuple[type, ...] = (PushAck, PullReply, HeartbeatAck, ErrorReply)

#: Body class -> name of its field in the protobuf `oneof body`.
BODY_KINDS: dict[type, str] = {
    Push: "push",
    Pull: "pull",
    Heartbeat: "heartbeat",
    PushAck: "push_ack",
    PullReply: "pull_reply",
    HeartbeatAck: "heartbeat_ack",
    ErrorReply: "error",
}


@dataclass(frozen=True, slots=True)
class Frame:
    """The envelope of every message: who, when, which sequence number, and the body."""

    device_id: bytes
    seq: int
    timestamp_ms: int
    body: Body
    #: Which server secret the device key was derived from.
    key_id: int = 0
    #: False only for an unsigned error reply: a TV may back off on it, never change state.
    authenticated: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        _uuid("device_id", self.device_id, MalformedFrame)
        _uint("seq", self.seq, _U64, MalformedFrame)
        _uint("timestamp_ms", self.timestamp_ms, _U64, MalformedFrame)
        _uint("key_id", self.key_id, _U32, MalformedFrame)
        if type(self.body) not in BODY_KINDS:
            raise MalformedFrame(f"frame body must be a protocol message, got {type(self.body).__name__}")

    @property
    def kind(self) -> str:
        """The body's kind: push, pull, heartbeat, push_ack, pull_reply, heartbeat_ack or error."""
        return BODY_KINDS[type(self.body)]
