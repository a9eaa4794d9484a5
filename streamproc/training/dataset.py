"""``audiostream dataset synth``: an offline, seeded sound-type dataset (speech / music / environment / silence).

- speech: espeak-ng, many voices and languages, speeds, pitches, with pauses;
- music: generated MIDI (instruments, tempi, keys, chords, drum patterns) rendered by
  fluidsynth with Debian's General MIDI soundfont (FluidR3_GM);
- environment: synthesised rain, wind, engines, traffic, water, clicks, alarms, fans;
- silence: digital silence, near-silence and room tone at several levels.

Every clip is then augmented the way real inputs differ (gain, cheap-microphone and
telephone band-limiting, low sample-rate sources, reverb via sox, background noise,
lossy Ogg Vorbis), written as 16 kHz WAV under ``OUT/<label>/`` and listed in
``OUT/manifest.csv`` (file, label, source, license, augmentations). Nothing is
downloaded. Same seed, same dataset.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..progress import Progress

LABELS = ("speech", "music", "environment", "silence")
SR = 16000
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+f2", "de", "fr-fr", "es", "it", "pt", "nl", "pl", "ru", "sv", "cs",
          "da", "fi", "hu", "tr", "el", "ro", "hi", "cmn", "id", "sw", "en-029", "en-gb-scotland", "de+m3", "es+f4"]
WORDS = ("the a morning river station window coffee yesterday seven eleven twenty market music garden please thank "
         "you where is train leaves platform number weather tomorrow rain sunny cold warm meeting office project "
         "report hello good evening family children school doctor appointment kitchen table bread water light "
         "city north south east west left right open close first last minute hour again maybe always never because "
         "system network message update battery phone call later today question answer okay listen carefully").split()
LICENSES = {
    "speech": "generated with espeak-ng (GPL-3.0-or-later program; output unrestricted)",
    "music": "generated MIDI rendered with fluidsynth and FluidR3_GM (Debian fluid-soundfont-gm, MIT)",
    "environment": "synthesised by streamproc/training/dataset.py (Apache-2.0)",
    "silence": "synthesised by streamproc/training/dataset.py (Apache-2.0)",
}


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "fluidsynth", "sox") if shutil.which(t) is None]
    if not SOUNDFONT.exists():
        missing.append(f"{SOUNDFONT} (Debian fluid-soundfont-gm)")
    if missing:
        raise RuntimeError(f"dataset synth needs {', '.join(missing)} (deploy/setup.sh installs them)")


# -- generators: each returns float32 mono at SR ---------------------------------------------
def _noise(rng, n, exponent=0.0):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=float)
    f[0] = 1.0
    x = np.fft.irfft(spec / f ** (exponent / 2), n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _fit(y, n, rng, pad_noise_db=-70.0):
    """Cut or pad (with faint noise) to n samples, at a random position."""
    if len(y) >= n:
        start = rng.integers(0, len(y) - n + 1)
        return y[start:start + n]
    out = _noise(rng, n, 1.0) * 10 ** (pad_noise_db / 20)
    start = rng.integers(0, n - len(y) + 1)
    out[start:start + len(y)] += y
    return out


def _load_wav(path: Path) -> np.ndarray:
    from ..audio import load
    return load(path, SR)


def speech(rng, n, tmp: Path) -> tuple[np.ndarray, str]:
    voice = str(rng.choice(VOICES))
    words = rng.choice(WORDS, size=rng.integers(8, 20))
    text = " ".join(words) + (", " if rng.random() < 0.5 else ". ") + " ".join(rng.choice(WORDS, size=6))
    wav = tmp / "speech.wav"
    # half the clips speak word by word (gaps of 100-600 ms), like dictation, prompts or a child's reading
    gap = int(rng.integers(10, 60)) if rng.random() < 0.5 else 0
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rng.integers(110, 230)), "-p", str(rng.integers(15, 90)),
                    "-g", str(gap), "-w", str(wav), text], check=True, capture_output=True)
    return _fit(_load_wav(wav), n, rng), f"espeak-ng voice={voice} gap={gap * 10}ms"


def music(rng, n, tmp: Path) -> tuple[np.ndarray, str]:
    import mido
    tempo = int(rng.integers(60, 180))
    root = int(rng.integers(45, 65))
    scale = [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.6 else [0, 2, 3, 5, 7, 8, 10]
    programs = [0, 4, 6, 11, 16, 19, 24, 25, 27, 33, 40, 42, 46, 48, 52, 56, 61, 65, 68, 71, 73, 80, 81, 88, 89, 104]
    lead, pad = int(rng.choice(programs)), int(rng.choice(programs))
    mid = mido.MidiFile(ticks_per_beat=480)
    tracks = []
    for _ in range(3):
        tr = mido.MidiTrack()
        mid.tracks.append(tr)
        tracks.append(tr)
    tracks[0].append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo)))
    tracks[0].append(mido.Message("program_change", program=lead, channel=0))
    tracks[1].append(mido.Message("program_change", program=pad, channel=1))
    beats = int(np.ceil(n / SR * tempo / 60)) + 2
    # melody: scale notes in eighths and quarters
    t = 0
    while t < beats * 480:
        dur = int(rng.choice([240, 480, 960]))
        note = root + 12 + scale[rng.integers(len(scale))] + 12 * int(rng.integers(0, 2))
        vel = int(rng.integers(60, 110))
        tracks[0].append(mido.Message("note_on", note=note, velocity=vel, channel=0, time=0))
        tracks[0].append(mido.Message("note_off", note=note, velocity=0, channel=0, time=dur))
        t += dur
    # chords every bar
    for bar in range(beats // 4 + 1):
        degree = int(rng.choice([0, 3, 4, 5]))
        chord = [root + scale[(degree + k) % 7] + (12 if degree + k >= 7 else 0) for k in (0, 2, 4)]
        for i, note in enumerate(chord):
            tracks[1].append(mido.Message("note_on", note=note, velocity=70, channel=1, time=0))
        for i, note in enumerate(chord):
            tracks[1].append(mido.Message("note_off", note=note, velocity=0, channel=1, time=1920 if i == 0 else 0))
    if rng.random() < 0.7:  # drums on channel 10
        pattern = rng.choice(["rock", "four", "half"])
        for beat in range(beats * 2):
            hits = [42]
            if pattern == "four" and beat % 2 == 0 or pattern == "rock" and beat % 4 == 0 or \
                    pattern == "half" and beat % 8 == 0:
                hits.append(36)
            if beat % 4 == 2 and pattern != "half":
                hits.append(38)
            for h in hits:
                tracks[2].append(mido.Message("note_on", note=h, velocity=int(rng.integers(70, 120)), channel=9, time=0))
            for i, h in enumerate(hits):
                tracks[2].append(mido.Message("note_off", note=h, velocity=0, channel=9, time=240 if i == 0 else 0))
    midi_path, wav = tmp / "music.mid", tmp / "music.wav"
    mid.save(str(midi_path))
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.7", "-r", str(SR), "-F", str(wav), str(SOUNDFONT),
                    str(midi_path)], check=True, capture_output=True)
    return _fit(_load_wav(wav), n, rng), f"midi tempo={tempo} programs={lead},{pad}"


def environment(rng, n, tmp: Path) -> tuple[np.ndarray, str]:
    from scipy.signal import lfilter
    t = np.arange(n) / SR
    kind = str(rng.choice(["rain", "wind", "engine", "traffic", "water", "clicks", "alarm", "fan", "crowd-less"]))
    if kind == "rain":
        x = _noise(rng, n, 0.3) * 0.3 + (rng.random(n) < rng.uniform(0.001, 0.02)) * rng.standard_normal(n) * 2
    elif kind == "wind":
        a = 0.995
        x = lfilter([1 - a], [1, -a], _noise(rng, n)) * 30
        x *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t + rng.uniform(0, 6)))
    elif kind == "engine":
        f0 = rng.uniform(18, 60) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        x = sum(np.sin(h * phase) / h ** rng.uniform(0.5, 1.5) for h in range(1, 25)) + 0.5 * _noise(rng, n, 1.5)
    elif kind == "traffic":
        x = _noise(rng, n, 1.2) * (0.4 + 0.6 * np.sin(np.pi * t / t[-1] * rng.uniform(0.5, 2)) ** 2)
    elif kind == "water":
        x = 0.3 * _noise(rng, n, 0.8)
        for _ in range(rng.integers(20, 120)):
            s = rng.integers(0, n - 2000)
            d = np.arange(2000) / SR
            x[s:s + 2000] += np.sin(2 * np.pi * rng.uniform(300, 1500) * (1 + 8 * d) * d) * np.exp(-d * 60)
    elif kind == "clicks":
        x = np.zeros(n)
        idx = rng.integers(0, n, rng.integers(10, 80))
        x[idx] = rng.uniform(0.3, 1, idx.size)
        x = lfilter([1, -0.9], [1, -0.3], x) + 0.02 * _noise(rng, n)
    elif kind == "alarm":
        f = rng.uniform(600, 2500)
        if rng.random() < 0.5:  # siren sweep
            x = np.sin(2 * np.pi * np.cumsum(f * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))) / SR)
        else:                   # beeping
            x = np.sin(2 * np.pi * f * t) * ((t * rng.uniform(1, 4)) % 1 < 0.5)
        x = x + rng.uniform(0.3, 1.5) * _noise(rng, n, 1)
    elif kind == "fan":
        hum = np.sin(2 * np.pi * rng.choice([50, 60, 100, 120]) * t)
        x = _noise(rng, n, 0.5) + rng.uniform(0, 0.5) * hum
    else:                       # murmuring machinery: band noise bursts
        x = _noise(rng, n, 1) * (rng.random(n // 1600 + 1).repeat(1600)[:n] > 0.3)
    return x / (np.max(np.abs(x)) + 1e-9) * 0.5, f"synth {kind}"


def silence(rng, n, tmp: Path) -> tuple[np.ndarray, str]:
    kind = str(rng.choice(["digital", "near", "room"]))
    if kind == "digital":
        return np.zeros(n), "digital silence"
    level = 10 ** (rng.uniform(-95, -60) / 20)
    x = _noise(rng, n, rng.uniform(0.5, 2.0)) * level
    if kind == "room":
        x += np.sin(2 * np.pi * rng.choice([50, 60]) * np.arange(n) / SR) * level * rng.uniform(0, 1)
    return x, f"{kind} silence {20 * np.log10(level):.0f} dBFS"


SILENCE_DBFS = (-75.0, -50.0)  # recipe 2: the RMS level of room-tone silence clips


def silence2(rng, n, tmp: Path, pool=None, levels: tuple[float, float] = SILENCE_DBFS) -> tuple[np.ndarray, str, str]:
    """Recipe 2's silence: nothing audible, but not nothing. Room tone and microphone self-noise without
    an event, at an RMS level of -75...-50 dBFS (the model learns the stretch above the -60 dBFS gate;
    below it the gate decides anyway): 10% digital zeros, 45% coloured noise with optional mains hum and
    a cheap-microphone band, 45% real room tone cut from the quiet stretches of recorded speech and field
    ambience (``RealPool.room_tone``; generated noise if there is no pool)."""
    from scipy.signal import butter, sosfilt
    u = rng.random()
    if u < 0.1:
        return np.zeros(n), "digital silence", LICENSES["silence"]
    level = rng.uniform(*levels)
    if u < 0.55 or pool is None or not pool.quiet:
        x = _noise(rng, n, rng.uniform(0.0, 2.0))
        x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12)
        x = x + np.sin(2 * np.pi * rng.choice([50, 60]) * np.arange(n) / SR) * rng.uniform(0, 1) * \
            (rng.random() < 0.4)
        if rng.random() < 0.4:
            lo, hi = rng.uniform(60, 400), rng.uniform(3000, 7500)
            x = sosfilt(butter(2, [lo, hi], btype="band", fs=SR, output="sos"), x)
        source, license_ = "room noise", LICENSES["silence"]
    else:
        x, source, license_ = pool.room_tone(rng, n)
    x = np.asarray(x, dtype=float)
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * 10 ** (level / 20)  # RMS in dBFS as the engine measures it
    return x, f"{source} {level:.0f} dBFS rms", license_


GENERATORS = {"speech": speech, "music": music, "environment": environment, "silence": silence}


# -- augmentation ---------------------------------------------------------------------------
PEAK_DBFS = (-30.0, 3.0)  # default random peak level of a clip (soundtype:1-3 were made with it)


CLIP_SHARE = 0.1  # share of clips driven into hard clipping (recipe 2: 0.2)
STEADY_FLOOR_DB = 15.0  # recipe 2: a steady ambience's peak stays this far above the loudest room tone
STEADY_SYNTH = ("synth rain", "synth wind", "synth traffic", "synth fan", "synth crowd-less")


def augment(x: np.ndarray, rng, label: str, tmp: Path,
            peak_dbfs: tuple[float, float] = PEAK_DBFS, clip_share: float = CLIP_SHARE) -> tuple[np.ndarray, list[str]]:
    """``peak_dbfs``: the clip's peak is drawn uniformly from this range (about 1 dB lower after the 0.9
    headroom; above 0 dBFS it clips), then 10% of clips are driven into hard clipping. One draw of the
    seeded rng whatever the range, so a dataset is reproducible from its command."""
    from scipy.signal import butter, sosfilt
    applied = []
    if label != "silence":
        if rng.random() < 0.4:
            lo, hi = (300, 3400) if rng.random() < 0.5 else (rng.uniform(80, 400), rng.uniform(3000, 7000))
            x = sosfilt(butter(4, [lo, hi], btype="band", fs=SR, output="sos"), x)
            applied.append(f"bandpass {lo:.0f}-{hi:.0f} Hz")
        if rng.random() < 0.35:  # old recordings and cheap devices: 8 / 11 kHz sources are common
            import soxr
            low = int(rng.choice([8000, 11025]))
            x = soxr.resample(soxr.resample(x, SR, low), low, SR)[: len(x)]
            applied.append(f"via {low} Hz")
        if rng.random() < 0.25:
            inp, out = tmp / "rv_in.wav", tmp / "rv_out.wav"
            import soundfile as sf
            sf.write(inp, np.clip(x, -1, 1).astype(np.float32), SR, subtype="FLOAT")
            rev = int(rng.integers(20, 80))
            subprocess.run(["sox", str(inp), str(out), "reverb", str(rev)], check=True, capture_output=True)
            x = _load_wav(out)[: len(x)]
            applied.append(f"reverb {rev}")
        if rng.random() < 0.35:
            snr = rng.uniform(5, 30)
            bg = _noise(rng, len(x), rng.uniform(0, 2)) * np.sqrt(np.mean(x ** 2) + 1e-12) * 10 ** (-snr / 20)
            x = x + bg
            applied.append(f"noise snr {snr:.0f} dB")
        gain_db = rng.uniform(*peak_dbfs)
        x = x / (np.max(np.abs(x)) + 1e-9) * 10 ** (gain_db / 20) * 0.9
        applied.append(f"peak {gain_db:.0f} dBFS")
        if rng.random() < clip_share:  # a hot microphone input: driven into hard clipping
            drive = rng.uniform(6, 20)
            x = np.clip(x / (np.max(np.abs(x)) + 1e-9) * 10 ** (drive / 20), -1, 1)
            applied.append(f"clipped +{drive:.0f} dB")
        if rng.random() < 0.15:
            import soundfile as sf
            buf = io.BytesIO()
            sf.write(buf, np.clip(x, -1, 1).astype(np.float32), SR, format="OGG", subtype="VORBIS")
            buf.seek(0)
            y, _ = sf.read(buf, dtype="float32")
            x = np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]
            applied.append("ogg vorbis")
    return np.clip(x, -1, 1).astype(np.float32), applied


def synth(out: str | Path, minutes: float, seed: int = 0, clip_seconds: float = 4.0, quiet: bool = False,
          real_fraction: float = 0.0, real_cache: str | Path | None = None,
          peak_dbfs: tuple[float, float] = PEAK_DBFS, recipe: int = 1,
          silence_dbfs: tuple[float, float] = SILENCE_DBFS) -> Path:
    """``real_fraction`` of the speech/music/environment clips come from real recordings in Debian game
    packages (training.debian.RealPool), the rest is generated; silence is generated (recipe 1) or, with
    ``recipe=2``, room tone at -75...-50 dBFS, half of it real (``silence2``). Recipe 2 also adds the
    packages of ``debian.EXTRA_PACKAGES`` to the pool, drives 20% of clips into clipping instead of 10%,
    and never makes a steady ambience (no events) quieter than a -35 dBFS peak: quieter than that it is
    room tone, which is silence. Recipe 1 is soundtype:1-3's, unchanged."""
    if recipe not in (1, 2):
        raise ConfigError(f"--recipe {recipe}: must be 1 or 2")
    import soundfile as sf
    require_tools()
    pool = None
    if real_fraction > 0:
        from .debian import RealPool
        cache = Path(real_cache or Path(out).parent / ".debian-cache")
        pool = RealPool(cache, extra_cache=cache.parent / (cache.name + "-extra") if recipe >= 2 else None)
    out = Path(out)
    rng = np.random.default_rng(seed)
    n = int(clip_seconds * SR)
    per_class = max(1, round(minutes * 60 / clip_seconds / len(LABELS)))
    bar = Progress(f"dataset synth: {per_class * len(LABELS)} clips", per_class * len(LABELS), enabled=not quiet)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        done = 0
        for i in range(per_class):  # interleaved so a cut-short run is still balanced
            for label in LABELS:
                if pool is not None and label != "silence" and rng.random() < real_fraction:
                    x, source, license_ = pool.clip(label, rng, n)
                elif label == "silence" and recipe >= 2:
                    x, source, license_ = silence2(rng, n, tmp, pool, silence_dbfs)
                else:
                    (x, source), license_ = GENERATORS[label](rng, n, tmp), LICENSES[label]
                peak, clip_share = peak_dbfs, CLIP_SHARE
                if recipe >= 2:
                    clip_share = 0.2
                    if label == "environment" and (" ambient " in source or source.startswith(STEADY_SYNTH)):
                        floor = silence_dbfs[1] + STEADY_FLOOR_DB
                        peak = (max(peak_dbfs[0], floor), max(peak_dbfs[1], floor))
                x, applied = augment(np.asarray(x, dtype=float), rng, label, tmp, peak, clip_share)
                rel = Path(label) / f"{label}-{i:05d}.wav"
                (out / label).mkdir(parents=True, exist_ok=True)
                sf.write(out / rel, x, SR, subtype="PCM_16")
                rows.append({"file": str(rel), "label": label, "source": source, "license": license_,
                             "augment": "; ".join(applied), "seconds": clip_seconds})
                done += 1
                bar.update(done)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # how to make this exact dataset again; `train` copies it into the bundle's model.yaml
    command = f"audiostream dataset synth --out {out} --minutes {minutes:g} --seed {seed}" + \
        (f" --clip-seconds {clip_seconds:g}" if clip_seconds != 4.0 else "") + \
        (f" --real-fraction {real_fraction:g}" if real_fraction else "") + \
        (f" --peak-dbfs={peak_dbfs[0]:g},{peak_dbfs[1]:g}" if tuple(peak_dbfs) != PEAK_DBFS else "") + \
        (f" --recipe {recipe}" if recipe != 1 else "") + \
        (f" --silence-dbfs={silence_dbfs[0]:g},{silence_dbfs[1]:g}" if tuple(silence_dbfs) != SILENCE_DBFS else "")
    from .debian import EXTRA_PACKAGES, TRAIN_PACKAGES
    (out / "dataset.json").write_text(json.dumps({
        "command": command, "seed": seed, "minutes": minutes, "clip_seconds": clip_seconds,
        "real_fraction": real_fraction, "clips": len(rows),
        **({"peak_dbfs": list(peak_dbfs)} if tuple(peak_dbfs) != PEAK_DBFS else {}),
        **({"recipe": recipe} if recipe != 1 else {}),
        **({"silence_dbfs": list(silence_dbfs)} if tuple(silence_dbfs) != SILENCE_DBFS else {}),
        "real_packages": sorted(TRAIN_PACKAGES) + (sorted(EXTRA_PACKAGES) if recipe >= 2 else [])
        if pool is not None else []}, indent=2) + "\n")
    return out


def parse_peak(text: str | None, default: tuple[float, float] = PEAK_DBFS,
               flag: str = "--peak-dbfs") -> tuple[float, float]:
    """``LOW,HIGH`` in dBFS -> (low, high); None -> the default range."""
    if text is None:
        return default
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be LOW,HIGH in dBFS, e.g. -45,3") from None
    if not -120 <= low <= high <= 20:
        raise ConfigError(f"{flag} {text!r}: need -120 <= LOW <= HIGH <= 20")
    return low, high


def add_parser(sub):
    p = sub.add_parser("dataset", help="make a training dataset offline", description=__doc__)
    p.add_argument("kind", choices=["synth", "debian", "birds"],
                   help="synth: generated training data; debian: real recordings from Debian packages (evaluation)")
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=60.0, help="total audio to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-seconds", type=float, default=4.0)
    p.add_argument("--real-fraction", type=float, default=0.0,
                   help="synth: share of speech/music/environment clips cut from real recordings in Debian "
                        "packages (docs/training.md lists them; downloaded once next to --out, not installed)")
    p.add_argument("--peak-dbfs", default=None, metavar="LOW,HIGH",
                   help="synth: range of each speech/music/environment clip's random peak level in dBFS "
                        "(default -30,3; e.g. -45,3 to train from quiet to clipped; above 0 clips)")
    p.add_argument("--recipe", type=int, default=1, choices=[1, 2],
                   help="synth: 1 = soundtype:1-3's recipe (default, unchanged); 2 = more real packages "
                        "(continuous speech, field ambience, music styles), room-tone silence at -75...-50 dBFS "
                        "(docs/training.md 'Silence, defined'), 20%% clipped clips")
    p.add_argument("--silence-dbfs", default=None, metavar="LOW,HIGH",
                   help="synth --recipe 2: RMS range of the room-tone silence clips (default -75,-50); a steady "
                        "ambience's peak is kept 15 dB above HIGH")
    p.add_argument("--set", default="a", choices=["a", "b"], dest="real_set",
                   help="debian: a = the development set (KLettres, Pingus, Colobot); b = the frozen "
                        "independent set, rebuilt from streamproc/training/sets/b.json with every hash checked")
    p.add_argument("--room-tone", action="store_true",
                   help="debian (set A): also cut the room tone inside its recordings (KLettres, Pingus and Colobot "
                        "effects; pauses of 1.1 s or more) into silence/: a development check of the silence class")
    p.add_argument("--only", type=int, default=None, metavar="N",
                   help="debian --set b: only the first N clips of each label (a quick check of the manifest)")
    p.add_argument("--freeze", action="store_true",
                   help="debian --set b: select the clips anew and rewrite the manifest (done once; never "
                        "after a model was scored on the set)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.kind == "birds":  # real animal and event recordings to evaluate a detector (BirdNET)
        from ..birdnet.evalset import build as birds
        birds(args.out)
    elif args.kind == "debian" and args.real_set == "b":
        from . import setb
        if args.freeze:
            setb.freeze(args.out)
        else:
            setb.build(args.out, only=args.only)
    elif args.kind == "debian":
        from .debian import build
        build(args.out, seed=args.seed, room_tone=args.room_tone)
    else:
        synth(args.out, args.minutes, args.seed, args.clip_seconds, real_fraction=args.real_fraction,
              peak_dbfs=parse_peak(args.peak_dbfs), recipe=args.recipe,
              silence_dbfs=parse_peak(args.silence_dbfs, SILENCE_DBFS, "--silence-dbfs"))
    print(f"wrote {args.out}/manifest.csv", file=sys.stderr)
    return 0
