"""Helpers for the sync-server tests (no tests here): a real server process and a device that speaks the protocol."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis

from omega.constellation.codebook import Codebook, build_codebook
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
from omega.protocol import EMBEDDING_DIM
from omega.sim.load.server_process import ServerProcess as BaseServerProcess
from omega.sim.load.server_process import free_port

SECRET = "server-test-secret-0123456789abcdef"
KEY_ID = 1


def small_codebook() -> Codebook:
    """16 well-separated cells (as in conftest), so a test can aim a vector at a cell."""
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(16, EMBEDDING_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, 8, axis=0) + 0.02 * rng.normal(size=(128, EMBEDDING_DIM))
    return build_codebook(x.astype(np.float32), k=16, seed=0, iters=10, version=3)


def near(codebook: Codebook, cell: int, seed: int, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = codebook.centroids[cell].astype(np.float64) + spread * rng.normal(size=EMBEDDING_DIM) / np.sqrt(EMBEDDING_DIM)
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


class ServerProcess(BaseServerProcess):
    """The product's server process (`omega.sim.load.server_process`) with this suite's secret, shard and
    drain timeout, an optional codebook, and HTTP helpers; its log keeps the server's info lines."""

    def __init__(self, folder: Path, *, store: str | None = None, codebook: Path | None = None, **env: str) -> None:
        # Pulls at the live head: these tests check a pull against the pushes acknowledged just before it.
        # The shipped 5 s snapshot has its own tests (test_server_pull).
        settings = {"OMEGA_DRAIN_TIMEOUT_S": "5", "OMEGA_SHARD_ID": "shard-test", "OMEGA_PULL_SNAPSHOT_S": "0"}
        if codebook is not None:
            settings["OMEGA_CODEBOOK"] = str(codebook)
        super().__init__(folder, secret=SECRET, store=store, env={**settings, **env})

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


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port (no persistence)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
            self.proc.wait(5)

    def page_keys(self) -> list[bytes]:
        return redis.Redis(port=self.port).keys("omega:*:pull:*")
