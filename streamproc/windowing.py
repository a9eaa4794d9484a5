"""The window spec: one object shared by training, batch analysis and the live analyzer.

Windows are defined on stream sample time: window ``k`` of a stream session
covers samples ``[k * hop, k * hop + window)`` counted from the session's first
sample (the frames' ``sample_offset``), never on wall-clock arrival. Inside a
window, STFT frames use librosa's ``center=False`` framing, so STFT frame ``f``
covers samples ``[f * hop_length, f * hop_length + n_fft)`` of the stream and is
shared by every window that contains it (computed once).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable

from .errors import WindowSpecError


def _librosa():
    from .librosa_import import librosa  # heavy (numba): imported only when a reference is computed
    return librosa()


def _stft(spec) -> dict:
    return dict(n_fft=spec.n_fft, hop_length=spec.hop_length, center=False)


@dataclass(frozen=True)
class FrameFeature:
    """One per-STFT-frame feature, in one place: its name, its width (columns), its definition (the
    librosa call on one window's samples, returning (width, frames)) and how close the engine must come
    to it (``rtol``: |engine - librosa| <= rtol * (|librosa| + the feature's largest |mean|) + 1e-7,
    tests/unit/test_features.py). The window vector holds the mean then the std over the window's frames.

    Adding a feature: an entry here, and its column in ``FeatureExtractor._frame_chunk`` (the fast path,
    fused with the other features' FFT work); the reference, the widths, the names, the vector layout,
    the tests' tolerance and the features records follow from this entry."""

    name: str
    width: int | None  # None: spec.n_mfcc
    reference: Callable  # (y, spec) -> (width, frames) array; what librosa returns with center=False
    rtol: float = 1e-4


FEATURE_REGISTRY: tuple[FrameFeature, ...] = (
    FrameFeature("mfcc", None, lambda y, s: _librosa().feature.mfcc(
        y=y, sr=s.sr, n_mfcc=s.n_mfcc, n_mels=s.n_mels, fmin=s.fmin, fmax=s.fmax, **_stft(s))),
    FrameFeature("spectral_centroid", 1, lambda y, s: _librosa().feature.spectral_centroid(y=y, sr=s.sr, **_stft(s))),
    FrameFeature("spectral_bandwidth", 1,
                 lambda y, s: _librosa().feature.spectral_bandwidth(y=y, sr=s.sr, **_stft(s))),
    FrameFeature("spectral_rolloff", 1, lambda y, s: _librosa().feature.spectral_rolloff(
        y=y, sr=s.sr, roll_percent=s.rolloff_percent, **_stft(s))),
    FrameFeature("zero_crossing_rate", 1, lambda y, s: _librosa().feature.zero_crossing_rate(
        y, frame_length=s.n_fft, hop_length=s.hop_length, center=False)),
    FrameFeature("rms", 1, lambda y, s: _librosa().feature.rms(
        y=y, frame_length=s.n_fft, hop_length=s.hop_length, center=False)),
    FrameFeature("chroma_stft", 12, lambda y, s: _librosa().feature.chroma_stft(y=y, sr=s.sr, tuning=0.0,
                                                                                **_stft(s))),
)
FEATURES = {f.name: f for f in FEATURE_REGISTRY}
# Per-STFT-frame features the engine knows how to compute, in vector order, with their width
# (None = n_mfcc): derived from FEATURE_REGISTRY.
FRAME_FEATURES = {f.name: f.width for f in FEATURE_REGISTRY}
STATS = ("mean", "std")
DEFAULT_FEATURES = tuple(FRAME_FEATURES)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WindowSpecError(f"{name}={value!r} must be a positive integer")
    return value


@dataclass(frozen=True)
class WindowSpec:
    """Sample rate, window and hop (in samples), STFT and mel parameters, feature list.

    Defaults: 16 kHz, 1 s windows every 0.5 s, 32 ms FFT every 20 ms, 64 mel
    bands, 20 MFCC, every known feature.
    """

    sr: int = 16000
    window_length: int = 16000  # samples per analysis window
    hop: int = 8000             # samples between window starts
    n_fft: int = 512
    hop_length: int = 320     # 20 ms; librosa's own default hop is 23 ms (512 at 22.05 kHz)
    n_mels: int = 64
    n_mfcc: int = 20
    fmin: float = 0.0
    fmax: float | None = None   # None = sr / 2 (librosa's default)
    rolloff_percent: float = 0.85
    features: tuple[str, ...] = field(default=DEFAULT_FEATURES)

    def __post_init__(self):
        for name in ("sr", "window_length", "hop", "n_fft", "hop_length", "n_mels", "n_mfcc"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.features, list):
            object.__setattr__(self, "features", tuple(self.features))
        if self.n_fft > self.window_length:
            raise WindowSpecError(f"n_fft={self.n_fft} must be <= window_length={self.window_length}")
        if self.hop % self.hop_length:
            raise WindowSpecError(f"hop={self.hop} must be a multiple of hop_length={self.hop_length} "
                                  "so overlapping windows share STFT frames")
        if self.hop > self.window_length:
            raise WindowSpecError(f"hop={self.hop} must be <= window_length={self.window_length} (no skipped audio)")
        if not 0.0 < self.rolloff_percent < 1.0:
            raise WindowSpecError(f"rolloff_percent={self.rolloff_percent} must lie in (0, 1)")
        if self.n_mfcc > self.n_mels:
            raise WindowSpecError(f"n_mfcc={self.n_mfcc} must be <= n_mels={self.n_mels}")
        fmax = self.sr / 2 if self.fmax is None else self.fmax
        if not 0.0 <= self.fmin < fmax <= self.sr / 2:
            raise WindowSpecError(f"need 0 <= fmin={self.fmin} < fmax={fmax} <= sr/2={self.sr / 2}")
        if not self.features:
            raise WindowSpecError("features must name at least one feature")
        unknown = [f for f in self.features if f not in FRAME_FEATURES]
        if unknown:
            raise WindowSpecError(f"unknown feature(s) {unknown}; this engine computes {list(FRAME_FEATURES)}")
        if len(set(self.features)) != len(self.features):
            raise WindowSpecError(f"features {list(self.features)} lists a feature twice")

    # -- derived sizes -------------------------------------------------------
    @property
    def frames_per_window(self) -> int:
        """STFT frames inside one window (center=False)."""
        return 1 + (self.window_length - self.n_fft) // self.hop_length

    @property
    def frames_per_hop(self) -> int:
        return self.hop // self.hop_length

    @property
    def window_seconds(self) -> float:
        return self.window_length / self.sr

    @property
    def hop_seconds(self) -> float:
        return self.hop / self.sr

    def feature_width(self, name: str) -> int:
        width = FRAME_FEATURES[name]
        return self.n_mfcc if width is None else width

    @property
    def n_features(self) -> int:
        """Length of the window feature vector the model sees."""
        return len(STATS) * sum(self.feature_width(f) for f in self.features)

    def feature_names(self) -> list[str]:
        """Names of the window vector's entries, e.g. ``mfcc_mean[3]``, ``rms_std``."""
        names = []
        for f in self.features:
            w = self.feature_width(f)
            for stat in STATS:
                names += [f"{f}_{stat}[{i}]" for i in range(w)] if w > 1 else [f"{f}_{stat}"]
        return names

    def window_bounds(self, n_samples: int) -> list[tuple[int, int]]:
        """Every complete window of a signal of ``n_samples`` samples, as (start, end)."""
        if n_samples < self.window_length:
            return []
        count = 1 + (n_samples - self.window_length) // self.hop
        return [(k * self.hop, k * self.hop + self.window_length) for k in range(count)]

    # -- (de)serialisation ----------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WindowSpec":
        if not isinstance(d, dict):
            raise WindowSpecError(f"window spec must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise WindowSpecError(f"window spec has unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_seconds(cls, *, sr: int = 16000, window_s: float = 1.0, hop_s: float = 0.5, **kw) -> "WindowSpec":
        return cls(sr=sr, window_length=round(window_s * sr), hop=round(hop_s * sr), **kw)

    def differences(self, other: "WindowSpec") -> list[str]:
        """Human-readable list of fields that differ, e.g. ``n_mels: 64 != 128``."""
        return [f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
