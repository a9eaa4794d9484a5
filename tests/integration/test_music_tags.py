"""The music tagger through a real broker: a fluidsynth music clip replayed on audio.frames comes back as
audio.tags records (schema-valid) equal to the offline tagger's on the same samples."""
from __future__ import annotations

import subprocess
import threading
import uuid

import numpy as np
import soundfile as sf

from consumers.tagger import TaggerService
from streamproc import audio
from streamproc.kafka import ensure_topics
from streamproc.musicnn import tagging

from .helpers import cli, consume, validate, values


def test_replayed_music_gets_tags_equal_to_offline(kafka_conf, topics, tmp_path):
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
