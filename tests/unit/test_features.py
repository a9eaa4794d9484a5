"""The engine's features equal librosa's, called directly on each window.

Tolerance (stated in docs/architecture.md too; per feature in the registry,
streamproc.windowing.FEATURE_REGISTRY, 1e-4 for all today): for every entry of the window
vector, |engine - librosa| <= rtol * (|librosa| + scale), where scale is the
largest |mean| of that feature over the window (so a std that is tiny next to
its mean is compared at the feature's own scale). The engine works in float32
after a float64 FFT; librosa mixes float32 and float64.
"""
import shutil
import subprocess

import numpy as np
import pytest

from streamproc.features import FeatureExtractor, reference_window_vector
from streamproc.windowing import FEATURES, WindowSpec
SR = 16000


def assert_close_to_librosa(ours, ref, spec):
    names = spec.feature_names()
    i = 0
    for f in spec.features:
        w = spec.feature_width(f)
        scale = np.abs(ref[i:i + w]).max()  # the feature's mean entries
        a, b = ours[i:i + 2 * w], ref[i:i + 2 * w]
        bad = np.abs(a - b) > FEATURES[f].rtol * (np.abs(b) + scale) + 1e-7  # the registry's tolerance
        assert not bad.any(), [(names[i + j], float(a[j]), float(b[j])) for j in np.flatnonzero(bad)]
        i += 2 * w


def signals(rng):
    t = np.arange(3 * SR) / SR
    yield "white_noise", (0.2 * rng.standard_normal(t.size)).astype(np.float32)
    yield "sine_440", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    yield "silence", np.zeros(t.size, np.float32)
    yield "quiet_hum", (1e-4 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    yield "chirp_plus_noise", (0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
                               + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    clicks = np.zeros(t.size, np.float32)
    clicks[::SR // 4] = 0.9
    yield "clicks", clicks
    yield "int16_quantised", (np.round(rng.uniform(-1, 1, t.size) * 32767) / 32768).astype(np.float32)


@pytest.mark.parametrize("spec", [WindowSpec(), WindowSpec(n_mels=40, n_mfcc=13, n_fft=1024, hop_length=320,
                                                           window_length=12800, hop=3200, fmin=50.0, fmax=7000.0)],
                         ids=["default", "custom"])
def test_engine_equals_librosa_per_window(rng, spec):
    fx = FeatureExtractor(spec)
    for name, y in signals(rng):
        bounds, V = fx.vectors_for_signal(y)
        assert len(bounds) == len(spec.window_bounds(len(y))) > 0
        for (s, e), v in zip(bounds, V):
            assert_close_to_librosa(v, reference_window_vector(y[s:e], spec), spec)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (deploy/setup.sh installs it)")
def test_engine_equals_librosa_on_speech(tmp_path):
    from streamproc.audio import load
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog, twice."], check=True)
    y = load(wav, SR)
    spec = WindowSpec()
    fx = FeatureExtractor(spec)
    bounds, V = fx.vectors_for_signal(y)
    assert len(bounds) >= 4
    for (s, e), v in zip(bounds, V):
        assert_close_to_librosa(v, reference_window_vector(y[s:e], spec), spec)


def test_known_answers():
    """A sine's centroid sits at its frequency; a full-scale square wave has 0 dBFS RMS."""
    spec = WindowSpec(features=("spectral_centroid", "rms", "zero_crossing_rate"))
    fx = FeatureExtractor(spec)
    t = np.arange(SR) / SR
    _, V = fx.vectors_for_signal((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    centroid_mean, _, rms_mean, _, zcr_mean, _ = V[0]
    assert abs(centroid_mean - 1000) < 15
    assert abs(rms_mean - 0.5 / np.sqrt(2)) < 1e-3
    assert abs(zcr_mean - 2000 / SR) < 2e-3
    square = np.sign(np.sin(2 * np.pi * 100 * t + 0.1)).astype(np.float32)
    ff = fx.frame_features(fx.frames_of(square))
    m = fx.window_metrics(ff[None, : spec.frames_per_window])[0]
    assert abs(m["rms_dbfs"]) < 0.01 and abs(m["peak_dbfs"]) < 0.01


def test_silence_metrics_have_a_floor():
    spec = WindowSpec()
    fx = FeatureExtractor(spec)
    ff = fx.frame_features(fx.frames_of(np.zeros(SR, np.float32)))
    m = fx.window_metrics(ff[None, : spec.frames_per_window])[0]
    assert m["rms_dbfs"] == -120.0 and m["spectral_centroid_hz"] == 0.0


def test_feature_subset_and_order_follow_the_spec(rng):
    y = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    full = WindowSpec()
    sub = WindowSpec(features=("rms", "mfcc"))
    _, vf = FeatureExtractor(full).vectors_for_signal(y)
    _, vs = FeatureExtractor(sub).vectors_for_signal(y)
    names = full.feature_names()
    picked = [names.index(n) for n in sub.feature_names()]
    np.testing.assert_allclose(vs[0], vf[0][picked], rtol=1e-6)


@pytest.mark.parametrize("rate", [2, 4, 8])
def test_onset_rate_counts_clicks(rate):
    spec = WindowSpec()
    fx = FeatureExtractor(spec)
    y = np.zeros(3 * SR, np.float32)
    y[SR // (2 * rate)::SR // rate] = 0.8  # clicks at a known rate, none on a window edge
    y += (1e-3 * np.random.default_rng(0).standard_normal(y.size)).astype(np.float32)
    ff = fx.frame_features(fx.frames_of(y))
    F, fph = spec.frames_per_window, spec.frames_per_hop
    windows = np.stack([ff[k * fph:k * fph + F] for k in range(len(spec.window_bounds(y.size)))])
    rates = [m["onset_rate_hz"] for m in fx.window_metrics(windows)]
    # the window's frames span 0.97 s: rate clicks per second, give or take one at the edge
    assert all(abs(r - rate) <= 1.05 for r in rates), rates
    noise = fx.frame_features(fx.frames_of((0.2 * np.random.default_rng(1).standard_normal(SR)).astype(np.float32)))
    assert fx.window_metrics(noise[None, :F])[0]["onset_rate_hz"] == 0.0  # steady noise has no onsets


def test_the_feature_registry_defines_widths_references_and_columns(rng):
    """streamproc.windowing.FEATURE_REGISTRY is the one place a feature is defined: its reference returns
    (width, frames) at the registry width, and the engine has a per-frame column of that width for it."""
    from streamproc.windowing import FEATURE_REGISTRY, FRAME_FEATURES
    spec = WindowSpec()
    fx = FeatureExtractor(spec)
    y = (0.1 * rng.standard_normal(spec.window_length)).astype(np.float32)
    assert list(FRAME_FEATURES) == [f.name for f in FEATURE_REGISTRY] == list(spec.features)
    for f in FEATURE_REGISTRY:
        assert f.reference(y, spec).shape == (spec.feature_width(f.name), spec.frames_per_window), f.name
        if f.name != "mfcc":  # MFCCs come from the mel dB columns, per window
            cols = fx.columns[f.name]
            assert cols.stop - cols.start == f.width, f.name
    assert sum(2 * spec.feature_width(f.name) for f in FEATURE_REGISTRY) == spec.n_features
