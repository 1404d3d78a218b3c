"""What left the TVs: decode every uplink frame of a simulation and prove no viewing episode is in it.

An uplink frame may carry only (docs/architecture.md §3): embedding patterns (a quantised
context vector, success_rate, uses, successes, task type), transition batches
(src id, dst id, and a weight that is always WIRE_EDGE_WEIGHT — no rating, no
support, no time), pulls (a cursor) and heartbeats (tier and two counters). The audit
decodes each frame with the device's key and checks field by field that
nothing else is set: no episode fields exist in the schema, and the frame's own
timestamp is the send time of the sync, not of a viewing.

Given the viewings (device → times), it also checks timing (issue 14): what a
TV learned leaves it only on its contribution schedule, never in the sync right
after a viewing. A contribution is a push of a batch id not seen before, or a
heartbeat whose pattern count changed or whose outbox count grew; before each,
the device must have completed a sync (a heartbeat) after its last viewing.

What does leave, precisely: per TV, item ids of pairs (a → b) it watched
within 5 steps (and liked: only positive transition weight is pushed); with the co-watch upload on
(`BrainConfig.cowatch_window` W), also unordered pairs {a, b} of titles it watched within W distinct titles of
each other, the later one liked, each pair once in the TV's life, weight 1 (no rating, no order, no time).
The constellation publishes an edge only with
≥ k_min distinct TVs behind it, clips one TV's weight per edge (edge_w_max)
and once per epoch, and stores no device id beside it.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from omega.brain.sync.outbox import WIRE_EDGE_WEIGHT
from omega.protocol import UPLINK, Frame, Heartbeat, Pull, Push, decode_frame
from omega.protocol import omega_pb2 as pb


@dataclass(frozen=True)
class TappedFrame:
    """One uplink frame as it crossed the wire: sender, its bytes and the frame they decode to."""

    device_id: bytes
    data: bytes
    frame: Frame


def decode_uplink(frames: Iterable[tuple[bytes, bytes]], key_for: Callable[[bytes], bytes]) -> list[TappedFrame]:
    """Decode every (device id, frame bytes) with the device's key (verifies each tag)."""
    keys: dict[bytes, bytes] = {}
    out = []
    for device_id, data in frames:
        key = keys.get(device_id) or keys.setdefault(device_id, key_for(device_id))
        out.append(TappedFrame(device_id, data, decode_frame(data, key, expect=UPLINK)))
    return out


@dataclass
class AuditReport:
    frames: int = 0
    kinds: Counter = field(default_factory=Counter)
    patterns: int = 0
    edges: int = 0
    cowatch: int = 0  # co-watched pairs pushed (Keyspace.COWATCH)
    violations: list[str] = field(default_factory=list)
    #: Frames that carried something newly learned (checked against the viewings when given).
    contributions: int = 0

    @property
    def clean(self) -> bool:
        return self.frames > 0 and not self.violations


#: protobuf fields a TV may set, per message (everything else is a violation)
_ALLOWED = {
    "Frame": {"device_id", "seq", "timestamp_ms", "key_id", "push", "pull", "heartbeat"},
    "Push": {"batch_id", "patterns", "transitions", "cowatch"},
    "EmbeddingPattern": {
        "id", "version", "q", "bits", "scale", "offset", "success_rate", "uses", "successes", "task_type",
        "cell_plus_one", "codebook_version",
    },  # fmt: skip
    # src as deltas, dst, weight on the 1/16 grid; `support` is the cloud's and must stay empty uplink
    "TransitionBatch": {"keyspace", "codebook_version", "src_delta", "dst", "weight"},
    "Pull": {"since", "max_bytes", "codebook_version", "refined_since"},
    "Heartbeat": {"tier", "outbox", "patterns"},
}


def _repeated(fd) -> bool:  # noqa: ANN001
    # protobuf >= 5 has `is_repeated`; older versions only `label`
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == 3


def _walk(message, path: str, out: list[str]) -> None:  # noqa: ANN001  (a protobuf message)
    name = message.DESCRIPTOR.name
    allowed = _ALLOWED.get(name, set())
    if name not in _ALLOWED:
        out.append(f"{path}: unexpected message type {name}")
        return
    from google.protobuf import unknown_fields

    for unknown in unknown_fields.UnknownFieldSet(message):  # bytes no field of the schema names
        out.append(f"{path}: unknown protobuf field {unknown.field_number}")
    for fd, value in message.ListFields():
        if allowed is not None and fd.name not in allowed:
            out.append(f"{path}.{fd.name}: field not allowed uplink")
            continue
        if fd.message_type is not None and allowed is not None:
            items = list(value) if _repeated(fd) else [value]
            for i, item in enumerate(items):
                _walk(item, f"{path}.{fd.name}[{i}]", out)


def audit_uplink(
    frames: Iterable[tuple[bytes, bytes]],
    key_for: Callable[[bytes], bytes],
    viewings: Mapping[bytes, Sequence[float]] | None = None,
) -> AuditReport:
    """Decode every (device id, frame) with the device's key and check what it carries (and when, given viewings)."""
    return audit_frames(decode_uplink(frames, key_for), viewings)


def audit_timing(frames: Sequence[TappedFrame], viewings: Mapping[bytes, Sequence[float]], report: AuditReport) -> None:
    """No contribution in the sync right after a viewing (see the module docstring); frames in send order."""
    by_device: dict[bytes, list[TappedFrame]] = defaultdict(list)
    for tapped in frames:
        by_device[tapped.device_id].append(tapped)
    for device, sent in by_device.items():
        seen_views = sorted(int(round(v * 1000)) for v in viewings.get(device, ()))
        beats: list[int] = []  # heartbeat times so far (each ends a sync)
        batches: set[bytes] = set()
        last: tuple[int, int] | None = None
        for tapped in sent:
            frame, body = tapped.frame, tapped.frame.body
            t = frame.timestamp_ms
            new = False
            if isinstance(body, Push) and body.batch_id not in batches:
                batches.add(body.batch_id)
                new = True
            elif isinstance(body, Heartbeat):
                now = (body.outbox, body.patterns)
                new = last is not None and (now[1] != last[1] or now[0] > last[0])
                last = now
            if new:
                report.contributions += 1
                i = bisect.bisect_left(seen_views, t)
                if i:  # the last viewing before this frame: a complete sync must lie between them
                    viewed = seen_views[i - 1]
                    j = bisect.bisect_right(beats, viewed)
                    if j == len(beats) or beats[j] >= t:
                        report.violations.append(
                            f"device {device.hex()[:8]}: {frame.kind} at {t} ms carries what was learned in the "
                            f"viewing at {viewed} ms, in the sync right after it"
                        )
            if isinstance(body, Heartbeat):
                beats.append(t)


def audit_frames(frames: Iterable[TappedFrame], viewings: Mapping[bytes, Sequence[float]] | None = None) -> AuditReport:
    """Check what every decoded uplink frame carries, down to the protobuf fields set (and when, given viewings)."""
    from omega.protocol.codec import _parse, _split  # the raw protobuf, to see every field set

    report = AuditReport()
    frames = list(frames)
    if viewings is not None:
        audit_timing(frames, viewings, report)
    for tapped in frames:
        report.frames += 1
        frame, data = tapped.frame, tapped.data
        report.kinds[frame.kind] += 1
        if frame.device_id != tapped.device_id:
            report.violations.append(f"frame {report.frames}: sent under another device id")
        body = frame.body
        if isinstance(body, Push):
            report.patterns += len(body.patterns)
            if body.transitions is not None:
                report.edges += len(body.transitions.edges)
                if any(e.support for e in body.transitions.edges):
                    report.violations.append(f"frame {report.frames}: a push claims support")
                if any(e.weight != WIRE_EDGE_WEIGHT for e in body.transitions.edges):
                    report.violations.append(f"frame {report.frames}: a transition weight tells a rating")
            if body.cowatch is not None:  # the message checks src < dst and weight 1; no support may ride along
                report.cowatch += len(body.cowatch.edges)
                if any(e.support or e.weight != WIRE_EDGE_WEIGHT for e in body.cowatch.edges):
                    report.violations.append(f"frame {report.frames}: a co-watched pair carries more than its ids")
        elif not isinstance(body, (Pull, Heartbeat)):
            report.violations.append(f"frame {report.frames}: {frame.kind} is not an uplink message")
        _, flags, _, raw, _ = _split(data, len(data))
        message = _parse(raw, flags, 1 << 20)
        assert isinstance(message, pb.Frame)
        _walk(message, f"frame{report.frames}", report.violations)
    return report
