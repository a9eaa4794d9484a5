"""Reading audio files the same way everywhere (file replay, offline analysis, training).

float32 mono at the requested rate. Decoding: soundfile (libsndfile: wav, flac,
ogg, mp3 ...) first, librosa/audioread as fallback. Resampling: soxr's "HQ"
quality (what librosa.resample uses by default), deterministic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AudioInputError


def is_url(path) -> bool:
    """An fsspec URL (``s3://bucket/key``, ``file:///abs/path``, ``memory://x``), not a local path."""
    return isinstance(path, str) and "://" in path


def read_bytes(url: str) -> bytes:
    """Bytes of an fsspec URL; the scheme's optional package (s3fs, gcsfs, ...) must be installed."""
    try:
        import fsspec
    except ImportError:
        raise AudioInputError(f"{url}: reading URLs needs fsspec (pip install 'audiostream[batch]')") from None
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except ImportError as exc:
        raise AudioInputError(f"{url}: this URL scheme needs an extra package: {exc}") from None
    except (OSError, ValueError) as exc:
        raise AudioInputError(f"{url}: cannot read: {exc}") from None


# Suffixes the folder walkers (batch, dataset folders for train / evaluate) pick up as audio
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")


def load(path: str | Path, sr: int) -> np.ndarray:
    """Decode a file (or an fsspec URL) to float32 mono at ``sr``."""
    if is_url(path):
        import io
        source = io.BytesIO(read_bytes(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise AudioInputError(f"{path}: no such file")
        source = str(path)
    try:
        import soundfile as sf
        data, file_sr = sf.read(source, dtype="float32", always_2d=True)
        y = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    except Exception as first:  # libsndfile does not know the format: try librosa/audioread
        try:
            import librosa
            import warnings
            if not isinstance(source, str):
                source.seek(0)
            with warnings.catch_warnings():  # its own "trying audioread" notices; the error below says it all
                warnings.simplefilter("ignore")
                y, file_sr = librosa.load(source, sr=None, mono=True)
        except Exception as exc:
            raise AudioInputError(f"{path}: cannot decode audio ({type(first).__name__}: {first}; "
                                  f"fallback: {type(exc).__name__}: {exc})") from None
    if y.size == 0:
        raise AudioInputError(f"{path}: contains no audio samples")
    if not np.isfinite(y).all():
        raise AudioInputError(f"{path}: contains NaN or infinite samples")
    if file_sr != sr:
        import soxr
        y = soxr.resample(y, file_sr, sr, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(y, dtype=np.float32)


def to_s16(y: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, rounding and clipping (what goes on the wire)."""
    return np.clip(np.round(np.asarray(y, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def from_s16(x: np.ndarray) -> np.ndarray:
    """int16 -> float32 exactly as the analyzer decodes it."""
    return np.asarray(x, dtype=np.int16).astype(np.float32) * np.float32(1.0 / 32768.0)
