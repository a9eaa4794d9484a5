"""Real recordings from Debian packages, for evaluating a model on audio the generator never made.

``audiostream dataset debian --out data/real`` downloads (apt-get download, no
install) and unpacks:

- ``klettres-data`` (KDE KLettres: human voices speaking letters and syllables in
  many languages; GPL-2+/GFDL): joined into 4 s clips per language -> ``speech``;
- ``pingus-data`` (Pingus: tracker-module music and game sound effects; GPL-2+):
  the modules rendered by ``openmpt123`` -> ``music``; the non-voice effects ->
  ``environment``.

These packages are not in the reserved independent-evaluation list, and nothing
from them is used for training. The manifest lists package and license per clip.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..audio import load
from ..progress import Progress

SR = 16000
PACKAGES = {"klettres-data": "GPL-2+ / GFDL-1.2+ (see /usr/share/doc/klettres-data/copyright)",
            "pingus-data": "GPL-3+ (see /usr/share/doc/pingus-data/copyright)"}
VOICE_EFFECTS = {"ohno", "yipee", "letsgo", "goodidea"}  # Pingus sound effects that are speech


def fetch(work: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("needs apt-get and dpkg (Debian)")
    root = work / "x"
    for pkg in PACKAGES:
        r = subprocess.run(["apt-get", "download", pkg], cwd=work, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {pkg} failed: {r.stderr[-500:]} (run 'apt-get update' first?)")
    for deb in work.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def build(out: str | Path, clips_per_language: int = 4, clip_seconds: float = 4.0, seed: int = 0,
          quiet: bool = False) -> Path:
    import soundfile as sf
    if shutil.which("openmpt123") is None:
        raise RuntimeError("needs openmpt123 to render tracker music (Debian: apt-get install openmpt123)")
    out = Path(out)
    rng = np.random.default_rng(seed)
    n = int(clip_seconds * SR)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        root = fetch(Path(td))
        # speech: syllables of one language joined with short pauses
        langs = sorted(d.parent.name for d in (root / "usr/share/klettres").glob("*/syllab"))
        bar = Progress("dataset debian", len(langs) + 1, enabled=not quiet)
        for li, lang in enumerate(langs):
            files = sorted((root / "usr/share/klettres" / lang / "syllab").glob("*.ogg"))
            if len(files) < 8:
                continue
            for k in range(clips_per_language):
                parts, total = [], 0
                for f in rng.permutation(files):
                    y = load(f, SR)
                    parts += [y, np.zeros(int(rng.uniform(0.05, 0.25) * SR), np.float32)]
                    total += len(y)
                    if sum(len(p) for p in parts) >= n:
                        break
                clip = np.concatenate(parts)[:n]
                rel = Path("speech") / f"klettres-{lang}-{k}.wav"
                (out / "speech").mkdir(parents=True, exist_ok=True)
                sf.write(out / rel, clip, SR, subtype="PCM_16")
                rows.append({"file": str(rel), "label": "speech", "source": f"klettres-data {lang} syllables",
                             "license": PACKAGES["klettres-data"]})
            bar.update(li + 1)
        # music: tracker modules rendered to 16 kHz mono, 30 s each
        music_dir = root / "usr/share/games/pingus/data/music"
        (out / "music").mkdir(parents=True, exist_ok=True)
        for m in sorted(music_dir.iterdir()):
            tmp = Path(td) / m.name
            shutil.copy(m, tmp)
            subprocess.run(["openmpt123", "--quiet", "--render", "--output-type", "wav", "--samplerate", str(SR),
                            "--channels", "1", "--end-time", "30", str(tmp)], check=True, capture_output=True)
            rel = Path("music") / f"pingus-{m.stem}.wav"
            shutil.move(str(tmp) + ".wav", out / rel)
            rows.append({"file": str(rel), "label": "music", "source": f"pingus-data music {m.name}",
                         "license": PACKAGES["pingus-data"]})
        # environment: the non-voice sound effects
        (out / "environment").mkdir(parents=True, exist_ok=True)
        for s in sorted((root / "usr/share/games/pingus/data/sounds").glob("*.wav")):
            if s.stem in VOICE_EFFECTS:
                continue
            rel = Path("environment") / f"pingus-{s.stem}.wav"
            sf.write(out / rel, load(s, SR), SR, subtype="PCM_16")
            rows.append({"file": str(rel), "label": "environment", "source": f"pingus-data sound {s.name}",
                         "license": PACKAGES["pingus-data"]})
        bar.update(len(langs) + 1)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out
