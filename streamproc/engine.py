"""Rolling per-stream state and the batched window engine.

``Engine.accept(stream_id, frame)`` files a decoded frame into its stream's
state (checking session, sequence and sample offset); ``Engine.step()`` then
computes every STFT frame that became complete in any stream in ONE batch,
stores the per-frame features, and returns every window that became complete,
with its feature vector (also one batch). Each STFT frame is computed once:
overlapping windows reuse the stored per-frame rows.

Sequence handling (never silent):
- same session, ``sequence`` below the next expected one (or already held):
  duplicate, dropped;
- ``sequence`` ahead of the next expected one: held back (at most
  ``max_reorder`` frames, at most ``reorder_timeout_s``) so a small reorder is
  put right; when the bound is passed the lowest held frame is applied and the
  missing ones count as a gap;
- ``sample_offset`` ahead of what we hold: a gap. Up to ``max_gap_fill``
  samples are zero-filled and every window touching them carries
  ``gap=True``; a longer gap re-synchronises the stream onto the next window
  boundary after the gap (no window spans it);
- a new ``session_id``: the producer restarted; the stream starts afresh
  (its windows restart at the new session's sample 0).

Memory per stream is bounded: raw samples only until their STFT frames are
computed (at most one window + n_fft + one Kafka frame), per-frame rows only for
one window plus one hop. Buffers start small and grow up to that bound, so a
short-lived stream costs little.

Events (the engine's one output): with ``events=True`` every fact about a stream is appended,
in stream order, to one list that ``drain()`` hands over: ``Window`` (also returned by
``step()``), ``Gap`` (samples missing: zero-filled or resynchronised), and ``SequenceEvent``
(``duplicate``, ``late`` -- a frame that arrives after its place was given up as a gap --,
``reordered``, ``new_session``, ``producer_gap``). Whatever path finds a fact (``accept``, the
reorder timeout in ``step``, a new session) reports it the same way, so nothing is silent.

A stream that ends (end-of-stream flag) before it filled its first window is analysed as ONE
window zero-padded to full length, flagged ``padded`` (docs/predictions.md).

Recovery (docs/guarantees.md): ``accept(..., tag=kafka_offset)`` remembers which
record brought which samples. ``Window.tag`` is the tag of the record that
completed the window, and ``StreamState.needed_tag()`` the oldest record a
restarted reader must re-read to rebuild this stream's next window exactly
(its samples and its tempo context).
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .features import FeatureExtractor, LogMel
from .wire import AudioFrame
from .windowing import WindowSpec


@dataclass
class Window:
    """A complete window of one stream, ready for inference."""

    stream_id: str
    session_id: bytes
    index: int            # k: window k covers [k*hop, k*hop + window_length)
    start: int            # first sample (stream sample time of this session)
    end: int              # one past the last sample
    sample_rate: int
    vector: np.ndarray    # (spec.n_features,) float32
    metrics: dict
    gap: bool             # some samples in it were zero-filled after a gap
    arrival: float        # when the frame that completed it was accepted (accept()'s ``now``)
    capture_time_ns: int  # capture time of the frame that completed it
    tag: object = None    # accept()'s tag of the record that completed it (the Kafka offset in the analyzer)
    padded: bool = False  # a stream shorter than one window: zeros after its end fill the window
    patch: np.ndarray | None = None  # (1, n_mels, frames) log-mel input of a logmel bundle (Engine(logmel=...))
    samples: np.ndarray | None = None  # (window_length,) float32 audio of a waveform bundle (Engine(waveform=True))

    kind: ClassVar[str] = "window"

    @property
    def window_id(self) -> str:
        """Deterministic id: the same window always has the same id (dedupe key)."""
        return f"{self.stream_id}/{self.session_id.hex()}/{self.start}"


@dataclass
class Gap:
    """Samples ``[start, start + samples)`` of a session never arrived (an event)."""

    stream_id: str
    session_id: bytes
    sample_rate: int
    start: int
    samples: int
    missing_frames: int   # sequence numbers skipped
    resynced: bool        # longer than max_gap_fill: windows restart after it; else zero-filled, windows flagged
    tag: object = None    # tag of the record whose arrival (or release) revealed the gap

    kind: ClassVar[str] = "gap"


@dataclass
class SequenceEvent:
    """A sequence fact about one frame: ``duplicate`` (dropped), ``late`` (its place was already given
    up as a gap; dropped), ``reordered`` (arrived after frames that follow it; put back in order),
    ``new_session`` (the producer restarted) or ``producer_gap`` (the frame's GAP_BEFORE flag)."""

    kind: str
    stream_id: str
    sequence: int
    tag: object = None


SEQUENCE_KINDS = ("duplicate", "late", "reordered", "new_session", "producer_gap")


@dataclass
class AcceptResult:
    status: str              # "ok", "duplicate", "late", "new_session", "held" (ahead of sequence: held back)
    gap_samples: int = 0     # samples missing before this frame (0 = contiguous)
    resynced: bool = False   # gap too long to fill: windows restart after it
    missing_frames: int = 0  # sequence numbers skipped
    producer_gap: bool = False  # the frame's GAP_BEFORE flag: the producer lost audio right before it
    reordered: int = 0       # 1 if this frame arrived late, after frames that follow it (and was put back in order)
    gap_start: int = 0       # first missing sample (when gap_samples)


class StreamState:
    __slots__ = ("stream_id", "session_id", "sample_rate", "next_seq", "next_sample", "buf", "buf_len", "buf_start",
                 "next_frame", "feats", "feats_len", "feats_start", "next_window", "gaps", "last_seen",
                 "ended", "emitted", "buf_cap", "feats_cap", "onset", "onset_start", "padded_from",
                 "last_db", "held", "held_since", "mark_end", "mark_info", "skipped")

    def __init__(self, stream_id: str, frame: AudioFrame, now: float, spec: WindowSpec, n_columns: int):
        self.stream_id = stream_id
        self.session_id = frame.session_id
        self.sample_rate = frame.sample_rate
        self.next_seq = frame.sequence
        self.ended = False
        self.emitted = False  # a window of this session came out (a stream ending before that is padded)
        self.padded_from: int | None = None  # zeros from this sample on fill a short stream's only window
        self.last_seen = now
        self.gaps: list[tuple[int, int]] = []  # zero-filled sample ranges still in view
        self.held: dict[int, tuple[AudioFrame, object, float]] = {}  # sequence -> (frame, tag, arrival): ahead of order
        self.held_since = 0.0
        self.skipped: list[tuple[int, int]] = []  # recent sequence ranges given up as gaps (late vs duplicate)
        # per applied record: the sample just past it, its tag (recovery), capture time and arrival (the
        # window it completes carries them)
        self.mark_end: list[int] = []
        self.mark_info: list[tuple] = []  # (tag, capture_time_ns, arrival)
        # steady-state sizes: raw samples for a window (the first one is computed in one go) + an FFT + a Kafka
        # frame of slack; per-frame rows for a window + a hop. Both start small and grow on demand.
        self.buf_cap = spec.window_length + spec.n_fft + 4096
        self.feats_cap = spec.frames_per_window + spec.frames_per_hop + 8
        self.buf = np.empty(min(self.buf_cap, frame.n_frames + spec.n_fft), dtype=np.float32)
        self.feats = np.empty((min(self.feats_cap, 16), n_columns), dtype=np.float32)
        self.restart_at(frame.sample_offset, spec)

    def restart_at(self, sample: int, spec: WindowSpec) -> None:
        """Drop buffered audio; windows start at the first window boundary >= ``sample``."""
        self.next_window = -(-sample // spec.hop)
        self.buf_start = self.next_window * spec.hop
        self.buf_len = 0
        self.next_frame = self.buf_start // spec.hop_length
        self.feats_start = self.next_frame
        self.feats_len = 0
        self.next_sample = sample
        self.onset = np.zeros(0, dtype=np.float32)  # onset strength per STFT frame, for tempo
        self.onset_start = self.next_frame
        self.last_db = None

    def append(self, y: np.ndarray) -> None:
        n = y.shape[0]
        if self.buf_len + n > self.buf.shape[0]:
            size = max(min(2 * self.buf.shape[0], self.buf_cap), self.buf_len + n)
            grown = np.empty(size, dtype=np.float32)
            grown[: self.buf_len] = self.buf[: self.buf_len]
            self.buf = grown
        self.buf[self.buf_len: self.buf_len + n] = y
        self.buf_len += n

    def add_rows(self, rows: np.ndarray) -> None:
        n = rows.shape[0]
        if self.feats_len + n > self.feats.shape[0]:
            size = max(min(2 * self.feats.shape[0], self.feats_cap), self.feats_len + n)
            grown = np.empty((size, self.feats.shape[1]), dtype=np.float32)
            grown[: self.feats_len] = self.feats[: self.feats_len]
            self.feats = grown
        self.feats[self.feats_len: self.feats_len + n] = rows
        self.feats_len += n

    def shrink(self) -> None:
        """Give back what a burst (a backlog read in one poll) made the buffers grow to."""
        if self.buf.shape[0] > self.buf_cap and self.buf_len <= self.buf_cap:
            self.buf = np.concatenate((self.buf[: self.buf_len], np.empty(self.buf_cap - self.buf_len, np.float32)))
        if self.feats.shape[0] > self.feats_cap and self.feats_len <= self.feats_cap:
            small = np.empty((self.feats_cap, self.feats.shape[1]), dtype=np.float32)
            small[: self.feats_len] = self.feats[: self.feats_len]
            self.feats = small

    def nbytes(self) -> int:
        # marks: ~ an int and a tuple a record
        return self.buf.nbytes + self.feats.nbytes + self.onset.nbytes + 32 * len(self.mark_end)

    def mark(self, tag, capture_time_ns: int, arrival: float) -> None:
        """The record ``tag`` (captured at ``capture_time_ns``, arrived at ``arrival``) brought samples up
        to ``next_sample``."""
        self.mark_end.append(self.next_sample)
        self.mark_info.append((tag, capture_time_ns, arrival))

    def trim_marks(self, need_sample: int) -> None:
        """Forget records whose samples all lie before ``need_sample``."""
        i = bisect.bisect_right(self.mark_end, need_sample)
        if i > 64 or (i and i * 2 >= len(self.mark_end)):  # amortised: slice only now and then
            del self.mark_end[:i]
            del self.mark_info[:i]

    def mark_at(self, sample: int) -> int:
        """Index of the record that brought sample ``sample - 1``: for a window, the end of its last STFT
        frame (``center=False`` framing may leave a window's last few samples unused)."""
        return min(bisect.bisect_left(self.mark_end, sample), len(self.mark_end) - 1)

    def tag_at(self, sample: int):
        i = bisect.bisect_left(self.mark_end, sample)
        return self.mark_info[i][0] if i < len(self.mark_info) else None

    def needed_tag(self, need_sample: int):
        """The oldest tag a re-reader needs: the record holding ``need_sample`` or any held-back record."""
        i = bisect.bisect_right(self.mark_end, need_sample)
        tag = self.mark_info[i][0] if i < len(self.mark_info) else None
        if not self.held:  # the common case (the analyzer asks for every stream twice a commit interval)
            return tag
        tags = [t for t in [t for _f, t, _a in self.held.values()] + [tag] if t is not None]
        return min(tags) if tags else None


class Engine:
    """Windows and features for many streams at once (see module doc)."""

    def __init__(self, spec: WindowSpec, *, max_gap_fill: int | None = None, idle_timeout_s: float = 60.0,
                 extractor: FeatureExtractor | None = None, tempo_context_s: float = 8.0,
                 max_reorder: int = 4, reorder_timeout_s: float = 1.0, events: bool = False,
                 logmel: LogMel | None = None, waveform: bool = False):
        """``logmel``: also give each window its log-mel patch (``Window.patch``), for a bundle whose input
        is ``logmel`` (ModelBundle.logmel), cut from the per-frame mel rows the features use.
        ``waveform``: also give each window its audio (``Window.samples``), for a bundle whose input is the
        waveform (BirdNET); the stream then keeps a window of raw samples instead of an FFT's worth."""
        if waveform and (spec.window_length - spec.n_fft) % spec.hop_length:
            raise ValueError(f"waveform windows need STFT frames that end exactly at the window's end: "
                             f"(window_length - n_fft) = {spec.window_length - spec.n_fft} is not a multiple of "
                             f"hop_length {spec.hop_length}")
        self.waveform = waveform
        self.spec = spec
        self.logmel = logmel
        self.fps = spec.sr / spec.hop_length
        self.tempo_frames = int(round(tempo_context_s * self.fps))  # 0 = no tempo
        self.fx = extractor or FeatureExtractor(spec)
        self.max_gap_fill = spec.window_length if max_gap_fill is None else max_gap_fill
        self.idle_timeout_s = idle_timeout_s
        self.max_reorder = max_reorder
        self.reorder_timeout_s = reorder_timeout_s
        self.streams: dict[str, StreamState] = {}
        self._dirty: set[str] = set()
        self._holding: set[str] = set()
        self._ready: list[Window] = []  # windows completed since the last step() (some before a reset of their stream)
        self._keep_events = events
        self._events: list = []  # Window | Gap | SequenceEvent, in the order they happened (drain())
        self._now = 0.0

    def drain(self) -> list:
        """Every event since the last drain, in order (``Engine(events=True)``; else always empty)."""
        out, self._events = self._events, []
        return out

    def _event(self, ev) -> None:
        if self._keep_events:
            self._events.append(ev)

    @property
    def holding(self) -> bool:
        """Some stream holds frames back (a reorder): ``step()`` releases them once the timeout passes,
        so call it even when no new frame arrives."""
        return bool(self._holding)

    def drop(self, stream_id: str) -> bool:
        """Forget a stream's state (eviction, a revoked partition); its held frames are discarded."""
        self._dirty.discard(stream_id)
        self._holding.discard(stream_id)
        return self.streams.pop(stream_id, None) is not None

    # -- input ------------------------------------------------------------------
    def accept(self, stream_id: str, frame: AudioFrame, now: float | None = None, tag=None) -> AcceptResult:
        """File one frame (already decoded and validated, at ``spec.sr``).

        ``tag`` (the Kafka offset, in the analyzer) is remembered for recovery; see the module doc.
        """
        now = time.monotonic() if now is None else now
        self._now = now
        st = self.streams.get(stream_id)
        result = AcceptResult("ok")
        if st is None or st.session_id != frame.session_id:
            if st is not None:
                result.status = "new_session"
                if st.held:  # the old session's held-back frames: apply them, keep what they complete
                    self._release(st, result, force=True)
                if stream_id in self._dirty:
                    self._compute(now)
                self._holding.discard(stream_id)
                self._event(SequenceEvent("new_session", stream_id, frame.sequence, tag))
            st = StreamState(stream_id, frame, now, self.spec, self.fx.n_columns)  # a session may start anywhere
            self.streams[stream_id] = st
        elif frame.sequence < st.next_seq or frame.sequence in st.held:
            st.last_seen = now
            late = frame.sequence not in st.held and any(a <= frame.sequence < b for a, b in st.skipped)
            self._event(SequenceEvent("late" if late else "duplicate", stream_id, frame.sequence, tag))
            return AcceptResult("late" if late else "duplicate")
        elif frame.sequence > st.next_seq and self.max_reorder > 0:
            st.last_seen = now
            if not st.held:
                st.held_since = now
            st.held[frame.sequence] = (frame, tag, now)
            self._holding.add(stream_id)
            result.status = "held"
            if len(st.held) > self.max_reorder:
                self._release(st, result, force=True)
            return result
        st.last_seen = now
        if st.held:
            result.reordered = 1  # it arrived after frames that follow it
            self._event(SequenceEvent("reordered", stream_id, frame.sequence, tag))
        self._apply(st, frame, tag, now, result)
        if st.held:
            self._release(st, result, force=False)
        return result

    def _release(self, st: StreamState, result: AcceptResult, force: bool) -> None:
        """Apply held frames that are now in order; with ``force``, skip to the lowest held one (a gap)."""
        while st.held:
            if st.next_seq in st.held:
                frame, tag, arrival = st.held.pop(st.next_seq)
            elif force:
                frame, tag, arrival = st.held.pop(min(st.held))
            else:
                break
            self._apply(st, frame, tag, arrival, result)
            force = force and len(st.held) > self.max_reorder
        if st.held:
            self._holding.add(st.stream_id)
        else:
            self._holding.discard(st.stream_id)
        if result.status == "held" and not st.held:
            result.status = "ok"

    def _apply(self, st: StreamState, frame: AudioFrame, tag, arrival: float, result: AcceptResult) -> None:
        """File one in-order (or given-up-on) frame into the stream's buffer."""
        spec = self.spec
        missing = 0
        if frame.sequence > st.next_seq:
            missing = frame.sequence - st.next_seq
            result.missing_frames += missing
            st.skipped.append((st.next_seq, frame.sequence))
            if len(st.skipped) > 16:
                del st.skipped[0]
        st.next_seq = frame.sequence + 1
        y = frame.mono_float32()
        offset = frame.sample_offset
        if frame.gap_before:
            result.producer_gap = True
            self._event(SequenceEvent("producer_gap", st.stream_id, frame.sequence, tag))
            if offset <= st.next_sample:  # no offset jump (amount unknown): flag the windows around this point
                st.gaps.append((offset, offset + 1))
        if offset > st.next_sample:
            gap = offset - st.next_sample
            gap_start = st.next_sample
            if not result.gap_samples:
                result.gap_start = gap_start
            result.gap_samples += gap
            if gap <= self.max_gap_fill:
                st.gaps.append((st.next_sample, offset))
                self._append(st, np.zeros(gap, dtype=np.float32), st.next_sample)
            else:
                result.resynced = True
                if st.stream_id in self._dirty:  # windows the audio before the gap completes come out first
                    self._compute(self._now)
                st.restart_at(offset, spec)
                boundary = st.next_window * spec.hop  # the first window after the gap is flagged too
                st.gaps.append((boundary, boundary + 1))
            self._event(Gap(st.stream_id, st.session_id, st.sample_rate, gap_start, gap, missing,
                            gap > self.max_gap_fill, tag))
        elif offset < st.next_sample:  # overlaps samples we already have: keep only the new part
            y = y[st.next_sample - offset:]
            offset = st.next_sample
        self._append(st, y, offset)
        st.mark(tag, frame.capture_time_ns, arrival)
        if frame.end_of_stream:
            st.ended = True
            first_end = st.next_window * spec.hop + spec.window_length
            if not st.emitted and st.buf_start < st.next_sample < first_end:
                # ended before it filled its first window: analysed as that window, zero-padded, flagged
                st.padded_from = st.next_sample
                self._append(st, np.zeros(first_end - st.next_sample, dtype=np.float32), st.next_sample)
                st.mark_end[-1] = st.next_sample  # the end-of-stream record completes it
        self._dirty.add(st.stream_id)

    def _append(self, st: StreamState, y: np.ndarray, offset: int) -> None:
        if offset < st.buf_start:  # samples before the first window boundary after a (re)start
            y = y[st.buf_start - offset:]
            offset = st.buf_start
        if y.size:
            st.append(y)
        st.next_sample = max(st.next_sample, offset + y.size)

    def need_sample(self, st: StreamState) -> int:
        """First sample a re-reader needs to rebuild ``st``'s next window exactly: the window itself and
        its tempo context, plus one STFT frame (the onset of the context's first frame looks back one)."""
        fph, F = self.spec.frames_per_hop, self.spec.frames_per_window
        first_frame = st.next_window * fph + F - self.tempo_frames - 1 if self.tempo_frames else st.next_window * fph
        k0 = max(0, first_frame // fph)
        return min(k0, st.next_window) * self.spec.hop

    def needed_tag(self, st: StreamState):
        return st.needed_tag(self.need_sample(st))

    # -- processing -------------------------------------------------------------
    def step(self, now: float | None = None) -> list[Window]:
        """Return every window completed by the frames accepted since the last step.

        STFT frames are computed lazily, when a stream has enough samples to
        complete its next window, for all such streams in one batch (the total
        work is the same; the per-stream overhead is paid once per hop instead
        of once per Kafka frame).
        """
        now = time.monotonic() if now is None else now
        self._now = now
        if self._holding:
            for sid in list(self._holding):
                st = self.streams.get(sid)
                if st is None or not st.held:
                    self._holding.discard(sid)
                elif now - st.held_since >= self.reorder_timeout_s:
                    self._release(st, AcceptResult("held"), force=True)  # reports its gap like accept() does
        self._compute(now)
        out, self._ready = self._ready, []
        return out

    def _compute(self, now: float) -> None:
        windows = self._step(now)
        if windows:
            self._ready += windows
            if self._keep_events:
                self._events += windows

    def _step(self, now: float) -> list[Window]:
        spec, fx = self.spec, self.fx
        n_fft, hl = spec.n_fft, spec.hop_length
        F, fph = spec.frames_per_window, spec.frames_per_hop
        pending: list[tuple[StreamState, int]] = []
        chunks = []
        for sid in self._dirty:
            st = self.streams.get(sid)
            if st is None:
                continue
            start_rel = st.next_frame * hl - st.buf_start
            avail = st.buf_len - start_rel
            n_new = 0 if avail < n_fft else 1 + (avail - n_fft) // hl
            if st.next_frame + n_new < st.next_window * fph + F:
                continue  # the next window is not complete yet: compute its frames later, in one go
            # a strided view of the stream's buffer: one row per STFT frame, no copy
            chunks.append(np.ndarray((n_new, n_fft), np.float32, buffer=st.buf, offset=start_rel * 4,
                                     strides=(hl * 4, 4)))
            pending.append((st, n_new))
        self._dirty.clear()
        if not pending:
            return []
        rows = fx.frame_features(np.concatenate(chunks) if len(chunks) > 1 else chunks[0])

        ready: list[tuple[StreamState, int, int]] = []  # (state, k, first row in st.feats)
        pos = 0
        mel = fx.columns["mel_db"]
        for st, n_new in pending:
            new_rows = rows[pos:pos + n_new]
            st.add_rows(new_rows)
            pos += n_new
            if self.tempo_frames:  # onset strength: mean rise of the mel dB spectrum since the previous frame
                db = new_rows[:, mel]
                prev = np.concatenate(((db[:1] if st.last_db is None else st.last_db[None, :]), db[:-1]))
                st.onset = np.concatenate((st.onset, np.maximum(db - prev, 0.0).mean(axis=1)))
                st.last_db = db[-1].copy()
            st.next_frame += n_new
            # keep only raw samples that a future STFT frame (or a waveform window) still needs
            drop = st.next_frame * hl - st.buf_start
            if self.waveform:
                drop = min(drop, st.next_window * spec.hop - st.buf_start)
            keep = st.buf_len - drop
            st.buf[:keep] = st.buf[drop:st.buf_len]
            st.buf_len = keep
            st.buf_start += drop
            while st.next_window * fph + F <= st.feats_start + st.feats_len:
                ready.append((st, st.next_window, st.next_window * fph - st.feats_start))
                st.next_window += 1

        stacked = np.stack([st.feats[r:r + F] for st, _, r in ready])
        vectors = fx.window_vectors(stacked)
        metrics = fx.window_metrics(stacked)
        patches = fx.logmel_patches(stacked, self.logmel) if self.logmel is not None else None
        self._add_tempo(ready, metrics)
        out = []
        for i, (st, k, _) in enumerate(ready):
            start = k * spec.hop
            end = start + spec.window_length
            gap = any(a < end and b > start for a, b in st.gaps)
            tag, capture_ns, arrival = st.mark_info[st.mark_at((k * fph + F - 1) * hl + n_fft)]  # completing record
            samples = st.buf[start - st.buf_start:end - st.buf_start].copy() if self.waveform else None
            out.append(Window(st.stream_id, st.session_id, k, start, end, st.sample_rate, vectors[i],
                              metrics[i], gap, arrival, capture_ns, tag,
                              st.padded_from is not None and end > st.padded_from,
                              None if patches is None else patches[i], samples))
            st.emitted = True
        # drop per-frame rows and gap records no future window needs
        for st, _ in pending:
            first_needed = st.next_window * fph
            # windows that do not overlap (hop > the frames a window spans) skip frames not computed yet:
            # those are computed later and dropped then, so feats_start + feats_len stays next_frame
            drop = min(first_needed - st.feats_start, st.feats_len)
            if drop > 0:
                keep = st.feats_len - drop
                st.feats[:keep] = st.feats[drop:st.feats_len]
                st.feats_len = keep
                st.feats_start += drop
            if st.gaps:
                st.gaps = [(a, b) for a, b in st.gaps if b > st.next_window * spec.hop]
            keep_from = st.next_window * fph + F - self.tempo_frames  # onset context of the next window
            if keep_from > st.onset_start:
                st.onset = st.onset[keep_from - st.onset_start:].copy()
                st.onset_start = keep_from
            if self.waveform:  # the emitted windows' audio is copied out: keep from the next window on
                drop = min(st.next_frame * hl, st.next_window * spec.hop) - st.buf_start
                if drop > 0:
                    keep = st.buf_len - drop
                    st.buf[:keep] = st.buf[drop:st.buf_len]
                    st.buf_len = keep
                    st.buf_start += drop
            if st.mark_end:
                st.trim_marks(self.need_sample(st))
            st.shrink()
        return out

    def _add_tempo(self, ready, metrics) -> None:
        """tempo_bpm / tempo_confidence over the ``tempo_context_s`` before each window's end (None until
        that much audio has been seen), and the window's mean onset strength."""
        F, fph, ctx = self.spec.frames_per_window, self.spec.frames_per_hop, self.tempo_frames
        rows, envs = [], []
        for i, (st, k, _) in enumerate(ready):
            end = k * fph + F - st.onset_start  # index just past the window's last frame
            m = metrics[i]
            m["onset_strength"] = round(float(st.onset[max(0, end - F):end].mean()), 4) if ctx else None
            m["tempo_bpm"] = m["tempo_confidence"] = None
            if ctx and end - ctx >= 0 and end <= st.onset.size:
                rows.append(i)
                envs.append(st.onset[end - ctx:end])
        if envs:
            from .features import tempo
            bpm, conf = tempo(np.stack(envs), self.fps)
            for i, b, c in zip(rows, bpm, conf):
                if np.isfinite(b):  # NaN: no pulse in the context, so no tempo (None), not a made-up number
                    metrics[i]["tempo_bpm"] = round(float(b), 1)
                    metrics[i]["tempo_confidence"] = round(float(c), 3)

    # -- lifecycle --------------------------------------------------------------
    def finished(self) -> list[str]:
        """Remove and return streams whose end-of-stream frame was processed."""
        done = [sid for sid, st in self.streams.items() if st.ended and sid not in self._dirty and not st.held]
        for sid in done:
            self.drop(sid)
        return done

    def evict_idle(self, now: float | None = None) -> list[str]:
        """Remove streams silent for longer than ``idle_timeout_s``."""
        now = time.monotonic() if now is None else now
        idle = [sid for sid, st in self.streams.items() if now - st.last_seen > self.idle_timeout_s]
        for sid in idle:
            self.drop(sid)
        return idle

    def state_bytes(self) -> int:
        return sum(st.nbytes() for st in self.streams.values())
