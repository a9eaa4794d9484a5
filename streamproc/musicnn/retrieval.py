"""Retrieval precision@k of music similarity spaces on real game soundtracks (docs/music.md).

Each track of a set of Debian game packages (none of the reserved evaluation packages) is a query; its
k nearest other tracks (z-scored cosine, ``streamproc.analysis.nearest``, what /v1/similar ranks by) are
counted as right when they come from the same soundtrack (package). Spaces compared side by side on
the same excerpt of each track:

- ``mfcc_chroma``: today's /v1/similar embedding (mean and std over the engine's windows of the MFCC and
  chroma means, 64 numbers);
- ``musicnn_embedding``: the mean over 3 s patches of musicnn's penultimate layer (200), MTT and MSD;
- ``musicnn_tags``: the mean tag vector (50), MTT and MSD.

    PYTHONPATH=. python -m streamproc.musicnn.retrieval --root DEBIAN_EXTRACT [--seconds 30] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

# soundtrack (package) -> music directories under the extracted packages' root (apt-get download + dpkg -x)
SOUNDTRACKS = {
    "hedgewars-data": ["usr/share/games/hedgewars/Data/Music"],
    "widelands-data": ["usr/share/games/widelands/data/music"],
    "supertux-data": ["usr/share/games/supertux2/music"],
    "freedroidrpg-data": ["usr/share/freedroidrpg/data/sound/music"],
    "extremetuxracer-data": ["usr/share/games/etr/music"],
    "xmoto-data": ["usr/share/games/xmoto/Textures/Musics"],
    "megaglest-data": ["usr/share/games/megaglest"],
}
RESERVED = ("asterisk-", "pocketsphinx-testdata", "fillets-ng-data", "tuxpaint-stamps-", "wesnoth-", "drascula-music",
            "hyperrogue-music", "asc-music", "lincity-ng-data", "sound-theme-freedesktop", "oxygen-sounds",
            "deepin-sound-theme", "yaru-theme-sound")


def tracks(root: Path) -> list[tuple[str, Path]]:
    out = []
    for pack, dirs in SOUNDTRACKS.items():
        assert not pack.startswith(RESERVED), pack
        for d in dirs:
            out += [(pack, f) for f in sorted((root / d).rglob("*.ogg")) if "music" in str(f).lower()]
    return out


def precision_at_k(X: np.ndarray, groups: list[str], k: int) -> tuple[float, dict]:
    from ..analysis import nearest
    per = {g: [] for g in set(groups)}
    for i in range(len(X)):
        others = np.delete(np.arange(len(X)), i)
        got = nearest(X[i], X[others], k)
        per[groups[i]].append(np.mean([groups[others[j]] == groups[i] for j, _ in got]))
    return float(np.mean([p for v in per.values() for p in v])), {g: round(float(np.mean(v)), 3) for g, v in per.items()}


def embed(path: Path, seconds: float, skip: float, sessions: dict, bundle) -> dict:
    from .. import musicnn
    from ..analysis import analyze_pcm, embedding
    from ..audio import from_s16, load, to_s16
    y = load(str(path), 16000, max_seconds=3600)
    start = int(min(skip, max(0.0, len(y) / 16000 - seconds)) * 16000)
    y = from_s16(to_s16(y[start:start + int(seconds * 16000)]))  # as the analyzer sees it
    rows = analyze_pcm(to_s16(y), bundle, file=str(path), stream_id=path.name)
    out = {"mfcc_chroma": embedding(np.array([r["features"] for r in rows]), bundle.spec)}
    x = musicnn.patches(y)
    for name, sess in sessions.items():
        tags, emb = sess.run(["tags", "embedding"], {"logmel": x})
        out[f"{name}_embedding"] = emb.mean(axis=0)
        out[f"{name}_tags"] = tags.mean(axis=0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="where the Debian packages are extracted (dpkg -x)")
    p.add_argument("--seconds", type=float, default=30.0, help="excerpt length per track")
    p.add_argument("--skip", type=float, default=20.0, help="start of the excerpt (s), past intros")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    import onnxruntime as ort

    from ..inference import ModelBundle, models_root
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = {task: ort.InferenceSession(str(models_root() / task / "1" / "model.onnx"), opts,
                                           providers=["CPUExecutionProvider"]) for task in ("musictags", "musictags-msd")}
    bundle = ModelBundle.load("soundtype")
    items = tracks(a.root)
    counts = Counter(g for g, _ in items)
    items = [(g, f) for g, f in items if counts[g] >= a.k + 1]  # a soundtrack needs k other tracks to be findable
    embs, groups = [], []
    for i, (g, f) in enumerate(items, 1):
        embs.append(embed(f, a.seconds, a.skip, sessions, bundle))
        groups.append(g)
        print(f"\r{i}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    chance = sum(n * (n - 1) / (len(groups) - 1) for n in Counter(groups).values()) / len(groups)
    result = {"tracks": len(groups), "soundtracks": dict(Counter(groups)), "k": a.k, "seconds": a.seconds,
              "skip": a.skip, "chance": round(chance, 3), "spaces": {}}
    for space in embs[0]:
        p_at_k, per = precision_at_k(np.stack([e[space] for e in embs]), groups, a.k)
        result["spaces"][space] = {"precision_at_k": round(p_at_k, 3), "per_soundtrack": per}
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
