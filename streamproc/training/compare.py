"""``audiostream compare DATA --real data/real --out DIR``: the MLP and the log-mel CNN on the same data.

Trains both families on DATA with the same seed, so the same clip files are held out
(``train.split_by_clip``), then puts side by side in one table (DIR/comparison.md and .json):
held-out clip macro-F1; macro-F1 and per-class F1 on the real development set (``--real``, e.g.
``dataset debian``'s set A) at 0, -20 and -40 dB gain (``evaluate --gains``), each as served (with the
silence gate); and ``bench`` streams per core of both bundles measured in one run, with their ratio.
``--mlp`` / ``--cnn`` take an already trained bundle instead of training one. Confusion matrices
(PNG) are written beside each bundle. Set B is refused: it is scored once, at the end, never compared on.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

GAINS = (0.0, -20.0, -40.0)


def _refuse_set_b(real: Path) -> None:
    from .setb import MANIFEST
    manifest = real / "manifest.csv"
    if not manifest.exists():
        return
    packages = set(json.loads(MANIFEST.read_text()).get("packages", {}))
    with open(manifest) as f:
        used = {(r.get("source") or "").split(" ")[0].strip('"') for r in csv.DictReader(f)}
    if used & packages:
        raise SystemExit(f"compare: {real} holds set B recordings ({sorted(used & packages)[:3]}...): set B is "
                         "scored once at the end, never used to compare or choose (docs/training.md)")


def compare(data: str, *, real: str, out: str, task: str = "soundtype", seed: int = 0, ensemble: int = 5,
            epochs: int = 12, mlp: str | None = None, cnn: str | None = None, bench_streams: int = 1000,
            bench_seconds: float = 8.0, bench_repeat: int = 2, quiet: bool = False) -> dict:
    from ..inference import ModelBundle
    from .cnn import train_cnn
    from .evaluate import evaluate, plot_confusion
    from .train import train

    out_dir = Path(out)
    real_dir = Path(real)
    _refuse_set_b(real_dir)
    if mlp is None:
        mlp = str(out_dir / "mlp" / task / "1")
        train(data, task=task, out=mlp, seed=seed, ensemble=ensemble, quiet=quiet)
    if cnn is None:
        cnn = str(out_dir / "cnn" / f"{task}-cnn" / "1")
        train_cnn(data, task=f"{task}-cnn", out=cnn, seed=seed, epochs=epochs, quiet=quiet)
    rows = []
    for family, ref in (("mlp", mlp), ("cnn", cnn)):
        bundle = ModelBundle.load(ref)
        held = json.loads((bundle.path / "evaluation.json").read_text())["held_out"]
        # reports beside a bundle this run trained; beside the comparison for one given (never into models/)
        where = bundle.path if bundle.path.resolve().is_relative_to(out_dir.resolve()) else out_dir / family
        where.mkdir(parents=True, exist_ok=True)
        rep = evaluate(str(bundle.path), str(real_dir), quiet=quiet, gains=list(GAINS),
                       levels_plot=str(where / f"levels_{real_dir.name}.png"))
        rep["confusion_png"] = str(plot_confusion(rep, where / f"confusion_{real_dir.name}.png",
                                                  f"{bundle.ref} on {real_dir.name}"))
        (where / f"evaluation_{real_dir.name}.json").write_text(json.dumps(rep, indent=2) + "\n")
        rows.append({"family": family, "bundle": str(bundle.path), "ref": bundle.ref,
                     "parameters": bundle.meta.get("training", {}).get("parameters"),
                     "held_out_macro_f1": held["macro_f1"], "real_macro_f1": rep["macro_f1"],
                     "real_f1": {lab: m["f1"] for lab, m in rep["per_class"].items() if m["clips"]},
                     "levels": {lv["gain_db"]: lv["macro_f1"] for lv in rep["levels"]}})
    # one bench run for both (its own process: it pins itself to one CPU)
    cmd = [sys.executable, "-m", "streamproc.cli", "bench", "--model", rows[0]["bundle"], "--model", rows[1]["bundle"],
           "--streams", str(bench_streams), "--seconds", str(bench_seconds), "--repeat", str(bench_repeat), "--json"]
    if not quiet:
        print(f"bench: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"bench failed: {p.stderr[-2000:]}")
    bench = json.loads(p.stdout)
    for row, run in zip(rows, bench["runs"]):
        row["streams_per_core"] = run["streams_per_core"]
    result = {"data": data, "real": str(real_dir), "seed": seed, "rows": rows, "bench": {
        "streams": bench_streams, "seconds": bench_seconds, "repeat": bench_repeat, "cpu": bench["runs"][0]["cpu"],
        "ratio_cnn_to_mlp": bench["ratio_streams_per_core"]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out_dir / "comparison.md").write_text(table + "\n")
    print(table)
    return result


def markdown(result: dict) -> str:
    rows = result["rows"]
    labels = sorted({lab for r in rows for lab in r["real_f1"]})
    real = Path(result["real"]).name
    head = (["family", "bundle", "held-out macro-F1", f"{real} macro-F1"] + [f"{real} {lab} F1" for lab in labels]
            + [f"{real} at {g:+g} dB" for g in GAINS[1:]] + ["streams/core (one bench run)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["family"], f"`{r['ref']}`" + (f" ({r['parameters']} parameters)" if r["parameters"] else ""),
                 f"{r['held_out_macro_f1']:.3f}", f"{r['real_macro_f1']:.3f}"]
        cells += [f"{r['real_f1'][lab]:.3f}" if lab in r["real_f1"] else "-" for lab in labels]
        cells += [f"{r['levels'][g]:.3f}" for g in GAINS[1:]]
        cells += [f"{r['streams_per_core']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    b = result["bench"]
    lines.append(f"\nCNN / MLP streams per core: {b['ratio_cnn_to_mlp']:.2f} (bench --streams {b['streams']} "
                 f"--seconds {b['seconds']:g} --repeat {b['repeat']}, best of each, {b['cpu']}); same data "
                 f"({result['data']}), same seed {result['seed']}, so the same held-out clips.")
    return "\n".join(lines)


def add_parser(sub):
    p = sub.add_parser("compare", help="MLP vs log-mel CNN on the same data and split: one table",
                       description=__doc__)
    p.add_argument("data", help="folder-per-label training data (e.g. from 'audiostream dataset synth')")
    p.add_argument("--real", required=True, help="real development set (e.g. data/real); never set B")
    p.add_argument("--out", required=True, help="directory for the bundles (unless given) and comparison.md/.json")
    p.add_argument("--task", default="soundtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ensemble", type=int, default=5, help="MLP: soft vote of N seeds (soundtype:3's recipe)")
    p.add_argument("--epochs", type=int, default=12, help="CNN: training epochs")
    p.add_argument("--mlp", default=None, help="an MLP bundle trained on DATA with --seed (instead of training one)")
    p.add_argument("--cnn", default=None, help="a CNN bundle trained on DATA with --seed (instead of training one)")
    p.add_argument("--bench-streams", type=int, default=1000)
    p.add_argument("--bench-seconds", type=float, default=8.0)
    p.add_argument("--bench-repeat", type=int, default=2)
    p.set_defaults(func=lambda a: (compare(a.data, real=a.real, out=a.out, task=a.task, seed=a.seed,
                                           ensemble=a.ensemble, epochs=a.epochs, mlp=a.mlp, cnn=a.cnn,
                                           bench_streams=a.bench_streams, bench_seconds=a.bench_seconds,
                                           bench_repeat=a.bench_repeat), 0)[1])
