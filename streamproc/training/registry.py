"""``audiostream models list``: the bundles under models/ (or $AUDIOSTREAM_MODELS)."""
from __future__ import annotations

import json

import yaml

from ..errors import BundleError
from ..inference import _version_key, models_root, resolve
from ..settings import DEFAULT_MODEL


def bundles(root=None) -> list[dict]:
    root = root or models_root()
    try:
        default = resolve(DEFAULT_MODEL, root)
    except BundleError:
        default = None
    out = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
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
                out.append({"task": task_dir.name, "version": d.name, "labels": meta.get("labels"),
                            "macro_f1": held.get("macro_f1"), "real_macro_f1": real_f1,
                            "real_b_macro_f1": real_b_f1,
                            "latest": i == len(versions) - 1, "default": d == default, "path": str(d),
                            "description": meta.get("description")})
            except (OSError, ValueError, yaml.YAMLError, AttributeError) as exc:
                out.append({"task": task_dir.name, "version": d.name, "error": str(exc), "path": str(d)})
    return out


def add_parser(sub):
    p = sub.add_parser("models", help="list model bundles (task, version, labels, scores)")
    p.add_argument("action", choices=["list"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
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
