"""``audiostream evaluate BUNDLE DIR``: per-class precision / recall / F1 and a confusion matrix.

DIR holds one sub-folder per label. A clip's label is the label with the highest
MEAN score over the clip's windows (windows computed exactly as the analyzer does).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..inference import _FROM_BUNDLE, ModelBundle
from .data import featurise, kept, list_clips



def save_figure(fig, path) -> Path:
    """Lay out, write (creating the folder) and close a figure; its path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def scores_by_clip(bundle: ModelBundle, clips, quiet=False, skipped: list | None = None, gain_db: float = 0.0,
                   stats: dict | None = None) -> np.ndarray:
    """Mean window scores per clip, with the bundle's silence gate applied to each window as served
    (ModelBundle.gate on the engine's rms_dbfs); with ``skipped``, per clip that could be decoded (see
    featurise). ``gain_db``: every clip that much louder or quieter first. ``stats`` gets window counts."""
    rms: list = []
    X, _, idx = featurise(clips, bundle.spec, "scoring clips" + (f" at {gain_db:+g} dB" if gain_db else ""),
                          quiet=quiet, skipped=skipped, rms=rms, gain_db=gain_db, logmel=bundle.logmel)
    S = bundle.gate(bundle.predict(X), rms)
    if stats is not None:
        stats.update(windows=len(X), gated_windows=int(np.sum(bundle.is_gated(np.array(rms)))))
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
    return save_figure(fig, path)


def evaluate(bundle_ref: str, data_dir: str, plot: str | None = None, quiet: bool = False, *, gain_db: float = 0.0,
             gains: list[float] | None = None, levels_plot: str | None = None,
             silence_below_dbfs=_FROM_BUNDLE) -> dict:
    """The report at ``gain_db``; with ``gains``, also ``levels``: the same clips scored at each gain."""
    bundle = ModelBundle.load(bundle_ref, silence_below_dbfs=silence_below_dbfs)
    all_clips = list_clips(data_dir)
    unknown = sorted({lab for _, lab in all_clips} - set(bundle.labels))
    if unknown:
        raise ValueError(f"{data_dir}: label folder(s) {unknown} are not labels of {bundle.ref} {bundle.labels}")

    def at(gain):
        skipped: list = []
        stats: dict = {}
        S = scores_by_clip(bundle, all_clips, quiet, skipped=skipped, gain_db=gain, stats=stats)
        clips = kept(all_clips, skipped)  # an undecodable file is reported, not fatal
        rep = report(bundle.labels, [lab for _, lab in clips], [bundle.labels[i] for i in S.argmax(axis=1)])
        rep["silence_gate"] = {"silence_below_dbfs": bundle.silence_below_dbfs, **stats}
        return rep, skipped

    rep, skipped = at(gain_db)
    rep["model"] = bundle.ref
    rep["data"] = str(data_dir)
    rep["gain_db"] = gain_db
    rep["skipped"] = [{"file": f, "reason": r} for f, r in skipped]
    if plot:
        rep["confusion_png"] = str(plot_confusion(rep, plot, f"{bundle.ref} on {Path(data_dir).name}"
                                                  + (f" at {gain_db:+g} dB" if gain_db else "")))
    if gains:
        rep["levels"] = []
        for g in gains:
            r = rep if g == gain_db else at(g)[0]
            rep["levels"].append({"gain_db": g, "macro_f1": r["macro_f1"], "accuracy": r["accuracy"],
                                  "f1": {lab: m["f1"] for lab, m in r["per_class"].items() if m["clips"]},
                                  "confusion_matrix": r["confusion_matrix"], "labels": r["labels"],
                                  "gated_windows": r["silence_gate"].get("gated_windows")})
        if levels_plot:
            rep["levels_png"] = str(plot_levels(rep, levels_plot, f"{bundle.ref} on {Path(data_dir).name}"))
    return rep


def plot_levels(rep: dict, path: str | Path, title: str) -> Path:
    """Per-class F1 and macro-F1 against gain: one line per class, the same clips at every gain."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = rep["levels"]
    gains = [r["gain_db"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for lab in (lab for lab in rep["labels"] if rep["per_class"].get(lab, {}).get("clips")):  # labels with clips
        ax.plot(gains, [r["f1"].get(lab, 0.0) for r in rows], marker="o", label=f"{lab} F1")
    ax.plot(gains, [r["macro_f1"] for r in rows], marker="s", color="black", lw=2.5, label="macro-F1")
    for g, r in zip(gains, rows):
        ax.annotate(f"{r['macro_f1']:.2f}", (g, r["macro_f1"]), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=9)
    ax.set_xlabel("gain applied to every clip (dB)")
    ax.set_ylabel("F1")
    ax.set_ylim(-0.03, 1.05)
    ax.set_xticks(gains)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    gate = rep.get("silence_gate", {}).get("silence_below_dbfs")
    ax.set_title(f"{title}\n{rep['n_clips']} clips at each gain; "
                 + (f"silence gate below {gate:g} dBFS" if gate is not None else "no silence gate"))
    return save_figure(fig, path)


def format_report(rep: dict) -> str:
    lines = [f"{rep['model']} on {rep['data']}: {rep['n_clips']} clips ({rep['clip_label_rule']})",
             f"{'label':<14}{'precision':>10}{'recall':>8}{'f1':>8}{'clips':>7}"]
    for lab, m in rep["per_class"].items():
        lines.append(f"{lab:<14}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['clips']:>7}")
    lines.append(f"macro-F1 {rep['macro_f1']:.3f}, accuracy {rep['accuracy']:.3f}")
    if rep.get("skipped"):
        lines.append(f"skipped {len(rep['skipped'])} file(s) that could not be decoded (listed above)")
    gate = rep.get("silence_gate", {})
    if gate.get("silence_below_dbfs") is not None:
        lines.append(f"silence gate: windows below {gate['silence_below_dbfs']:g} dBFS are silence "
                     f"({gate.get('gated_windows', 0)} of {gate.get('windows', 0)} windows)")
    if rep.get("confusion_png"):
        lines.append(f"confusion matrix: {rep['confusion_png']}")
    if rep.get("levels"):
        labs = rep["labels"]
        lines.append(f"{'gain dB':>8}{'macro-F1':>10}" + "".join(f"{lab[:11]:>12}" for lab in labs))
        for r in rep["levels"]:
            lines.append(f"{r['gain_db']:>8g}{r['macro_f1']:>10.3f}" + "".join(f"{r['f1'].get(lab, 0):>12.3f}" for lab in labs))
        if rep.get("levels_png"):
            lines.append(f"level table: {rep['levels_png']}")
    return "\n".join(lines)


def add_parser(sub):
    p = sub.add_parser("evaluate", help="scores + confusion matrix PNG for a bundle on labelled audio",
                       description=__doc__)
    p.add_argument("bundle", help="bundle directory or task[:version]")
    p.add_argument("data", help="directory with one sub-folder per label")
    p.add_argument("--plot", default="confusion_matrix.png", help="where to write the confusion matrix PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--gain", type=float, default=0.0, metavar="DB",
                   help="make every clip DB louder (+) or quieter (-) before scoring, clipped at full scale")
    p.add_argument("--gains", default=None, metavar="DB,DB,...",
                   help="also score the same clips at each of these gains (a level table, e.g. 0,-20,-40)")
    p.add_argument("--levels-plot", default="levels.png", help="with --gains: where to write the level PNG")
    p.add_argument("--silence-below-dbfs", default=None, metavar="DBFS",
                   help="the silence gate's level for this run (a number, or 'off'); default: "
                        "$AUDIOSTREAM_SILENCE_BELOW_DBFS, else the bundle's model.yaml, else -60")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        gains = [float(g) for g in args.gains.split(",")] if args.gains else None
        gate = _FROM_BUNDLE if args.silence_below_dbfs is None else args.silence_below_dbfs
        rep = evaluate(args.bundle, args.data, args.plot, quiet=args.json, gain_db=args.gain, gains=gains,
                       levels_plot=args.levels_plot, silence_below_dbfs=gate)
    except (FileNotFoundError, ValueError) as exc:
        print(f"audiostream evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rep) if args.json else format_report(rep))
    return 0
