"""The operator dashboard and the trends endpoint of a real `omega serve`, rendered by a real headless Chromium.

Devices push, pull and hold WebSockets by tier; then the JSON endpoints and the
page as the browser renders it (DOM and screenshot) must show those numbers.
Without a chromium binary the browser cases skip (scripts/browser installs one).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from omega.protocol import Heartbeat, HeartbeatAck, PullReply, PushAck, TaskType, Tier, now_ms

from .server_support import Device, ServerProcess, near, pattern, small_codebook

CODEBOOK = small_codebook()
TASK = int(TaskType.CONTENT_MATCH)
TASK_NAME = "content_match"
HOT, WARM = 2, 9  # cells: 4 devices push HOT, 3 of them also WARM (both reach k_min=3)
TREND_WINDOW_MS = 3000
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass
class Scene:
    server: ServerProcess
    push_window: int  # the trend window every push landed in
    expected: dict[str, int]  # element id on the page -> the number it must show


def _wait_for_window_start(window_ms: int, slack_ms: int = 150) -> int:
    """Sleep until just after a trend-window boundary (so a few quick pushes share one window); returns it."""
    while True:
        now = now_ms()
        if now % window_ms < slack_ms:
            return now // window_ms
        time.sleep((window_ms - now % window_ms) / 1000 + 0.01)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("dashboard")
    CODEBOOK.save(folder / "codebook.npz")
    # The "unknown" WebSocket below never sends a frame: the auth deadline (10 s) would close it before a busy
    # machine reaches the last test of the module, so the scene's server waits longer.
    server = ServerProcess(folder, codebook=folder / "codebook.npz", OMEGA_WS_AUTH_TIMEOUT_S="600",
                           OMEGA_TREND_WINDOW_S=str(TREND_WINDOW_MS / 1000)).start()  # fmt: skip
    with ExitStack() as stack, httpx.Client(base_url=server.url, timeout=10) as client:
        stack.callback(server.kill)
        devices = [Device(7000 + i) for i in range(4)]
        window = _wait_for_window_start(TREND_WINDOW_MS)
        for i, dev in enumerate(devices):
            patterns = [pattern(near(CODEBOOK, HOT, 100 + i), seed=100 + i)]
            if i < 3:
                patterns.append(pattern(near(CODEBOOK, WARM, 200 + i), seed=200 + i))
            if i == 0:  # too little evidence: refused per item (the push itself is answered)
                patterns.append(pattern(near(CODEBOOK, 5, 300), uses=3, seed=300))
            ack = dev.decode(server.post(dev.push(patterns)[1], client).content).body
            assert isinstance(ack, PushAck) and ack.accepted == (2 if i < 3 else 1)
        assert now_ms() // TREND_WINDOW_MS == window, "the pushes took longer than a trend window"
        for dev in devices:
            assert isinstance(dev.decode(server.post(dev.pull(0), client).content).body, PullReply)
        forged = devices[0].frame(Heartbeat(Tier.CASUAL))
        assert server.post(forged[:-1] + bytes([forged[-1] ^ 1]), client).status_code == 401  # bad_signature
        # WebSockets held open for the whole module: 2 premium, 1 active, 1 that never said its tier.
        for n, tier in enumerate((Tier.PREMIUM, Tier.PREMIUM, Tier.ACTIVE, None)):
            ws = stack.enter_context(connect(f"ws://127.0.0.1:{server.port}/v1/ws", compression=None))
            if tier is not None:
                dev = Device(7100 + n)
                ws.send(dev.frame(Heartbeat(tier)))
                assert isinstance(dev.decode(ws.recv(timeout=10)).body, HeartbeatAck)
        yield Scene(server, window, {
            "syncs-push": 4, "syncs-pull": 4, "syncs-heartbeat": 3,
            "conn-total": 4, "conn-premium": 2, "conn-active": 1, "conn-casual": 0, "conn-unknown": 1,
            "rejections-total": 2, "devices-hour": 7,
        })  # fmt: skip


def test_trends_endpoint_scores_the_window_of_the_pushes(scene: Scene) -> None:
    deadline = time.monotonic() + 15
    seen: dict[int, dict] = {}
    while time.monotonic() < deadline and len(seen) < 2:
        resp = httpx.get(scene.server.url + "/v1/trends", timeout=5)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
        for entry in resp.json():
            if entry["window"] == scene.push_window and entry["cell"] in (HOT, WARM):
                seen[entry["cell"]] = entry
        time.sleep(0.1)
    assert set(seen) == {HOT, WARM}, f"the push window was never scored: {seen}"
    assert seen[HOT]["count"] == 4 and seen[WARM]["count"] == 3  # distinct devices, exactly (in-process sets)
    assert seen[HOT]["task_type"] == TASK
    assert set(seen[HOT]) == {"task_type", "cell", "window", "count", "baseline", "score", "bursting"}
    assert seen[HOT]["bursting"] is False  # a first window has no baseline to burst from


def test_dashboard_json_holds_the_live_numbers(scene: Scene) -> None:
    data = httpx.get(scene.server.url + "/v1/dashboard.json", timeout=5).json()
    assert data["shard"]["origin"] == "shard-test" and data["shard"]["codebook_version"] == CODEBOOK.version
    assert data["connections"]["by_tier"] == {"premium": 2, "active": 1, "casual": 0, "unknown": 1}
    assert data["syncs"]["total"] == {"push": 4, "pull": 4, "heartbeat": 3}
    assert data["rejections"]["by_reason"] == {"bad_signature": 1, "too_few_samples": 1}
    assert data["devices_hour"] == 7
    top = {(p["task_type"], p["cell"]): p for p in data["patterns"]["top"]}
    assert set(top) == {(TASK, HOT), (TASK, WARM)}  # cell 5 had one device: below k_min, not shown
    assert top[(TASK, HOT)]["support"] == 4 and top[(TASK, WARM)]["support"] == 3
    assert [p["cell"] for p in data["patterns"]["top"]] == [HOT, WARM]  # by support
    assert top[(TASK, HOT)]["task"] == TASK_NAME
    assert abs(top[(TASK, HOT)]["success_rate"] - 0.9) < 0.02
    health = data["health"]
    assert health["ready"] is True and health["draining"] is False
    assert health["store"]["ok"] is True and health["store"]["cells"] >= 2
    assert health["redis"]["configured"] is False and health["federation"] == {"mode": "off"}


def test_dashboard_page_is_self_contained(scene: Scene) -> None:
    resp = httpx.get(scene.server.url + "/dashboard", timeout=5)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    # Nothing fetched from elsewhere: no external scripts, styles, fonts or images.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", resp.text)
    assert "/v1/dashboard.json" in resp.text


# ---- in a real browser -------------------------------------------------------------------
def _browser() -> str:
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary on PATH (scripts/browser installs Debian's chromium when run as root)")


def _run_browser(tmp_path: Path, url: str, *action: str) -> subprocess.CompletedProcess:
    args = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *action, url]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


def _rows(dom: str, tbody_id: str) -> str:
    """The rendered rows of one table body."""
    start = dom.index(f'<tbody id="{tbody_id}">')
    return dom[start : dom.index("</tbody>", start)]


def _text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', dom)
    assert match, f"no element #{element_id} in the rendered page"
    return match.group(1).strip()


def _wait_for_sparkline_data(url: str, timeout_s: float = 30.0) -> None:
    """The server samples its counters every few seconds; on a loaded machine the samples the
    sparkline needs (two rates, three samples) can come late, so wait for them instead of trusting timing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(httpx.get(url + "/v1/dashboard.json", timeout=5).json()["syncs"]["history"]) >= 2:
            return
        time.sleep(0.2)
    pytest.fail("the dashboard never had enough counter samples for its sparkline")


def test_browser_renders_the_live_numbers(scene: Scene, tmp_path: Path) -> None:
    _wait_for_sparkline_data(scene.server.url)
    dom = _run_browser(tmp_path, scene.server.url + "/dashboard", "--dump-dom").stdout.decode()
    for element_id, value in scene.expected.items():
        assert _text_of(dom, element_id) == str(value), element_id
    assert _text_of(dom, "shard-origin") == "shard-test"
    assert _text_of(dom, "status-pill") == "serving"
    assert _text_of(dom, "updated") != "never"  # the poll reached the server and rendered
    # Rejections by reason, top patterns (support) and trending cells are rows the script built.
    rejections = _rows(dom, "rejections")
    assert '<tr data-reason="too_few_samples"><td>too_few_samples</td><td class="n">1</td>' in rejections
    assert '<tr data-reason="bad_signature"><td>bad_signature</td><td class="n">1</td>' in rejections
    patterns = _rows(dom, "patterns")
    assert f'<tr data-cell="{TASK}:{HOT}"><td>#{HOT}</td><td>{TASK_NAME}</td><td class="n">4</td>' in patterns
    assert f'<tr data-cell="{TASK}:{WARM}"><td>#{WARM}</td><td>{TASK_NAME}</td><td class="n">3</td>' in patterns
    assert patterns.index(f"#{HOT}<") < patterns.index(f"#{WARM}<")  # highest support first
    trends = _rows(dom, "trends")
    assert f'data-cell="{TASK}:{HOT}"' in trends and f'data-cell="{TASK}:{WARM}"' in trends
    # The sparkline got points once the server had two counter samples.
    assert re.search(r'<polyline points="[0-9., ]+"', dom)


def test_browser_screenshot_is_a_rendered_page(scene: Scene, tmp_path: Path) -> None:
    _run_browser(tmp_path, scene.server.url + "/dashboard", f"--screenshot={tmp_path / 'dash.png'}",
                 "--window-size=1280,900")  # fmt: skip
    width, height, pixels = _decode_png((tmp_path / "dash.png").read_bytes())
    assert (width, height) == (1280, 900)
    colours: dict[bytes, int] = {}
    for y in range(0, height, 3):  # every third row is plenty to tell a page from a blank
        row = pixels[y]
        for x in range(0, len(row), 3 * 4):
            px = row[x : x + 3]
            colours[px] = colours.get(px, 0) + 1
    total = sum(colours.values())
    assert len(colours) > 50, f"only {len(colours)} colours: not a rendered page"
    assert max(colours.values()) / total < 0.9, "one colour covers almost everything"


def _decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit RGB/RGBA non-interlaced PNG (stdlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, bytearray(), 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            assert f == 0, f"bad PNG filter {f}"
        rows.append(bytes(line))
        prev = line
    # Normalise to RGBA-sized steps for the caller's sampling.
    if bpp == 3:
        rows = [b"".join(r[i : i + 3] + b"\xff" for i in range(0, len(r), 3)) for r in rows]
    return width, height, rows


# ---- what feeds the trends endpoint with Redis -----------------------------------------
async def test_trend_counts_go_to_redis_and_survive_an_outage(tmp_path: Path) -> None:
    """Shared HLL counts while Redis answers; counted in-process while it does not; the window sums both."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    import redis

    from omega.constellation.crdt import CellKey
    from omega.constellation.settings import ServerSettings
    from omega.constellation.shard_services import close_trends, open_trends

    from .test_server_redis import PrivateRedis

    rds = PrivateRedis(tmp_path)
    rds.start()
    fallbacks: list[int] = []
    settings = ServerSettings(redis=f"redis://127.0.0.1:{rds.port}/0", redis_timeout_s=0.2, redis_cooldown_s=0.3,
                              trend_window_s=60)  # fmt: skip
    tracker = open_trends(settings, "shard-x", lambda: fallbacks.append(1))
    admin = redis.Redis(port=rds.port)
    try:
        cell, t0 = CellKey(TASK, 4), 1_700_000_040_000  # the start of a 60 s window
        await tracker.observe_many([(cell, b"dev-%d" % i) for i in range(3)], t0)
        assert admin.keys("omega:shard-x:trends:*") and not fallbacks
        admin.client_pause(800)  # Redis stops answering (the admin connection excepted)
        await tracker.observe_many([(cell, b"dev-%d" % i) for i in range(3, 5)], t0 + 10)
        assert fallbacks, "the outage was not noticed"
        await asyncio.sleep(1.0)  # the pause and the cool-down end
        await tracker.advance(t0 + 60_000)
        (entry,) = tracker.snapshot()
        assert (entry.cell, entry.count) == (cell, 5)  # 3 in Redis + 2 counted in-process
        assert admin.keys("omega:shard-x:trends:*")  # left to their TTL: other workers may still score the window
    finally:
        await close_trends(tracker)
        rds.kill()
