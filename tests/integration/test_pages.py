"""The live page and the microphone page in a real browser (issue #18): headless Debian chromium whose fake
microphone plays a WAV file streams it through /record into the real broker; the analyzer labels it; the live
page shows the stream with those labels. Screenshots go to the test's directory (and to docs/images with
AUDIOSTREAM_UPDATE_SCREENSHOTS=1)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from .browser import Browser, chromium
from streamproc.kafka import ensure_topics

from .helpers import consume, running_serve, validate, values

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def page_server(kafka_conf, topics, start_analyzer, tmp_path):
    if chromium() is None:
        pytest.skip("no chromium (deploy/setup.sh installs Debian's chromium)")
    t = topics()
    t["detections"] = t["frames"].replace(".frames", ".detections")
    t["transcripts"] = t["frames"].replace(".frames", ".transcripts")
    ensure_topics(kafka_conf, {t["detections"]: 1, t["transcripts"]: 1})
    start_analyzer(t)
    yield from serve_for(kafka_conf, t, tmp_path, "--detections-topic", t["detections"],
                         "--transcripts-topic", t["transcripts"])


def serve_for(kafka_conf, t, tmp_path, *extra):
    with running_serve(kafka_conf, t, tmp_path, "--streams-since", "60", *extra) as (base, _):
        yield base, t


def a_detection(stream_id: str) -> dict:
    """One audio.detections record as `audiostream detect` writes it (checked against the published schema)."""
    rec = {"schema": 1, "id": f"{stream_id}/{'0' * 32}/1728000", "stream_id": stream_id, "session_id": "0" * 32,
           "window_index": 12, "window_start_s": 36.0, "window_end_s": 39.0, "start_sample": 1728000,
           "end_sample": 1872000, "sample_rate": 48000, "gap": False, "padded": False,
           "detections": [{"label": "Turdus merula_Eurasian Blackbird", "scientific_name": "Turdus merula",
                           "common_name": "Eurasian Blackbird", "confidence": 0.87},
                          {"label": "Erithacus rubecula_European Robin", "scientific_name": "Erithacus rubecula",
                           "common_name": "European Robin", "confidence": 0.41}],
           "model": {"task": "birdnet", "version": "2.4"}, "threshold": 0.25, "filters": {},
           "rms_dbfs": -31.5, "capture_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "latency_ms": 48.2, "analyzer": "test"}
    validate(rec, "audio.detections")
    return rec


def a_transcript(stream_id: str, *, final: bool) -> dict:
    """One audio.transcripts record as the transcriber writes it (checked against the published schema)."""
    utterance = f"{stream_id}/{'0' * 32}/32000"
    rec = {"schema": 1, "id": utterance if final else f"{utterance}/partial/56000", "stream_id": stream_id,
           "session_id": "0" * 32, "start_sample": 32000, "end_sample": 72000 if final else 56000,
           "sample_rate": 16000, "start_s": 2.0, "end_s": 4.5 if final else 3.5,
           "text": "the birch canoe slid" + (" on the smooth planks" if final else ""), "words": None,
           "confidence": -0.21, "language": "en", "model": {"task": "transcription", "version": "1"},
           "final": final, "reason": "silence" if final else "partial"}
    if not final:
        rec["utterance_id"] = utterance
    validate(rec, "transcript")
    return rec


def test_browser_microphone_to_labels_on_the_live_page(page_server, kafka_conf, tmp_path):
    base, t = page_server
    sr = 48000  # what a browser's microphone usually runs at: the page's AudioContext resamples to 16 kHz
    tt = np.arange(6 * sr) / sr
    clip = 0.3 * np.sin(2 * np.pi * 440 * tt) * (1 + 0.5 * np.sin(2 * np.pi * 2 * tt))
    wav = tmp_path / "mic.wav"
    sf.write(wav, clip.astype(np.float32), sr, subtype="PCM_16")
    browser = Browser(tmp_path / "profile", fake_audio=wav)
    try:
        browser.goto(f"{base}/record?stream=browser-mic&autostart=1")
        browser.wait_for("document.body.dataset.state === 'streaming'", "the page to stream the microphone")
        preds = values(consume(kafka_conf, t["predictions"], count=6, timeout=90))
        assert len(preds) >= 6 and {p["stream_id"] for p in preds} == {"browser-mic"}
        shots = [browser.screenshot(tmp_path / "record.png")]
        from confluent_kafka import Producer  # one garbage record for the stream: a dead letter on its row
        garbage = Producer(dict(kafka_conf))
        garbage.produce(t["frames"], value=b"not a frame", key=b"browser-mic")
        garbage.flush(10)

        browser.goto(f"{base}/")
        row = 'document.querySelector(\'tr[data-stream="browser-mic"]\')'
        try:
            browser.wait_for(f"!!{row}", "the live page to list the stream")
        except AssertionError:
            page_status = browser.js("document.getElementById('status').textContent")
            raise AssertionError(f"/v1/streams: {httpx.get(base + '/v1/streams', timeout=5).text[:500]}; "
                                 f"page status: {page_status}") from None
        label = browser.js(f"{row}.querySelector('.label').textContent")
        labels = {p["label"] for p in preds} | {p["label"] for p in values(consume(kafka_conf, t["predictions"],
                                                                                     timeout=2))}
        assert label in labels, (label, labels)
        windows = int(browser.js(f"{row}.cells[6].textContent"))
        assert windows >= 1
        browser.wait_for(f"{row}.cells[8].textContent === '1'", "the dead letter counted on the stream's row")
        assert browser.js("document.getElementById('status').textContent").startswith("1 stream(s)")
        browser.js("document.getElementById('search').value = 'nothing-like-it';"
                   "document.getElementById('search').dispatchEvent(new Event('input'))")
        assert browser.js("document.querySelectorAll('#streams tbody tr').length") == 0  # search filters
        browser.js("document.getElementById('search').value = '';"
                   "document.getElementById('search').dispatchEvent(new Event('input'))")
        # a detector's window (audiostream detect, BirdNET) in "Recent detections": best species, how many more
        garbage.produce(t["detections"], value=json.dumps(a_detection("garden")).encode(), key=b"garden")
        garbage.flush(10)
        item = "document.querySelector('#detections li')"
        browser.wait_for(f"!!{item}", "the live page to list the detection")
        text = browser.js(f"{item}.textContent")
        assert text == "garden 36.0-39.0 s Eurasian Blackbird (Turdus merula) 0.87 +1 more", text
        # a transcriber's partial then final of one utterance in "Recent transcripts": the final only
        for final in (False, True):
            garbage.produce(t["transcripts"], value=json.dumps(a_transcript("kitchen", final=final)).encode(),
                            key=b"kitchen")
        garbage.flush(10)
        caption = "document.querySelector('#transcripts li')"
        browser.wait_for(f"!!{caption}", "the live page to list the transcript")
        assert browser.js("document.querySelectorAll('#transcripts li').length") == 1
        text = browser.js(f"{caption}.textContent")
        assert text == "kitchen 2.0-4.5 s the birch canoe slid on the smooth planks", text
        shots.append(browser.screenshot(tmp_path / "live.png"))
    finally:
        browser.close()
    for shot in shots:
        assert shot.stat().st_size > 5000  # a rendered page, not an empty canvas
        if os.environ.get("AUDIOSTREAM_UPDATE_SCREENSHOTS"):
            (REPO / "docs" / "images").mkdir(exist_ok=True)
            shutil.copy(shot, REPO / "docs" / "images" / shot.name)


def test_pages_need_no_internet(page_server):
    """Every script and stylesheet the pages load comes from this server (offline sites, no CDN)."""
    base, _ = page_server
    import re
    for path in ("/", "/record"):
        html = httpx.get(base + path, timeout=10).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(r.startswith("/") for r in refs), refs
        for r in refs:
            if r.startswith("/static/"):
                assert httpx.get(base + r, timeout=10).status_code == 200, r
    assert httpx.get(base + "/static/recorder-worklet.js", timeout=10).status_code == 200


def test_live_streams_appear_when_the_topics_are_created_after_serve_starts(kafka_conf, start_analyzer, tmp_path):
    """serve started before the analyzer made its output topics (a compose stack, a fresh cluster) still
    shows the streams once they exist (before: one failed read, then nothing until a restart)."""
    import uuid

    from streamproc.kafka import ensure_topics
    tag = uuid.uuid4().hex[:8]
    t = {k: f"late.{tag}.{k}" for k in ("frames", "predictions", "features", "deadletter")}
    gen = serve_for(kafka_conf, t, tmp_path)
    base = next(gen)[0]
    try:
        ensure_topics(kafka_conf, {name: 1 for name in t.values()})
        start_analyzer(t)
        buf = __import__("io").BytesIO()
        sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * 16000) / 16000)).astype(np.float32), 16000,
                 format="WAV")
        assert httpx.put(f"{base}/v1/streams/late-one/audio", content=buf.getvalue(), timeout=60).status_code == 200
        deadline = time.monotonic() + 90
        while not any(s["stream_id"] == "late-one" for s in httpx.get(base + "/v1/streams", timeout=5).json()):
            assert time.monotonic() < deadline, httpx.get(base + "/v1/streams", timeout=5).text
            time.sleep(0.5)
    finally:
        gen.close()
