"""``audiostream models list``: the bundles under models/ (or $AUDIOSTREAM_MODELS)."""
from __future__ import annotations

import json

import yaml

from ..inference import _version_key, models_root


def bundles(root=None) -> list[dict]:
    root = root or models_root()
    out = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        versions = sorted((d for d in task_dir.iterdir() if (d / "model.yaml").exists()), key=lambda d: _version_key(d.name))
        for i, d in enumerate(versions):
            try:
                meta = yaml.safe_load((d / "model.yaml").read_text())
                ev = meta.get("evaluation", {})
                held = ev.get("held_out", ev)
                out.append({"task": task_dir.name, "version": d.name, "labels": meta.get("labels"),
                            "macro_f1": held.get("macro_f1"), "latest": i == len(versions) - 1, "path": str(d)})
            except (OSError, yaml.YAMLError, AttributeError) as exc:
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
    print(f"{'TASK':<12} {'VERSION':<8} {'MACRO-F1':>8}  LABELS")
    for r in rows:
        if "error" in r:
            print(f"{r['task']:<12} {r['version']:<8} {'-':>8}  unreadable: {r['error']}")
            continue
        f1 = f"{r['macro_f1']:.3f}" if isinstance(r.get("macro_f1"), (int, float)) else "-"
        print(f"{r['task']:<12} {r['version'] + ('*' if r['latest'] else ''):<8} {f1:>8}  {', '.join(r['labels'])}")
    print("(* = what task name alone resolves to)")
    return 0
