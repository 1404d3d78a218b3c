"""Helpers for the sync-server tests (no tests here): a real server process and a device that speaks the protocol."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from omega.constellation.codebook import DIM, Codebook, build_codebook
from omega.protocol import (
    DOWNLINK,
    EmbeddingPattern,
    Frame,
    Pull,
    Push,
    TaskType,
    decode_frame,
    derive_device_key,
    encode_frame,
    now_ms,
    quantize,
)

SECRET = "server-test-secret-0123456789abcdef"
KEY_ID = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_codebook() -> Codebook:
    """16 well-separated cells (as in conftest), so a test can aim a vector at a cell."""
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(16, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, 8, axis=0) + 0.02 * rng.normal(size=(128, DIM))
    return build_codebook(x.astype(np.float32), k=16, seed=0, iters=10, version=3)


def near(codebook: Codebook, cell: int, seed: int, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = codebook.centroids[cell].astype(np.float64) + spread * rng.normal(size=DIM) / np.sqrt(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def pattern(vector: np.ndarray, *, uses: int = 20, rate: float = 0.9, task: TaskType = TaskType.CONTENT_MATCH,
            bits: int = 8, seed: int = 0) -> EmbeddingPattern:  # fmt: skip
    return EmbeddingPattern(
        id=hashlib.sha256(b"pattern-%d" % seed).digest()[:16], version=1, embedding=quantize(vector, bits),
        success_rate=rate, uses=uses, successes=int(round(rate * uses)), task_type=task,
    )  # fmt: skip


@dataclass
class Device:
    """A TV as the server sees it: id, key, and a seq counter that never repeats."""

    n: int
    secret: bytes = SECRET.encode()
    key_id: int = KEY_ID
    seq: int = 0
    device_id: bytes = field(init=False)
    key: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.device_id = hashlib.sha256(b"server-test-device-%d" % self.n).digest()[:16]
        self.key = derive_device_key(self.secret, self.device_id, self.key_id)

    def frame(self, body, *, seq: int | None = None, timestamp_ms: int | None = None, device_id: bytes | None = None,
              key: bytes | None = None) -> bytes:  # fmt: skip
        if seq is None:
            self.seq += 1
            seq = self.seq
        frame = Frame(device_id or self.device_id, seq, now_ms() if timestamp_ms is None else timestamp_ms, body,
                      key_id=self.key_id)  # fmt: skip
        return encode_frame(frame, key or self.key)

    def decode(self, data: bytes) -> Frame:
        return decode_frame(data, self.key, expect=DOWNLINK)

    def push(self, patterns=(), transitions=None, batch_id: bytes | None = None) -> tuple[bytes, bytes]:  # noqa: ANN001
        batch = batch_id or os.urandom(16)
        return batch, self.frame(Push(batch_id=batch, patterns=tuple(patterns), transitions=transitions))

    def pull(self, since: int, max_bytes: int = 5000) -> bytes:
        return self.frame(Pull(since=since, max_bytes=max_bytes))


class ServerProcess:
    """`omega serve` in a subprocess on a free loopback port, with its stderr in a file."""

    def __init__(self, folder: Path, *, store: str | None = None, codebook: Path | None = None, **env: str) -> None:
        self.folder = folder
        self.store = store or f"sqlite:{folder / 'constellation.db'}"
        self.codebook = codebook
        self.env = env
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = folder / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        self.port = free_port()
        env = {**os.environ, "OMEGA_SECRET": SECRET, "OMEGA_DRAIN_TIMEOUT_S": "5", **self.env}
        args = [sys.executable, "-c", "from omega.cli import run; run()", "serve", "--port", str(self.port),
                "--store", self.store, "--shard-id", "shard-test"]  # fmt: skip
        if self.codebook is not None:
            args += ["--codebook", str(self.codebook)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            if f"listening on http://127.0.0.1:{self.port}" in self.log.read_text():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def post(self, data: bytes, client: httpx.Client | None = None) -> httpx.Response:
        if client is not None:
            return client.post(self.url + "/v1/sync", content=data, headers={"content-type": "application/octet-stream"})
        return httpx.post(self.url + "/v1/sync", content=data, headers={"content-type": "application/octet-stream"})

    def metric(self, name: str, **labels: str) -> float:
        """Value of one sample from /metrics (0 if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def stats(self) -> dict:
        return httpx.get(self.url + "/v1/stats").json()

    def terminate(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
