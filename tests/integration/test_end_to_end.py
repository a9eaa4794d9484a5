"""File replay -> real Kafka -> analyzer -> predictions / features / dead letters."""
from __future__ import annotations

import re
import subprocess
import threading
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from confluent_kafka import Producer

from producers.file import replay
from streamproc.kafka import producer_config
from streamproc import audio, records, wire
from streamproc.features import reference_window_vector
from streamproc.windowing import WindowSpec

from .helpers import cli, consume, deadletter_header_object, validate, values, wait_for

pytestmark = pytest.mark.integration
SPEC = WindowSpec()  # the starter bundle's spec
FILE_SR = 22050      # the test file is not at the stream rate: the producer resamples


@pytest.fixture
def tone_then_noise(tmp_path, rng):
    """10 s at 22.05 kHz: 5 s of a 440 Hz tone, then 5 s of white noise."""
    t = np.arange(5 * FILE_SR) / FILE_SR
    y = np.concatenate([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * rng.standard_normal(t.size)])
    path = tmp_path / "tone_then_noise.wav"
    sf.write(path, y.astype(np.float32), FILE_SR, subtype="FLOAT")
    return path


def vector_from_features_record(rec: dict) -> np.ndarray:
    vector = records.features_vector(rec, SPEC)
    assert vector is not None, rec
    return vector


def test_default_model_tells_speech_from_music_through_kafka(kafka_conf, topics, start_analyzer, tmp_path):
    """Without --model the analyzer serves the latest soundtype bundle: 6 s of espeak-ng speech then 6 s of
    fluidsynth music, generated with a seed no training set used, come back labelled speech then music."""
    from streamproc.inference import resolve
    from streamproc.training import dataset
    rng = np.random.default_rng(77)
    parts = [np.asarray(dataset.GENERATORS[lab](rng, 6 * SPEC.sr, tmp_path)[0]) for lab in ("speech", "music")]
    y = np.concatenate([0.5 * p / np.max(np.abs(p)) for p in parts])
    wav = tmp_path / "speech_then_music.wav"
    sf.write(wav, y.astype(np.float32), SPEC.sr)
    t = topics()
    a = start_analyzer(t)
    assert a.bundle.task == "soundtype" and resolve("soundtype").name == a.bundle.version
    proc = subprocess.run(cli("produce-file", str(wav), "--stream-id", "radio", "--topic", t["frames"],
                              "-b", kafka_conf["bootstrap.servers"], "--speed", "max", "-q"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    n = len(SPEC.window_bounds(len(y)))
    preds = values(consume(kafka_conf, t["predictions"], count=n))
    half = 6 * SPEC.sr
    speech = [p["label"] for p in preds if p["end_sample"] <= half]
    music = [p["label"] for p in preds if p["start_sample"] >= half]
    assert speech.count("speech") >= 0.8 * len(speech) and music.count("music") >= 0.8 * len(music), preds


def test_replayed_file_yields_offline_windows_and_librosa_features(kafka_conf, topics, start_analyzer,
                                                                   tone_then_noise):
    t = topics(partitions=2)
    start_analyzer(t, model="starter")  # the pipeline's tests use the starter model: tone -> tonal, noise -> noise
    proc = subprocess.run(cli("produce-file", str(tone_then_noise), "--stream-id", "kitchen", "--topic", t["frames"],
                              "--bootstrap-servers", kafka_conf["bootstrap.servers"], "--speed", "max"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0 failed" in proc.stderr

    # what the analyzer saw: the file decoded + resampled + quantised exactly as the producer did
    samples = audio.from_s16(audio.to_s16(audio.load(tone_then_noise, SPEC.sr)))
    bounds = SPEC.window_bounds(len(samples))
    assert len(bounds) == 19

    # settle: read on past the last expected window, so a late duplicate or an extra window shows
    preds = values(consume(kafka_conf, t["predictions"], count=len(bounds), settle=3.0))
    feats = values(consume(kafka_conf, t["features"], count=len(bounds), settle=1.0))
    assert len(preds) == len(feats) == len(bounds)  # one per window, no more
    for p in preds:  # real analyzer output against the published contract (docs/schemas/)
        validate(p, "audio.predictions")
    for f in feats:
        validate(f, "audio.features")
    assert [(p["start_sample"], p["end_sample"]) for p in preds] == bounds  # in order, on sample time
    assert [p["window_index"] for p in preds] == list(range(len(bounds)))
    assert all(p["stream_id"] == "kitchen" and p["model"] == {"task": "starter", "version": "1"} for p in preds)
    assert len({p["id"] for p in preds}) == len(bounds)
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-4 and p["label"] in p["scores"] for p in preds)

    # labels: windows wholly inside the tone are tonal, wholly inside the noise are noise
    for p in preds:
        if p["window_end_s"] <= 5.0:
            assert p["label"] == "tonal", p
        elif p["window_start_s"] >= 5.0:
            assert p["label"] == "noise", p

    # features equal librosa called directly on the window's samples (tolerance: tests/unit/test_features.py)
    for rec, (s, e) in zip(feats, bounds):
        assert (rec["start_sample"], rec["end_sample"]) == (s, e)
        ours = vector_from_features_record(rec)
        ref = reference_window_vector(samples[s:e], SPEC).astype(np.float64)
        i = 0
        for name in SPEC.features:
            w = SPEC.feature_width(name)
            scale = np.abs(ref[i:i + w]).max()
            np.testing.assert_array_less(np.abs(ours[i:i + 2 * w] - ref[i:i + 2 * w]),
                                         1e-4 * (np.abs(ref[i:i + 2 * w]) + scale) + 1e-6)
            i += 2 * w
        assert set(rec["metrics"]) >= {"rms_dbfs", "peak_dbfs", "spectral_centroid_hz", "spectral_flux"}
    tone_rms = feats[0]["metrics"]["rms_dbfs"]
    assert abs(tone_rms - 20 * np.log10(0.3 / np.sqrt(2))) < 0.2  # a 0.3-amplitude sine is -13.5 dBFS


def test_two_interleaved_streams_keep_separate_buffers(kafka_conf, topics, start_analyzer, rng):
    t = topics(partitions=1)  # both streams share one partition, so their frames interleave
    a = start_analyzer(t, model="starter")
    n = 4 * SPEC.sr
    tone = audio.to_s16(0.3 * np.sin(2 * np.pi * 660 * np.arange(n) / SPEC.sr))
    noise = audio.to_s16(0.2 * rng.standard_normal(n))
    producer = Producer(producer_config(kafka_conf))
    results = {}
    threads = [threading.Thread(target=lambda sid=sid, pcm=pcm: results.__setitem__(sid, replay(
        pcm, producer=producer, topic=t["frames"], stream_id=sid, sr=SPEC.sr, frame_samples=800, speed=8.0)))
        for sid, pcm in (("tone-stream", tone), ("noise-stream", noise))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert all(r.failed == 0 for r in results.values())
    expected = len(SPEC.window_bounds(n))
    preds = values(consume(kafka_conf, t["predictions"], count=2 * expected, settle=2.0))
    assert len(preds) == 2 * expected
    by_stream = {sid: [p for p in preds if p["stream_id"] == sid] for sid in ("tone-stream", "noise-stream")}
    for sid, label, pcm in (("tone-stream", "tonal", tone), ("noise-stream", "noise", noise)):
        ps = by_stream[sid]
        assert [(p["start_sample"], p["end_sample"]) for p in ps] == SPEC.window_bounds(n)
        assert {p["label"] for p in ps} == {label}
        assert {p["session_id"] for p in ps} == {results[sid].session_id.hex()}
    frames_seen = a.metrics.registry.get_sample_value("audiostream_frames_consumed_total", {"topic": t["frames"]})
    assert frames_seen == sum(r.frames for r in results.values())
    assert a.metrics.registry.get_sample_value("audiostream_stream_sequence_events_total", {"event": "gap"}) == 0


def test_bad_frames_are_dead_lettered_while_a_good_stream_is_analysed(kafka_conf, topics, start_analyzer, rng):
    t = topics(partitions=1)
    a = start_analyzer(t, metrics_port=0, model="starter")
    session = wire.new_session_id()
    good = audio.to_s16(0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * SPEC.sr) / SPEC.sr))
    valid = wire.encode(wire.AudioFrame(16000, 0, 0, 0, session, good[:1600, None]))
    bad = [  # (key, value): garbage, truncated, future version, wrong rate, key not UTF-8
        (b"garbage-stream", b"\x00\xffnot a frame at all" * 5),
        (b"truncated-stream", valid[:-100]),
        (b"future-stream", valid[:4] + b"\x02" + valid[5:]),
        (b"cd-stream", wire.encode(wire.AudioFrame(44100, 0, 0, 0, session, good[:4410, None]))),
        (b"\xff\xfe-not-utf8", valid),
    ]
    producer = Producer(producer_config(kafka_conf))
    frames = [wire.encode(wire.AudioFrame(16000, i, i * 1600, 0, session, good[i * 1600:(i + 1) * 1600, None]))
              for i in range(30)]
    for i, value in enumerate(frames):
        producer.produce(t["frames"], value=value, key=b"good-stream")
        if i % 6 == 3 and bad:  # bad records between good ones, on the same partition
            key, payload = bad.pop(0)
            producer.produce(t["frames"], value=payload, key=key, headers=[("origin", b"test")])
    assert producer.flush(30) == 0

    dead = consume(kafka_conf, t["deadletter"], count=5, settle=1.0)
    for m in dead:
        validate(deadletter_header_object(m), "audio.deadletter.headers")
    reasons = sorted(dict(m.headers())["audiostream.reason"].decode() for m in dead)
    assert reasons == sorted(["bad_magic", "length_mismatch", "unsupported_version", "sample_rate_mismatch",
                              "bad_stream_id"])
    for m in dead:
        h = dict(m.headers())
        assert h["origin"] == b"test"  # original headers kept
        assert h["audiostream.error"] and h["audiostream.source"].startswith(t["frames"].encode())
    assert any(m.value() == valid[:-100] for m in dead)  # original bytes, untouched

    preds = values(consume(kafka_conf, t["predictions"], count=len(SPEC.window_bounds(len(good)))))
    assert [(p["start_sample"], p["end_sample"]) for p in preds] == SPEC.window_bounds(len(good))
    assert {p["label"] for p in preds} == {"tonal"}

    body = urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=5).read().decode()
    for reason in ("bad_magic", "length_mismatch", "unsupported_version", "sample_rate_mismatch", "bad_stream_id"):
        assert f'audiostream_deadletter_frames_total{{reason="{reason}"}} 1.0' in body
    assert 'audiostream_deadletter_frames_total{reason="checksum_mismatch"} 0.0' in body  # pre-initialised
    assert "audiostream_analyzer_ready 1.0" in body  # still serving
    assert 'audiostream_model_info{task="starter",version="1"} 1.0' in body
    label_keys = set(re.findall(r'[{,]([a-z_]+)="', body))
    assert label_keys <= {"topic", "partition", "reason", "event", "model", "label", "task", "version", "le",
                          "outcome"}, label_keys
    assert "good-stream" not in body  # a stream id is never a label value
    assert a.metrics.registry.get_sample_value("audiostream_windows_analyzed_total", {"model": "starter:1"}) == len(preds)
    # every prediction counted and timed once the analyzer has served its acknowledgement (its next poll)
    sample = a.metrics.registry.get_sample_value
    wait_for(lambda: sample("audiostream_predictions_total", {"model": "starter:1", "label": "tonal"}) == len(preds),
             30, "every prediction's acknowledgement counted")
    for name in ("audiostream_window_processing_seconds_count", "audiostream_end_to_end_latency_seconds_count"):
        assert sample(name) == len(preds)


@pytest.mark.parametrize("seconds", [0.3, 0.5])
def test_a_clip_shorter_than_a_window_gives_one_padded_window_through_kafka(kafka_conf, topics, start_analyzer,
                                                                            rng, seconds):
    """produce-file's replay ends the stream with the end-of-stream flag: the analyzer publishes ONE
    window, zero-padded and flagged, equal to what batch and /v1/classify compute (analyze_pcm)."""
    from streamproc.analysis import analyze_pcm
    from streamproc.inference import ModelBundle
    from streamproc.settings import DEFAULT_MODEL
    t = topics()
    start_analyzer(t)
    pcm = audio.to_s16(0.2 * rng.standard_normal(int(seconds * SPEC.sr)))
    sid = f"short-{seconds}"
    replay(pcm, producer=Producer(producer_config(kafka_conf)), topic=t["frames"], stream_id=sid, sr=SPEC.sr,
           frame_samples=1600, speed=float("inf"))
    preds = values(consume(kafka_conf, t["predictions"], count=1, settle=3.0))  # and nothing after it
    feats = values(consume(kafka_conf, t["features"], count=1, settle=1.0))
    assert [(p["stream_id"], p["start_sample"], p["end_sample"], p["padded"], p["gap"]) for p in preds] == \
        [(sid, 0, SPEC.window_length, True, False)]
    assert [(f["type"], f["padded"]) for f in feats] == [("window", True)]
    validate(preds[0], "audio.predictions")
    validate(feats[0], "audio.features")
    offline = analyze_pcm(pcm, ModelBundle.load(DEFAULT_MODEL), file=sid, stream_id=sid)
    assert [r["padded"] for r in offline] == [True] and offline[0]["label"] == preds[0]["label"]
    np.testing.assert_allclose(vector_from_features_record(feats[0]), offline[0]["features"], rtol=1e-6, atol=1e-6)
    for lab, v in preds[0]["scores"].items():
        assert abs(offline[0][f"score_{lab}"] - v) < 1e-5
