"""The producer's rhythm view of a whole track: tempo with its stability, beats, downbeats and key.

The live engine's ``tempo_bpm`` is per window over an 8 s context ending at the window (docs/predictions.md):
the first window of a stream has none until 8 s of audio have been heard, and a track's tempo is not the
same thing as the tempo of its last 8 s. This module looks at the whole track once:

- **tempo** and **beats**: librosa's onset envelope and dynamic-programming beat tracker
  (``librosa.beat.beat_track``); the track tempo is the median of the inter-beat intervals, so it is
  not quantised to the onset frame grid;
- **tempo curve** and **stability**: librosa's local tempo (``librosa.feature.tempo(aggregate=None)``,
  8 s autocorrelation windows); stability = share of frames whose local tempo is within 4 % of the
  track tempo (or of its double or half: the same pulse counted at another metrical level);
- **downbeats**: every 4th beat (4/4 assumed), the phase whose beats carry the most low-frequency
  onset energy (the kick/bass on the one) - a heuristic, reported with that name;
- **key**: the track's mean chroma (constant-Q) correlated with the 24 rotated Krumhansl-Kessler
  key profiles; confidence = best correlation minus the runner-up.

``python -m streamproc.rhythm --table`` renders fluidsynth tracks of known tempo and key and prints the
accuracy table of docs/rhythm.md.
"""
from __future__ import annotations

import numpy as np

HOP_LENGTH = 256
NOTES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
STABLE_WITHIN = 0.04


def estimate_key(chroma_mean: np.ndarray) -> tuple[str, float, np.ndarray]:
    """(key name like 'A minor', confidence, the 24 correlations: 12 major keys from C, then 12 minor)."""
    c = np.asarray(chroma_mean, dtype=np.float64)
    if c.shape != (12,):
        raise ValueError(f"chroma_mean must have 12 pitch classes, got shape {c.shape}")
    if not np.isfinite(c).all() or np.ptp(c) == 0:
        return None, 0.0, np.zeros(24)
    corr = np.array([np.corrcoef(c, np.roll(p, k))[0, 1] for p in (MAJOR_PROFILE, MINOR_PROFILE)
                     for k in range(12)])
    best = int(np.argmax(corr))
    runner = np.sort(corr)[-2]
    name = f"{NOTES[best % 12]} {'major' if best < 12 else 'minor'}"
    return name, float(corr[best] - runner), corr


def analyze(y: np.ndarray, sr: int) -> dict:
    """The rhythm view of one whole mono signal ``y`` at ``sr``."""
    from .librosa_import import librosa as _librosa
    librosa = _librosa()
    y = np.asarray(y, dtype=np.float32)
    out = {"duration_s": round(len(y) / sr, 3), "tempo_bpm": None, "tempo_stability": None, "beats_s": [],
           "downbeats_s": [], "tempo_curve": [], "key": None, "key_confidence": 0.0}
    if len(y) < 2 * sr or not np.any(y):
        return out
    env = librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP_LENGTH)
    _, beats = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=HOP_LENGTH)
    times = librosa.frames_to_time(beats, sr=sr, hop_length=HOP_LENGTH)
    if len(times) >= 4:
        bpm = 60.0 / float(np.median(np.diff(times)))
        local = librosa.feature.tempo(onset_envelope=env, sr=sr, hop_length=HOP_LENGTH, aggregate=None)
        ratio = local / bpm
        stable = np.min(np.abs(np.stack([ratio, 2 * ratio, ratio / 2]) - 1.0), axis=0) <= STABLE_WITHIN
        step = max(1, int(round(sr / HOP_LENGTH)))  # the curve at one point per second
        out.update(tempo_bpm=round(bpm, 2), tempo_stability=round(float(stable.mean()), 3),
                   beats_s=[round(float(t), 3) for t in times],
                   tempo_curve=[(round(float(t), 2), round(float(v), 1)) for t, v in
                                zip(librosa.frames_to_time(np.arange(0, len(local), step), sr=sr,
                                                           hop_length=HOP_LENGTH), local[::step])])
        low = librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP_LENGTH, fmax=200.0, n_mels=32)
        phase = int(np.argmax([low[beats[p::4]].mean() for p in range(min(4, len(beats)))]))
        out["downbeats_s"] = out["beats_s"][phase::4]
    # tuning=0: A440 assumed, as the engine's chroma does (librosa's tuning estimate crashed in numba here)
    chroma = librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=512, tuning=0.0)
    key, conf, _ = estimate_key(chroma.mean(axis=1))
    out.update(key=key, key_confidence=round(conf, 3))
    return out


# -- per-window columns for batch (audiostream batch --rhythm) --------------------------------------
# name -> pyarrow type name; per-file values are repeated on each of the file's windows
COLUMNS = {"track_tempo_bpm": "float64", "track_tempo_stability": "float64", "key": "string",
           "key_confidence": "float64", "local_tempo_bpm": "float64", "beats_s": "list<float64>",
           "downbeats_s": "list<float64>"}


def add_columns(rows: list[dict], view: dict) -> list[dict]:
    """``view`` (analyze's result for the file) as batch columns on the file's window rows: the track's
    tempo/stability/key, the local tempo at the window's centre, and the beats that fall in the window."""
    curve = np.array(view["tempo_curve"], dtype=np.float64).reshape(-1, 2)
    for r in rows:
        lo, hi = r["start_s"], r["end_s"]
        local = None
        if len(curve):
            local = float(curve[np.argmin(np.abs(curve[:, 0] - (lo + hi) / 2)), 1])
        r.update(track_tempo_bpm=view["tempo_bpm"], track_tempo_stability=view["tempo_stability"],
                 key=view["key"], key_confidence=view["key_confidence"], local_tempo_bpm=local,
                 beats_s=[t for t in view["beats_s"] if lo <= t < hi],
                 downbeats_s=[t for t in view["downbeats_s"] if lo <= t < hi])
    return rows


def analyze_file(path: str, bundle, *, root: str | None = None, max_seconds: float | None = None) -> list[dict]:
    """``streamproc.analysis.analyze_file``'s rows plus the rhythm columns, decoding the file once."""
    from .analysis import analyze_pcm, stream_id_for
    from .audio import from_s16, load, to_s16
    pcm = to_s16(load(path, bundle.spec.sr, max_seconds=max_seconds))
    rows = analyze_pcm(pcm, bundle, file=str(path), stream_id=stream_id_for(path, root))
    return add_columns(rows, analyze(from_s16(pcm), bundle.spec.sr))


# -- known-answer tracks (fluidsynth) --------------------------------------------------------------
def render_track(tempo: int, tonic: int, minor: bool, seconds: float, tmp, *, sr: int = 16000, seed: int = 0,
                 program: int = 0, drums: bool = True) -> np.ndarray:
    """A fluidsynth render of a MIDI track in a known key and tempo: i-iv-V-i (minor) or I-IV-V-I (major)
    chords each bar, a scale melody in eighths, and a 4/4 kick/snare/hat pattern."""
    import subprocess
    from pathlib import Path

    import mido
    import soundfile as sf

    from .training.dataset import SOUNDFONT
    rng = np.random.default_rng(seed)
    scale = [0, 2, 3, 5, 7, 8, 11] if minor else [0, 2, 4, 5, 7, 9, 11]  # harmonic minor: V has its leading tone
    root = 48 + tonic
    mid = mido.MidiFile(ticks_per_beat=480)
    lead, pad, kit = (mido.MidiTrack() for _ in range(3))
    mid.tracks += [lead, pad, kit]
    lead.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo)))
    lead.append(mido.Message("program_change", program=program, channel=0))
    pad.append(mido.Message("program_change", program=48, channel=1))
    bars = int(np.ceil(seconds * tempo / 60 / 4)) + 1
    for bar in range(bars):
        degree = (0, 3, 4, 0)[bar % 4]
        chord = [root + scale[(degree + k) % 7] + (12 if degree + k >= 7 else 0) for k in (0, 2, 4)]
        for n in chord:
            pad.append(mido.Message("note_on", note=n, velocity=60, channel=1, time=0))
        for i, n in enumerate(chord):
            pad.append(mido.Message("note_off", note=n, velocity=0, channel=1, time=1920 if i == 0 else 0))
        for eighth in range(8):
            step = chord[0] - root + 12 + int(rng.choice([0, 2, 4, 7])) if eighth % 2 == 0 else None
            note = root + 12 + (scale[int(rng.integers(7))] if step is None else step)
            lead.append(mido.Message("note_on", note=note, velocity=90 if eighth % 2 == 0 else 65, channel=0, time=0))
            lead.append(mido.Message("note_off", note=note, velocity=0, channel=0, time=240))
        if drums:
            for eighth in range(8):
                hits = [42] + ([36] if eighth in (0, 4) else []) + ([38] if eighth in (2, 6) else [])
                for h in hits:
                    kit.append(mido.Message("note_on", note=h, velocity=110 if h == 36 else 80, channel=9, time=0))
                for i, h in enumerate(hits):
                    kit.append(mido.Message("note_off", note=h, velocity=0, channel=9, time=240 if i == 0 else 0))
    midi, wav = Path(tmp) / "track.mid", Path(tmp) / "track.wav"
    mid.save(str(midi))
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(sr), "-F", str(wav), str(SOUNDFONT), str(midi)],
                   check=True, capture_output=True)
    y, got_sr = sf.read(str(wav), dtype="float32", always_2d=True)
    assert got_sr == sr
    return y.mean(axis=1)[: int(seconds * sr)]


KNOWN_TRACKS = [  # (tempo, tonic pitch class, minor, GM program, drums)
    (72, 0, False, 0, True), (90, 9, True, 0, True), (100, 7, False, 24, True), (110, 2, True, 48, True),
    (120, 5, False, 4, True), (128, 4, True, 80, True), (140, 10, False, 0, True), (96, 11, True, 24, False),
    (84, 3, False, 0, False), (150, 6, True, 4, True),
]


def tempo_correct(got: float | None, want: float, tol: float = 0.04) -> tuple[bool, bool]:
    """(exact within tol, right up to an octave error: x2, /2 or x3/2, x2/3 are counted in 'octave')."""
    if not got:
        return False, False
    exact = abs(got / want - 1) <= tol
    return exact, exact or any(abs(got / (want * f) - 1) <= tol for f in (2, 0.5, 1.5, 2 / 3))


def evaluate(seconds: float = 20.0, tracks=KNOWN_TRACKS, sr: int = 16000) -> list[dict]:
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (tempo, tonic, minor, program, drums) in enumerate(tracks):
            y = render_track(tempo, tonic, minor, seconds, tmp, sr=sr, seed=i, program=program, drums=drums)
            r = analyze(y, sr)
            want_key = f"{NOTES[tonic]} {'minor' if minor else 'major'}"
            exact, octave = tempo_correct(r["tempo_bpm"], tempo)
            rows.append({"tempo": tempo, "key": want_key, "program": program, "drums": drums,
                         "got_tempo": r["tempo_bpm"], "stability": r["tempo_stability"], "got_key": r["key"],
                         "key_confidence": r["key_confidence"], "tempo_ok": exact, "tempo_octave_ok": octave,
                         "key_ok": r["key"] == want_key, "beats": len(r["beats_s"])})
    return rows


def main(argv=None) -> int:
    import argparse
    import json
    p = argparse.ArgumentParser(description="tempo and key accuracy on generated tracks of known tempo and key")
    p.add_argument("--table", action="store_true", help="print the markdown table of docs/rhythm.md")
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args(argv)
    rows = evaluate(a.seconds)
    if not a.table:
        print(json.dumps(rows, indent=1))
        return 0
    print("| tempo (BPM) | key | instrument (GM) | drums | tempo found | stability | key found (confidence) | tempo | key |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tempo']} | {r['key']} | {r['program']} | {'yes' if r['drums'] else 'no'} | {r['got_tempo']} | "
              f"{r['stability']} | {r['got_key']} ({r['key_confidence']:.2f}) | "
              f"{'ok' if r['tempo_ok'] else 'octave' if r['tempo_octave_ok'] else 'wrong'} | "
              f"{'ok' if r['key_ok'] else 'wrong'} |")
    n = len(rows)
    print(f"\ntempo within 4 %: {sum(r['tempo_ok'] for r in rows)}/{n} (up to octave errors: "
          f"{sum(r['tempo_octave_ok'] for r in rows)}/{n}); key exact: {sum(r['key_ok'] for r in rows)}/{n}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
