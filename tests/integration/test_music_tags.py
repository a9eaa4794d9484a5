"""The music tagger through a real broker: a fluidsynth music clip replayed on audio.frames comes back as
audio.tags records (schema-valid) equal to the offline tagger's on the same samples, and its genre/mood
summary over the last minute (streamproc/musicnn/summary.py) is what watch, report and /v1/streams show."""
from __future__ import annotations

import subprocess
import threading
import uuid

import numpy as np
import soundfile as sf

from consumers.tagger import TaggerService
from streamproc import audio
from streamproc import cli as audiostream
from streamproc.kafka import ensure_topics
from streamproc.musicnn import tagging
from streamproc.musicnn.summary import RollingTags

from .helpers import cli, consume, validate, values, wait_for


def test_replayed_music_gets_tags_equal_to_offline(kafka_conf, topics, start_analyzer, tmp_path):
    from streamproc.training import dataset
    rng = np.random.default_rng(2323)
    speech = np.asarray(dataset.GENERATORS["speech"](rng, 4 * 16000, tmp_path)[0])
    music = np.asarray(dataset.GENERATORS["music"](rng, 12 * 16000, tmp_path)[0])
    y = np.concatenate([0.5 * speech / np.abs(speech).max(), 0.5 * music / np.abs(music).max()])
    wav = tmp_path / "speech_then_music.wav"
    sf.write(wav, y.astype(np.float32), 16000)
    offline = tagging.tag_pcm(audio.to_s16(audio.load(wav, 16000)), tagging.load(), "radio")
    assert offline and all(r["start_s"] >= 2.9 for r in offline), [(r["start_s"], r["music_share"]) for r in offline]

    t = topics()
    start_analyzer(t)  # predictions and features of the same stream: the views join them with the tags
    tags_topic = f"test.{uuid.uuid4().hex[:8]}.tags"
    ensure_topics(kafka_conf, {tags_topic: 1})
    service = TaggerService(dict(kafka_conf), tagging.load(), frames_topic=t["frames"], tags_topic=tags_topic,
                            group_id=f"test-tagger-{uuid.uuid4().hex[:8]}")
    th = threading.Thread(target=service.run, daemon=True)
    th.start()
    try:
        proc = subprocess.run(cli("produce-file", str(wav), "--stream-id", "radio", "--topic", t["frames"],
                                  "-b", kafka_conf["bootstrap.servers"], "--speed", "max", "-q"),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        live = values(consume(kafka_conf, tags_topic, count=len(offline), settle=2.0, timeout=120))
    finally:
        service.stop()
        th.join(30)
    assert not th.is_alive()
    assert len(live) == len(offline)
    for got, want in zip(sorted(live, key=lambda r: r["window_index"]), offline):
        validate(got, "audio.tags")
        assert got["window_index"] == want["window_index"] and got["music_share"] == want["music_share"]
        assert [t for t, _ in got["top"]] == [t for t, _ in want["top"]]
        assert max(abs(got["tags"][k] - want["tags"][k]) for k in want["tags"]) <= 1e-4

    # -- genre and mood over the last minute of stream time: one summary, three views ----------------------
    boot = kafka_conf["bootstrap.servers"]
    rolling, changes = RollingTags(), []  # what the offline records give, summary after summary
    for rec in offline:
        rolling.add(rec)
        if not changes or changes[-1] != rolling.summary("radio").text():
            changes.append(rolling.summary("radio").text())
    want = rolling.summary("radio")
    assert want.windows == len(offline) and want.text().startswith("genre: ")

    w = subprocess.run(cli("watch", "-b", boot, "--topic", tags_topic, "--tags", "--from-beginning",
                           "--max", str(len(changes)), "--idle-timeout", "20"), capture_output=True, text=True,
                       timeout=120)
    assert w.returncode == 0, w.stderr
    lines = w.stdout.splitlines()  # a line each time the stream's summary changed
    assert [ln.split("  music  ")[1].rsplit("  (", 1)[0] for ln in lines] == changes, w.stdout
    assert lines[-1].startswith("radio ") and lines[-1].endswith(f"({len(offline)} windows)")

    from streamproc.inference import ModelBundle
    n = len(ModelBundle.load("soundtype").spec.window_bounds(len(y)))
    rep = tmp_path / "report"  # the tags topic alone (with --topic the same section joins index.html: test_report)
    assert audiostream.main(["report", "--tags-topic", tags_topic, "--since", "10m", "--out", str(rep), "-b",
                             boot]) == 0
    page = (rep / "music.html").read_text()
    assert (rep / "tags.png").stat().st_size > 10_000 and 'src="tags.png"' in page
    genres = ", ".join(f"{g} {v:.2f}" for g, v in want.top("genre", 3))
    assert f"<td>radio</td><td>musictags:1</td><td>{len(offline)}</td>" in page and genres in page, page

    from fastapi.testclient import TestClient

    from consumers.api import LiveStreams, create_app
    live = LiveStreams(dict(kafka_conf), t["predictions"], t["features"], ModelBundle.load("soundtype").spec,
                       tags_topic=tags_topic).start()
    try:
        client = TestClient(create_app(live=live))

        def music():
            got = client.get("/v1/streams").json()
            m = got[0]["music"] if got else None
            return m if m and m["windows"] == len(offline) and got[0]["window_end_s"] >= n * 0.5 else None
        m = wait_for(music, 60, "/v1/streams to show radio's music")
        sim = client.get("/v1/similar", params={"id": "radio", "space": "music"})
        assert sim.status_code == 200 and sim.json()["query"] == "radio"  # live streams are in the music space
    finally:
        live.stop()
    assert m["model"] == "musictags:1" and m["text"] == want.text() and m["span_s"] == 60
    assert m["top"]["genre"][0][0] == want.top("genre", 1)[0][0]
    assert abs(m["top"]["genre"][0][1] - want.top("genre", 1)[0][1]) <= 1e-3
