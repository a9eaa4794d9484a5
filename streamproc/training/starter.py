"""The starter model: silence / tonal / noise, trained on signals synthesised here.

It exists so the end-to-end path serves real labels from a real ONNX model
before the full sound-type model (speech / music / environment / silence) is
trained. Rebuild the committed bundle with::

    audiostream train-starter --out models/starter/1 --seed 7

Classes:
- ``silence``: digital silence, or noise / hum between -100 and -65 dBFS;
- ``tonal``: pure sines, harmonic tones, chords, vibrato, glides and beeps, clean or with low noise;
- ``noise``: white, pink, brown and band-limited noise, crackle, at -50..-6 dBFS.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..audio import from_s16, to_s16
from ..features import FeatureExtractor
from ..progress import Progress
from ..windowing import WindowSpec

LABELS = ("silence", "tonal", "noise")


def _db(rng, lo, hi):
    return 10 ** (rng.uniform(lo, hi) / 20)


def _colored_noise(rng, n, exponent):
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=float)
    f[0] = 1.0
    spec /= f ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _normalise(x, level):
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * level


def synth_clip(label: str, rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
    n = int(sr * seconds)
    t = np.arange(n) / sr
    if label == "silence":
        kind = rng.integers(3)
        if kind == 0:
            x = np.zeros(n)
        elif kind == 1:
            x = _colored_noise(rng, n, rng.uniform(0, 2)) * _db(rng, -100, -65)
        else:
            hum = sum(np.sin(2 * np.pi * rng.choice([50, 60]) * h * t) / h for h in (1, 2, 3))
            x = _normalise(hum, _db(rng, -95, -65)) + _colored_noise(rng, n, 1) * _db(rng, -110, -80)
    elif label == "tonal":
        kind = rng.choice(5, p=[0.175, 0.175, 0.175, 0.175, 0.3])
        f0 = np.exp(rng.uniform(np.log(60), np.log(2000)))
        if kind == 0:    # harmonic note with vibrato
            phase = 2 * np.pi * f0 * t + rng.uniform(0.5, 8) * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
            x = sum(np.sin(h * phase) * rng.uniform(0.1, 1) / h for h in range(1, rng.integers(2, 9)))
        elif kind == 1:  # chord
            ratios = rng.choice([[1, 1.26, 1.5], [1, 1.19, 1.5], [1, 1.5, 2], [1, 1.33, 1.68]])
            x = sum(np.sin(2 * np.pi * f0 * r * t + rng.uniform(0, 6)) for r in ratios)
        elif kind == 2:  # glide
            f1 = rng.uniform(80, 2000)
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
        elif kind == 3:  # beeps
            period = rng.uniform(0.15, 0.6)
            gate = ((t % period) < period * rng.uniform(0.3, 0.8)).astype(float)
            x = np.sin(2 * np.pi * f0 * t) * gate + 0.05 * np.sin(2 * np.pi * f0 * t)
        else:            # a pure sine anywhere in the band (test tones, whistles)
            x = np.sin(2 * np.pi * np.exp(rng.uniform(np.log(50), np.log(7000))) * t + rng.uniform(0, 6))
        floor = _db(rng, -80, -55) if rng.random() < 0.5 else 0.0  # clean tones exist too
        x = _normalise(x, _db(rng, -45, -1)) + _colored_noise(rng, n, rng.uniform(0, 2)) * floor
    elif label == "noise":
        kind = rng.integers(3)
        if kind == 0:
            x = _colored_noise(rng, n, rng.uniform(0, 2.2))
        elif kind == 1:  # band-limited noise
            spec = np.fft.rfft(rng.standard_normal(n))
            f = np.fft.rfftfreq(n, 1 / sr)
            lo = rng.uniform(50, 3000)
            spec[(f < lo) | (f > lo * rng.uniform(1.5, 6))] *= 0.01
            x = np.fft.irfft(spec, n)
        else:            # crackle / rain-like impulses
            x = (rng.random(n) < rng.uniform(0.002, 0.05)) * rng.standard_normal(n)
            x = x + 0.1 * _colored_noise(rng, n, 1)
        x = _normalise(x, _db(rng, -50, -6))
    else:
        raise ValueError(f"unknown label {label!r}")
    return np.clip(x, -1, 1).astype(np.float32)


def build_dataset(spec: WindowSpec, clips_per_class: int, seconds: float, seed: int, progress=None):
    rng = np.random.default_rng(seed)
    fx = FeatureExtractor(spec)
    X, y, groups = [], [], []
    total = clips_per_class * len(LABELS)
    done = 0
    for label in LABELS:
        for i in range(clips_per_class):
            clip = synth_clip(label, rng, spec.sr, seconds)
            # quantise like the wire format does, so training sees what the analyzer sees
            clip = from_s16(to_s16(clip))
            _, V = fx.vectors_for_signal(clip)
            X.append(V)
            y += [label] * len(V)
            groups += [f"{label}-{i}"] * len(V)
            done += 1
            if progress:
                progress(done, total)
    return np.concatenate(X), np.array(y), np.array(groups)


def train(out: str, seed: int = 7, clips_per_class: int = 120, seconds: float = 3.0, quiet: bool = False) -> dict:
    from sklearn.neural_network import MLPClassifier
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .bundle import export_sklearn

    spec = WindowSpec()

    bar = Progress("synthesising and featurising clips", clips_per_class * len(LABELS), enabled=not quiet)
    X, y, groups = build_dataset(spec, clips_per_class, seconds, seed, lambda done, total: bar.update(done))
    # held-out split by clip: every 5th clip of each class is test
    clip_idx = np.array([int(g.rsplit("-", 1)[1]) for g in groups])
    test = clip_idx % 5 == 0
    model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=600,
                                                          random_state=seed))
    model.fit(X[~test], y[~test])
    pred = model.predict(X[test])
    evaluation = {"split": "by clip, every 5th clip held out", "windows_test": int(test.sum()),
                  "accuracy": round(float(accuracy_score(y[test], pred)), 4),
                  "macro_f1": round(float(f1_score(y[test], pred, average="macro")), 4)}
    model.fit(X, y)  # ship the model fitted on all clips
    training = {"data": "synthetic (streamproc/training/starter.py)", "seed": seed,
                "clips_per_class": clips_per_class, "clip_seconds": seconds, "windows": int(len(y)),
                "classifier": "StandardScaler + MLPClassifier(64 hidden, alpha=1e-3)",
                "command": f"audiostream train-starter --out {out} --seed {seed}"}
    export_sklearn(model, spec, out, task="starter", version=out.rstrip("/").rsplit("/", 1)[-1],
                   description="Starter model: silence / tonal / noise from synthetic signals",
                   training=training, evaluation=evaluation, check_X=X[test][:64])
    if not quiet:
        print(f"wrote {out}: held-out accuracy {evaluation['accuracy']}, macro-F1 {evaluation['macro_f1']}",
              file=sys.stderr)
    return evaluation


def add_parser(sub):
    p = sub.add_parser("train-starter", help="train the small starter bundle (silence/tonal/noise) from synthetic audio")
    p.add_argument("--out", default="models/starter/1")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--clips-per-class", type=int, default=120)
    p.set_defaults(func=lambda a: (train(a.out, a.seed, a.clips_per_class), 0)[1])


def main(argv=None):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    args = ap.parse_args(["train-starter", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
