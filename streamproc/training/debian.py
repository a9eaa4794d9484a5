"""Real recordings from Debian packages, for evaluating a model on audio the generator never made.

``audiostream dataset debian --out data/real`` downloads (apt-get download, no
install) and unpacks:

- ``klettres-data`` (KDE KLettres: human voices speaking letters and syllables in
  many languages; GPL-2+/GFDL): joined into 4 s clips per language -> ``speech``;
- ``pingus-data`` (Pingus: tracker-module music and game sound effects; GPL-2+):
  the modules rendered by ``openmpt123`` -> ``music``; the non-voice effects ->
  ``environment``;
- ``colobot-common-sounds`` (Colobot: game sound effects -> ``environment``;
  soundtrack -> ``music``, 30 s of each track; GPL-3+).

These packages are not in the reserved independent-evaluation list, and nothing
from them is used for training. The manifest lists package and license per clip.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..audio import load
from ..progress import Progress

SR = 16000
PACKAGES = {"klettres-data": "GPL-2+ / GFDL-1.2+ (see /usr/share/doc/klettres-data/copyright)",
            "pingus-data": "GPL-3+ (see /usr/share/doc/pingus-data/copyright)",
            "colobot-common-sounds": "GPL-3+ (see /usr/share/doc/colobot-common-sounds/copyright)"}
VOICE_EFFECTS = {"ohno", "yipee", "letsgo", "goodidea"}  # Pingus sound effects that are speech
# Colobot sound numbers (src/sound/sound_type.h) that are a human voice or vocalisation: 22 the "TZOING!"
# brand call, 26 breathing, 63 "AIE!", 69 "AU!", 70 "AHU! AHU!" -- neither speech nor environment, so left out
COLOBOT_VOCAL = {22, 26, 63, 69, 70}


def fetch(work: Path, packages=PACKAGES) -> Path:
    """Download ``packages`` into ``work`` (apt-get download: no install, no root) and unpack them into
    ``work/x``; the .deb files are deleted once unpacked. Returns ``work/x``."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("needs apt-get and dpkg (Debian)")
    root = work / "x"
    work.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        r = subprocess.run(["apt-get", "download", pkg], cwd=work, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {pkg} failed: {r.stderr[-500:]} (run 'apt-get update' first?)")
    for deb in work.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        deb.unlink()
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
        # Colobot: recorded and designed game sounds (machines, impacts, water, weather) -> environment;
        # its orchestral/electronic soundtrack -> music, 30 s from 20 s into each track
        colobot = root / "usr/share/games/colobot"
        for s in sorted((colobot / "sounds").glob("sound*.wav")):
            if int(s.stem[5:]) in COLOBOT_VOCAL:
                continue
            rel = Path("environment") / f"colobot-{s.stem}.wav"
            sf.write(out / rel, load(s, SR), SR, subtype="PCM_16")
            rows.append({"file": str(rel), "label": "environment", "source": f"colobot-common-sounds sound {s.name}",
                         "license": PACKAGES["colobot-common-sounds"]})
        for m in sorted((colobot / "music").glob("*.ogg")):
            y = load(m, SR)
            start = min(20 * SR, max(0, len(y) - 30 * SR))
            rel = Path("music") / f"colobot-{m.stem}.wav"
            sf.write(out / rel, y[start:start + 30 * SR], SR, subtype="PCM_16")
            rows.append({"file": str(rel), "label": "music", "source": f"colobot-common-sounds music {m.name}",
                         "license": PACKAGES["colobot-common-sounds"]})
        bar.update(len(langs) + 1)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


# -- real recordings for TRAINING (different packages from the evaluation set above) -----------
TRAIN_PACKAGES = {
    "hedgewars-data": "hedgewars-data: GPL-2 / BSD / CC-BY-SA-3.0 per file (see /usr/share/doc/hedgewars-data/copyright)",
    "frozen-bubble-data": "frozen-bubble-data: GPL-2",
    "xmoto-data": "xmoto-data: GPL-2+ / BSD (see /usr/share/doc/xmoto-data/copyright)",
    "warzone2100-data": "warzone2100-data: GPL-2+ / CC0-1.0 (see /usr/share/doc/warzone2100-data/copyright)",
    "wesnoth-1.16-data": "wesnoth-1.16-data: GPL-2+ (see /usr/share/doc/wesnoth-1.16-data/copyright)",
    "ktuberling-data": "ktuberling-data: GPL-2+ (see /usr/share/doc/ktuberling-data/copyright)",
    "bucklespring-data": "bucklespring-data: GPL-2+",
    "gnome-audio": "gnome-audio: CC-BY-SA-2.0 / CC-BY-3.0 (see /usr/share/doc/gnome-audio/copyright)",
    "eiskaltdcpp-sounds": "eiskaltdcpp-sounds: GPL-3+ (see /usr/share/doc/eiskaltdcpp-sounds/copyright)",
    "megaglest-data": "megaglest-data: CC-BY-SA-3.0 (see /usr/share/doc/megaglest-data/copyright)",
    "widelands-data": "widelands-data: GPL-2+ / CC-BY-SA-3.0 (see /usr/share/doc/widelands-data/copyright)",
    "minetest-data": "minetest-data: CC-BY-SA-3.0 / CC-BY-3.0 (see /usr/share/doc/minetest-data/copyright)",
    "extremetuxracer-data": "extremetuxracer-data: GPL-2+",
    "scorched3d-data": "scorched3d-data: GPL-2+",
    "freedroidrpg-data": "freedroidrpg-data: GPL-2+",
    "supertux-data": "supertux-data: GPL-3+",
}
SKIP_VOICES = {"Robot", "Singer"}  # processed or sung: not plain speech
# Warzone 2100's recorded voices (narration, radio messages, countdowns; English, 11 kHz radio-style) and
# its sound effects; Wesnoth's sound effects and ambient recordings without creature voices
WZ_SPEECH_DIRS = ("tutorial", "memressp", "vtoltalk", "countdown", "taunts", "trnsppil", "coltive", "nexus",
                  "extra", "proxmessages")
WZ_ENVIRONMENT_DIRS = ("sfx", "multi")
# MegaGlest units that are creatures, machines or animals, not human voices; the animals among them are
# environment. Voiced units in commondata (the tech and magic factions) by file prefix.
MG_ANIMALS = ("chicken", "bull", "wild_sow")
MG_CREATURES = MG_ANIMALS + ("mummy", "anubis_warrior", "thunderbird", "behemoth", "dragon", "evil_dragon",
                             "ghost_armor", "flying_carpet", "genie", "daemon", "golem")
MG_COMMON_VOICES = ("archer", "archmage", "axe_thrower", "guard", "horseman", "swordman", "technician", "worker")
FREEDROID_VOCAL = ("voice_samples", "tux_ingame_comments", "Scream", "ThouArtDefeated")
SUPERTUX_VOCAL = {"excellent", "welldone", "grunts", "hurt", "yeti_gna"}
WESNOTH_VOCAL = ("human", "dwarf", "elf", "goblin", "orc", "troll", "ogre", "lich", "naga", "mermaid", "mermen",
                 "yeti", "zombie", "wose", "drake")


class RealPool:
    """Real human speech, music and sound effects from Debian game packages, cut into training clips.

    Downloaded once (apt-get download, no install) into ``cache``; never the reserved
    evaluation packages, never the packages ``dataset debian`` evaluates on.
    """

    def __init__(self, cache: str | Path):
        import re
        self.cache = Path(cache)
        root = self.cache / "x"
        marker = self.cache / ".complete"
        wanted = " ".join(sorted(TRAIN_PACKAGES)) + "\n"
        if not marker.exists() or marker.read_text() != wanted:  # a cache of an older package list: refetch
            shutil.rmtree(root, ignore_errors=True)
            fetch(self.cache, TRAIN_PACKAGES)
            import zipfile  # Warzone 2100 keeps its audio in a zip archive
            with zipfile.ZipFile(root / "usr/share/games/warzone2100/base.wz") as z:
                z.extractall(root / "wz", [n for n in z.namelist() if n.startswith("audio/") and n.endswith(".ogg")])
            marker.write_text(wanted)
        hw = root / "usr/share/games/hedgewars/Data"
        voices = hw / "Sounds" / "voices"
        self.speech = [sorted(d.glob("*.ogg")) for d in sorted(voices.iterdir())
                       if d.is_dir() and d.name not in SKIP_VOICES]
        self.speech = [v for v in self.speech if len(v) >= 10]
        wz = root / "wz" / "audio"
        self.speech += [sorted((wz / d).rglob("*.ogg")) for d in WZ_SPEECH_DIRS if (wz / d).is_dir()]
        self.music = sorted((hw / "Music").glob("*.ogg")) + sorted((root / "usr/share/games/xmoto").rglob("Musics/*.ogg"))
        notes = re.compile(r"^\d[A-G]$")  # the in-game piano's notes are music, not environment
        self.environment = [f for f in sorted((hw / "Sounds").glob("*.ogg")) if not notes.match(f.stem)]
        self.environment += sorted((root / "usr/share/games/frozen-bubble/snd").glob("*.ogg")) + \
            sorted((root / "usr/share/games/frozen-bubble/snd").glob("*.wav"))
        self.environment += [f for d in WZ_ENVIRONMENT_DIRS for f in sorted((wz / d).rglob("*.ogg"))]
        wes = root / "usr/share/games/wesnoth/1.16/data/core/sounds"
        self.environment += [f for f in sorted(wes.glob("*.ogg")) if not f.stem.startswith(WESNOTH_VOCAL)]
        # KTuberling: real voices naming objects, one word per file; 26 languages have 10 words or more
        kt = root / "usr/share/ktuberling/sounds"
        self.speech += [v for v in (sorted(f for f in d.iterdir() if f.suffix in (".ogg", ".wav", ".opus"))
                                    for d in sorted(kt.iterdir()) if d.is_dir()) if len(v) >= 10]
        self.environment += sorted((root / "usr/share/buckle/wav").glob("*.wav"))  # recorded keyboard keys
        self.environment += sorted((root / "usr/share/sounds").rglob("*.wav"))  # gnome-audio desktop sounds
        self.environment += sorted((root / "usr/share/eiskaltdcpp/sounds").glob("*.wav"))
        self.ambient = sorted((wes / "ambient").glob("*.ogg"))  # long field recordings: cut like music
        # MegaGlest: units answering in recorded human voices ("ack"/"select" lines, one voice per unit);
        # farm animals; each map's ambient loops (day, night, rain, birds) and single calls (owl, wolf)
        mg = root / "usr/share/games/megaglest/techs/megapack"
        voiced = sorted(mg.glob("factions/*/units/*/sounds"))
        self.speech += [v for v in (sorted(f for f in d.iterdir() if f.stem.split("_")[-1].rstrip("0123456789")
                                           in ("ack", "select")) for d in voiced if d.parent.name not in MG_CREATURES)
                        if len(v) >= 4]
        common = sorted((mg / "commondata/sounds").iterdir())
        for unit in MG_COMMON_VOICES:
            self.speech.append([f for f in common if f.stem.startswith(unit + "_") and
                                f.stem[len(unit) + 1:].rstrip("0123456789") in ("ack", "select")])
        self.environment += [f for f in common if f.stem.split("_")[0] in ("cow", "pig")]
        self.environment += [f for d in voiced if d.parent.name in MG_ANIMALS for f in sorted(d.iterdir())]
        for f in sorted((root / "usr/share/games/megaglest/tilesets").glob("*/sounds/*")):
            (self.ambient if self._seconds(f) >= 8 else self.environment).append(f)
        # Widelands: animals, crafts and farm work; its soundtrack is music
        wl = root / "usr/share/games/widelands/data"
        for f in sorted((wl / "sound").rglob("*.ogg")) + sorted((wl / "world/critters").rglob("*.ogg")):
            (self.ambient if self._seconds(f) >= 8 else self.environment).append(f)
        self.music += sorted((wl / "music").glob("*.ogg"))
        # Minetest: footsteps, digging, doors, fire, water; Extreme Tux Racer: sliding on snow and ice
        self.environment += sorted((root / "usr/share/games/minetest/games").rglob("sounds/*.ogg"))
        self.environment += sorted((root / "usr/share/games/etr/sounds").glob("*.wav"))
        # Designed game effects: weapons, machines, menus, doors, water, fire (Scorched 3D, FreedroidRPG,
        # SuperTux) without the voices among them; the latter two's soundtracks are music
        self.environment += sorted((root / "usr/share/games/scorched3d/data/globalmods").rglob("*.wav"))
        fd = root / "usr/share/freedroidrpg/data/sound"
        self.environment += [f for f in sorted((fd / "effects").rglob("*.ogg"))
                             if not any(v in str(f) for v in FREEDROID_VOCAL)]
        self.music += sorted((fd / "music").glob("*.ogg"))
        st = root / "usr/share/games/supertux2"
        self.environment += [f for f in sorted((st / "sounds").iterdir())
                             if f.suffix in (".wav", ".ogg") and f.stem not in SUPERTUX_VOCAL]
        self.music += sorted((st / "music").rglob("*.ogg"))
        if not (self.speech and self.music and self.environment) or not all(self.speech):
            raise RuntimeError(f"real training pool incomplete under {root}")
        self._speech_groups = self._by_package(self.speech, key=lambda pack: pack[0])
        self._environment_groups = self._by_package(self.environment)

    @staticmethod
    def _seconds(path: Path) -> float:
        import soundfile as sf
        return sf.info(str(path)).duration

    @staticmethod
    def _package(path: Path) -> str:
        s = str(path)
        for key, pkg in (("hedgewars", "hedgewars-data"), ("xmoto", "xmoto-data"), ("/wz/", "warzone2100-data"),
                         ("wesnoth", "wesnoth-1.16-data"), ("ktuberling", "ktuberling-data"),
                         ("buckle", "bucklespring-data"), ("eiskaltdcpp", "eiskaltdcpp-sounds"),
                         ("usr/share/sounds", "gnome-audio"), ("megaglest", "megaglest-data"),
                         ("widelands", "widelands-data"), ("minetest", "minetest-data"), ("/etr/", "extremetuxracer-data"),
                         ("scorched3d", "scorched3d-data"), ("freedroidrpg", "freedroidrpg-data"),
                         ("supertux2", "supertux-data")):
            if key in s:
                return pkg
        return "frozen-bubble-data"

    def _segment(self, f: Path, rng, n: int) -> tuple[np.ndarray, int, int]:
        """A random ``n``-sample stretch of a long recording at SR: (samples, start frame, file rate)."""
        import soundfile as sf
        info = sf.info(str(f))
        need = int(n / SR * info.samplerate) + 1
        start = int(rng.integers(0, max(1, info.frames - need)))
        y, sr = sf.read(str(f), start=start, frames=need, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        if sr != SR:
            import soxr
            y = soxr.resample(y, sr, SR)
        return np.pad(y, (0, max(0, n - len(y))))[:n], start, info.samplerate

    def _by_package(self, items, key=lambda item: item):
        groups: dict[str, list] = {}
        for item in items:
            groups.setdefault(self._package(key(item)), []).append(item)
        return [groups[k] for k in sorted(groups)]

    def clip(self, label: str, rng, n: int) -> tuple[np.ndarray, str, str]:
        """A real ``n``-sample clip of ``label``. Speech and sound events pick a package first, then a voice or
        files within it, so no package's size decides the mix (and each clip has one package and license)."""
        if label == "music":
            f = self.music[rng.integers(len(self.music))]
            y, start, fsr = self._segment(f, rng, n)
            return y, f"{self._package(f)} music {f.name} @{start / fsr:.0f}s", TRAIN_PACKAGES[self._package(f)]
        if label == "speech":
            packs = self._speech_groups[rng.integers(len(self._speech_groups))]
            files = packs[rng.integers(len(packs))]
            parts, total = [], 0
            while total < n:
                y = load(files[rng.integers(len(files))], SR)
                # pauses as between read words, some longer than a window's hop (KLettres-like recordings)
                gap = np.zeros(int(rng.uniform(0.05, 1.2) * SR), np.float32)
                parts += [y, gap]
                total += len(y) + len(gap)
            x = np.concatenate(parts)[:n]
            pkg = self._package(files[0])
            voice = files[0].parent.parent.name if files[0].parent.name == "sounds" else files[0].parent.name
            return x, f"{pkg} voices/{voice}", TRAIN_PACKAGES[pkg]
        if label == "environment":
            if self.ambient and rng.random() < 0.4:  # a stretch of a long field recording
                f = self.ambient[rng.integers(len(self.ambient))]
                x, start, fsr = self._segment(f, rng, n)
                x = x.astype(np.float32)
                pkg = self._package(f)
                return x, f"{pkg} ambient {f.name} @{start / fsr:.0f}s", TRAIN_PACKAGES[pkg]
            group = self._environment_groups[rng.integers(len(self._environment_groups))]
            x = np.zeros(n, np.float32)
            names = []
            for _ in range(rng.integers(1, 7)):  # from one isolated event (a bark, a chime) to a busy scene
                f = group[rng.integers(len(group))]
                y = load(f, SR)[:n]
                at = int(rng.integers(0, max(1, n - len(y))))
                x[at:at + len(y)] += y * rng.uniform(0.3, 1.0)
                names.append(f.stem)
            return x, f"{self._package(f)} sounds {'+'.join(names)}", TRAIN_PACKAGES[self._package(f)]
        raise ValueError(label)
