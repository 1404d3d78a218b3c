"""What left the TVs: decode every uplink frame of a simulation and prove no viewing episode is in it.

An uplink frame may carry only (docs/architecture.md §3): embedding patterns (a quantised
context vector, success_rate, uses, successes, task type), transition batches
(src id, dst id, a quality-weighted count on a 1/16 grid — no support, no
time), pulls (a cursor) and heartbeats (tier and two counters). The audit
decodes each frame with the device's key and checks field by field that
nothing else is set: no episode fields exist in the schema, and the frame's own
timestamp is the send time of the sync, not of a viewing.

What does leave, precisely: per TV, item ids of pairs (a → b) it watched
within 5 steps with a weight. The constellation publishes an edge only with
≥ k_min distinct TVs behind it, clips one TV's weight per edge (edge_w_max)
and once per epoch, and stores no device id beside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
    violations: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.frames > 0 and not self.violations


#: protobuf fields a TV may set, per message (everything else is a violation)
_ALLOWED = {
    "Frame": {"device_id", "seq", "timestamp_ms", "key_id", "push", "pull", "heartbeat"},
    "Push": {"batch_id", "patterns", "transitions"},
    "EmbeddingPattern": {
        "id", "version", "q", "bits", "scale", "offset", "success_rate", "uses", "successes", "task_type",
        "cell_plus_one", "codebook_version",
    },  # fmt: skip
    # src as deltas, dst, weight on the 1/16 grid; `support` is the cloud's and must stay empty uplink
    "TransitionBatch": {"keyspace", "codebook_version", "src_delta", "dst", "weight"},
    "Pull": {"since", "max_bytes", "codebook_version"},
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
    for fd, value in message.ListFields():
        if allowed is not None and fd.name not in allowed:
            out.append(f"{path}.{fd.name}: field not allowed uplink")
            continue
        if fd.message_type is not None and allowed is not None:
            items = list(value) if _repeated(fd) else [value]
            for i, item in enumerate(items):
                _walk(item, f"{path}.{fd.name}[{i}]", out)


def audit_uplink(frames: Iterable[tuple[bytes, bytes]], key_for: Callable[[bytes], bytes]) -> AuditReport:
    """Decode every (device id, frame) with the device's key and check what it carries."""
    return audit_frames(decode_uplink(frames, key_for))


def audit_frames(frames: Iterable[TappedFrame]) -> AuditReport:
    """Check what every decoded uplink frame carries, down to the protobuf fields set."""
    from omega.protocol.codec import _parse, _split  # the raw protobuf, to see every field set

    report = AuditReport()
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
        elif not isinstance(body, (Pull, Heartbeat)):
            report.violations.append(f"frame {report.frames}: {frame.kind} is not an uplink message")
        _, flags, _, raw, _ = _split(data, len(data))
        message = _parse(raw, flags, 1 << 20)
        assert isinstance(message, pb.Frame)
        _walk(message, f"frame{report.frames}", report.violations)
    return report
