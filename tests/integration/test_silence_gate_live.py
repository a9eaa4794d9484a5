"""The silence gate in the live analyzer: the same windows, labels and scores as analyze_pcm (batch / API)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

from streamproc import audio
from streamproc.analysis import analyze_pcm

from .helpers import cli, consume, values

pytestmark = pytest.mark.integration


def test_quiet_windows_are_silence_live_exactly_as_offline(kafka_conf, topics, start_analyzer, tmp_path, rng):
    sr = 16000
    spec = np.fft.rfft(rng.standard_normal(6 * sr))
    spec /= np.maximum(np.arange(spec.size), 1) ** 0.5
    noise = np.fft.irfft(spec, 6 * sr)
    noise /= np.sqrt(np.mean(noise ** 2))
    y = np.concatenate([noise[: 3 * sr] * 10 ** (-30 / 20), noise[3 * sr:] * 10 ** (-75 / 20)])  # loud, then quiet
    wav = tmp_path / "loud_then_quiet.wav"
    sf.write(wav, y.astype(np.float32), sr, subtype="FLOAT")
    t = topics()
    a = start_analyzer(t)  # the default soundtype bundle: a silence label, -60 dBFS by default
    assert a.bundle.silence_below_dbfs == -60.0
    proc = subprocess.run(cli("produce-file", str(wav), "--stream-id", "room", "--topic", t["frames"],
                              "-b", kafka_conf["bootstrap.servers"], "--speed", "max", "-q"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    offline = analyze_pcm(audio.to_s16(audio.load(wav, sr)), a.bundle, file=str(wav), stream_id="room")
    preds = values(consume(kafka_conf, t["predictions"], count=len(offline)))
    assert [p["start_sample"] for p in preds] == [r["start_sample"] for r in offline]
    for p, r in zip(preds, offline):
        assert p["gated"] == r["gated"] and p["label"] == r["label"], (p, r)
        assert abs(p["scores"]["silence"] - r["score_silence"]) < 1e-5
        if p["window_start_s"] >= 3.0:
            assert p["gated"] is True and p["label"] == "silence" and p["scores"]["silence"] == 1.0
            assert p["rms_dbfs"] < -70
        if p["window_end_s"] <= 3.0:
            assert p["gated"] is False and p["rms_dbfs"] > -35
