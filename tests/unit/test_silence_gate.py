"""Silence by definition: a window whose rms_dbfs is below the bundle's level is `silence` (ModelBundle.gate),
the same in every path (analyze_pcm serves batch and the API; the analyzer's _publish; evaluate)."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from streamproc.analysis import analyze_pcm
from streamproc.audio import load, to_s16
from streamproc.errors import BundleError
from streamproc.inference import DEFAULT_SILENCE_BELOW_DBFS, SILENCE_ENV, ModelBundle
from streamproc.training.evaluate import evaluate

MODELS = Path(__file__).resolve().parents[2] / "models"
SOUNDTYPE = MODELS / "soundtype" / "3"
LEVELS = (-80.0, -65.0, -55.0, -30.0)


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv(SILENCE_ENV, raising=False)


@pytest.fixture(scope="module")
def bundle():
    return ModelBundle.load(SOUNDTYPE)


def at_rms(y: np.ndarray, dbfs: float) -> np.ndarray:
    """``y`` scaled so its mean power matches the engine's rms_dbfs definition (0 dBFS = full-scale square)."""
    return (y / np.sqrt(np.mean(y.astype(np.float64) ** 2)) * 10 ** (dbfs / 20)).astype(np.float32)


def pink(rng, n):
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.maximum(np.arange(spec.size), 1) ** 0.5  # 1/f power: room / traffic-like noise
    return np.fft.irfft(spec, n).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (deploy/setup.sh installs it)")
    wav = tmp_path_factory.mktemp("speech") / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "-s", "150", "Silence is defined by level. This sentence is "
                    "read aloud at several levels, and only the quiet ones are silence."], check=True)
    y = load(wav, 16000)
    return y[: 4 * 16000]


def test_default_level_and_the_rule_on_scores(bundle):
    assert bundle.silence_below_dbfs == DEFAULT_SILENCE_BELOW_DBFS == -60.0  # soundtype:3's yaml has no field
    scores = np.tile(np.array([[0.7, 0.2, 0.05, 0.05]], np.float32), (len(LEVELS), 1))
    out = bundle.gate(scores, LEVELS)
    silence = bundle.labels.index("silence")
    assert bundle.is_gated(LEVELS).tolist() == [True, True, False, False]
    assert bundle.is_gated(-60.0) is False and bundle.is_gated(-60.01) is True  # below, not at
    for row, gated in zip(out, [True, True, False, False]):
        if gated:
            assert row[silence] == 1.0 and row.sum() == 1.0
        else:
            np.testing.assert_array_equal(row, scores[0])
    np.testing.assert_array_equal(scores[0], np.float32([0.7, 0.2, 0.05, 0.05]))  # the caller's array is not modified


def test_a_broken_models_nan_is_not_hidden_by_the_gate(bundle):
    scores = np.array([[np.nan] * 4, [0.1, 0.2, 0.3, 0.4]], np.float32)
    out = bundle.gate(scores, [-90.0, -90.0])
    assert np.isnan(out[0]).all() and out[1, bundle.labels.index("silence")] == 1.0


@pytest.mark.parametrize("kind", ["noise", "speech"])
def test_through_analyze_pcm_at_several_levels(bundle, rng, speech, kind):
    """The batch / API path: quiet windows are silence with gated true, loud ones keep the model's answer."""
    base = pink(rng, 4 * 16000) if kind == "noise" else speech
    ungated = ModelBundle.load(SOUNDTYPE, silence_below_dbfs="off")
    for level in LEVELS:
        y = at_rms(base, level)
        rows = analyze_pcm(to_s16(y), bundle, file="x", stream_id="x")
        raw = analyze_pcm(to_s16(y), ungated, file="x", stream_id="x")
        assert rows and len(rows) == len(raw)
        for r, u in zip(rows, raw):
            assert u["gated"] is False
            if r["rms_dbfs"] < -60:
                assert r["gated"] is True and r["label"] == "silence" and r["score_silence"] == 1.0
                assert r["confidence"] == 1.0 and r["score_speech"] == 0.0
            else:
                assert r["gated"] is False and r["label"] == u["label"] and r["score_speech"] == u["score_speech"]
        gated = [r["gated"] for r in rows]
        if level <= -65:  # every window of a steady sound this quiet
            assert all(gated), (kind, level, [r["rms_dbfs"] for r in rows])
        if level >= -30:
            assert not any(gated)
        if kind == "noise" and level == -55:  # steady noise: every window near the level, none gated
            assert not any(gated)


def test_model_yaml_field_env_and_argument(tmp_path, monkeypatch, rng):
    b = tmp_path / "soundtype" / "9"
    shutil.copytree(SOUNDTYPE, b)

    def set_level(v):
        meta = yaml.safe_load((b / "model.yaml").read_text())
        meta["silence_below_dbfs"] = v
        (b / "model.yaml").write_text(yaml.safe_dump(meta))

    set_level(-50.0)
    assert ModelBundle.load(b).silence_below_dbfs == -50.0
    assert ModelBundle.load(b).is_gated(-55.0) is True
    monkeypatch.setenv(SILENCE_ENV, "-70")                    # a deployment's level wins over the bundle's
    assert ModelBundle.load(b).silence_below_dbfs == -70.0
    assert ModelBundle.load(b, silence_below_dbfs="-40").silence_below_dbfs == -40.0  # and a flag over both
    monkeypatch.setenv(SILENCE_ENV, "off")
    assert ModelBundle.load(b).silence_below_dbfs is None
    assert ModelBundle.load(b).is_gated(-110.0) is False
    monkeypatch.setenv(SILENCE_ENV, "quiet")
    with pytest.raises(BundleError, match="not a level in dBFS"):
        ModelBundle.load(b)
    monkeypatch.delenv(SILENCE_ENV)
    set_level(None)
    assert ModelBundle.load(b).silence_below_dbfs is None  # the bundle says: no gate
    set_level("-60")
    with pytest.raises(BundleError, match="must be a number"):
        ModelBundle.load(b)
    set_level(5.0)
    with pytest.raises(BundleError, match="outside -120..0"):
        ModelBundle.load(b)


def test_a_bundle_without_a_silence_label_is_never_gated(tmp_path, monkeypatch):
    from tests.bundles import STARTER
    b = tmp_path / "nosilence"
    shutil.copytree(STARTER, b)
    meta = yaml.safe_load((b / "model.yaml").read_text())
    meta["labels"] = ["quiet" if lab == "silence" else lab for lab in meta["labels"]]
    (b / "model.yaml").write_text(yaml.safe_dump(meta))
    monkeypatch.setenv(SILENCE_ENV, "-60")
    assert ModelBundle.load(b).silence_below_dbfs is None
    monkeypatch.delenv(SILENCE_ENV)
    meta["silence_below_dbfs"] = -60
    (b / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(BundleError, match="no 'silence' label"):
        ModelBundle.load(b)


def test_evaluate_applies_the_gate_and_scores_levels(tmp_path, rng, speech):
    """evaluate: the same rule (a quiet clip is silence), and --gains scores the same clips at each gain."""
    data = tmp_path / "d"
    for label, y in (("speech", at_rms(speech, -20)), ("silence", at_rms(pink(rng, 3 * 16000), -70))):
        (data / label).mkdir(parents=True)
        sf.write(data / label / "a.wav", y, 16000, subtype="PCM_16")
    rep = evaluate(str(SOUNDTYPE), str(data), quiet=True, gains=[0, -50], levels_plot=str(tmp_path / "lv.png"))
    assert rep["per_class"]["silence"]["recall"] == 1.0 and rep["silence_gate"]["gated_windows"] >= 5
    by_gain = {r["gain_db"]: r for r in rep["levels"]}
    assert by_gain[0]["macro_f1"] == rep["macro_f1"]
    assert by_gain[-50]["f1"]["speech"] == 0.0  # speech at -70 dBFS is silence by definition
    assert by_gain[-50]["gated_windows"] > by_gain[0]["gated_windows"]
    assert (tmp_path / "lv.png").stat().st_size > 10_000
    off = evaluate(str(SOUNDTYPE), str(data), quiet=True, silence_below_dbfs="off")
    assert off["silence_gate"] == {"silence_below_dbfs": None, "windows": rep["silence_gate"]["windows"],
                                   "gated_windows": 0}


def test_the_api_and_the_parquet_schema_carry_the_flag(bundle, rng):
    """/v1/classify (in process) and batch's Parquet schema: the gated windows are flagged there too."""
    import io

    import pyarrow as pa
    from fastapi.testclient import TestClient

    from consumers.api import create_app
    from consumers.batch import arrow_schema
    y = np.concatenate([at_rms(pink(rng, 3 * 16000), -30), at_rms(pink(rng, 3 * 16000), -75)])
    buf = io.BytesIO()
    sf.write(buf, y, 16000, format="WAV", subtype="PCM_16")
    r = TestClient(create_app(model=str(SOUNDTYPE))).post("/v1/classify", files={"file": ("q.wav", buf.getvalue())})
    assert r.status_code == 200, r.text
    windows = r.json()["windows"]
    offline = analyze_pcm(to_s16(y), bundle, file="q.wav", stream_id="q.wav")
    assert [w["gated"] for w in windows] == [x["gated"] for x in offline]
    assert windows[0]["gated"] is False and windows[-1]["gated"] is True and windows[-1]["label"] == "silence"
    table = pa.Table.from_pylist(offline, schema=arrow_schema(bundle.labels, bundle.spec.n_features))
    assert table.column("gated").to_pylist() == [x["gated"] for x in offline]
