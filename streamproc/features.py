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

:func:`reference_window_vector` is exactly that librosa code, taken from the feature registry
(``streamproc.windowing.FEATURE_REGISTRY``: name, width, librosa reference, tolerance); the engine's
:class:`FeatureExtractor` must agree with it (tests/unit/test_features.py states
the tolerance). The engine computes each STFT frame once per stream (overlapping
windows share frames), in float32, for many streams in one array.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .windowing import FEATURES, WindowSpec

AMIN = 1e-10   # librosa.power_to_db's amin
TOP_DB = 80.0  # librosa.power_to_db's top_db, applied over each window
LOGMEL_ATOL_DB = 1e-3  # engine log-mel vs librosa, in dB, every cell (tests/unit/test_logmel.py)


@dataclass(frozen=True)
class LogMel:
    """The ``logmel`` model input: each window's (1, n_mels, frames_per_window) log-mel patch, from the
    window spec's STFT and mel parameters, as ``librosa.power_to_db(melspectrogram, ref=1.0, amin=1e-10,
    top_db=top_db)`` (power 2, Slaney mel filters, center=False); ``top_db`` clamps each window at its
    maximum minus top_db (None: no clamp, only the -100 dB floor of amin)."""

    top_db: float | None = TOP_DB
    # musicnn's patch (issue #23): log10(scale * mel + 1) instead of power_to_db, no clamp, and
    # (frames, n_mels) without a channel axis; taken from the same per-frame mel rows
    log: str = "power_to_db"          # or "log10_scaled"
    scale: float | None = None        # log10_scaled: log10(scale * mel_power + 1)
    layout: str = "channel_mels_frames"  # or "frames_mels"


def _import_librosa():
    from .librosa_import import librosa  # heavy (numba); only the analyzer side imports it
    return librosa()


class FeatureExtractor:
    """Per-frame features for a batch of STFT frames, and window vectors from them.

    Per-frame columns (``self.columns``): ``mel_db`` (n_mels, unclamped dB),
    then every other feature of the registry at its width (centroid, bandwidth, rolloff, zcr, rms,
    chroma), then peak.
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
        self.mel_chroma = np.ascontiguousarray(np.concatenate([self.mel_basis, self.chroma_basis]).T)
        f64 = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
        self.freq_moments = np.stack([np.ones_like(f64), f64, f64 * f64], axis=1)  # (bins, 3) float64
        self.rolloff_block = 16
        self.rolloff_tri = np.triu(np.ones((16, 16)))
        # Orthonormal DCT-II as a matrix (rows k < n_mfcc): scipy.fft.dct(x, type=2, norm="ortho").
        m = spec.n_mels
        k = np.arange(spec.n_mfcc)[:, None]
        n = np.arange(m)[None, :]
        dct = np.cos(np.pi * k * (2 * n + 1) / (2 * m)) * np.sqrt(2.0 / m)
        dct[0] /= np.sqrt(2.0)
        self.dct = dct.T.astype(np.float32)  # (n_mels, n_mfcc)

        c = {}
        col = 0
        # mel dB (the MFCCs are computed per window from it), every other registered feature at its
        # registry width, and the peak (a metric, not a model feature)
        per_frame = [("mel_db", spec.n_mels)] + [(f.name, f.width) for f in FEATURES.values() if f.name != "mfcc"]
        for name, width in per_frame + [("peak", 1)]:
            c[name] = slice(col, col + width)
            col += width
        self.columns = c
        self.n_columns = col
        self.tiny = np.finfo(np.float32).tiny

    # -- per STFT frame -------------------------------------------------------
    CHUNK = 384  # frames per pass: float64 temporaries stay in L2 (measured: 1024 is 1.7x slower per frame)

    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        """``frames``: (N, n_fft) float32 samples, one row per STFT frame -> (N, n_columns) float32."""
        frames = np.asarray(frames, dtype=np.float32)
        n = frames.shape[0]
        out = np.empty((n, self.n_columns), dtype=np.float32)
        for a in range(0, n, self.CHUNK):
            self._frame_chunk(frames[a:a + self.CHUNK], out[a:a + self.CHUNK])
        return out

    def _frame_chunk(self, frames: np.ndarray, out: np.ndarray) -> None:
        c = self.columns
        n_fft = frames.shape[1]
        X = self._rfft(frames * self.window, axis=1, overwrite_x=True)   # float64 like librosa.stft
        power = X.real * X.real
        power += X.imag * X.imag                                            # |X|^2, float64
        mc = power.astype(np.float32) @ self.mel_chroma                     # mel bands | chroma bins
        mel = mc[:, : self.spec.n_mels]
        np.maximum(mel, AMIN, out=mel)
        out[:, c["mel_db"]] = 10.0 * np.log10(mel)
        chroma = mc[:, self.spec.n_mels:]
        cmax = chroma.max(axis=1, keepdims=True)
        out[:, c["chroma_stft"]] = chroma / np.where(cmax < self.tiny, np.float32(1.0), cmax)

        mag = np.sqrt(power, out=power)                                     # |X|, float64
        moments = mag @ self.freq_moments                                   # sum S, sum f S, sum f^2 S
        total = moments[:, 0]
        denom = np.where(total < self.tiny, 1.0, total)
        centroid = moments[:, 1] / denom
        out[:, c["spectral_centroid"]] = centroid[:, None]
        out[:, c["spectral_bandwidth"]] = np.sqrt(np.maximum(moments[:, 2] / denom - centroid * centroid, 0.0))[:, None]
        out[:, c["spectral_rolloff"]] = self.freqs[self._rolloff_bins(mag, self.spec.rolloff_percent * total)][:, None]

        neg = frames < -1e-10  # librosa's signbit after zeroing |x| <= 1e-10
        out[:, c["zero_crossing_rate"]] = (np.count_nonzero(neg[:, 1:] != neg[:, :-1], axis=1)
                                           / np.float32(n_fft))[:, None]
        out[:, c["rms"]] = np.sqrt(np.einsum("ij,ij->i", frames, frames) / np.float32(n_fft))[:, None]
        out[:, c["peak"]] = np.maximum(frames.max(axis=1), -frames.min(axis=1))[:, None]

    def _rolloff_bins(self, mag: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """First bin whose cumulative magnitude reaches ``threshold`` (librosa's definition),
        found block-wise: a row-wise cumsum over all bins costs twice as much."""
        n, nbins = mag.shape
        b = self.rolloff_block
        nblocks = (nbins - 1) // b
        blocks = mag[:, : nblocks * b].reshape(n, nblocks, b)
        cum_blocks = np.cumsum(blocks.sum(axis=2), axis=1)
        blk = np.minimum((cum_blocks < threshold[:, None]).sum(axis=1), nblocks - 1)
        rows = np.arange(n)
        inner = blocks[rows, blk] @ self.rolloff_tri                        # cumsum inside that block
        before = np.where(blk > 0, cum_blocks[rows, blk - 1], 0.0)
        idx = blk * b + ((before[:, None] + inner) < threshold[:, None]).sum(axis=1)
        return np.minimum(idx, nbins - 1)

    # -- per window -----------------------------------------------------------
    def logmel_patches(self, frame_feats: np.ndarray, top_db: float | None | LogMel = TOP_DB) -> np.ndarray:
        """``frame_feats``: (W, frames_per_window, n_columns) -> (W, 1, n_mels, frames_per_window) float32:
        each window's log-mel spectrogram, the model input of a ``logmel`` bundle. Taken from the per-frame
        ``mel_db`` column the features already computed (the engine's one STFT path, no second STFT):
        ``librosa.power_to_db(librosa.feature.melspectrogram(y=window, sr, n_fft, hop_length, center=False,
        n_mels, fmin, fmax), ref=1.0, amin=1e-10, top_db=top_db)`` (:func:`reference_logmel`)."""
        ff = np.asarray(frame_feats, dtype=np.float32)
        lm = top_db if isinstance(top_db, LogMel) else LogMel(top_db)
        if lm.log == "log10_scaled":  # musicnn: log10(scale * mel + 1) of the same mel power rows (W, F, n_mels)
            power = np.power(np.float32(10.0), ff[:, :, self.columns["mel_db"]] / np.float32(10.0))
            out = np.log10(np.float32(lm.scale) * power + np.float32(1.0))
            return out if lm.layout == "frames_mels" else np.ascontiguousarray(out.transpose(0, 2, 1))[:, None]
        top_db = lm.top_db
        db = np.ascontiguousarray(ff[:, :, self.columns["mel_db"]].transpose(0, 2, 1))  # (W, n_mels, F)
        if top_db is not None:
            np.maximum(db, (db.max(axis=(1, 2)) - np.float32(top_db))[:, None, None], out=db)
        return db[:, None]

    def window_vectors(self, frame_feats: np.ndarray) -> np.ndarray:
        """``frame_feats``: (W, frames_per_window, n_columns) -> (W, spec.n_features) float32."""
        ff = np.asarray(frame_feats, dtype=np.float32)
        # (W, columns, frames): statistics then reduce along the contiguous axis (10x faster than axis 1)
        t = np.ascontiguousarray(ff.transpose(0, 2, 1))
        n_mels = self.spec.n_mels
        rest_mean, rest_std = _mean_std(t[:, n_mels:, :])   # every non-MFCC column at once
        c = self.columns
        parts = []
        for name in self.spec.features:
            if name == "mfcc":
                db = t[:, :n_mels, :]
                floor = db.max(axis=(1, 2)) - TOP_DB               # librosa's top_db over the window
                mfcc = np.matmul(self.dct.T, np.maximum(db, floor[:, None, None]))  # (W, n_mfcc, F)
                parts += list(_mean_std(mfcc))
            else:
                sl = slice(c[name].start - n_mels, c[name].stop - n_mels)
                parts += [rest_mean[:, sl], rest_std[:, sl]]
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    METRIC_NAMES = ("rms_dbfs", "peak_dbfs", "spectral_centroid_hz", "zero_crossing_rate", "spectral_flux",
                    "onset_rate_hz")

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
        rms = ff[:, :, c["rms"].start]
        power = np.mean(rms * rms, axis=1)
        peak = ff[:, :, c["peak"].start].max(axis=1)
        centroid = ff[:, :, c["spectral_centroid"].start].mean(axis=1)
        zcr = ff[:, :, c["zero_crossing_rate"].start].mean(axis=1)
        db = ff[:, :, c["mel_db"]]
        frame_flux = np.maximum(np.diff(db, axis=1), 0.0).mean(axis=2)       # (W, F-1) onset strength
        seconds = ff.shape[1] * self.spec.hop_length / self.spec.sr
        table = np.stack([
            np.round(10.0 * np.log10(np.maximum(power, 1e-12)), 2),          # floor -120 dBFS
            np.round(20.0 * np.log10(np.maximum(peak, 1e-6)), 2),
            np.round(centroid, 1),
            np.round(zcr, 5),
            np.round(frame_flux.mean(axis=1), 4),
            np.round(self._count_onsets(frame_flux) / seconds, 3),
        ], axis=1).tolist()
        names = self.METRIC_NAMES
        return [dict(zip(names, row)) for row in table]

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

    def vectors_for_signal(self, y: np.ndarray, *, with_metrics: bool = False, logmel=None):
        """Offline: every complete window of ``y`` and its feature vector (same code as live); with
        ``with_metrics`` also each window's metrics (``window_metrics``, e.g. ``rms_dbfs``) as a third item.
        With ``logmel`` (a :class:`LogMel`), each window's log-mel patch instead of its vector."""
        bounds = self.spec.window_bounds(len(y))
        if not bounds:
            shape = (0, 1, self.spec.n_mels, self.spec.frames_per_window) if logmel else (0, self.spec.n_features)
            if logmel and logmel.layout == "frames_mels":
                shape = (0, self.spec.frames_per_window, self.spec.n_mels)
            empty = np.empty(shape, dtype=np.float32)
            return ([], empty, []) if with_metrics else ([], empty)
        ff = self.frame_features(self.frames_of(y))
        F, fph = self.spec.frames_per_window, self.spec.frames_per_hop
        stacked = np.stack([ff[k * fph: k * fph + F] for k in range(len(bounds))])
        X = self.logmel_patches(stacked, logmel) if logmel else self.window_vectors(stacked)
        if with_metrics:
            return bounds, X, self.window_metrics(stacked)
        return bounds, X


TEMPO_KERNEL = np.array([0.25, 0.5, 1.0, 0.5, 0.25])  # merges autocorrelation peaks split by frame quantisation


def tempo(envelopes: np.ndarray, fps: float, *, min_bpm: float = 40.0, max_bpm: float = 240.0,
          center_bpm: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    """Tempo (BPM) and confidence for each row of onset-strength envelopes (W, frames).

    librosa.autocorrelate of the (lightly smoothed, mean-removed) envelope, weighted by a
    log-normal prior centred on 120 BPM with one octave of spread (as librosa's tempo
    estimator does), peak refined by parabolic interpolation so the answer is not stuck on
    the frame grid (at 50 frames/s, 140 BPM is 21.4 frames). Confidence: the autocorrelation
    at the chosen lag relative to lag 0 (1 = perfectly periodic).
    """
    librosa = _import_librosa()
    from scipy.ndimage import convolve1d
    env = convolve1d(np.asarray(envelopes, dtype=np.float64), TEMPO_KERNEL, axis=1, mode="constant")
    ac = librosa.autocorrelate(env - env.mean(axis=1, keepdims=True), axis=-1)
    lags = np.arange(ac.shape[1], dtype=float)
    bpm = np.divide(60.0 * fps, lags, out=np.full_like(lags, np.inf), where=lags > 0)
    ok = (bpm >= min_bpm) & (bpm <= max_bpm)
    prior = np.where(ok, np.exp(-0.5 * np.log2(np.where(ok, bpm, center_bpm) / center_bpm) ** 2), 0.0)
    k = np.clip(np.argmax(ac * prior, axis=1), 1, ac.shape[1] - 2)
    r = np.arange(len(k))
    a, b, c = ac[r, k - 1], ac[r, k], ac[r, k + 1]
    curve = a - 2 * b + c
    delta = np.clip(np.divide(0.5 * (a - c), curve, out=np.zeros_like(b), where=curve != 0), -0.5, 0.5)
    confidence = np.clip(b / np.maximum(ac[:, 0], 1e-12), 0.0, 1.0)
    bpm = 60.0 * fps / (k + delta)
    # no pulse (a steady tone, silence): nothing in the allowed range correlates, and the argmax of an
    # all-zero or negative curve lands outside it (3000 BPM before this check). No tempo, not a made-up one.
    pulse = (np.max(ac * prior, axis=1) > 0) & (bpm >= min_bpm * 0.97) & (bpm <= max_bpm * 1.03)
    return np.where(pulse, bpm, np.nan), np.where(pulse, confidence, 0.0)


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof=0, two-pass like numpy) over the last axis."""
    m = x.mean(axis=-1)
    d = x - m[..., None]
    return m, np.sqrt(np.einsum("...f,...f->...", d, d) / np.float32(x.shape[-1]))


def reference_window_vector(y: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """The same vector computed the plain way: librosa called on one window's samples.

    This is the definition the engine is tested against, and the "naive" path
    a user would write from librosa's documentation.
    """
    y = np.asarray(y, dtype=np.float32)
    parts = []
    for name in spec.features:
        v = FEATURES[name].reference(y, spec)  # the librosa call of the feature registry (streamproc.windowing)
        parts += [v.mean(axis=1), v.std(axis=1)]
    return np.concatenate(parts).astype(np.float32)


def reference_logmel(y: np.ndarray, spec: WindowSpec, top_db: float | None | LogMel = TOP_DB) -> np.ndarray:
    """One window's log-mel patch (1, n_mels, frames) the plain librosa way: the definition the engine's
    :meth:`FeatureExtractor.logmel_patches` is tested against (within LOGMEL_ATOL_DB dB)."""
    librosa = _import_librosa()
    S = librosa.feature.melspectrogram(y=np.asarray(y, dtype=np.float32), sr=spec.sr, n_fft=spec.n_fft,
                                       hop_length=spec.hop_length, center=False, power=2.0, n_mels=spec.n_mels,
                                       fmin=spec.fmin, fmax=spec.fmax)
    lm = top_db if isinstance(top_db, LogMel) else LogMel(top_db)
    if lm.log == "log10_scaled":  # musicnn's: log10(scale * mel + 1), in float32
        out = np.log10(np.float32(lm.scale) * S.astype(np.float32) + np.float32(1.0))
        return np.ascontiguousarray(out.T) if lm.layout == "frames_mels" else out[None]
    return librosa.power_to_db(S, ref=1.0, amin=AMIN, top_db=lm.top_db).astype(np.float32)[None]
