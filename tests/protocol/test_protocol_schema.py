"""The generated module matches proto/omega.proto and the runtime; frame sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omega.protocol import Frame, Heartbeat, Tier, decode_frame, derive_device_key, encode_frame, omega_pb2
from omega.protocol.sizes import push_size_report

REPO = Path(__file__).resolve().parents[2]


def test_generated_module_is_up_to_date_with_the_proto() -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "gen_proto"), "--check"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_generated_module_loads_with_the_installed_runtime() -> None:
    assert omega_pb2.DESCRIPTOR.package == "omega.v1"
    assert {f.name for f in omega_pb2.Frame.DESCRIPTOR.oneofs_by_name["body"].fields} == {
        "push", "pull", "heartbeat", "push_ack", "pull_reply", "heartbeat_ack", "error",
    }


def test_heartbeat_fits_64_bytes_with_realistic_maxima() -> None:
    # seq: a per-device counter (< 2**28 is 500 years of minutely syncs);
    # counters: the SkillLibrary holds at most 10,000 patterns.
    device = b"\xff" * 16
    key = derive_device_key(b"s" * 32, device, 100)
    frame = Frame(device, seq=2**28 - 1, timestamp_ms=4_102_444_800_000,  # year 2100
                  key_id=100, body=Heartbeat(Tier.CASUAL, outbox=10_000, patterns=10_000))
    data = encode_frame(frame, key)
    assert len(data) <= 64
    assert decode_frame(data, key) == frame


def test_size_report() -> None:
    report = push_size_report()
    assert set(report) >= {
        "heartbeat", "push_1x8bit", "push_5x8bit", "push_10x8bit", "push_1x4bit", "push_5x4bit",
        "push_10x4bit", "push_transitions_50_item", "push_transitions_50_cell", "pull_reply_page",
    }
    assert report["heartbeat"] <= 64
    for bits in (8, 4):
        assert report[f"push_1x{bits}bit"] < report[f"push_5x{bits}bit"] < report[f"push_10x{bits}bit"]
    # a pattern's codes dominate: 384 B at 8 bits, 192 B at 4 bits
    assert 384 < report["push_1x8bit"] < 1024
    assert report["push_1x4bit"] < report["push_1x8bit"] - 150
    # "a few bytes per edge"
    assert report["push_transitions_50_cell"] < report["push_transitions_50_item"] < 50 * 8
    assert report["pull_reply_page"] <= 5000
    assert push_size_report() == report  # deterministic


def test_the_package_loads_protobuf_only_when_the_codec_is_used() -> None:
    """A TV that only ranks reads constants from omega.protocol and never encodes a frame: the codec's names (and
    protobuf, ~2.3 MB of RSS) load on first use, as attributes and by `from omega.protocol import ...`."""
    script = (
        "import sys, omega.protocol as p\n"
        "from omega.protocol import EMBEDDING_DIM, TaskType, quantize\n"
        "assert 'google.protobuf' not in sys.modules and 'omega.protocol.codec' not in sys.modules\n"
        "from omega.protocol import decode_frame\n"
        "from omega.protocol.codec import decode_frame as direct, PROTOCOL_VERSION\n"
        "assert decode_frame is direct and p.PROTOCOL_VERSION == PROTOCOL_VERSION and 'google.protobuf' in sys.modules\n"
        "assert all(hasattr(p, n) for n in p.__all__) and set(p.__all__) <= set(dir(p))\n"
        "try:\n    p.no_such_name\nexcept AttributeError as e:\n    assert 'no_such_name' in str(e)\nelse:\n    raise SystemExit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
