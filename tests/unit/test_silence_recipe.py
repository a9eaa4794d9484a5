"""Recipe 2's silence class: room tone / self-noise without an event at -75...-50 dBFS RMS, consistent with the
served level gate (below silence_below_dbfs the gate says silence; between it and -50 dBFS the model must)."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamproc.analysis import analyze_pcm
from streamproc.audio import to_s16
from streamproc.errors import ConfigError
from streamproc.inference import SILENCE_ENV, ModelBundle
from streamproc.training.dataset import SILENCE_DBFS, silence2, synth
from streamproc.training.debian import RealPool

SR = 16000
SOUNDTYPE = Path(__file__).resolve().parents[2] / "models" / "soundtype" / "3"


def rms_dbfs(x):
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-24)


def drawn(source: str) -> float:
    return float(source.split()[-3])  # "... -63 dBFS rms"


def test_generated_room_tone_lands_at_its_drawn_level_and_follows_the_seed(tmp_path):
    levels = []
    for seed in range(30):
        x, source, license_ = silence2(np.random.default_rng(seed), 4 * SR, tmp_path)
        again, _, _ = silence2(np.random.default_rng(seed), 4 * SR, tmp_path)
        np.testing.assert_array_equal(x, again)
        assert "Apache-2.0" in license_
        if source == "digital silence":
            assert not np.any(x)
            continue
        assert SILENCE_DBFS[0] <= drawn(source) <= SILENCE_DBFS[1]
        assert abs(rms_dbfs(x) - drawn(source)) < 0.6  # the label rounds to 1 dB
        levels.append(drawn(source))
    assert len(levels) >= 20 and min(levels) < -65 and max(levels) > -55  # both sides of the -60 gate


def test_room_tone_is_gated_below_the_level_and_left_to_the_model_above(tmp_path, monkeypatch):
    """The served path measures the level the recipe wrote: below -60 dBFS every window is gated, at
    -55 and above none is (the model has to call it silence: that is what recipe 2 teaches it)."""
    monkeypatch.delenv(SILENCE_ENV, raising=False)
    bundle = ModelBundle.load(SOUNDTYPE)
    x, _, _ = silence2(np.random.default_rng(1), 4 * SR, tmp_path)
    x = x if np.any(x) else silence2(np.random.default_rng(2), 4 * SR, tmp_path)[0]
    for level, gated in ((-72.0, True), (-63.0, True), (-55.0, False), (-50.0, False)):
        y = (x / np.sqrt(np.mean(x ** 2)) * 10 ** (level / 20)).astype(np.float32)
        rows = analyze_pcm(to_s16(y), bundle, file="t", stream_id="t")
        assert rows and all(r["gated"] is gated for r in rows), (level, [r["rms_dbfs"] for r in rows])
        assert all(abs(r["rms_dbfs"] - level) < 1.5 for r in rows)
        if gated:
            assert all(r["label"] == "silence" for r in rows)


def test_real_room_tone_is_mirrored_to_length_without_steps(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "ambience.wav"
    hum = 0.01 * np.sin(2 * np.pi * 50 * np.arange(SR) / SR)
    sf.write(f, (hum + 0.001 * rng.standard_normal(SR)).astype(np.float32), SR, subtype="FLOAT")
    pool = RealPool.__new__(RealPool)
    pool.quiet = [(f, 4000, 12000)]  # 0.5 s, shorter than the clip
    pool._package = staticmethod(lambda path: "codec2-examples")
    y, source, license_ = pool.room_tone(np.random.default_rng(3), 4 * SR)
    assert len(y) == 4 * SR and "ambience.wav @0.2-0.8s" in source and "LGPL" in license_
    step = np.max(np.abs(np.diff(y)))
    src = sf.read(f, dtype="float32")[0][4000:12000]
    assert step <= np.max(np.abs(np.diff(src))) + 1e-6  # the joins are no larger than the recording's own steps


def test_unknown_recipe_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="recipe"):
        synth(tmp_path / "d", minutes=0.1, recipe=3, quiet=True)
