"""Dataset -> train -> bundle -> served by the analyzer through Kafka, with no train/serve skew."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from streamproc.features import FeatureExtractor
from streamproc.inference import ModelBundle
from streamproc.training.data import clip_vectors
from streamproc.training.dataset import synth
from streamproc.training.train import train

from .helpers import cli, consume, values

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A few seconds of generated data per class, and a bundle trained on it (seconds, not minutes)."""
    root = tmp_path_factory.mktemp("train")
    data = synth(root / "data", minutes=1.0, seed=11, clip_seconds=3.0, quiet=True)
    models = root / "models"
    rep = train(str(data), task="soundtype", out=str(models / "soundtype" / "1"), seed=3, quiet=True, hidden=32)
    return data, models, rep


def test_dataset_has_every_class_and_a_manifest(tiny):
    import yaml
    data, models, _ = tiny
    made = json.loads((data / "dataset.json").read_text())  # how to make it again, carried into the bundle
    assert made["command"] == f"audiostream dataset synth --out {data} --minutes 1 --seed 11 --clip-seconds 3"
    assert made["clips"] == 20 and made["real_packages"] == []
    sources = yaml.safe_load((models / "soundtype" / "1" / "model.yaml").read_text())["training"]["sources"]
    assert sources["dataset"] == made and sum(sources["clips_by_origin"].values()) == 20
    rows = (data / "manifest.csv").read_text().splitlines()
    assert rows[0] == "file,label,source,license,augment,seconds"
    labels = {r.split(",")[1] for r in rows[1:]}
    assert labels == {"speech", "music", "environment", "silence"}
    for label in labels:
        clips = list((data / label).glob("*.wav"))
        assert clips
        y, sr = sf.read(clips[0])
        assert sr == 16000 and len(y) == 48000


def probe_wav(tmp_path):
    """A file nobody trained on: 3 s of music-like tones then 3 s of noise, at 16 kHz."""
    t = np.arange(3 * 16000) / 16000
    y = np.concatenate([0.2 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2,
                        0.1 * np.random.default_rng(0).standard_normal(t.size)])
    wav = tmp_path / "probe.wav"
    sf.write(wav, y.astype(np.float32), 16000)
    return wav


def assert_served_as_offline(kafka_conf, tps, start_analyzer, bundle, bundle_dir, wav, offline, task):
    """Replay ``wav`` through a real broker to an analyzer serving ``bundle_dir``: one prediction per window,
    with the scores and labels computed offline (no train/serve skew)."""
    start_analyzer(tps, model=str(bundle_dir))
    p = subprocess.run(cli("produce-file", str(wav), "--stream-id", "probe", "-b", kafka_conf["bootstrap.servers"],
                           "--topic", tps["frames"], "--speed", "max", "-q"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    preds = values(consume(kafka_conf, tps["predictions"], count=len(offline)))
    assert len(preds) == len(offline)
    live = np.array([[p["scores"][lab] for lab in bundle.labels] for p in preds])
    np.testing.assert_allclose(live, offline, atol=2e-6)  # JSON keeps 6 decimals
    assert [p["label"] for p in preds] == [bundle.labels[i] for i in offline.argmax(axis=1)]
    assert {p["model"]["task"] for p in preds} == {task}


def test_bundle_scores_offline_equal_scores_through_kafka(tiny, kafka_conf, topics, start_analyzer, tmp_path):
    _, models, rep = tiny
    bundle_dir = models / "soundtype" / "1"
    assert (bundle_dir / "confusion_held_out.png").stat().st_size > 5000 and 0 <= rep["macro_f1"] <= 1
    bundle = ModelBundle.load(bundle_dir)
    assert bundle.labels == ["environment", "music", "silence", "speech"]
    wav = probe_wav(tmp_path)
    offline = bundle.predict(clip_vectors(wav, bundle.spec, FeatureExtractor(bundle.spec)))

    assert_served_as_offline(kafka_conf, topics(), start_analyzer, bundle, bundle_dir, wav, offline, "soundtype")


def test_evaluate_prints_scores_and_writes_the_confusion_matrix(tiny, tmp_path):
    data, models, _ = tiny
    png = tmp_path / "cm.png"
    p = subprocess.run(cli("evaluate", str(models / "soundtype" / "1"), str(data), "--plot", str(png), "--json"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert {"macro_f1", "per_class", "n_clips", "confusion_matrix"} <= set(rep)
    assert rep["n_clips"] == sum(m["clips"] for m in rep["per_class"].values()) == 20
    import matplotlib.image
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 300 and img.std() > 0.05  # a real picture, not a blank
    p = subprocess.run(cli("evaluate", str(models / "soundtype" / "1"), str(tmp_path)), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "no audio files" in p.stderr


def test_evaluate_and_train_skip_an_undecodable_file_and_read_every_audio_suffix(tiny, tmp_path):
    """A labelled folder with a corrupt .wav and clips as .au and .opus: evaluate scores the others, names the
    bad file with its reason (JSON `skipped`), and train still trains."""
    import shutil
    data, models, _ = tiny
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    (folder / "speech" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(200))
    y, sr = sf.read(next((data / "music").glob("*.wav")))
    sf.write(folder / "music" / "extra.au", y, sr, format="AU")
    sf.write(folder / "music" / "extra.opus", y, sr, format="OGG", subtype="OPUS")
    p = subprocess.run(cli("evaluate", str(models / "soundtype" / "1"), str(folder), "--json", "--plot",
                           str(tmp_path / "cm.png")), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep["n_clips"] == 22 and rep["per_class"]["music"]["clips"] == 7, rep["per_class"]
    assert [s["file"] for s in rep["skipped"]] == [str(folder / "speech" / "broken.wav")]
    assert "cannot decode" in rep["skipped"][0]["reason"] and "broken.wav" in p.stderr
    rep = train(str(folder), task="soundtype", out=str(tmp_path / "m" / "soundtype" / "1"), seed=1, quiet=True,
                hidden=16)
    assert rep["n_clips"] >= 4  # its held-out clips, from the 22 readable files


def test_models_list_shows_tasks_versions_and_scores(tiny):
    _, models, rep = tiny
    p = subprocess.run(cli("models", "list"), capture_output=True, text=True, timeout=60,
                       env={**os.environ, "AUDIOSTREAM_MODELS": str(models)})
    assert p.returncode == 0
    assert "soundtype" in p.stdout and "1*" in p.stdout and f"{rep['macro_f1']:.3f}" in p.stdout
    assert "environment, music, silence, speech" in p.stdout


def test_models_list_shows_both_scores_and_the_default():
    """The repo's own models/: each soundtype bundle with its held-out and real-recordings macro-F1 (read from
    the reports beside it), and which one the analyzer serves without --model."""
    from streamproc.inference import resolve
    p = subprocess.run(cli("models", "list"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    default = resolve("soundtype")
    ev = json.loads((default / "evaluation.json").read_text())["held_out"]
    real = json.loads((default / "evaluation_debian_real.json").read_text())
    real_b = json.loads((default / "evaluation_real_b.json").read_text())
    rows = [ln for ln in p.stdout.splitlines() if ln.endswith("(default)")]
    assert len(rows) == 1, p.stdout
    cols = rows[0].split()
    assert cols[:5] == ["soundtype", default.name + "*", f"{ev['macro_f1']:.3f}", f"{real['macro_f1']:.3f}",
                        f"{real_b['macro_f1']:.3f}"], rows


def test_train_ensemble_exports_one_graph_of_all_members(tiny, tmp_path):
    """`train --ensemble 3`: three MLPs (seeds 5..7) soft-voted in one ONNX graph, which export checks against
    scikit-learn's VotingClassifier. Member seed 5 alone is a different model, so the vote is really there;
    and loading the bundle prints no onnxruntime warning about leftover constants."""
    import sys

    import yaml
    data, _, _ = tiny
    out = tmp_path / "soundtype" / "9"
    p = subprocess.run(cli("train", str(data), "--task", "soundtype", "--out", str(out), "--seed", "5", "--hidden", "16",
                           "--ensemble", "3"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    meta = yaml.safe_load((out / "model.yaml").read_text())
    assert "soft vote of 3 MLPClassifier" in meta["training"]["classifier"]
    assert meta["training"]["command"].endswith("--seed 5 --hidden 16 --ensemble 3")
    probe = subprocess.run([sys.executable, "-c", f"from streamproc.inference import ModelBundle; ModelBundle.load({str(out)!r})"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and "Removing initializer" not in probe.stderr, probe.stderr
    single = tmp_path / "soundtype" / "8"
    train(str(data), task="soundtype", out=str(single), seed=5, quiet=True, hidden=16)
    X = clip_vectors(next((data / "music").glob("*.wav")), ModelBundle.load(out).spec,
                     FeatureExtractor(ModelBundle.load(out).spec))
    voted, alone = ModelBundle.load(out).predict(X), ModelBundle.load(single).predict(X)
    np.testing.assert_allclose(voted.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(voted - alone).max() > 1e-3


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    """`dataset debian`: the real-recordings evaluation set, rebuilt from Debian packages."""
    out = tmp_path_factory.mktemp("real") / "real"
    p = subprocess.run(cli("dataset", "debian", "--out", str(out)), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    manifest = (out / "manifest.csv").read_text()
    assert "klettres-data" in manifest and "pingus-data" in manifest and "colobot-common-sounds" in manifest
    return out


@pytest.mark.parametrize("version", ["1", "2", "3", "4"])
def test_committed_soundtype_bundle_reproduces_its_real_recording_score(real_set, tmp_path, version):
    """Evaluating each committed bundle on the rebuilt real set gives exactly the score committed beside it
    (the numbers in docs/training.md)."""
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    bundle = repo / "models" / "soundtype" / version
    p = subprocess.run(cli("evaluate", str(bundle), str(real_set), "--json", "--plot", str(tmp_path / "cm.png")),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout)
    committed = json.loads((bundle / "evaluation_debian_real.json").read_text())
    assert got["n_clips"] == committed["n_clips"] == 198
    assert got["confusion_matrix"] == committed["confusion_matrix"]
    assert abs(got["macro_f1"] - committed["macro_f1"]) < 1e-9


@pytest.fixture(scope="module")
def tiny_cnn(tiny):
    """`train --family cnn` on the tiny data set (the MLP's, same split by seed), through the CLI."""
    data, models, _ = tiny
    out = models / "soundtype-cnn" / "1"
    p = subprocess.run(cli("train", str(data), "--family", "cnn", "--task", "soundtype-cnn", "--out", str(out),
                           "--seed", "3", "--epochs", "2"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "cnn epoch 2/2: mean training loss" in p.stderr and "held-out clip macro-F1" in p.stderr
    return out


def test_cnn_bundle_states_its_logmel_input(tiny, tiny_cnn):
    """The bundle says it takes log-mel patches, holds out the same clips as the MLP, carries its confusion
    matrix and the command that makes it again (bit-identical: tests/unit/test_logmel.py)."""
    import yaml
    data, models, rep = tiny
    held = json.loads((tiny_cnn / "evaluation.json").read_text())["held_out"]
    assert held["n_clips"] == rep["n_clips"]  # the same held-out files as `train` (split_by_clip, seed 3)
    meta = yaml.safe_load((tiny_cnn / "model.yaml").read_text())
    assert meta["input"]["kind"] == "logmel" and meta["input"]["shape"] == [None, 1, 64, 49]
    assert meta["training"]["family"] == "cnn" and 30_000 < meta["training"]["parameters"] < 200_000
    assert meta["training"]["command"].endswith("--family cnn --task soundtype-cnn "
                                                f"--out {tiny_cnn} --seed 3 --epochs 2")
    assert (tiny_cnn / "confusion_held_out.png").stat().st_size > 5000


def test_cnn_bundle_scores_offline_equal_scores_through_kafka(tiny_cnn, kafka_conf, topics, start_analyzer, tmp_path):
    """The MLP's train/serve skew test for the log-mel CNN: patches made offline from the file equal the
    analyzer's, fed from its one STFT path, so the scores on the predictions topic are the offline ones."""
    bundle = ModelBundle.load(tiny_cnn)
    assert bundle.input_kind == "logmel"
    wav = probe_wav(tmp_path)
    fx = FeatureExtractor(bundle.spec)
    V, rms = clip_vectors(wav, bundle.spec, fx, with_rms=True, logmel=bundle.logmel)
    offline = bundle.gate(bundle.predict(V), rms)
    assert V.shape == (len(offline), 1, 64, 49) and len(offline) == 11

    assert_served_as_offline(kafka_conf, topics(), start_analyzer, bundle, tiny_cnn, wav, offline, "soundtype-cnn")
