"""``audiostream evaluate BUNDLE DIR``: per-class precision / recall / F1 and a confusion matrix.

DIR holds one sub-folder per label. A clip's label is the label with the highest
MEAN score over the clip's windows (windows computed exactly as the analyzer does).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..inference import ModelBundle
from .data import featurise, kept, list_clips


def scores_by_clip(bundle: ModelBundle, clips, quiet=False, skipped: list | None = None) -> np.ndarray:
    """Mean window scores per clip; with ``skipped``, per clip that could be decoded (see featurise)."""
    X, _, idx = featurise(clips, bundle.spec, "scoring clips", quiet=quiet, skipped=skipped)
    S = bundle.predict(X)
    return np.stack([S[idx == i].mean(axis=0) for i in range(int(idx.max()) + 1)])


def report(labels: list[str], truth: list[str], pred: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    present = [lab for lab in labels if lab in set(truth) | set(pred)]
    p, r, f, n = precision_recall_fscore_support(truth, pred, labels=present, zero_division=0)
    per_class = {lab: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                       "f1": round(float(f[i]), 4), "clips": int(n[i])} for i, lab in enumerate(present)}
    scored = [lab for lab in present if per_class[lab]["clips"] > 0]
    return {"macro_f1": round(float(np.mean([per_class[lab]["f1"] for lab in scored])), 4) if scored else 0.0,
            "accuracy": round(float(np.mean(np.array(truth) == np.array(pred))), 4), "per_class": per_class,
            "n_clips": len(truth), "labels": present,
            "confusion_matrix": confusion_matrix(truth, pred, labels=present).tolist(),
            "clip_label_rule": "argmax of mean window scores"}


def plot_confusion(rep: dict, path: str | Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = np.array(rep["confusion_matrix"])
    labels = rep["labels"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_title(f"{title}\nmacro-F1 {rep['macro_f1']:.3f}, {rep['n_clips']} clips")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(bundle_ref: str, data_dir: str, plot: str | None = None, quiet: bool = False) -> dict:
    bundle = ModelBundle.load(bundle_ref)
    clips = list_clips(data_dir)
    unknown = sorted({lab for _, lab in clips} - set(bundle.labels))
    if unknown:
        raise ValueError(f"{data_dir}: label folder(s) {unknown} are not labels of {bundle.ref} {bundle.labels}")
    skipped: list = []
    S = scores_by_clip(bundle, clips, quiet, skipped=skipped)  # an undecodable file is reported, not fatal
    clips = kept(clips, skipped)
    pred = [bundle.labels[i] for i in S.argmax(axis=1)]
    rep = report(bundle.labels, [lab for _, lab in clips], pred)
    rep["model"] = bundle.ref
    rep["data"] = str(data_dir)
    rep["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    if plot:
        rep["confusion_png"] = str(plot_confusion(rep, plot, f"{bundle.ref} on {Path(data_dir).name}"))
    return rep


def format_report(rep: dict) -> str:
    lines = [f"{rep['model']} on {rep['data']}: {rep['n_clips']} clips ({rep['clip_label_rule']})",
             f"{'label':<14}{'precision':>10}{'recall':>8}{'f1':>8}{'clips':>7}"]
    for lab, m in rep["per_class"].items():
        lines.append(f"{lab:<14}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['clips']:>7}")
    lines.append(f"macro-F1 {rep['macro_f1']:.3f}, accuracy {rep['accuracy']:.3f}")
    if rep.get("skipped"):
        lines.append(f"skipped {len(rep['skipped'])} file(s) that could not be decoded (listed above)")
    if rep.get("confusion_png"):
        lines.append(f"confusion matrix: {rep['confusion_png']}")
    return "\n".join(lines)


def add_parser(sub):
    p = sub.add_parser("evaluate", help="scores + confusion matrix PNG for a bundle on labelled audio",
                       description=__doc__)
    p.add_argument("bundle", help="bundle directory or task[:version]")
    p.add_argument("data", help="directory with one sub-folder per label")
    p.add_argument("--plot", default="confusion_matrix.png", help="where to write the confusion matrix PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        rep = evaluate(args.bundle, args.data, args.plot, quiet=args.json)
    except (FileNotFoundError, ValueError) as exc:
        print(f"audiostream evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rep) if args.json else format_report(rep))
    return 0
