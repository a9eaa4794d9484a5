"""Model bundles: loading, resolving task[:version], refusing what we cannot serve."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from streamproc.errors import BundleError
from streamproc.features import FeatureExtractor
from streamproc.inference import ModelBundle, resolve
from streamproc.windowing import WindowSpec

MODELS = Path(__file__).resolve().parents[2] / "models"
STARTER = MODELS / "starter" / "1"


@pytest.fixture
def bundle_copy(tmp_path):
    dst = tmp_path / "m" / "starter" / "1"
    shutil.copytree(STARTER, dst)
    return dst


def edit_yaml(path: Path, fn):
    meta = yaml.safe_load((path / "model.yaml").read_text())
    fn(meta)
    (path / "model.yaml").write_text(yaml.safe_dump(meta))


def test_starter_bundle_loads_and_classifies(rng):
    b = ModelBundle.load(STARTER)
    assert (b.task, b.version) == ("starter", "1")
    assert sorted(b.labels) == ["noise", "silence", "tonal"]
    fx = FeatureExtractor(b.spec)
    t = np.arange(2 * 16000) / 16000
    clips = {"tonal": 0.3 * np.sin(2 * np.pi * 330 * t), "noise": 0.2 * rng.standard_normal(t.size),
             "silence": np.zeros(t.size)}
    for label, y in clips.items():
        _, V = fx.vectors_for_signal(y.astype(np.float32))
        scores = b.predict(V)
        assert scores.shape == (len(V), 3)
        np.testing.assert_allclose(scores.sum(axis=1), 1, atol=1e-5)
        assert [b.labels[i] for i in scores.argmax(axis=1)] == [label] * len(V)


def test_batched_inference_equals_one_at_a_time(rng):
    """Same labels, scores within 1e-6: onnxruntime's GEMM for one row and for many rows round
    differently in the last bits (measured: 3e-8 absolute), never enough to change an answer."""
    b = ModelBundle.load(STARTER)
    X = rng.standard_normal((64, b.spec.n_features)).astype(np.float32) * 3
    batched = b.predict(X)
    single = np.concatenate([b.predict(X[i:i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(batched.argmax(axis=1), single.argmax(axis=1))


def test_resolve_by_task_and_version(tmp_path, bundle_copy):
    root = tmp_path / "m"
    shutil.copytree(bundle_copy, root / "starter" / "10")
    shutil.copytree(bundle_copy, root / "starter" / "2")
    assert resolve("starter", root) == root / "starter" / "10"  # numeric order, not string order
    assert resolve("starter:2", root) == root / "starter" / "2"
    with pytest.raises(BundleError, match=r"no version '7' \(available: \['1', '2', '10'\]\)"):
        resolve("starter:7", root)
    with pytest.raises(BundleError, match="no model task 'genre'"):
        resolve("genre", root)


def test_spec_mismatch_is_refused_naming_the_difference():
    with pytest.raises(BundleError, match="n_mels: 64 != 128"):
        ModelBundle.load(STARTER, expect_spec=WindowSpec(n_mels=128))


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m["window_spec"].update(n_mels=0), "n_mels=0 must be a positive integer"),
    (lambda m: m["window_spec"].update(features=["mfcc", "loudness"]), "unknown feature"),
    (lambda m: m["window_spec"].update(colour=1), "unknown key"),
    (lambda m: m["window_spec"].update(features=["mfcc"]), "input shape .* does not match the 40 features"),
    (lambda m: m.pop("labels"), r"missing key\(s\) \['labels'\]"),
    (lambda m: m.update(labels=["a", "b"]), "has shape .* 2 labels"),
    (lambda m: m.update(format=99), "bundle format 99 is not supported"),
    (lambda m: m["input"].update(name="x"), "has no input 'x'"),
    (lambda m: m["output"].update(name="y"), "has no output 'y'"),
])
def test_bad_metadata_is_refused(bundle_copy, mutate, msg):
    edit_yaml(bundle_copy, mutate)
    with pytest.raises(BundleError, match=msg):
        ModelBundle.load(bundle_copy)


def test_corrupt_onnx_and_missing_files(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        ModelBundle.load(bundle_copy)
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        ModelBundle.load(bundle_copy)
    (bundle_copy / "model.yaml").write_text("labels: [unclosed")
    with pytest.raises(BundleError):
        ModelBundle.load(bundle_copy)
    with pytest.raises(BundleError, match="does not exist"):
        ModelBundle.load(bundle_copy.parent / "nope" / "x")


@pytest.mark.parametrize("kind,message", [("corrupt", "onnxruntime cannot load it"),
                                          ("wrong_shape", "takes 10 features but the window_spec produces 74"),
                                          ("nan", "NaN/Inf scores on a probe input")])
def test_poison_bundles_are_refused_at_load(tmp_path, kind, message):
    from tests.bundles import poison_bundle
    with pytest.raises(BundleError, match=message):
        ModelBundle.load(poison_bundle(tmp_path, kind))


def test_a_model_that_turns_nan_on_real_input_loads_and_says_so_per_window(tmp_path):
    from tests.bundles import poison_bundle
    b = ModelBundle.load(poison_bundle(tmp_path, "nan_at_runtime"))
    x = np.zeros((3, 74), np.float32)
    x[1, 0] = -300.0  # a quiet window's mfcc_mean[0]
    finite = np.isfinite(b.predict(x)).all(axis=1)
    assert finite.tolist() == [True, False, True]


@pytest.mark.parametrize("ref", ["x" * 5000, "bad\0name", "0" * 27 + "\x80" * 300])
def test_refs_the_filesystem_refuses_are_bundle_errors(ref):
    """Found by the API's schema fuzzing: an over-long model name reached the filesystem as an OSError."""
    with pytest.raises(BundleError, match="not a usable bundle path|no model task"):
        resolve(ref)
