"""The log-mel model input: the engine's patch equals librosa's, and a logmel bundle is served or refused
exactly (docs/model-bundle.md, input kinds)."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from streamproc.engine import Engine
from streamproc.errors import BundleError
from streamproc.features import LOGMEL_ATOL_DB, FeatureExtractor, LogMel, reference_logmel
from streamproc.inference import ModelBundle, logmel_input
from streamproc.wire import AudioFrame
from streamproc.windowing import WindowSpec
from tests.bundles import cnn_bundle

SPEC = WindowSpec()


def signals(rng):
    t = np.arange(40000) / 16000
    return {"noise": 0.1 * rng.standard_normal(t.size), "quiet noise": 3e-4 * rng.standard_normal(t.size),
            "tone + silence": np.where(t < 1.2, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0),
            "chirp": 0.3 * np.sin(2 * np.pi * (100 + 2000 * t) * t)}


@pytest.mark.parametrize("top_db", [80.0, None])
def test_engine_logmel_equals_librosa(rng, top_db):
    """Offline (vectors_for_signal) and live (Engine, 100 ms frames): every cell of every window's patch
    within LOGMEL_ATOL_DB dB of librosa.power_to_db(librosa.feature.melspectrogram(...))."""
    fx = FeatureExtractor(SPEC)
    for name, y in signals(rng).items():
        y = y.astype(np.float32)
        bounds, X = fx.vectors_for_signal(y, logmel=LogMel(top_db))
        assert X.shape == (len(bounds), 1, SPEC.n_mels, SPEC.frames_per_window) and X.dtype == np.float32
        want = np.stack([reference_logmel(y[s:e], SPEC, top_db) for s, e in bounds])
        err = np.abs(X - want).max()
        assert err <= LOGMEL_ATOL_DB, (name, err)

        pcm = np.round(y * 32767).astype(np.int16)  # live: the wire's s16, filed frame by frame
        engine = Engine(SPEC, idle_timeout_s=float("inf"), logmel=LogMel(top_db))
        windows = []
        for seq, a in enumerate(range(0, len(pcm), 1600)):
            engine.accept("s", AudioFrame(16000, seq, a, 0, b"\0" * 16, pcm[a:a + 1600, None]), now=0.0)
            windows += engine.step(now=0.0)
        yq = pcm.astype(np.float32) / 32768
        assert len(windows) == len(bounds)
        for w in windows:
            assert np.abs(w.patch - reference_logmel(yq[w.start:w.end], SPEC, top_db)).max() <= LOGMEL_ATOL_DB


def test_engine_without_logmel_makes_no_patch():
    engine = Engine(SPEC, idle_timeout_s=float("inf"))
    pcm = np.zeros(16000, np.int16)
    engine.accept("s", AudioFrame(16000, 0, 0, 0, b"\0" * 16, pcm[:, None]), now=0.0)
    (w,) = engine.step(now=0.0)
    assert w.patch is None and w.vector.shape == (SPEC.n_features,)


def test_a_logmel_bundle_is_fed_patches_from_the_engine(tmp_path, rng):
    b = ModelBundle.load(cnn_bundle(tmp_path))
    assert b.input_kind == "logmel" and b.input_shape == (1, 64, 49) and b.logmel == LogMel(80.0)
    assert b.meta["input"]["logmel"]["log"] == "power_to_db"
    y = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    _, X = FeatureExtractor(SPEC).vectors_for_signal(y, logmel=b.logmel)
    scores = b.predict(X)
    assert scores.shape == (2, 4) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match=r"takes logmel inputs of shape \(1, 64, 49\) per window, got \(74,\)"):
        b.predict(np.zeros((2, 74), np.float32))
    engine = Engine(SPEC, idle_timeout_s=float("inf"))  # built without logmel: said, not served wrong
    engine.accept("s", AudioFrame(16000, 0, 0, 0, b"\0" * 16, np.zeros((16000, 1), np.int16)), now=0.0)
    with pytest.raises(ValueError, match="Engine\\(spec, logmel=bundle.logmel\\)"):
        b.score(engine.step(now=0.0))


def edit(path: Path, fn) -> Path:
    meta = yaml.safe_load((path / "model.yaml").read_text())
    fn(meta)
    (path / "model.yaml").write_text(yaml.safe_dump(meta))
    return path


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m["input"].update(kind="spectrogram"), "input kind 'spectrogram' is unknown; this analyzer feeds "
                                                      r"\['features', 'logmel'\]"),
    (lambda m: m["input"]["logmel"].update(sr=22050), "cannot feed the log-mel input .*sr: 22050 != 16000"),
    (lambda m: m["input"]["logmel"].update(n_mels=128), "n_mels: 128 != 64"),
    (lambda m: m["input"]["logmel"].update(hop_length=160), "hop_length: 160 != 320"),
    (lambda m: m["input"]["logmel"].update(frames=98), "frames: 98 != 49"),
    (lambda m: m["input"]["logmel"].update(log="ln"), "log: 'ln' != 'power_to_db'"),
    (lambda m: m["input"]["logmel"].update(fmax=8000.0), "fmax: 8000.0 != None"),
    (lambda m: m["input"]["logmel"].update(pcen=True), "pcen: unknown key"),
    (lambda m: m["input"]["logmel"].pop("amin"), r"amin: '\(missing\)' != 1e-10"),
    (lambda m: m["input"]["logmel"].update(top_db=-3), "top_db must be a positive number"),
    (lambda m: m["input"].pop("logmel"), "needs an input.logmel mapping"),
    (lambda m: m["input"].update(shape=[None, 1, 64, 50]), r"input shape \[None, 1, 64, 50\] does not match the "
                                                           r"log-mel patch \[N, 1, 64, 49\]"),
    (lambda m: m["window_spec"].update(sr=8000, window_length=8000, hop=4000, hop_length=160),
     "sr: 16000 != 8000"),  # a bundle whose stated input is for another rate than its window spec
])
def test_a_logmel_bundle_the_analyzer_cannot_feed_exactly_is_refused(tmp_path, mutate, msg):
    with pytest.raises(BundleError, match=msg):
        ModelBundle.load(edit(cnn_bundle(tmp_path), mutate))


def test_a_graph_for_another_patch_is_refused(tmp_path):
    with pytest.raises(BundleError, match=r"has shape \['N', 1, 32, 49\] but this analyzer feeds \[N, 1, 64, 49\]"):
        ModelBundle.load(cnn_bundle(tmp_path, n_mels=32))


def test_a_features_bundle_stating_logmel_is_refused_and_kind_features_is_the_default(tmp_path):
    import shutil
    starter = Path(__file__).resolve().parents[2] / "models" / "starter" / "1"
    dst = tmp_path / "starter"
    shutil.copytree(starter, dst)
    assert "kind" not in yaml.safe_load((dst / "model.yaml").read_text())["input"]
    assert ModelBundle.load(dst).input_kind == "features"
    edit(dst, lambda m: m["input"].update(kind="features"))
    assert ModelBundle.load(dst).input_shape == (74,)
    edit(dst, lambda m: m.update(input=logmel_input(WindowSpec.from_dict(m["window_spec"]), 80.0, name="features")))
    with pytest.raises(BundleError, match="has shape .* but this analyzer feeds \\[N, 1, 64"):
        ModelBundle.load(dst)


def test_compare_refuses_set_b_and_writes_one_table(tmp_path):
    """`audiostream compare`: a development folder holding set B recordings is refused (set B is scored once,
    at the end); the table has one row per family with every column the issue asks for."""
    from streamproc.training.compare import _refuse_set_b, markdown
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "manifest.csv").write_text("file,label,source,license\nspeech/a.wav,speech,klettres-data cs,GPL\n")
    _refuse_set_b(dev)  # set A: fine
    (dev / "manifest.csv").write_text("file,label,source,license\nspeech/a.wav,speech,asterisk-core-sounds-en-wav "
                                      "hello,CC\n")
    with pytest.raises(SystemExit, match="holds set B recordings"):
        _refuse_set_b(dev)
    row = {"held_out_macro_f1": 0.9, "real_macro_f1": 0.7, "real_f1": {"music": 0.5, "speech": 0.8},
           "levels": {0.0: 0.7, -20.0: 0.65, -40.0: 0.4}, "streams_per_core": 2000.0, "parameters": None}
    result = {"data": "d", "real": "/x/real", "seed": 0, "bench": {"streams": 10, "seconds": 3, "repeat": 1,
                                                                    "cpu": "cpu", "ratio_cnn_to_mlp": 0.6},
              "rows": [{**row, "family": "mlp", "ref": "soundtype:9"},
                       {**row, "family": "cnn", "ref": "soundtype-cnn:1", "parameters": 43396,
                        "streams_per_core": 1200.0}]}
    lines = markdown(result).splitlines()
    assert lines[0] == ("| family | bundle | held-out macro-F1 | real macro-F1 | real music F1 | real speech F1 | "
                        "real at -20 dB | real at -40 dB | streams/core (one bench run) |")
    assert lines[3] == ("| cnn | `soundtype-cnn:1` (43396 parameters) | 0.900 | 0.700 | 0.500 | 0.800 | 0.650 | "
                        "0.400 | 1200 |")
    assert "CNN / MLP streams per core: 0.60" in lines[-1]
