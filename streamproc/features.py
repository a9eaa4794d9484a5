"""Window features, computed once per STFT frame and batched across streams.

The model's input for a window is, for each feature in ``spec.features`` (in
order), the mean then the std (ddof=0) over the window's STFT frames of what
librosa returns for that window's samples with ``center=False``:

==================== ===========================================================
mfcc                 ``librosa.feature.mfcc(y=w, sr, n_fft, hop_length, n_mels,
                     n_mfcc, fmin, fmax, center=False)`` (power_to_db with its
                     default top_db=80 over the window, DCT-II ortho)
spectral_centroid    ``librosa.feature.spectral_centroid(y=w, ..., center=False)``
spectral_bandwidth   ``librosa.feature.spectral_bandwidth(y=w, ..., center=False)``
spectral_rolloff     ``librosa.feature.spectral_rolloff(y=w, ..., roll_percent)``
zero_crossing_rate   ``librosa.feature.zero_crossing_rate(w, frame_length=n_fft,
                     hop_length, center=False)``
rms                  ``librosa.feature.rms(y=w, frame_length=n_fft, hop_length,
                     center=False)``
chroma_stft          ``librosa.feature.chroma_stft(y=w, sr, n_fft, hop_length,
                     tuning=0.0, center=False)``
==================== ===========================================================

:func:`reference_window_vector` is exactly that librosa code; the engine's
:class:`FeatureExtractor` must agree with it (tests/unit/test_features.py states
the tolerance). The engine computes each STFT frame once per stream (overlapping
windows share frames), in float32, for many streams in one array.
"""
from __future__ import annotations

import numpy as np

from .windowing import WindowSpec

AMIN = 1e-10   # librosa.power_to_db's amin
TOP_DB = 80.0  # librosa.power_to_db's top_db, applied over each window


def _import_librosa():
    import librosa  # heavy (numba); only the analyzer side imports it
    return librosa


class FeatureExtractor:
    """Per-frame features for a batch of STFT frames, and window vectors from them.

    Per-frame columns (``self.columns``): ``mel_db`` (n_mels, unclamped dB),
    then centroid, bandwidth, rolloff, zcr, rms, peak, chroma (12).
    """

    def __init__(self, spec: WindowSpec):
        librosa = _import_librosa()
        import scipy.fft
        import scipy.signal

        self.spec = spec
        self._rfft = scipy.fft.rfft
        n_fft, sr = spec.n_fft, spec.sr
        # float64 window and FFT, cast to complex64 afterwards: what librosa.stft does. A float32
        # FFT's noise floor (~1e-7 of the peak in every bin) is amplified by (f - centroid)^2 in
        # spectral_bandwidth and moved a pure tone's bandwidth by 0.4%; float64 keeps us on librosa.
        self.window = scipy.signal.get_window("hann", n_fft, fftbins=True)
        self.freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft).astype(np.float32)
        self.mel_basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=spec.n_mels, fmin=spec.fmin,
                                             fmax=spec.fmax).astype(np.float32)
        self.chroma_basis = librosa.filters.chroma(sr=sr, n_fft=n_fft, tuning=0.0, n_chroma=12).astype(np.float32)
        # Orthonormal DCT-II as a matrix (rows k < n_mfcc): scipy.fft.dct(x, type=2, norm="ortho").
        m = spec.n_mels
        k = np.arange(spec.n_mfcc)[:, None]
        n = np.arange(m)[None, :]
        dct = np.cos(np.pi * k * (2 * n + 1) / (2 * m)) * np.sqrt(2.0 / m)
        dct[0] /= np.sqrt(2.0)
        self.dct = dct.T.astype(np.float32)  # (n_mels, n_mfcc)

        c = {}
        col = 0
        for name, width in (("mel_db", spec.n_mels), ("spectral_centroid", 1), ("spectral_bandwidth", 1),
                            ("spectral_rolloff", 1), ("zero_crossing_rate", 1), ("rms", 1), ("peak", 1),
                            ("chroma_stft", 12)):
            c[name] = slice(col, col + width)
            col += width
        self.columns = c
        self.n_columns = col
        self.tiny = np.finfo(np.float32).tiny

    # -- per STFT frame -------------------------------------------------------
    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        """``frames``: (N, n_fft) float32 samples, one row per STFT frame -> (N, n_columns) float32."""
        frames = np.asarray(frames, dtype=np.float32)
        n = frames.shape[0]
        out = np.empty((n, self.n_columns), dtype=np.float32)
        if n == 0:
            return out
        c = self.columns
        X = self._rfft(frames * self.window, axis=1).astype(np.complex64)  # (N, 1 + n_fft/2)
        power = X.real * X.real + X.imag * X.imag                         # |X|^2
        mag = np.sqrt(power)                                              # |X|

        mel = power @ self.mel_basis.T                                    # (N, n_mels)
        np.maximum(mel, AMIN, out=mel)
        out[:, c["mel_db"]] = 10.0 * np.log10(mel)

        total = mag.sum(axis=1)
        denom = np.where(total < self.tiny, 1.0, total).astype(np.float32)
        centroid = (mag @ self.freqs) / denom
        out[:, c["spectral_centroid"]] = centroid[:, None]
        dev2 = (self.freqs[None, :] - centroid[:, None]) ** 2
        out[:, c["spectral_bandwidth"]] = np.sqrt(np.einsum("nf,nf->n", mag, dev2) / denom)[:, None]

        cum = np.cumsum(mag, axis=1)
        thresh = self.spec.rolloff_percent * cum[:, -1:]
        idx = np.argmax(cum >= thresh, axis=1)                            # first bin reaching the threshold
        out[:, c["spectral_rolloff"]] = self.freqs[idx][:, None]

        sign = np.signbit(np.where(np.abs(frames) <= 1e-10, np.float32(0.0), frames))
        out[:, c["zero_crossing_rate"]] = (
            np.count_nonzero(sign[:, 1:] != sign[:, :-1], axis=1) / np.float32(frames.shape[1]))[:, None]
        out[:, c["rms"]] = np.sqrt(np.mean(frames * frames, axis=1))[:, None]
        out[:, c["peak"]] = np.max(np.abs(frames), axis=1)[:, None]

        chroma = power @ self.chroma_basis.T                              # (N, 12)
        cmax = chroma.max(axis=1, keepdims=True)
        out[:, c["chroma_stft"]] = chroma / np.where(cmax < self.tiny, 1.0, cmax)
        return out

    # -- per window -----------------------------------------------------------
    def window_vectors(self, frame_feats: np.ndarray) -> np.ndarray:
        """``frame_feats``: (W, frames_per_window, n_columns) -> (W, spec.n_features) float32."""
        ff = np.asarray(frame_feats, dtype=np.float32)
        parts = []
        for name in self.spec.features:
            if name == "mfcc":
                db = ff[:, :, self.columns["mel_db"]]
                floor = db.max(axis=(1, 2), keepdims=True) - TOP_DB
                vals = np.maximum(db, floor) @ self.dct                   # (W, F, n_mfcc)
            else:
                vals = ff[:, :, self.columns[name]]
            parts.append(vals.mean(axis=1))
            parts.append(vals.std(axis=1))
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def window_metrics(self, frame_feats: np.ndarray) -> list[dict]:
        """Human-facing per-window audio metrics for ``audio.features`` (not model input).

        rms_dbfs: 10*log10 of the mean frame power (dB re full scale, a full-scale
        square wave = 0 dBFS, floor -120); peak_dbfs: largest |sample| in the window's frames;
        spectral_centroid_hz, zero_crossing_rate: frame means; spectral_flux: mean
        positive change of the mel dB spectrum between consecutive frames (onset strength);
        onset_rate_hz: peaks of that onset strength per second (see _count_onsets).
        """
        ff = np.asarray(frame_feats, dtype=np.float32)
        c = self.columns
        power = np.mean(ff[:, :, c["rms"]][..., 0] ** 2, axis=1)
        peak = ff[:, :, c["peak"]][..., 0].max(axis=1)
        centroid = ff[:, :, c["spectral_centroid"]][..., 0].mean(axis=1)
        zcr = ff[:, :, c["zero_crossing_rate"]][..., 0].mean(axis=1)
        db = ff[:, :, c["mel_db"]]
        frame_flux = np.maximum(np.diff(db, axis=1), 0.0).mean(axis=2)       # (W, F-1) onset strength
        flux = frame_flux.mean(axis=1)
        onsets = self._count_onsets(frame_flux)
        seconds = ff.shape[1] * self.spec.hop_length / self.spec.sr
        out = []
        for i in range(ff.shape[0]):
            out.append({
                "rms_dbfs": round(float(10.0 * np.log10(max(power[i], 1e-12))), 2),  # floor -120 dBFS
                "peak_dbfs": round(float(20.0 * np.log10(max(peak[i], 1e-6))), 2),
                "spectral_centroid_hz": round(float(centroid[i]), 1),
                "zero_crossing_rate": round(float(zcr[i]), 5),
                "spectral_flux": round(float(flux[i]), 4),
                "onset_rate_hz": round(float(onsets[i] / seconds), 3),
            })
        return out

    @staticmethod
    def _count_onsets(flux: np.ndarray, radius: int = 3, delta_db: float = 3.0) -> np.ndarray:
        """Onsets per window: frames whose flux is the maximum within +-radius frames (30 ms)
        and exceeds the window's median flux by ``delta_db`` (mean dB rise over mel bands)."""
        W, T = flux.shape
        padded = np.pad(flux, ((0, 0), (radius, radius)), constant_values=-np.inf)
        local_max = np.max(np.stack([padded[:, k:k + T] for k in range(2 * radius + 1)]), axis=0)
        # ties: only the first frame of a plateau counts
        first = np.concatenate([np.ones((W, 1), bool), flux[:, 1:] != flux[:, :-1]], axis=1)
        peaks = (flux >= local_max) & first & (flux > np.median(flux, axis=1, keepdims=True) + delta_db)
        return peaks.sum(axis=1)

    def frames_of(self, y: np.ndarray) -> np.ndarray:
        """STFT frames (center=False) of a 1-D signal, as a strided (N, n_fft) view."""
        from numpy.lib.stride_tricks import sliding_window_view
        y = np.ascontiguousarray(y, dtype=np.float32)
        if y.shape[0] < self.spec.n_fft:
            return np.empty((0, self.spec.n_fft), dtype=np.float32)
        return sliding_window_view(y, self.spec.n_fft)[:: self.spec.hop_length]

    def vectors_for_signal(self, y: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Offline: every complete window of ``y`` and its feature vector (same code as live)."""
        bounds = self.spec.window_bounds(len(y))
        if not bounds:
            return [], np.empty((0, self.spec.n_features), dtype=np.float32)
        ff = self.frame_features(self.frames_of(y))
        F, fph = self.spec.frames_per_window, self.spec.frames_per_hop
        stacked = np.stack([ff[k * fph: k * fph + F] for k in range(len(bounds))])
        return bounds, self.window_vectors(stacked)


def reference_window_vector(y: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """The same vector computed the plain way: librosa called on one window's samples.

    This is the definition the engine is tested against, and the "naive" path
    a user would write from librosa's documentation.
    """
    librosa = _import_librosa()
    y = np.asarray(y, dtype=np.float32)
    common = dict(n_fft=spec.n_fft, hop_length=spec.hop_length, center=False)
    parts = []
    for name in spec.features:
        if name == "mfcc":
            v = librosa.feature.mfcc(y=y, sr=spec.sr, n_mfcc=spec.n_mfcc, n_mels=spec.n_mels, fmin=spec.fmin,
                                     fmax=spec.fmax, **common)
        elif name == "spectral_centroid":
            v = librosa.feature.spectral_centroid(y=y, sr=spec.sr, **common)
        elif name == "spectral_bandwidth":
            v = librosa.feature.spectral_bandwidth(y=y, sr=spec.sr, **common)
        elif name == "spectral_rolloff":
            v = librosa.feature.spectral_rolloff(y=y, sr=spec.sr, roll_percent=spec.rolloff_percent, **common)
        elif name == "zero_crossing_rate":
            v = librosa.feature.zero_crossing_rate(y, frame_length=spec.n_fft, hop_length=spec.hop_length,
                                                   center=False)
        elif name == "rms":
            v = librosa.feature.rms(y=y, frame_length=spec.n_fft, hop_length=spec.hop_length, center=False)
        elif name == "chroma_stft":
            v = librosa.feature.chroma_stft(y=y, sr=spec.sr, tuning=0.0, **common)
        else:  # WindowSpec validation makes this unreachable
            raise ValueError(name)
        parts += [v.mean(axis=1), v.std(axis=1)]
    return np.concatenate(parts).astype(np.float32)
