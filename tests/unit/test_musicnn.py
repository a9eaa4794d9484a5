"""The committed musicnn bundles (models convert-musicnn): provenance, the input they declare, and answers.

The TensorFlow comparison itself runs in the conversion command (its numbers are in each model.yaml);
these tests check what is committed without TensorFlow.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from streamproc import musicnn
from streamproc.errors import BundleError

ROOT = Path(__file__).resolve().parents[2] / "models"
BUNDLES = [ROOT / "musictags" / "1", ROOT / "musictags-msd" / "1"]


@pytest.fixture(scope="module")
def sessions():
    import onnxruntime as ort
    return {b.parent.name: ort.InferenceSession(str(b / "model.onnx"), providers=["CPUExecutionProvider"])
            for b in BUNDLES}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.parent.name)
def test_bundle_provenance_and_licence(bundle):
    meta = yaml.safe_load((bundle / "model.yaml").read_text())
    prov = meta["provenance"]
    assert prov["package"] == "musicnn==0.1.0" and prov["wheel_sha256"] == musicnn.WHEEL_SHA256
    assert hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest() == prov["model_onnx_sha256"]
    assert meta["license"]["id"] == "ISC" and "Permission to use" in (bundle / "LICENSE").read_text()
    v = meta["verification"]
    assert v["max_tag_diff"] <= v["tag_tolerance"] <= 1e-4 and v["top5_identical"] == v["patches"]
    assert any(p["source"].startswith("real ") for p in v["probes"])
    assert meta["input"] == musicnn.logmel_input() and len(meta["labels"]) == 50


def test_reference_logmel_matches_the_package_inside_a_file():
    """musicnn's own batch_data uses librosa's center=True frames over a whole file; our patch
    (center=False on a 48128-sample window) is the same frames one half-FFT later."""
    import librosa
    rng = np.random.default_rng(0)
    y = (0.3 * rng.standard_normal(16000 * 5)).astype(np.float32)
    full = librosa.feature.melspectrogram(y=y, sr=16000, hop_length=256, n_fft=512, n_mels=96).T
    package = np.log10(10000 * full.astype(np.float32) + 1)
    start = 10 * 256 - 256  # center=True frame 10 covers samples [10*hop - n_fft/2, ...)
    ours = musicnn.logmel(y[start:start + musicnn.WINDOW_LENGTH])
    assert ours.shape == (musicnn.FRAMES, musicnn.N_MELS)
    np.testing.assert_allclose(ours, package[10:10 + musicnn.FRAMES], atol=1e-4)


def test_short_clip_is_repeat_padded_to_one_patch():
    y = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
    p = musicnn.patches(y)
    assert p.shape == (1, 187, 96) and p[0, -1].max() > 1.0  # the tone, not zero padding, at the end


def test_tags_of_a_piano_and_an_electronic_track(sessions):
    """Tonal piano vs a noisy synthesised beat: the tagger tells them apart (generated, no files)."""
    sr, t = 16000, np.arange(musicnn.WINDOW_LENGTH) / 16000
    notes = [261.6, 329.6, 392.0, 523.3]
    piano = sum(np.sin(2 * np.pi * f * t) * np.exp(-3 * ((t - i * 0.7) % 2.8)) for i, f in enumerate(notes))
    rng = np.random.default_rng(1)
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-30 * (t % 0.5))
    hat = rng.standard_normal(t.size) * np.exp(-80 * ((t + 0.25) % 0.5))
    saw = 2 * ((110 * t) % 1) - 1
    techno = kick + 0.3 * hat + 0.2 * saw
    x = np.stack([musicnn.logmel(0.3 * piano / np.abs(piano).max()), musicnn.logmel(0.3 * techno / np.abs(techno).max())])
    tags, emb = sessions["musictags"].run(["tags", "embedding"], {"logmel": x})
    labels = yaml.safe_load((BUNDLES[0] / "model.yaml").read_text())["labels"]
    score = dict(zip(labels, tags.T))
    assert emb.shape == (2, 200) and np.isfinite(tags).all()
    assert score["electronic"][1] > score["electronic"][0]
    assert score["techno"][1] > score["techno"][0]
    assert score["classical"][0] > score["classical"][1] or score["piano"][0] > score["piano"][1]


def test_a_wheel_with_another_checksum_is_refused(tmp_path):
    fake = tmp_path / musicnn.WHEEL
    fake.write_bytes(b"not the wheel")
    with pytest.raises(BundleError, match="sha256 .* is not the pinned"):
        musicnn.fetch_wheel(fake, tmp_path)
    with pytest.raises(BundleError, match="no such file"):
        musicnn.fetch_wheel(tmp_path / "missing.whl", tmp_path)


def _engine_windows(bundle, y):
    """Windows of ``y`` through the live Engine built for ``bundle`` (its log-mel patches on)."""
    from streamproc.audio import to_s16
    from streamproc.engine import Engine
    from streamproc.wire import FLAG_END_OF_STREAM, AudioFrame
    engine = Engine(bundle.spec, idle_timeout_s=float("inf"), logmel=bundle.logmel)
    pcm = to_s16(y)
    out = []
    for seq, a in enumerate(range(0, len(pcm), 4000)):
        flags = FLAG_END_OF_STREAM if a + 4000 >= len(pcm) else 0
        engine.accept("s", AudioFrame(16000, seq, a, 0, b"\0" * 16, pcm[a:a + 4000, None], flags=flags), now=0.0)
        out += engine.step(now=0.0)
    return out


def test_engine_patches_equal_librosa_and_give_the_same_tags():
    """The bundle's log-mel input from the engine's one STFT path (the mel_db rows its features use) equals
    librosa's melspectrogram + log10(10000 x + 1) within 1e-4 on every cell, and the tags within 1e-4."""
    from streamproc.audio import from_s16, to_s16
    from streamproc.inference import ModelBundle
    bundle = ModelBundle.load("musictags")
    assert bundle.input_shape == (187, 96) and bundle.spec.window_length == musicnn.WINDOW_LENGTH
    rng = np.random.default_rng(3)
    t = np.arange(int(16000 * 9.5)) / 16000
    y = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.standard_normal(t.size)
    y = from_s16(to_s16(y.astype(np.float32)))  # what the engine receives
    windows = _engine_windows(bundle, y)
    assert len(windows) == 3
    ref = np.stack([musicnn.logmel(y[w.start:w.end]) for w in windows])
    got = np.stack([w.patch for w in windows])
    assert got.shape == ref.shape == (3, 187, 96)
    assert np.abs(got - ref).max() <= 1e-4, np.abs(got - ref).max()
    np.testing.assert_allclose(bundle.predict(got), bundle.predict(ref), atol=1e-4)
