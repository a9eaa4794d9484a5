"""Offline analysis of a whole signal with the live analyzer's own code path.

``analyze_file`` feeds a file through the same ``Engine`` (windows on sample
time, per-frame features, tempo context) and the same ``ModelBundle`` as
``audiostream analyze``, after the same decoding and int16 quantisation as
``produce-file``, so a file gives the same windows, metrics and labels whether it
is replayed through Kafka or analysed in batch (local processes or Spark).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .audio import from_s16, load, to_s16
from .engine import Engine
from .inference import ModelBundle
from .wire import FLAG_END_OF_STREAM, AudioFrame

METRIC_COLUMNS = ("rms_dbfs", "peak_dbfs", "spectral_centroid_hz", "zero_crossing_rate", "spectral_flux",
                  "onset_rate_hz", "onset_strength", "tempo_bpm", "tempo_confidence")
FRAME_SAMPLES = 16000  # frame size does not change the windows (tests/unit/test_engine.py)
PREDICT_CHUNK = 512


def stream_id_for(path: str, root: str | None = None) -> str:
    """The stream id a file gets: its path relative to the corpus root (or its name)."""
    p = str(path)
    if root and p.startswith(str(root)):
        rel = p[len(str(root)):].lstrip("/")
        return rel or Path(p).name
    return Path(p.split("://", 1)[-1]).name


def analyze_pcm(pcm: np.ndarray, bundle: ModelBundle, *, file: str, stream_id: str) -> list[dict]:
    """Rows (one per complete window) for int16 mono ``pcm`` at the bundle's sample rate. The signal is
    a whole stream (its last frame carries the end-of-stream flag): one shorter than a window gives one
    zero-padded window, ``padded`` (docs/predictions.md), exactly as the live analyzer does."""
    spec = bundle.spec
    engine = Engine(spec, idle_timeout_s=float("inf"), logmel=bundle.logmel)
    session = b"\0" * 16
    windows = []
    for seq, start in enumerate(range(0, len(pcm), FRAME_SAMPLES)):
        chunk = pcm[start:start + FRAME_SAMPLES]
        last = start + FRAME_SAMPLES >= len(pcm)
        engine.accept(stream_id, AudioFrame(spec.sr, seq, start, 0, session, chunk[:, None],
                                            flags=FLAG_END_OF_STREAM if last else 0), now=0.0)
        windows += engine.step(now=0.0)
    rows = []
    labels = bundle.labels
    for i in range(0, len(windows), PREDICT_CHUNK):
        part = windows[i:i + PREDICT_CHUNK]
        scores = bundle.score(part)
        for w, s in zip(part, scores):
            ok = bool(np.isfinite(s).all())
            best = int(np.argmax(s)) if ok else -1
            row = {"file": file, "stream_id": stream_id, "window_index": w.index,
                   "start_s": w.start / spec.sr, "end_s": w.end / spec.sr,
                   "start_sample": w.start, "end_sample": w.end,
                   "label": labels[best] if ok else None, "confidence": float(s[best]) if ok else None,
                   "model": bundle.ref, "gap": w.gap, "gated": bundle.is_gated(w.metrics["rms_dbfs"]),
                   "padded": w.padded}
            for lab, v in zip(labels, s):
                row[f"score_{lab}"] = float(v)
            for m in METRIC_COLUMNS:
                v = w.metrics.get(m)
                row[m] = None if v is None else float(v)
            row["features"] = [float(x) for x in w.vector]
            rows.append(row)
    return rows


def analyze_file(path: str, bundle: ModelBundle, *, root: str | None = None,
                 max_seconds: float | None = None) -> list[dict]:
    """Decode (as produce-file does: soxr HQ to the bundle's rate, int16) and analyse one file; a file
    longer than ``max_seconds`` is refused (``AudioTooLongError``) before it is decoded whole."""
    pcm = to_s16(load(path, bundle.spec.sr, max_seconds=max_seconds))
    return analyze_pcm(pcm, bundle, file=str(path), stream_id=stream_id_for(path, root))


def signal_of(path: str, sr: int) -> np.ndarray:
    """float32 samples exactly as the analyzer sees a replayed file (after int16 quantisation)."""
    return from_s16(to_s16(load(path, sr)))


def embedding_columns(spec) -> list[int]:
    """Indices of the window vector that describe timbre and harmony: MFCC means and chroma means."""
    names = spec.feature_names()
    return [i for i, n in enumerate(names) if n.startswith("mfcc_mean[") or n.startswith("chroma_stft_mean[")]


def embedding(vectors: np.ndarray, spec) -> np.ndarray:
    """One clip/stream embedding from its windows' vectors: mean and std over windows of the MFCC and
    chroma means (64 numbers by default). Used for nearest-neighbour recommendations."""
    cols = embedding_columns(spec)
    v = np.asarray(vectors, dtype=np.float64)[:, cols]
    return np.concatenate([v.mean(axis=0), v.std(axis=0)])


def nearest(query: np.ndarray, items: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Cosine similarity after z-scoring each dimension over the items (so MFCC 0's scale does not
    dominate); returns (index, similarity) best first."""
    X = np.asarray(items, dtype=np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd
    q = (np.asarray(query, dtype=np.float64) - mu) / sd
    sims = Z @ q / (np.linalg.norm(Z, axis=1) * (np.linalg.norm(q) or 1.0) + 1e-12)
    order = np.argsort(-sims)[:k]
    return [(int(i), float(sims[i])) for i in order]
