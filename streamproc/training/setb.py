"""Real-recordings evaluation set B: frozen, hash-checked, used once per model.

``audiostream dataset debian --set b --out data/real-b`` rebuilds the set from the
committed manifest ``streamproc/training/sets/b.json``: it downloads each Debian
package at the pinned version (apt-get download, no install), cuts every clip
exactly as the manifest says, and checks the sha256 of every source file and of
every clip it writes. A mismatch is an error naming the clip, never a silent change.

The packages are the project's reserved independent-evaluation list (they are
reserved exactly for this): nothing from them is used to train, tune or choose.
Set A (``dataset debian``, KLettres/Pingus/Colobot) keeps guiding development;
set B is scored once per shipped model, after every choice was made.

Labels:

- ``speech``: continuous human speech, sentences or phrases (IVR prompts of four
  speakers in four languages, an audiobook, read utterances, game dialogue by
  voice actors in English, Czech and Dutch);
- ``music``: 30 s of each selected soundtrack piece, from 20 s in;
- ``environment``: recorded animals, vehicles, household and town sounds, game
  and city-simulator effects, desktop notification sounds;
- ``silence``: room tone of real recordings: the pauses between utterances of the
  speech recordings (a studio or a quiet room with nobody speaking), found by a
  rule relative to the same recording's speech level (``_pauses``), not by an
  absolute level, so the level gate is not what picked them. Runs of exact digital
  zeros are not room tone and are never taken; neither are Asterisk's
  ``silence/*.wav`` files (generated ±2 LSB dither, not a recording of a room).

``--select`` re-runs the selection and rewrites the manifest (done once, when the
set was frozen; re-running it on a newer Debian archive would make a different set).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..audio import load
from ..converter import sha256
from ..errors import AudioInputError
from ..progress import Progress

SR = 16000
MANIFEST = Path(__file__).resolve().parent / "sets" / "b.json"
SELECT_SEED = 14
MUSIC_START_S, MUSIC_SECONDS = 20.0, 30.0
MAX_CLIP_S = 10.0

# package -> license, as its /usr/share/doc/PACKAGE/copyright says
PACKAGES = {
    "pocketsphinx-testdata": "GPL-2+ / BSD (see /usr/share/doc/pocketsphinx-testdata/copyright)",
    "asterisk-core-sounds-en-wav": "CC-BY-SA-3.0 (see /usr/share/doc/asterisk-core-sounds-en-wav/copyright)",
    "asterisk-core-sounds-es-wav": "CC-BY-SA-3.0 (see /usr/share/doc/asterisk-core-sounds-es-wav/copyright)",
    "asterisk-prompt-it-menardi-wav": "CC-BY-SA-3.0 (see /usr/share/doc/asterisk-prompt-it-menardi-wav/copyright)",
    "asterisk-prompt-es-co": "GPL-2+ (see /usr/share/doc/asterisk-prompt-es-co/copyright)",
    "asterisk-prompt-fr-armelle": "GPL-2+ (see /usr/share/doc/asterisk-prompt-fr-armelle/copyright)",
    "fillets-ng-data": "GPL-2+ (see /usr/share/doc/fillets-ng-data/copyright)",
    "fillets-ng-data-cs": "GPL-2+ (see /usr/share/doc/fillets-ng-data-cs/copyright)",
    "fillets-ng-data-nl": "GPL-2+ (see /usr/share/doc/fillets-ng-data-nl/copyright)",
    "tuxpaint-stamps-default": "GPL-2+ (see /usr/share/doc/tuxpaint-stamps-default/copyright)",
    "wesnoth-1.16-music": "GPL-2+ (see /usr/share/doc/wesnoth-1.16-music/copyright)",
    "drascula-music": "Drascula-License, BSD-like (see /usr/share/doc/drascula-music/copyright)",
    "hyperrogue-music": "GPL-2+ / CC-BY-SA-3.0 (see /usr/share/doc/hyperrogue-music/copyright)",
    "asc-music": "GPL-2+ (see /usr/share/doc/asc-music/copyright)",
    "lincity-ng-data": "GPL-2+ (see /usr/share/doc/lincity-ng-data/copyright)",
    "sound-theme-freedesktop": "CC-BY-SA-3.0 / GPL-2+ (see /usr/share/doc/sound-theme-freedesktop/copyright)",
    "oxygen-sounds": "LGPL-3.0-or-later (see /usr/share/doc/oxygen-sounds/copyright)",
    "deepin-sound-theme": "GPL-3+ (see /usr/share/doc/deepin-sound-theme/copyright)",
    "yaru-theme-sound": "CC-BY-SA-4.0 / GPL-3.0+ (see /usr/share/doc/yaru-theme-sound/copyright)",
}
# Files of a package are told apart by their path inside it
OWNER = (("usr/share/pocketsphinx", "pocketsphinx-testdata"),
         ("sounds/en_US_f_Allison", "asterisk-core-sounds-en-wav"),
         ("sounds/es_MX_f_Allison", "asterisk-core-sounds-es-wav"),
         ("sounds/it_IT_f_Menardi", "asterisk-prompt-it-menardi-wav"),
         ("asterisk/sounds/es/", "asterisk-prompt-es-co"), ("asterisk/sounds/fr/", "asterisk-prompt-fr-armelle"),
         ("fillets-ng/sound/", None),  # dialogue language decides: en/share in -data, cs, nl
         ("fillets-ng/music", "fillets-ng-data"), ("usr/share/tuxpaint", "tuxpaint-stamps-default"),
         ("games/wesnoth", "wesnoth-1.16-music"), ("scummvm/drascula", "drascula-music"),
         ("usr/share/hyperrogue", "hyperrogue-music"), ("games/asc", "asc-music"),
         ("games/lincity-ng", "lincity-ng-data"), ("sounds/freedesktop", "sound-theme-freedesktop"),
         ("usr/share/sounds/Oxygen-", "oxygen-sounds"), ("sounds/deepin", "deepin-sound-theme"),
         ("sounds/Yaru", "yaru-theme-sound"))
# Tux Paint stamp sounds that are music or voices, not environment: instruments, faces, spoken symbols
TUXPAINT_NOT_ENVIRONMENT = ("hobbies", "symbols")


def package_of(rel: str) -> str:
    for key, pkg in OWNER:
        if key in rel:
            if pkg is None:
                lang = Path(rel).parent.name
                return {"cs": "fillets-ng-data-cs", "nl": "fillets-ng-data-nl"}.get(lang, "fillets-ng-data")
            return pkg
    raise ValueError(f"{rel}: not a file of a set-B package")


def fetch(work: Path, pins: dict[str, str | None], quiet: bool = False) -> tuple[Path, dict[str, str]]:
    """apt-get download each package (``pins``: package -> version, or None for the candidate) and
    dpkg -x it into ``work/x``. Returns (root, package -> version downloaded)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("needs apt-get and dpkg (Debian)")
    root = work / "x"
    work.mkdir(parents=True, exist_ok=True)
    bar = Progress("set B: packages", len(pins), enabled=not quiet)
    versions = {}
    for i, (pkg, ver) in enumerate(sorted(pins.items())):
        for old in work.glob(f"{pkg}_*.deb"):
            old.unlink()
        r = subprocess.run(["apt-get", "download", f"{pkg}={ver}" if ver else pkg], cwd=work,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {pkg}{'=' + ver if ver else ''} failed: {r.stderr[-400:]} "
                               "(run 'apt-get update' first; a pinned version gone from the archive means "
                               "set B can no longer be rebuilt bit-identically)")
        deb = next(work.glob(f"{pkg}_*.deb"))
        versions[pkg] = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                                       check=True).stdout.strip()
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        deb.unlink()
        bar.update(i + 1, pkg)
    return root, versions


def decode(path: Path) -> np.ndarray:
    """float32 mono at 16 kHz of a package file: headerless .raw is 16 kHz s16le (pocketsphinx's test
    data), .gsm is headerless 8 kHz GSM 6.10 (Asterisk prompts, decoded by sox), the rest via audio.load."""
    if path.suffix == ".raw":
        return (np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0)
    if path.suffix == ".gsm":
        if shutil.which("sox") is None:
            raise RuntimeError("needs sox to decode GSM prompts (Debian: apt-get install sox)")
        with tempfile.TemporaryDirectory() as td:
            wav = Path(td) / "x.wav"
            subprocess.run(["sox", "-t", "gsm", "-r", "8000", "-c", "1", str(path), "-b", "16", str(wav)],
                           check=True, capture_output=True)
            return load(wav, SR)
    return load(path, SR)


def _frame_db(y: np.ndarray, frame: int = 320) -> np.ndarray:
    n = len(y) // frame
    f = y[:n * frame].reshape(n, frame).astype(np.float64)
    return 10 * np.log10(np.maximum((f * f).mean(axis=1), 1e-14))


def _pauses(y: np.ndarray, below_speech_db: float = 30.0, min_s: float = 1.1, max_s: float = 4.0):
    """(start, end) samples of room tone in a speech recording: stretches where every 20 ms frame is
    ``below_speech_db`` or more below the recording's loud frames (95th percentile), cut 0.1 s inside
    both ends so no speech tail is in them, at least ``min_s`` long after that (a window is 1 s), at
    most ``max_s``, and not digital zeros (more than half the
    samples exactly 0, or fewer than 8 distinct s16 values, is not a room)."""
    frame = 320
    db = _frame_db(y, frame)
    if len(db) == 0:
        return []
    quiet = db < np.percentile(db, 95) - below_speech_db
    out, k = [], 0
    while k < len(quiet):
        if not quiet[k]:
            k += 1
            continue
        j = k
        while j < len(quiet) and quiet[j]:
            j += 1
        a, b = (k * frame + 1600), (j * frame - 1600)
        if b - a >= int(min_s * SR):
            b = min(b, a + int(max_s * SR))
            seg = np.round(y[a:b] * 32768).astype(np.int32)
            if np.mean(seg == 0) <= 0.5 and len(np.unique(seg)) >= 8:
                out.append((a, b))
        k = j
    return out


def asterisk_prompts(voice: Path) -> list[Path]:
    """An Asterisk voice's recorded prompts: its sentences, not its silence files or spelled-out items."""
    return [f for f in sorted(voice.rglob("*.wav")) if f.parent.name not in ("silence", "digits", "letters", "phonetic")]


def _listing(root: Path) -> dict[str, list[Path]]:
    ast = root / "usr/share/asterisk/sounds"
    fil = root / "usr/share/games/fillets-ng"
    ps = root / "usr/share/pocketsphinx/test/data"
    tux = root / "usr/share/tuxpaint/stamps"
    groups = {
        "speech:pocketsphinx": sorted(ps.glob("*.raw")) + sorted((ps / "librivox").glob("*.wav")),
        "speech:asterisk-en": asterisk_prompts(ast / "en_US_f_Allison"),
        "speech:asterisk-es-mx": asterisk_prompts(ast / "es_MX_f_Allison"),
        "speech:asterisk-it": asterisk_prompts(ast / "it_IT_f_Menardi"),
        "speech:asterisk-es-co": sorted((ast / "es").glob("*.gsm")),
        "speech:asterisk-fr": sorted((ast / "fr").glob("*.gsm")),
        "speech:fillets-en": sorted((fil / "sound").glob("*/en/*.ogg")),
        "speech:fillets-cs": sorted((fil / "sound").glob("*/cs/*.ogg")),
        "speech:fillets-nl": sorted((fil / "sound").glob("*/nl/*.ogg")),
        "music:wesnoth": sorted((root / "usr/share/games/wesnoth").rglob("music/*.ogg")),
        "music:drascula": sorted((root / "usr/share/scummvm/drascula/audio").glob("*.ogg")),
        "music:hyperrogue": sorted((root / "usr/share/hyperrogue/music").glob("*.ogg")),
        "music:asc": sorted((root / "usr/share/games/asc/music").glob("*.mp3")),
        "music:fillets": sorted((fil / "music").glob("*.ogg")),
        "music:lincity": sorted((root / "usr/share/games/lincity-ng/music").rglob("*.ogg")),
        "environment:tuxpaint": [f for f in sorted(tux.rglob("*.ogg")) + sorted(tux.rglob("*.wav"))
                                 if "_desc" not in f.name
                                 and f.relative_to(tux).parts[0] not in TUXPAINT_NOT_ENVIRONMENT],
        "environment:lincity": sorted((root / "usr/share/games/lincity-ng/sounds").glob("*")),
        "environment:fillets": sorted((fil / "sound/share").glob("*.ogg")),
        "environment:hyperrogue": sorted((root / "usr/share/hyperrogue/sounds").glob("*.ogg")),
        "environment:freedesktop": sorted((root / "usr/share/sounds/freedesktop").rglob("*.oga")),
        "environment:oxygen": sorted((root / "usr/share/sounds").glob("Oxygen-*.ogg")),
        "environment:deepin": sorted((root / "usr/share/sounds/deepin").rglob("*.wav")),
        "environment:yaru": sorted((root / "usr/share/sounds/Yaru").rglob("*.oga")),
    }
    return groups


# clips to take per group; speech files need >= 2 s (phrases, not single words)
QUOTA = {"speech:pocketsphinx": 8, "speech:asterisk-en": 12, "speech:asterisk-es-mx": 12, "speech:asterisk-it": 10,
         "speech:asterisk-es-co": 8, "speech:asterisk-fr": 8, "speech:fillets-en": 10, "speech:fillets-cs": 10,
         "speech:fillets-nl": 10,
         "music:wesnoth": 16, "music:drascula": 10, "music:hyperrogue": 12, "music:asc": 3, "music:fillets": 8,
         "music:lincity": 3,
         "environment:tuxpaint": 40, "environment:lincity": 15, "environment:fillets": 8,
         "environment:hyperrogue": 8, "environment:freedesktop": 5, "environment:oxygen": 5,
         "environment:deepin": 5, "environment:yaru": 5}
SILENCE_PER_PACKAGE = 20


def select(work: Path, quiet: bool = False) -> dict:
    """Choose set B's clips from the packages' current versions (seeded) and return the manifest."""
    root, versions = fetch(work, {p: None for p in PACKAGES}, quiet)
    rng = np.random.default_rng(SELECT_SEED)
    groups = _listing(root)
    clips = []
    bar = Progress("set B: selecting", len(groups), enabled=not quiet)
    pause_sources: dict[str, list] = {}
    for gi, (group, files) in enumerate(groups.items()):
        label = group.split(":")[0]
        taken = 0
        for f in (files[i] for i in rng.permutation(len(files))):
            if taken >= QUOTA[group]:
                break
            try:
                y = decode(f)
            except AudioInputError:
                continue
            dur = len(y) / SR
            if label == "speech":
                if dur < 2.0:
                    continue
                start, end = 0.0, min(dur, MAX_CLIP_S)
            elif label == "music":
                if dur < 10.0:
                    continue
                start = min(MUSIC_START_S, max(0.0, dur - MUSIC_SECONDS))
                end = min(dur, start + MUSIC_SECONDS)
            else:
                if dur < 0.3 or np.max(np.abs(y)) < 1e-3:
                    continue
                start, end = 0.0, min(dur, MAX_CLIP_S)
            entry = _entry(root, f, label, start, end, group)
            if entry["source_sha256"] in {c["source_sha256"] for c in clips}:  # the same recording twice
                continue
            clips.append(entry)
            taken += 1
        bar.update(gi + 1, group)
    # silence: room tone from the pauses of the speech recordings NOT taken as speech clips, at most
    # SILENCE_PER_PACKAGE per package and one per recording, so no single studio decides the class
    used = {c["source"] for c in clips}
    speech_files = [f for group, files in groups.items() if group.startswith("speech:") for f in files
                    if str(f.relative_to(root)) not in used]
    bar = Progress("set B: room tone in speech recordings", len(speech_files), enabled=not quiet)
    for i, f in enumerate(speech_files):
        try:
            y = decode(f)
        except AudioInputError:  # a few dialogue files hold no samples
            continue
        for a, b in _pauses(y):
            pause_sources.setdefault(package_of(str(f.relative_to(root))), []).append((f, a, b))
        bar.update(i + 1)
    for pkg in sorted(pause_sources):
        cands = pause_sources[pkg]
        seen = set()
        for i in rng.permutation(len(cands)):
            f, a, b = cands[i]
            if f in seen:
                continue
            seen.add(f)
            clips.append(_entry(root, f, "silence", a / SR, b / SR, f"silence:{pkg}"))
            if len(seen) >= SILENCE_PER_PACKAGE:
                break
    return {"set": "b", "sr": SR, "select_seed": SELECT_SEED,
            "packages": {p: {"version": versions[p], "license": PACKAGES[p]} for p in sorted(PACKAGES)},
            "clips": clips}


def _entry(root: Path, f: Path, label: str, start: float, end: float, group: str) -> dict:
    rel = str(f.relative_to(root))
    pkg = package_of(rel)
    stem = f"{group.split(':')[1]}-{f.parent.name}-{f.stem}"
    if label == "silence":
        stem += f"-{start:.2f}"
    return {"file": f"{label}/{stem}.wav", "label": label, "package": pkg, "source": rel,
            "source_sha256": sha256(f), "start_s": round(start, 4), "end_s": round(end, 4)}


def cut(root: Path, clip: dict) -> np.ndarray:
    y = decode(root / clip["source"])
    return y[int(round(clip["start_s"] * SR)):int(round(clip["end_s"] * SR))]


def _fresh(out: Path) -> None:
    """An empty ``out``: a previous build of a set (it has a manifest.csv) is removed, so no stale clip of
    another selection is ever scored with the set; any other non-empty directory is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.csv").exists():
            raise RuntimeError(f"{out}: exists and is not a dataset built here; choose an empty --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build(out: str | Path, manifest: dict | None = None, *, cache: str | Path | None = None,
          only: int | None = None, quiet: bool = False) -> Path:
    """Rebuild set B under ``out`` from ``manifest`` (default: the committed one), checking every hash.
    ``only``: the first N clips of each label (a quick check). Writes ``out/manifest.csv`` as the other
    datasets do."""
    import soundfile as sf
    manifest = manifest or json.loads(MANIFEST.read_text())
    check(manifest)
    out = Path(out)
    _fresh(out)
    clips = manifest["clips"]
    if only is not None:
        per: dict[str, list] = {}
        for c in clips:
            per.setdefault(c["label"], []).append(c)
        clips = [c for label in sorted(per) for c in per[label][:only]]
    need = sorted({c["package"] for c in clips})
    cache = Path(cache) if cache else out.parent / ".debian-cache-b"
    marker = cache / ".complete"
    pins = {p: manifest["packages"][p]["version"] for p in need}
    have = json.loads(marker.read_text()) if marker.exists() else {}
    missing = {p: v for p, v in pins.items() if have.get(p) != v}
    if missing:  # unpacked over what is there: packages of set B do not share paths
        _, got = fetch(cache, missing, quiet)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({**have, **got}))
    root = cache / "x"
    bad = []
    bar = Progress("set B: clips", len(clips), enabled=not quiet)
    for i, c in enumerate(clips):
        src = root / c["source"]
        if not src.is_file() or sha256(src) != c["source_sha256"]:
            bad.append(f"{c['file']}: source {c['source']} missing or changed (sha256)")
            continue
        dest = out / c["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(dest, cut(root, c), SR, subtype="PCM_16")
        if sha256(dest) != c["sha256"]:
            bad.append(f"{c['file']}: the cut clip's sha256 differs from the manifest (decoder or resampler "
                       "differs from the one that froze the set)")
        bar.update(i + 1)
    if bad:
        raise RuntimeError(f"set B does not match its manifest ({len(bad)} of {len(clips)} clips):\n  "
                           + "\n  ".join(bad[:20]))
    _write_csv(out, clips, manifest)
    return out


def _write_csv(out: Path, clips: list[dict], manifest: dict) -> None:
    """``out/manifest.csv`` as the other datasets have it: file, label, source, license."""
    import csv
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "source", "license"])
        w.writeheader()
        w.writerows({"file": c["file"], "label": c["label"], "source": f"{c['package']} {c['source']}",
                     "license": manifest["packages"][c["package"]]["license"]} for c in clips)


def freeze(out: str | Path, quiet: bool = False) -> dict:
    """Select set B, cut it under ``out``, record every clip's sha256 and write the manifest."""
    import soundfile as sf
    out = Path(out)
    cache = out.parent / ".debian-cache-b"
    shutil.rmtree(cache / "x", ignore_errors=True)
    manifest = select(cache, quiet)
    root = cache / "x"
    _fresh(out)
    for c in manifest["clips"]:
        dest = out / c["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(dest, cut(root, c), SR, subtype="PCM_16")
        c["sha256"] = sha256(dest)
    (cache / ".complete").write_text(json.dumps({p: v["version"] for p, v in manifest["packages"].items()}))
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    _write_csv(out, manifest["clips"], manifest)
    return manifest


LABELS = ("speech", "music", "environment", "silence")


def check(manifest: dict) -> None:
    """The manifest's own consistency: known labels, every clip's package pinned with a version and a
    license, one clip per file name and per source recording (a recording shipped twice counts once)."""
    problems = []
    files, sources = set(), set()
    for c in manifest["clips"]:
        if c["label"] not in LABELS:
            problems.append(f"{c['file']}: label {c['label']!r} is not one of {LABELS}")
        if not manifest["packages"].get(c["package"], {}).get("version"):
            problems.append(f"{c['file']}: package {c['package']!r} has no pinned version")
        if c["file"] in files:
            problems.append(f"{c['file']}: listed twice")
        if (c["source_sha256"], c["start_s"]) in sources:
            problems.append(f"{c['file']}: the same recording and stretch as another clip")
        files.add(c["file"])
        sources.add((c["source_sha256"], c["start_s"]))
    if problems:
        raise RuntimeError("set B manifest is inconsistent:\n  " + "\n  ".join(problems[:20]))


def summary(manifest: dict) -> dict:
    """clips per label and per (label, package)."""
    per: dict[str, dict[str, int]] = {}
    for c in manifest["clips"]:
        per.setdefault(c["label"], {}).setdefault(c["package"], 0)
        per[c["label"]][c["package"]] += 1
    return per
