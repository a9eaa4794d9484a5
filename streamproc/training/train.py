"""``audiostream train DIR --task T --out models/T/V``: folder-per-label audio -> ONNX model bundle.

Features come from the analyzer's own code (streamproc.features via
training.data.clip_vectors: decoded, resampled and quantised like the wire), so
there is no train/serve skew. The held-out split is by clip file (never the same
file in train and test); the shipped model is the one trained on the train
split, so the scores in model.yaml are exactly this bundle's.
"""
from __future__ import annotations

import collections
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..windowing import WindowSpec
from .bundle import export_sklearn
from .data import featurise, kept, list_clips
from .evaluate import plot_confusion, report


def load_split(data_dir: str, spec: WindowSpec, seed: int, test_fraction: float, quiet: bool,
               what: str = "featurising clips", logmel=None):
    """A folder-per-label dataset through the analyzer's code path, split by clip file: (clips, labels, X, y,
    clip index per window, held-out clip indices). An undecodable file is named and left out. Both model
    families start here, so they see the same windows and the same held-out clips."""
    clips = list_clips(data_dir)
    labels = sorted({lab for _, lab in clips})
    if len(labels) < 2:
        raise ValueError(f"{data_dir}: need at least two label folders, found {labels}")
    skipped: list = []
    X, y, idx = featurise(clips, spec, what, quiet=quiet, skipped=skipped, logmel=logmel)
    clips = kept(clips, skipped)
    return clips, labels, X, y, idx, split_by_clip(clips, labels, seed, test_fraction)


def train(data_dir: str, *, task: str, out: str, seed: int = 0, test_fraction: float = 0.2, hidden: int = 128,
          ensemble: int = 1, quiet: bool = False, spec: WindowSpec | None = None) -> dict:
    from sklearn.ensemble import VotingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = spec or WindowSpec()
    t0 = time.monotonic()
    clips, labels, X, y, idx, test_clips = load_split(data_dir, spec, seed, test_fraction, quiet)
    is_test = np.isin(idx, sorted(test_clips))
    def mlp(random_state):
        return MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=400, early_stopping=True,
                             random_state=random_state)
    if ensemble > 1:  # the mean of several seeds' probabilities: real-world behaviour no longer hangs on one seed
        head = VotingClassifier([(f"mlp{i}", mlp(seed + i)) for i in range(ensemble)], voting="soft",
                                flatten_transform=False)  # skl2onnx converts only the unflattened form
        what = f"soft vote of {ensemble} MLPClassifier({hidden} hidden, alpha=1e-3, early stopping), seeds {seed}.." \
               f"{seed + ensemble - 1}"
    else:
        head = mlp(seed)
        what = f"MLPClassifier({hidden} hidden, alpha=1e-3, early stopping)"
    model = make_pipeline(StandardScaler(), head)
    if not quiet:
        print(f"training on {int((~is_test).sum())} windows of {len(clips) - len(test_clips)} clips, "
              f"testing on {int(is_test.sum())} windows of {len(test_clips)} clips", file=sys.stderr, flush=True)
    model.fit(X[~is_test], y[~is_test])
    proba = model.predict_proba(X[is_test])
    classes = list(model.classes_)
    test_idx = sorted(test_clips)
    clip_scores = np.stack([proba[idx[is_test] == i].mean(axis=0) for i in test_idx])
    clip_rep = report(classes, [clips[i][1] for i in test_idx], [classes[j] for j in clip_scores.argmax(axis=1)])
    window_rep = report(classes, list(y[is_test]), [classes[j] for j in proba.argmax(axis=1)])
    counts = collections.Counter(lab for _, lab in clips)
    sources = _manifest_summary(Path(data_dir))
    training = {"data": str(data_dir), "clips_per_label": dict(counts), "windows": int(len(y)),
                "seed": seed, "split": f"by clip file, {test_fraction:.0%} of each label held out",
                "classifier": f"StandardScaler + {what}",
                "sources": sources, "seconds": round(time.monotonic() - t0, 1),
                "command": f"audiostream train {data_dir} --task {task} --out {out} --seed {seed}"
                           + (f" --hidden {hidden}" if hidden != 128 else "")
                           + (f" --ensemble {ensemble}" if ensemble > 1 else "")}
    evaluation = {"held_out": {"clips": clip_rep["n_clips"], "macro_f1": clip_rep["macro_f1"],
                               "accuracy": clip_rep["accuracy"], "window_macro_f1": window_rep["macro_f1"],
                               "clip_label_rule": clip_rep["clip_label_rule"]}}
    out_dir = export_sklearn(model, spec, out, task=task, version=Path(out).name,
                             description=f"{task} classifier ({', '.join(classes)}) trained by audiostream train",
                             training=training, evaluation=evaluation, check_X=X[is_test][:64])
    clip_rep["split"] = "held_out"
    (out_dir / "evaluation.json").write_text(json.dumps({"held_out": clip_rep}, indent=2) + "\n")
    plot_confusion(clip_rep, out_dir / "confusion_held_out.png", f"{task}:{Path(out).name} held-out clips")
    if not quiet:
        print(f"wrote {out_dir}: held-out clip macro-F1 {clip_rep['macro_f1']:.3f} "
              f"(windows {window_rep['macro_f1']:.3f}) in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return clip_rep


def split_by_clip(clips, labels, seed: int, test_fraction: float) -> set[int]:
    """Indices of the held-out clips: ``test_fraction`` of each label's files, drawn with ``seed``. Every
    family (MLP, CNN) uses this, so the same seed holds out the same files."""
    rng = np.random.default_rng(seed)
    test_clips: set[int] = set()
    for lab in labels:  # stratified by label, split by clip file
        members = [i for i, (_, l) in enumerate(clips) if l == lab]
        rng.shuffle(members)
        test_clips |= set(members[: max(1, round(len(members) * test_fraction))])
    return test_clips


def _manifest_summary(root: Path) -> dict:
    path = root / "manifest.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = {"manifest": str(path), "licenses": sorted({r.get("license", "") for r in rows}),
           # clips per origin: the source's first word is the package, or espeak-ng / "midi" / synth / a silence
           "clips_by_origin": dict(sorted(collections.Counter(r.get("source", "").split(" ")[0].strip('"')
                                                                for r in rows).items()))}
    made = root / "dataset.json"
    if made.exists():
        out["dataset"] = json.loads(made.read_text())
    return out


def add_parser(sub):
    p = sub.add_parser("train", help="folder-per-label audio -> ONNX model bundle", description=__doc__)
    p.add_argument("data", help="directory with one sub-folder per label (e.g. from 'audiostream dataset synth')")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="bundle directory, e.g. models/soundtype/2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="average N MLPs trained with seeds SEED..SEED+N-1 (one ONNX graph)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--family", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: scikit-learn MLP on pooled features; cnn: log-mel CNN (JAX), input kind logmel")
    p.add_argument("--epochs", type=int, default=12, help="--family cnn: training epochs")
    p.add_argument("--spec-augment", action="store_true",
                   help="--family cnn: also mask one mel band and one time span of each training patch")
    p.set_defaults(func=_run)


def _run(a) -> int:
    if a.family == "cnn":
        from .cnn import train_cnn
        train_cnn(a.data, task=a.task, out=a.out, seed=a.seed, epochs=a.epochs, test_fraction=a.test_fraction,
                  spec_augment=a.spec_augment)
    else:
        train(a.data, task=a.task, out=a.out, seed=a.seed, hidden=a.hidden, ensemble=a.ensemble,
              test_fraction=a.test_fraction)
    return 0
