"""Utterances cut from one stream by voice activity, on stream time (no Kafka, no wall clock).

``Segmenter`` is fed a stream's consecutive samples in chunks of any size and
returns utterances (start/end sample, audio, why it ended). Every decision is
taken per complete VAD window of 512 samples (32 ms at 16 kHz) counted from the
stream's first sample, so the same audio gives the same utterances however it
was chunked: the offline ``transcribe`` command and a live service cut the same
utterances from the same stream.

Voice activity comes from Silero VAD v6, the ONNX model that faster-whisper
ships inside its wheel (``faster_whisper/assets/silero_vad_v6.onnx``), run one
window at a time with its recurrent state carried over (bit-identical to
faster-whisper's own batched run over the whole file). Any callable
``window -> probability`` can stand in for it (tests use a level detector).

An utterance

- starts at the first window with speech probability >= ``threshold``, padded
  back by ``pad_s`` (never before the previous utterance's end);
- ends at a pause: the probability stayed below ``neg_threshold`` for ``hangover_s``
  once the utterance is at least ``min_utterance_s`` long, or for ``long_pause_s``
  whatever its length (reason ``silence``; the end is padded by ``pad_s`` past the
  last speech). Packing short sentences into utterances of 5 s or more lowered the
  word error rate on every set measured (docs/transcription.md): Whisper does
  better with more than a few words of context in its 30 s window;
  when it reaches ``max_utterance_s`` (reason ``max_length``: cut at the last
  quiet window in its second half if there was one, else at the limit, and the
  rest goes on as the next utterance), at stream end (``flush("end")``) or when
  the caller decides the stream is idle (``flush("idle")``);
- is dropped if it held less than ``min_speech_s`` of speech windows (clicks,
  breaths).

**Pause captions** (``Segmenter(captions=True)``): when a pause inside an open
utterance reaches ``caption_pause_s`` (default: ``hangover_s``) and does not end
it there (it is shorter than ``min_utterance_s``, or the pause is shorter than the
hangover), the utterance so far (its first sample
to ``pad_s`` past the last speech, ``reason="pause"``) is queued in
``captions``; ``take_captions()`` hands them over. The transcriber publishes one
as a partial transcript at once: the caption a viewer needs, while the final
still waits for the packed context. If no speech follows, the final is exactly
that audio (same start, same end). Decided on stream time like every cut, so
the same audio gives the same captions however it was chunked.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import AudiostreamError

SAMPLE_RATE = 16000
VAD_WINDOW = 512  # samples per Silero window at 16 kHz
VAD_CONTEXT = 64  # samples of the previous window Silero v6 sees with each window
REASONS = ("silence", "max_length", "end", "idle", "gap")


class SegmenterError(AudiostreamError, ValueError):
    """Invalid segmenter settings or input: the message names the value."""


@dataclass(frozen=True)
class SegmenterConfig:
    """How utterances are cut. Times in seconds; all rounded to whole samples at 16 kHz."""

    threshold: float = 0.5
    neg_threshold: float = 0.35
    hangover_s: float = 0.5
    pad_s: float = 0.2
    max_utterance_s: float = 20.0
    min_speech_s: float = 0.15
    min_utterance_s: float = 5.0  # a pause of hangover_s ends an utterance only once it is this long ...
    long_pause_s: float = 2.0  # ... a pause this long ends it whatever its length
    vad_reset_s: float | None = None  # restart the VAD's recurrent state on this grid while idle (see Segmenter)
    caption_pause_s: float | None = None  # a pause this long gives a pause caption (None: hangover_s)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SegmenterConfig":
        """From a bundle's ``segmentation:`` mapping; unknown keys are an error naming them."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise SegmenterError(f"unknown segmentation setting(s) {unknown} (known: {sorted(cls.__dataclass_fields__)})")
        try:
            return cls(**{k: None if v is None else float(v) for k, v in d.items()})
        except (TypeError, ValueError) as exc:
            raise SegmenterError(f"segmentation settings {d}: {exc}") from None

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise SegmenterError(f"threshold={self.threshold} must be in (0, 1]")
        if not 0.0 <= self.neg_threshold <= self.threshold:
            raise SegmenterError(f"neg_threshold={self.neg_threshold} must be in [0, threshold={self.threshold}]")
        if not 0.0 <= self.pad_s <= self.hangover_s:
            raise SegmenterError(f"pad_s={self.pad_s} must be in [0, hangover_s={self.hangover_s}] "
                                 f"(the end pad is audio the hangover already waited for)")
        if not self.max_utterance_s >= 1.0:
            raise SegmenterError(f"max_utterance_s={self.max_utterance_s} must be at least 1 second")
        if self.max_utterance_s > 29.0:  # an utterance may end up to one VAD window past the limit
            raise SegmenterError(f"max_utterance_s={self.max_utterance_s} must be at most 29 (Whisper's window is "
                                 f"30 s)")
        if self.min_speech_s < 0:
            raise SegmenterError(f"min_speech_s={self.min_speech_s} must be >= 0")
        if not 0.0 <= self.min_utterance_s < self.max_utterance_s:
            raise SegmenterError(f"min_utterance_s={self.min_utterance_s} must be in [0, max_utterance_s="
                                 f"{self.max_utterance_s})")
        if self.vad_reset_s is not None and round(self.vad_reset_s * SAMPLE_RATE / VAD_WINDOW) < 1:
            raise SegmenterError(f"vad_reset_s={self.vad_reset_s} must be at least one VAD window "
                                 f"({VAD_WINDOW / SAMPLE_RATE} s), or null")
        if self.caption_pause_s is not None and not self.pad_s <= self.caption_pause_s <= self.hangover_s:
            raise SegmenterError(f"caption_pause_s={self.caption_pause_s} must be in [pad_s={self.pad_s}, "
                                 f"hangover_s={self.hangover_s}] (or null: the hangover)")
        if self.long_pause_s < self.hangover_s:
            raise SegmenterError(f"long_pause_s={self.long_pause_s} must be >= hangover_s={self.hangover_s}")

    def samples(self, seconds: float) -> int:
        return int(round(seconds * SAMPLE_RATE))


@dataclass(frozen=True)
class Utterance:
    """Samples ``[start_sample, end_sample)`` of the stream (stream time, 16 kHz) and why it ended."""

    start_sample: int
    end_sample: int
    audio: np.ndarray
    reason: str

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE


def silero_path() -> str:
    """The Silero VAD ONNX file inside the installed faster-whisper wheel."""
    try:
        from faster_whisper.utils import get_assets_path
    except ImportError:
        raise SegmenterError("voice activity detection needs faster-whisper's Silero VAD: "
                             "pip install 'audiostream[asr]'") from None
    path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
    if not os.path.isfile(path):
        raise SegmenterError(f"{path} is missing: the installed faster-whisper has no Silero VAD v6 "
                             f"(pip install 'audiostream[asr]' pins the version that has it)")
    return path


class SileroVad:
    """Streaming Silero VAD v6: ``vad(window)`` -> speech probability of one 512-sample window at 16 kHz."""

    _session = None  # one ONNX session per process, shared by every stream (the state lives in each object)

    def __init__(self):
        if SileroVad._session is None:
            import onnxruntime
            opts = onnxruntime.SessionOptions()
            opts.inter_op_num_threads = 1
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            SileroVad._session = onnxruntime.InferenceSession(silero_path(), sess_options=opts,
                                                              providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        x = np.concatenate([self._context, window]).astype(np.float32, copy=False)[None, :]
        prob, self._h, self._c = SileroVad._session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = np.array(window[-VAD_CONTEXT:], dtype=np.float32)
        return float(np.asarray(prob).reshape(-1)[0])


class Segmenter:
    """One stream's utterance cutter. ``push(y)`` and ``flush(reason)`` return finished utterances."""

    def __init__(self, config: SegmenterConfig | None = None, *, vad: Callable[[np.ndarray], float] | None = None,
                 start_sample: int = 0, score_from: int | None = None, captions: bool = False):
        self.config = config or SegmenterConfig()
        self.captions: list[Utterance] | None = [] if captions else None  # pause captions not yet taken
        self.vad = vad if vad is not None else SileroVad()
        c = self.config
        self._pad = c.samples(c.pad_s)
        self._hangover = c.samples(c.hangover_s)
        self._max = c.samples(c.max_utterance_s)
        self._min_utt = c.samples(c.min_utterance_s)
        self._long_pause = c.samples(c.long_pause_s)
        self._caption_pause = c.samples(c.hangover_s if c.caption_pause_s is None else c.caption_pause_s)
        self._min_speech_windows = math.ceil(c.samples(c.min_speech_s) / VAD_WINDOW)
        self._buf = np.zeros(0, dtype=np.float32)  # samples [self._buf_start, self.position)
        self._buf_start = start_sample
        self._scored = start_sample  # next window starts here
        self._last_end = start_sample  # utterances never overlap
        self._reset_every = (int(round(c.vad_reset_s * SAMPLE_RATE / VAD_WINDOW)) * VAD_WINDOW
                             if c.vad_reset_s is not None else None)
        self.restart_point: int | None = None  # the latest sample where this segmenter's state was a fresh one's
        if score_from is not None:  # a reader rebuilding from a restart point: what came before is pre-roll only
            if score_from < start_sample or score_from % VAD_WINDOW:
                raise SegmenterError(f"score_from={score_from} must be a VAD window boundary >= start_sample="
                                     f"{start_sample}")
            self._scored = score_from
            self._last_end = max(start_sample, score_from - self._pad)
            self.restart_point = score_from
        self._closed = False
        self._idle()
        self.probabilities: list[float] | None = None  # set to [] to record every window's probability

    @property
    def position(self) -> int:
        """Stream time of the next sample to be pushed."""
        return self._buf_start + self._buf.size

    @property
    def in_utterance(self) -> bool:
        return self._start is not None

    @property
    def open_start(self) -> int | None:
        """First sample of the open utterance (None when idle): what a restarted reader must re-read from."""
        return self._start

    def open_utterance(self) -> Utterance | None:
        """The open utterance so far (``reason="partial"``), for a partial transcript: from its first sample to the
        latest pushed one, or to ``pad_s`` past its last speech while a pause runs; None when idle or while it
        holds fewer speech windows than a finished utterance needs. Reading it changes nothing: the utterance
        that ``push``/``flush`` later return starts at the same sample."""
        if self._start is None or self._speech_windows < self._min_speech_windows:
            return None
        end = self.position
        if self._silence_from is not None:
            end = min(self._silence_from + self._pad, end)
        if end <= self._start:
            return None
        i0 = self._start - self._buf_start
        return Utterance(start_sample=self._start, end_sample=end, audio=self._buf[i0:end - self._buf_start].copy(),
                         reason="partial")

    @property
    def pausing(self) -> bool:
        """A run of quiet windows is going on inside the open utterance (it may close within the hangover)."""
        return self._start is not None and self._silence_from is not None

    def take_captions(self) -> list[Utterance]:
        """The pause captions queued since the last call (``captions=True``; oldest first), and forget them."""
        out, self.captions = (self.captions or []), ([] if self.captions is not None else None)
        return out

    def _idle(self) -> None:
        self._start = None  # first sample of the open utterance
        self._silence_from = None  # start of the current run of quiet windows
        self._pause_captioned = False  # the current pause already gave a caption
        self._last_quiet = None  # start of the latest quiet window of the open utterance
        self._speech_windows = 0

    def push(self, y: np.ndarray) -> list[Utterance]:
        """Append the stream's next samples (float32 mono, 16 kHz); return the utterances they finished."""
        if self._closed:
            raise SegmenterError("push() after flush('end'): the stream has ended; start a new Segmenter")
        if np.issubdtype(np.asarray(y).dtype, np.integer):
            raise SegmenterError(f"audio must be float samples in [-1, 1], got {np.asarray(y).dtype} "
                                 f"(wire frames: streamproc.audio.from_s16 converts them)")
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 1:
            raise SegmenterError(f"audio must be 1-D mono samples, got shape {y.shape}")
        self._buf = np.concatenate([self._buf, y]) if self._buf.size else y.copy()
        out: list[Utterance] = []
        while self.position - self._scored >= VAD_WINDOW:
            s = self._scored
            if self._reset_every and s % self._reset_every == 0 and self._start is None \
                    and self._last_end <= s - self._pad and s != self.restart_point:
                self._restart(s)
            i = s - self._buf_start
            prob = self.vad(self._buf[i:i + VAD_WINDOW])
            if self.probabilities is not None:
                self.probabilities.append(prob)
            self._scored = s + VAD_WINDOW
            utt = self._step(s, prob)
            if utt is not None:
                out.append(utt)
        self._trim()
        return [u for u in out if u is not None]

    def _restart(self, s: int) -> None:
        """A restart point: idle, the previous utterance at least ``pad_s`` back, and the VAD's recurrent state
        zeroed. From here on the segmenter depends only on audio from ``s - pad_s`` on, so a reader that starts
        there (``Segmenter(start_sample=s - pad, score_from=s)``) cuts exactly the same utterances: what the
        transcriber service re-reads after a crash (docs/transcription.md)."""
        reset = getattr(self.vad, "reset", None)
        if reset is not None:
            reset()
        self.restart_point = s

    def restart_grid(self) -> int | None:
        """Samples between possible restart points (``vad_reset_s`` on the VAD grid), or None."""
        return self._reset_every

    @property
    def pad(self) -> int:
        return self._pad

    def _step(self, s: int, prob: float) -> Utterance | None:
        c = self.config
        e = s + VAD_WINDOW
        if self._start is None:
            if prob >= c.threshold:
                self._start = max(self._last_end, s - self._pad, self._buf_start)
                self._speech_windows = 1
            return None
        if prob >= c.threshold:
            self._silence_from = None
            self._pause_captioned = False
            self._speech_windows += 1
        elif prob < c.neg_threshold:
            if self._silence_from is None:
                self._silence_from = s
            self._last_quiet = s
        if self._silence_from is not None:
            pause, end = e - self._silence_from, min(self._silence_from + self._pad, e)
            if pause >= self._long_pause or (pause >= self._hangover and end - self._start >= self._min_utt):
                return self._emit(end, "silence")
            if pause >= self._caption_pause and not self._pause_captioned:
                self._pause_captioned = True  # kept open to pack more speech: caption what was said so far
                if self.captions is not None and self._speech_windows >= self._min_speech_windows:
                    i0 = self._start - self._buf_start
                    self.captions.append(Utterance(self._start, end, self._buf[i0:end - self._buf_start].copy(),
                                                   "pause"))
        if e - self._start >= self._max:
            cut = e
            if self._last_quiet is not None and self._last_quiet - self._start >= self._max // 2:
                cut = self._last_quiet
            utt = self._emit(cut, "max_length", keep_open=True)
            return utt
        return None

    def _emit(self, end: int, reason: str, keep_open: bool = False) -> Utterance | None:
        start, speech = self._start, self._speech_windows
        i0, i1 = start - self._buf_start, end - self._buf_start
        audio = self._buf[i0:i1].copy()
        self._last_end = end
        self._idle()
        if keep_open:  # the speech goes on: the rest is the next utterance
            self._start = end
            self._speech_windows = 1
        if speech < self._min_speech_windows:
            return None
        return Utterance(start_sample=start, end_sample=end, audio=audio, reason=reason)

    def _trim(self) -> None:
        """Keep only what an utterance may still need: the open one, or the pre-roll pad and the partial window."""
        keep_from = self._start if self._start is not None else max(self._last_end, self._scored - self._pad)
        keep_from = min(keep_from, self._scored)  # after flush("idle") the partial window is still to be scored
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from

    def flush(self, reason: str = "end") -> list[Utterance]:
        """Close the open utterance now: ``"end"`` (the stream ended; no more pushes), ``"gap"`` (audio is missing
        for longer than a service fills with silence; no more pushes, a new Segmenter starts after the gap) or
        ``"idle"`` (no audio came for a while; the stream may go on). The unscored partial window at the end belongs
        to the utterance."""
        if reason not in ("end", "idle", "gap"):
            raise SegmenterError(f"flush reason {reason!r} must be 'end', 'gap' or 'idle'")
        out = []
        if self._start is not None:
            end = self.position
            if self._silence_from is not None:
                end = min(self._silence_from + self._pad, end)
            utt = self._emit(end, reason)
            if utt is not None:
                out.append(utt)
        if reason in ("end", "gap"):
            self._closed = True
        self._trim()
        return out


def segment(y: np.ndarray, config: SegmenterConfig | None = None, *, vad=None, chunk: int | None = None,
            start_sample: int = 0) -> list[Utterance]:
    """All utterances of a whole signal (``chunk``: feed it in pieces of this many samples, as a stream would)."""
    seg = Segmenter(config, vad=vad, start_sample=start_sample)
    y = np.asarray(y, dtype=np.float32)
    step = chunk or max(y.size, 1)
    out = []
    for k in range(0, y.size, step):
        out += seg.push(y[k:k + step])
    return out + seg.flush("end")
