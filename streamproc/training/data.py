"""Loading a folder-per-label dataset into window feature vectors, with the analyzer's own code."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import signal_of
from ..audio import AUDIO_SUFFIXES, from_s16, load, to_s16
from ..errors import AudioInputError
from ..features import FeatureExtractor
from ..progress import Progress
from ..windowing import WindowSpec


def list_clips(root: str | Path) -> list[tuple[Path, str]]:
    """(file, label) for every audio file under ROOT/<label>/ (recursively), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (expected one sub-folder per label)")
    clips = [(p, d.name) for d in sorted(root.iterdir()) if d.is_dir()
             for p in sorted(d.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not clips:
        raise FileNotFoundError(f"{root}: no audio files in label sub-folders")
    return clips


def clip_vectors(path: Path, spec: WindowSpec, fx: FeatureExtractor, *, with_rms: bool = False,
                 gain_db: float = 0.0, logmel=None):
    """Window vectors of one file exactly as the live analyzer sees it (decoded, resampled, s16 on the wire);
    with ``with_rms`` also each window's ``rms_dbfs`` metric, (vectors, rms). ``gain_db``: the recording
    made that much louder or quieter before the s16 quantisation (clipped at full scale, as a hot input).
    ``logmel`` (a LogMel): each window's log-mel patch instead of its vector (a logmel bundle's input)."""
    if gain_db:
        y = from_s16(to_s16(load(path, spec.sr) * np.float32(10 ** (gain_db / 20))))
    else:
        y = signal_of(path, spec.sr)
    if len(y) < spec.window_length:  # shorter than a window: pad with silence so the clip still counts
        y = np.pad(y, (0, spec.window_length - len(y)))
    if with_rms:
        _, V, metrics = fx.vectors_for_signal(y, with_metrics=True, logmel=logmel)
        return V, np.array([m["rms_dbfs"] for m in metrics], dtype=np.float64)
    return fx.vectors_for_signal(y, logmel=logmel)[1]


def featurise(clips, spec: WindowSpec, what: str = "featurising clips", quiet: bool = False,
              skipped: list | None = None, rms: list | None = None, gain_db: float = 0.0, logmel=None):
    """X (windows x features), y (label per window), clip index per window.

    With ``skipped`` (a list), a file that cannot be decoded is left out with a message on stderr and
    ``(path, reason)`` appended there; the clip indices then count only the files kept. Without it the
    first bad file raises AudioInputError. With ``rms`` (a list), each window's rms_dbfs metric is appended
    there, in the order of X. ``gain_db``, ``logmel``: see clip_vectors."""
    import sys
    fx = FeatureExtractor(spec)
    bar = Progress(what, len(clips), enabled=not quiet)
    X, y, idx = [], [], []
    for i, (path, label) in enumerate(clips):
        try:
            if rms is None:
                V = clip_vectors(path, spec, fx, gain_db=gain_db, logmel=logmel)
            else:
                V, levels = clip_vectors(path, spec, fx, with_rms=True, gain_db=gain_db, logmel=logmel)
                rms.extend(levels.tolist())
        except AudioInputError as exc:
            if skipped is None:
                raise
            skipped.append((str(path), str(exc)))
            print(f"skipping {exc}", file=sys.stderr, flush=True)
            continue
        X.append(V)
        y += [label] * len(V)
        idx += [i - len(skipped or ())] * len(V)
        bar.update(i + 1)
    if not X:
        raise ValueError(f"none of the {len(clips)} audio files could be decoded")
    return np.concatenate(X), np.array(y), np.array(idx)


def kept(clips, skipped: list) -> list:
    """``clips`` without the files ``featurise`` skipped, in order (what its clip indices count)."""
    bad = {p for p, _ in skipped}
    return [c for c in clips if str(c[0]) not in bad]
