"""The ingest gateway (issue #18): audio over a WebSocket or an HTTP upload into the real broker, analysed by
the real analyzer; refusals with a reason; a dropped socket ends the stream instead of crashing anything."""
from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streamproc import wire

from .helpers import consume, running_serve, values

pytestmark = pytest.mark.integration
SR = 16000


@pytest.fixture
def gateway(kafka_conf, topics, tmp_path):
    """A real `serve` with Kafka (ingest onto fresh topics, a token required)."""
    t = topics()
    with running_serve(kafka_conf, t, tmp_path, "--ingest-token", "s3cret") as (base, _):
        yield base.removeprefix("http://"), t


def tone_and_noise(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    y = 0.3 * np.sin(2 * np.pi * 440 * t)
    y[len(y) // 2:] = 0.2 * np.random.default_rng(0).standard_normal(len(y) - len(y) // 2)
    return (y * 32767).astype(np.int16)


def test_websocket_stream_is_framed_like_a_microphone_and_analysed(gateway, kafka_conf, start_analyzer):
    base, t = gateway
    start_analyzer(t)
    pcm = tone_and_noise(4.0)
    with connect(f"ws://{base}/v1/streams/kitchen/ws?rate={SR}", additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        for i in range(0, len(pcm), 1000):  # odd sizes: 1000 samples per message, frames are 1600
            ws.send(pcm[i:i + 1000].tobytes())
        ws.send("end")
        summary = __import__("json").loads(ws.recv(timeout=30))
    assert summary["frames"] == 41 and summary["failed"] == 0 and summary["seconds"] == 4.0, summary
    frames = [wire.decode(m.value()) for m in consume(kafka_conf, t["frames"], count=41, timeout=30)]
    assert [f.sequence for f in frames] == list(range(41)) and len({f.session_id for f in frames}) == 1
    assert frames[-1].end_of_stream and not frames[-1].gap_before
    assert np.array_equal(np.concatenate([f.samples[:, 0] for f in frames]), pcm)  # sample-exact
    preds = values(consume(kafka_conf, t["predictions"], count=7, timeout=60))
    assert len(preds) == 7 and {p["stream_id"] for p in preds} == {"kitchen"}  # 4 s: 7 windows of 1 s / 0.5 s


def test_http_upload_is_replayed_as_one_stream(gateway, kafka_conf, start_analyzer):
    base, t = gateway
    start_analyzer(t)
    buf = io.BytesIO()
    sf.write(buf, tone_and_noise(3.0), SR, format="FLAC")
    r = httpx.put(f"http://{base}/v1/streams/porch/audio", content=buf.getvalue(),
                  headers={"Authorization": "Bearer s3cret"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["frames"] == 30 and r.json()["failed"] == 0
    preds = values(consume(kafka_conf, t["predictions"], count=5, timeout=60))
    assert len(preds) == 5 and {p["stream_id"] for p in preds} == {"porch"}
    bad = httpx.put(f"http://{base}/v1/streams/porch/audio", content=b"not audio at all" * 100,
                    headers={"Authorization": "Bearer s3cret"}, timeout=30)
    assert bad.status_code == 415 and "not audio we can decode" in bad.json()["detail"]


def test_refusals_say_why(gateway):
    base, _ = gateway
    r = httpx.put(f"http://{base}/v1/streams/porch/audio", content=b"x", timeout=30)
    assert r.status_code == 401 and "ingest token" in r.json()["detail"]
    with pytest.raises(ConnectionClosed) as no_token, connect(f"ws://{base}/v1/streams/k/ws") as ws:
        ws.recv(timeout=10)
    assert no_token.value.rcvd.code == 1008 and "ingest token" in no_token.value.rcvd.reason
    # faster than real time: 10 s ahead is allowed, then 2x; 60 s of audio at once is refused
    with connect(f"ws://{base}/v1/streams/racer/ws?token=s3cret") as ws:
        with pytest.raises(ConnectionClosed) as fast:
            for _ in range(60):
                ws.send(np.zeros(SR, np.int16).tobytes())
            ws.recv(timeout=10)
    assert fast.value.rcvd.code == 1008 and "faster than real time" in fast.value.rcvd.reason
    with pytest.raises(ConnectionClosed) as bad_rate, connect(f"ws://{base}/v1/streams/k/ws?token=s3cret&rate=5") as ws:
        ws.recv(timeout=10)
    assert bad_rate.value.rcvd.code == 1008 and "rate=5 Hz" in bad_rate.value.rcvd.reason
    metrics = httpx.get(f"http://{base}/metrics", timeout=10).text  # every refusal counted, by reason
    counted = {r: metric(metrics, "audiostream_ingest_refused_total", reason=r) for r in ("token", "too_fast",
                                                                                          "bad_input")}
    assert counted == {"token": 2, "too_fast": 1, "bad_input": 1}, counted


def metric(text: str, name: str, **labels) -> float:
    """One sample of a /metrics page, read with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_a_dropped_socket_ends_the_stream_flagged_not_a_crash(gateway, kafka_conf):
    base, t = gateway
    ws = connect(f"ws://{base}/v1/streams/flaky/ws?token=s3cret")
    ws.send(tone_and_noise(1.0).tobytes())
    ws.socket.close()  # the network drops: no close frame
    frames = [wire.decode(m.value()) for m in consume(
        kafka_conf, t["frames"], until=lambda ms: ms and wire.decode(ms[-1].value()).end_of_stream, timeout=60)]
    assert [f.sequence for f in frames] == list(range(len(frames))) and len(frames) == 11
    assert frames[-1].end_of_stream and frames[-1].gap_before  # ended, and flagged: audio may be missing
    assert httpx.get(f"http://{base}/healthz", timeout=5).status_code == 200  # the server carries on
    deadline = time.monotonic() + 30
    while metric(httpx.get(f"http://{base}/metrics", timeout=5).text,
                 "audiostream_ingest_dropped_connections_total") < 1:
        assert time.monotonic() < deadline, "the dropped connection was not counted"
        time.sleep(0.2)


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_hundred_connections_at_once_all_delivered_memory_bounded(kafka_conf, topics, tmp_path):
    """100 WebSocket streams at real time for 3 s each, at once: every frame lands, in order per stream, and
    the server's memory grows by a bounded amount (measured: see docs/security.md)."""
    import asyncio

    from websockets.asyncio.client import connect as aconnect
    t = topics()
    with running_serve(kafka_conf, t, tmp_path, "--max-connections", "200") as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        before = rss_mib(proc.pid)
        peak = [before]
        chunk = np.zeros(1600, np.int16).tobytes()  # 100 ms

        async def one(i):
            async with aconnect(f"ws://127.0.0.1:{port}/v1/streams/many-{i:03d}/ws") as ws:
                t0 = asyncio.get_running_loop().time()
                for k in range(30):  # paced as a microphone: 30 x 100 ms
                    await ws.send(chunk)
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.1 - asyncio.get_running_loop().time()))
                await ws.send("end")
                return __import__("json").loads(await asyncio.wait_for(ws.recv(), 60))

        async def watch_memory(done):
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib(proc.pid))
                await asyncio.sleep(0.2)

        async def main():
            done = asyncio.Event()
            watcher = asyncio.create_task(watch_memory(done))
            results = await asyncio.gather(*(one(i) for i in range(100)))
            done.set()
            await watcher
            return results

        results = asyncio.run(main())
        assert all(r["frames"] == 31 and r["failed"] == 0 for r in results), results[:3]  # 30 frames + the end
        msgs = consume(kafka_conf, t["frames"], count=3100, timeout=120)
        per_stream: dict = {}
        for m in msgs:
            per_stream.setdefault(m.key(), []).append(wire.decode(m.value()).sequence)
        assert len(per_stream) == 100 and all(s == list(range(31)) for s in per_stream.values())
        growth = peak[0] - before
        print(f"100 connections: RSS {before:.0f} MiB before, peak {peak[0]:.0f} MiB (+{growth:.0f} MiB)")
        assert growth < 150, growth
