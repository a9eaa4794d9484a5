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


def room_tone_clips(root: Path, out: Path) -> list[dict]:
    """Set A's room tone (``dataset debian --room-tone``): the pauses of at least 1.1 s inside KLettres'
    recorded letters and syllables and inside Pingus' and Colobot's sound effects (not their music: a
    music's quiet passage is not a room), cut by set B's rule (``setb._pauses``: every 20 ms frame 30 dB
    or more below the recording's loud frames, not digital zeros) -> ``silence``. A development check of
    the silence class on recordings no model trains on."""
    import soundfile as sf
    from .setb import _pauses
    files = sorted((root / "usr/share/klettres").rglob("*.ogg")) + \
        sorted((root / "usr/share/games/pingus/data/sounds").glob("*.wav")) + \
        sorted((root / "usr/share/games/colobot/sounds").glob("*.wav"))
    rows = []
    (out / "silence").mkdir(parents=True, exist_ok=True)
    for f in files:
        y = load(f, SR)
        for a, b in _pauses(y, below_speech_db=30.0, min_s=1.1, max_s=4.0):
            pkg = next(p for p in PACKAGES if p.split("-")[0] in str(f))
            rel = Path("silence") / f"{pkg.split('-')[0]}-{f.parent.name}-{f.stem}-{a}.wav"
            sf.write(out / rel, y[a:b], SR, subtype="PCM_16")
            rows.append({"file": str(rel), "label": "silence", "source": f"{pkg} room tone {f.name} @{a / SR:.2f}s",
                         "license": PACKAGES[pkg]})
    return rows


def build(out: str | Path, clips_per_language: int = 4, clip_seconds: float = 4.0, seed: int = 0,
          quiet: bool = False, room_tone: bool = False) -> Path:
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
        if room_tone:
            rows += room_tone_clips(root, out)
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
# ``dataset synth --recipe 2`` adds these (none reserved, none in evaluation set A); own cache
EXTRA_PACKAGES = {
    "0ad-data": "0ad-data: CC-BY-SA-3.0, Wildfire Games (audio/LICENSE.txt; see /usr/share/doc/0ad-data/copyright)",
    "codec2-examples": "codec2-examples: LGPL-2.1 (see /usr/share/doc/codec2-examples/copyright)",
    "lugaru-data": "lugaru-data: CC-BY-SA-3.0 (Data/*; see /usr/share/doc/lugaru-data/copyright)",
    "heroes-sound-effects": "heroes-sound-effects: GPL-2+",
    "asterisk-moh-opsound-wav": "asterisk-moh-opsound-wav: CC-BY-SA-3.0 (see /usr/share/doc/asterisk-moh-opsound-wav/copyright)",
}
CODEC2_SKIP = {"all", "f2400", "m2400"}  # all.wav joins the others; *2400 are coded (processed) copies
HEROES_VOCAL = {"ho_yeh", "no", "oh", "go", "foule1", "foule2"}  # voices and crowds
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


LICENSES = {**TRAIN_PACKAGES, **EXTRA_PACKAGES}


class RealPool:
    """Real human speech, music and sound effects from Debian game packages, cut into training clips.

    Downloaded once (apt-get download, no install) into ``cache``; never the reserved
    evaluation packages, never the packages ``dataset debian`` evaluates on.
    """

    def __init__(self, cache: str | Path, extra_cache: str | Path | None = None):
        import re
        self.cache = Path(cache)
        self.continuous: set[Path] = set()  # speech recordings longer than a clip: cut, not joined
        self.quiet: list[tuple[Path, int, int]] = []  # room-tone stretches (file, start, end at SR)
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
        if extra_cache is not None:
            self._add_extra(Path(extra_cache))
        self._speech_groups = self._by_package(self.speech, key=lambda pack: pack[0])
        self._environment_groups = self._by_package(self.environment)

    @staticmethod
    def _seconds(path: Path) -> float:
        import soundfile as sf
        return sf.info(str(path)).duration

    def _add_extra(self, cache: Path) -> None:
        """``dataset synth --recipe 2``: the packages of EXTRA_PACKAGES (own cache, so the recipe-1 pool and
        its datasets stay as they were): continuous recorded speech, 0 A.D.'s voices, field ambience,
        animals and work sounds, music in more styles, and room-tone stretches for the silence class."""
        root = cache / "x"
        marker = cache / ".complete"
        wanted = " ".join(sorted(EXTRA_PACKAGES)) + "\n"
        if not marker.exists() or marker.read_text() != wanted:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(cache / "0ad", ignore_errors=True)
            fetch(cache, EXTRA_PACKAGES)
            import zipfile  # 0 A.D. keeps its audio in a zip archive
            with zipfile.ZipFile(root / "usr/share/games/0ad/mods/public/public.zip") as z:
                z.extractall(cache / "0ad", [n for n in z.namelist() if n.startswith("audio/") and n.endswith(".ogg")])
            marker.write_text(wanted)
        # speech: codec2's recorded sentences (several speakers, some over HF radio; 8 kHz), the long ones
        # cut at random points like music; 0 A.D.'s units answering in recorded voices, one pack per civ/role
        c2 = sorted((root / "usr/share/codec2/wav").glob("*.wav"))
        c2 = [f for f in c2 if self._seconds(f) >= 1.5 and f.stem not in CODEC2_SKIP]
        self.continuous |= {f for f in c2 if self._seconds(f) > 4.0}
        self.speech.append(c2)
        oad = cache / "0ad" / "audio"
        for d in sorted((oad / "voice").glob("*/*")):
            if d.is_dir() and d.parent.name != "global":
                files = sorted(d.glob("*.ogg"))
                if len(files) >= 4:
                    self.speech.append(files)
        # environment: 0 A.D.'s ambience (day, birds, water, weather, farms, ports) as long stretches, its
        # animals, footsteps, hooves, ships, gathering, building, fire, impacts and weapons as events; Lugaru's
        # recorded animals, footsteps, fire and wind; Heroes' effects (not its voice "ho yeh", "no", "oh", "go")
        for f in sorted((oad / "ambient").rglob("*.ogg")):
            (self.ambient if self._seconds(f) >= 8 else self.environment).append(f)
        for sub in ("actor/fauna", "actor/singlesteps", "actor/mounted", "actor/ship", "actor/gate", "resource",
                    "attack/impact", "attack/weapon", "attack/fire", "attack/destruction", "attack/siege"):
            self.environment += sorted((oad / sub).rglob("*.ogg"))
        lug = root / "usr/share/games/lugaru/Sounds"
        for f in sorted(lug.glob("*.ogg")):
            if f.stem.startswith("Music"):
                self.music.append(f)
            else:
                (self.ambient if self._seconds(f) >= 8 else self.environment).append(f)
        self.environment += [f for f in sorted((root / "usr/share/games/heroes/sfx").glob("*.wav"))
                             if f.stem not in HEROES_VOCAL]
        # music: 0 A.D.'s soundtrack (orchestral, folk instruments, taiko, many regions), Asterisk's
        # music on hold (electronic, acoustic; opsound.org)
        self.music += sorted((oad / "music").glob("*.ogg"))
        self.music += sorted((root / "usr/share/asterisk/moh").glob("*.wav"))
        self.quiet = self._quiet_stretches(cache)

    def _quiet_stretches(self, cache: Path) -> list[tuple[Path, int, int]]:
        """Room tone: stretches of the long recordings (continuous speech, field ambience) where every
        20 ms frame is 30 dB or more below the recording's loud frames, at least 0.5 s, not digital zeros
        (the rule of set B's pauses, ``setb._pauses``, applied to the training packages). Found once and
        kept in ``cache/quiet.json``."""
        import json
        from .setb import _pauses
        sources = sorted(self.continuous) + sorted(self.ambient)
        index = cache / "quiet.json"
        key = [str(f) for f in sources]
        if index.exists():
            saved = json.loads(index.read_text())
            if saved.get("sources") == key:
                return [(Path(f), a, b) for f, a, b in saved["stretches"]]
        out = []
        for f in sources:
            y = load(f, SR)
            out += [(f, int(a), int(b)) for a, b in _pauses(y, below_speech_db=30.0, min_s=0.5, max_s=4.0)]
        index.write_text(json.dumps({"sources": key, "stretches": [(str(f), a, b) for f, a, b in out]}))
        return out

    def room_tone(self, rng, n: int) -> tuple[np.ndarray, str, str]:
        """A real ``n``-sample stretch of room tone: one quiet stretch, mirrored and repeated to length
        (a reversed noise has the same spectrum, and the joins have no step). Level is set by the caller."""
        f, a, b = self.quiet[rng.integers(len(self.quiet))]
        y = load(f, SR)[a:b]
        y = y - np.mean(y)
        reps = int(np.ceil(n / (2 * len(y)))) + 1
        x = np.tile(np.concatenate([y, y[::-1]]), reps)
        start = int(rng.integers(0, len(x) - n + 1))
        pkg = self._package(f)
        return x[start:start + n], f"{pkg} room tone {f.name} @{a / SR:.1f}-{b / SR:.1f}s", \
            LICENSES[pkg]

    @staticmethod
    def _package(path: Path) -> str:
        s = str(path)
        for key, pkg in (("/0ad/", "0ad-data"), ("codec2", "codec2-examples"), ("lugaru", "lugaru-data"),
                         ("games/heroes", "heroes-sound-effects"), ("asterisk/moh", "asterisk-moh-opsound-wav"),
                         ("hedgewars", "hedgewars-data"), ("xmoto", "xmoto-data"), ("/wz/", "warzone2100-data"),
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
            return y, f"{self._package(f)} music {f.name} @{start / fsr:.0f}s", LICENSES[self._package(f)]
        if label == "speech":
            packs = self._speech_groups[rng.integers(len(self._speech_groups))]
            files = packs[rng.integers(len(packs))]
            parts, total = [], 0
            f = files[rng.integers(len(files))]
            if f in self.continuous:  # a long recording of sentences: a random stretch of it
                x, start, fsr = self._segment(f, rng, n)
                pkg = self._package(f)
                return x.astype(np.float32), f"{pkg} speech {f.name} @{start / fsr:.0f}s", LICENSES[pkg]
            while total < n:
                y = load(files[rng.integers(len(files))], SR)
                # pauses as between read words, some longer than a window's hop (KLettres-like recordings)
                gap = np.zeros(int(rng.uniform(0.05, 1.2) * SR), np.float32)
                parts += [y, gap]
                total += len(y) + len(gap)
            x = np.concatenate(parts)[:n]
            pkg = self._package(files[0])
            voice = files[0].parent.parent.name if files[0].parent.name == "sounds" else files[0].parent.name
            return x, f"{pkg} voices/{voice}", LICENSES[pkg]
        if label == "environment":
            if self.ambient and rng.random() < 0.4:  # a stretch of a long field recording
                f = self.ambient[rng.integers(len(self.ambient))]
                x, start, fsr = self._segment(f, rng, n)
                x = x.astype(np.float32)
                pkg = self._package(f)
                return x, f"{pkg} ambient {f.name} @{start / fsr:.0f}s", LICENSES[pkg]
            group = self._environment_groups[rng.integers(len(self._environment_groups))]
            x = np.zeros(n, np.float32)
            names = []
            for _ in range(rng.integers(1, 7)):  # from one isolated event (a bark, a chime) to a busy scene
                f = group[rng.integers(len(group))]
                y = load(f, SR)[:n]
                at = int(rng.integers(0, max(1, n - len(y))))
                x[at:at + len(y)] += y * rng.uniform(0.3, 1.0)
                names.append(f.stem)
            return x, f"{self._package(f)} sounds {'+'.join(names)}", LICENSES[self._package(f)]
        raise ValueError(label)
