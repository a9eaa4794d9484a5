"""Reading audio files the same way everywhere (file replay, offline analysis, training, the HTTP API).

float32 mono at the requested rate. Decoding: soundfile (libsndfile: wav, flac,
ogg, mp3 ...) first, audioread as fallback. Resampling: soxr's "HQ" quality (what
librosa.resample uses by default), deterministic.

Hostile files are refused before they cost memory: the container's header
(channels, sample rate, declared length) is checked before any sample is decoded,
and decoding runs in blocks of ``BLOCK_FRAMES`` with a hard cap of
``max_seconds`` at the file's own rate, so a header that lies (or a stream with
no length) stops at the cap. Each block is mixed to mono and resampled as it
arrives (soxr's streaming resampler gives the same samples as a one-shot call),
so peak memory is the output (``max_seconds * sr * 4`` bytes) plus one block.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AudioInputError, ConfigError

BLOCK_FRAMES = 1 << 16  # frames decoded at a time
MAX_CHANNELS = 64
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384_000  # Hz; headers outside are refused before decoding
UNKNOWN_FRAMES = 1 << 62  # libsndfile's frame count for "not known"
FILE_MAX_SECONDS = 3600.0  # default limit of batch and produce-file (--max-duration; 0 = none)


class AudioTooLongError(AudioInputError):
    """The audio is longer than the caller's limit (declared by its header, or found while decoding)."""


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
    except IsADirectoryError:
        raise AudioInputError(f"{url}: is a directory, not an audio file") from None
    except (OSError, ValueError) as exc:
        raise AudioInputError(f"{url}: cannot read: {describe(exc)}") from None


# Suffixes the folder walkers (batch, dataset folders for train / evaluate) pick up as audio
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")

# What an exception that carries no message means here
_EMPTY_MEANS = {"NoBackendError": "no decoder for this format (audioread found no backend that reads it, "
                                  "e.g. ffmpeg is not installed)",
                "DecodeError": "the decoder gave up on the data",
                "EOFError": "the file ends too early"}


def describe(exc: BaseException) -> str:
    """``exc``'s message, or what an exception of that type means when the message is empty."""
    msg = str(exc).strip()
    return msg or _EMPTY_MEANS.get(type(exc).__name__, "no details given by the decoder")


def check_header(name, *, sr: int, channels: int, frames: int | None, max_seconds: float | None) -> None:
    """Refuse a container by what its header declares, before any sample is decoded."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioInputError(f"{name}: the header declares {channels} channels; 1 to {MAX_CHANNELS} are accepted")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioInputError(f"{name}: the header declares a sample rate of {sr} Hz; "
                              f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz are accepted")
    if max_seconds is not None and frames is not None and 0 < frames and frames / sr > max_seconds:
        raise AudioTooLongError(f"{name}: the audio is {frames / sr:.0f} s long (declared by its header); "
                                f"the limit is {max_seconds:g} s")


class _Samples:
    """float32 samples appended in place: into one array sized from the header when it declares a length,
    else (or past what it declared) into segments of ``SEGMENT`` samples. Large blocks only, so freeing them
    gives the memory back (small ones stay in the allocator's arenas), and no list of small parts to join."""

    SEGMENT = 1 << 20  # samples (4 MiB)
    MAX_EXPECTED = 1 << 25  # a header's length is trusted for at most this much up front (128 MiB)

    def __init__(self, expected: int | None):
        size = min(expected, self.MAX_EXPECTED) if expected else self.SEGMENT
        self.segments = [np.empty(size, np.float32)]
        self.fill = 0  # samples in the last segment

    def append(self, y: np.ndarray) -> None:
        while len(y):
            seg = self.segments[-1]
            k = min(len(y), len(seg) - self.fill)
            if not k:
                self.segments.append(np.empty(self.SEGMENT, np.float32))
                self.fill = 0
                continue
            seg[self.fill:self.fill + k] = y[:k]
            self.fill += k
            y = y[k:]

    def array(self) -> np.ndarray:
        last = self.segments[-1][:self.fill]
        if len(self.segments) > 1:
            out = np.concatenate(self.segments[:-1] + [last])
        elif self.fill >= 0.9 * len(self.segments[0]):
            out = last  # the header was right: the array itself, no copy
        else:
            out = last.copy()  # a short file in a large segment: do not keep the rest alive
        self.segments = []
        return out


class _Decoded:
    """Mono float32 blocks at the file's rate in, resampled float32 at ``sr`` out, with the sample cap."""

    def __init__(self, name, file_sr: int, sr: int, max_seconds: float | None, frames: int | None = None):
        self.name, self.file_sr, self.sr, self.max_seconds = name, file_sr, sr, max_seconds
        self.cap = None if max_seconds is None else int(max_seconds * file_sr)
        self.n_in = 0
        expected = None
        if frames:
            expected = -(-min(frames, self.cap or frames) * sr // file_sr) + 16  # soxr gives round(n * sr / file_sr)
        self.out = _Samples(expected)
        self.stream = None
        if file_sr != sr:
            import soxr
            self.stream = soxr.ResampleStream(file_sr, sr, 1, dtype="float32", quality="HQ")

    def add(self, y: np.ndarray) -> None:
        self.n_in += len(y)
        if self.cap is not None and self.n_in > self.cap:
            raise AudioTooLongError(f"{self.name}: the audio is longer than the limit of {self.max_seconds:g} s "
                                    f"(decoding stopped there; the header did not say, or said less)")
        if not np.isfinite(y).all():
            raise AudioInputError(f"{self.name}: contains NaN or infinite samples")
        if self.stream is not None:
            y = self.stream.resample_chunk(y, last=False)
        self.out.append(y)

    def result(self) -> np.ndarray:
        if self.n_in == 0:
            raise AudioInputError(f"{self.name}: contains no audio samples")
        if self.stream is not None:
            self.out.append(self.stream.resample_chunk(np.zeros(0, np.float32), last=True))
        return self.out.array()


def _mono(block: np.ndarray) -> np.ndarray:
    return block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]


def _with_soundfile(source, name, sr: int, max_seconds: float | None) -> np.ndarray:
    import soundfile as sf
    with sf.SoundFile(source) as f:
        # libsndfile says SF_COUNT_MAX when the container does not know its length (e.g. a FLAC STREAMINFO
        # with 0 total samples): then only the cap while decoding holds
        known = f.seekable() and 0 < f.frames < UNKNOWN_FRAMES
        check_header(name, sr=f.samplerate, channels=f.channels, frames=f.frames if known else None,
                     max_seconds=max_seconds)
        out = _Decoded(name, f.samplerate, sr, max_seconds, frames=f.frames if known else None)
        # libsndfile fails ("psf_fseek() failed") on the read that passes the end of a stream of unknown
        # length: small reads there keep what is lost to less than one of them
        step = BLOCK_FRAMES if known else 4096
        while True:
            try:
                block = f.read(step, dtype="float32", always_2d=True)
            except sf.LibsndfileError:
                if known or not out.n_in:
                    raise
                break
            if not len(block):
                break
            out.add(_mono(block))
    return out.result()


def _with_audioread(path: str, name, sr: int, max_seconds: float | None) -> np.ndarray:
    import audioread
    with audioread.audio_open(path) as f:
        channels, file_sr = int(f.channels), int(f.samplerate)
        duration = getattr(f, "duration", None)
        check_header(name, sr=file_sr, channels=channels,
                     frames=int(duration * file_sr) if duration else None, max_seconds=max_seconds)
        out = _Decoded(name, file_sr, sr, max_seconds)
        carry = b""
        width = 2 * channels  # audioread yields interleaved int16 little-endian buffers
        for buf in f:
            buf = carry + bytes(buf)
            whole = len(buf) - len(buf) % width
            carry = buf[whole:]
            if whole:
                x = np.frombuffer(buf[:whole], "<i2").astype(np.float32) * np.float32(1 / 32768)
                out.add(_mono(x.reshape(-1, channels)))
    return out.result()


def _download(url: str, out) -> None:
    """Copy an fsspec URL into the file ``out`` in blocks (an object of any size costs one block of memory)."""
    import shutil
    try:
        import fsspec
    except ImportError:
        raise AudioInputError(f"{url}: reading URLs needs fsspec (pip install 'audiostream[batch]')") from None
    try:
        with fsspec.open(url, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
    except ImportError as exc:
        raise AudioInputError(f"{url}: this URL scheme needs an extra package: {exc}") from None
    except IsADirectoryError:
        raise AudioInputError(f"{url}: is a directory, not an audio file") from None
    except FileNotFoundError:
        raise AudioInputError(f"{url}: cannot read: no such file") from None
    except (OSError, ValueError) as exc:
        raise AudioInputError(f"{url}: cannot read: {describe(exc)}") from None
    out.flush()


def load(path: str | Path, sr: int, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file (or an fsspec URL, copied to a temporary file first) to float32 mono at ``sr``.

    ``max_seconds``: refuse (``AudioTooLongError``) audio longer than this, by its header before
    decoding, else by stopping at that many seconds of decoded samples. None: no limit on length
    (channels and sample rate are still checked, and decoding still runs in blocks).
    """
    import re
    import tempfile
    if max_seconds is not None and not max_seconds > 0:
        raise ConfigError(f"a duration limit of {max_seconds} s must be positive (--max-duration 0 means none)")
    if is_url(path):
        suffix = re.sub(r"[^A-Za-z0-9]", "", Path(path.split("?")[0]).suffix)[:8]  # a hint for decoders
        with tempfile.NamedTemporaryFile(suffix="." + suffix if suffix else "") as tmp:
            _download(path, tmp)
            return _decode(tmp.name, path, sr, max_seconds)
    path = Path(path)
    if path.is_dir():
        raise AudioInputError(f"{path}: is a directory, not an audio file")
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file")
    return _decode(str(path), path, sr, max_seconds)


def _decode(source: str, name, sr: int, max_seconds: float | None) -> np.ndarray:
    try:
        return _with_soundfile(source, name, sr, max_seconds)
    except AudioInputError:
        raise  # our own refusal (too long, bad header): the fallback must not try again
    except Exception as first:  # libsndfile does not know the format: try audioread
        try:
            return _with_audioread(source, name, sr, max_seconds)
        except AudioInputError:
            raise
        except Exception as exc:
            raise AudioInputError(f"{name}: cannot decode audio ({type(first).__name__}: "
                                  f"{describe(first).replace(source, str(name))}; "
                                  f"fallback: {type(exc).__name__}: {describe(exc)})") from None


def to_s16(y: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, rounding and clipping (what goes on the wire)."""
    y = np.asarray(y, dtype=np.float32)
    out = np.empty(y.shape, np.int16)
    src, dst = y.reshape(-1), out.reshape(-1)
    for i in range(0, src.size, BLOCK_FRAMES):  # in blocks: the float temporary is one block, not the signal
        t = src[i:i + BLOCK_FRAMES] * np.float32(32768.0)
        np.round(t, out=t)
        np.clip(t, -32768, 32767, out=t)
        dst[i:i + BLOCK_FRAMES] = t
    return out


def from_s16(x: np.ndarray) -> np.ndarray:
    """int16 -> float32 exactly as the analyzer decodes it."""
    return np.asarray(x, dtype=np.int16).astype(np.float32) * np.float32(1.0 / 32768.0)
