"""``audiostream transcriber``: the speech-to-text service (audio.frames -> audio.transcripts).

A consumer-group member of its own (default group ``audiostream-transcriber``) on
``audio.frames``: scaled and restarted independently of the analyzer, so speech
recognition load never delays labels. Per stream it keeps one ``Segmenter``
(Silero VAD on stream time, streamproc/segmentation.py), pushes each frame's
samples, transcribes every utterance that comes out with Whisper
(streamproc/transcription.py) and publishes one transcript record per utterance
to ``audio.transcripts`` (key = stream id; docs/transcription.md). Utterances end
on silence, at the maximum length, at the end of the stream, after a long gap and
when a stream has sent nothing for ``--idle-flush`` seconds. While an utterance is
open, a partial transcript (``"final": false``, its ``utterance_id`` = the final's
``id``) is published per ``--partial-every`` seconds of new audio, best effort:
never tracked by the checkpoint, skipped while the service is behind; and at
once at each pause that keeps a short utterance open (a pause caption: the
text so far, while the final waits to pack more speech; a final of the same
audio reuses its result).

Delivery is the analyzer's (docs/guarantees.md), through the same checkpoint
(consumers/checkpoint.py, at-least-once): offsets are committed only after the
transcripts of the records below them are acknowledged, and the committed offset
of a partition stays behind the oldest open utterance (less a warm-up for the
VAD), so after a crash the next owner re-reads, rebuilds every stream's segmenter
and publishes only utterances completed at or after the previous owner's done
marker. Transcripts carry a deterministic id (``STREAM/SESSION/START_SAMPLE``):
a consumer de-duplicates by it. Bad frames go to ``audio.deadletter`` with a
reason, as the analyzer sends them; duplicates, gaps and new sessions are handled
per stream and counted.

Examples::

  audiostream transcriber --bootstrap-servers localhost:9092
  audiostream transcriber -b HOST:PORT --metrics-port 9402 --asr-model ~/models/my-ct2-whisper
  audiostream watch -b HOST:PORT --topic audio.transcripts     # live captions
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamproc import records, wire
from streamproc.config import ANALYZER_SETTINGS
from streamproc.errors import AudiostreamError, ConfigError, FrameError
from streamproc.kafka import check_reachable, client_logging, ensure_topics, produce, producer_config
from streamproc.segmentation import SAMPLE_RATE, VAD_WINDOW, Segmenter, SegmenterConfig, Utterance
from streamproc.transcribe import add_segmentation_arguments, segmentation_overrides
from streamproc.settings import (TOPIC_DEADLETTER, TOPIC_FRAMES, TOPIC_TRANSCRIPTS, add_kafka_arguments,
                                 masked)

from .checkpoint import Checkpoint, fetch_committed, for_mode
from .service import KafkaService
from .metrics import TranscriberMetrics

log = logging.getLogger("audiostream.transcriber")

_D = {s.name: s.default for s in ANALYZER_SETTINGS}  # the frame limits and Kafka defaults the analyzer uses


class OutputDeliveryError(AudiostreamError):
    """Kafka did not acknowledge transcripts: input offsets were not committed."""


@dataclass
class TranscriberConfig:
    kafka: dict
    asr_model: str = "transcription"
    segmentation: dict = field(default_factory=dict)  # overrides of the bundle's segmentation (--long-pause ...)
    group_id: str = "audiostream-transcriber"
    frames_topic: str = TOPIC_FRAMES
    transcripts_topic: str = TOPIC_TRANSCRIPTS
    deadletter_topic: str = TOPIC_DEADLETTER
    metrics_port: int | None = 9402  # None = no HTTP endpoint; 0 = any free port
    metrics_addr: str = "127.0.0.1"
    max_frame_bytes: int = _D["max_frame_bytes"]
    max_frame_seconds: float = _D["max_frame_seconds"]
    idle_flush_s: float = 2.0      # a stream silent (no frames) this long: its open utterance is transcribed
    idle_timeout_s: float = 60.0   # ... and this long: its state is dropped
    max_gap_fill_s: float = 1.0    # missing audio up to this long is filled with silence; longer ends the utterance
    warmup_s: float = 1.0          # audio re-read before an open utterance after a restart (the VAD's state)
    words: bool = False
    partial_every_s: float = 2.0   # an open utterance gets a partial transcript per this much new audio (0 = never)
    partial_max_lag_s: float = 0.5  # ... unless this much audio per stream waits unread in Kafka (finals first)
    partial_max_busy: float = 0.5   # ... or the recogniser was busy more than this share of the last 10 s
    pause_captions: bool = True    # a partial at the first pause of an utterance kept open to pack more speech
    cpu_threads: int = 1
    create_topics: bool = True
    partitions: int = _D["partitions"]
    auto_offset_reset: str = _D["auto_offset_reset"]
    unavailable_timeout_s: float = _D["unavailable_timeout_s"]
    instance_id: str | None = None  # static group membership: a restart with the same id takes its partitions back
    batch_size: int = 500
    poll_timeout: float = 0.02
    commit_interval_s: float = 1.0
    consumer_overrides: dict = field(default_factory=dict)
    record_latencies: int = 0  # keep the last N (utterance end -> acknowledged) latencies, for bench
    on_published: Callable | None = None  # called with each acknowledged transcript record (bench)
    on_partial: Callable | None = None  # called with each acknowledged partial record (bench)


# -- per-stream state: no Kafka, no wall clock but the caller's ---------------------------------------------------

@dataclass
class Finished:
    """An utterance of one stream, and the record (``tag``: Kafka offset) whose arrival completed it."""

    stream_id: str
    session_id: bytes
    utterance: Utterance
    tag: object
    arrival: float  # when that record was accepted (monotonic)
    end_capture_ns: int | None = None  # the utterance's last sample on the producer's capture clock
    tp: tuple | None = None  # (topic, partition) the stream's frames come from (set by the service)
    close_sample: int | None = None  # how far the stream had come when the utterance closed (stream time)


class SpeechStream:
    """One stream session: its sequence position and its Segmenter, and which record brought which samples."""

    __slots__ = ("stream_id", "session_id", "next_seq", "next_sample", "seg", "marks", "tags",
                 "last_seen", "last_tag", "last_arrival", "origin", "idle_flushed", "clock", "partial_start",
                 "partial_mark")

    def __init__(self, stream_id: str, session_id: bytes, first_sample: int, config: SegmenterConfig, vad, now: float,
                 session_start: bool = True, captions: bool = False):
        self.stream_id = stream_id
        self.session_id = session_id
        self.origin = -(-first_sample // VAD_WINDOW) * VAD_WINDOW  # VAD windows lie on one grid for every reader
        seg = Segmenter(config, vad=vad() if vad else None, start_sample=self.origin, captions=captions)
        grid = seg.restart_grid()
        if not session_start and grid:
            # joining a session in its middle (a re-read after a crash, or after a long gap): cutting starts at
            # the first restart point whose pre-roll we hold, as a reader that saw the whole session would
            score_from = -(-(first_sample + seg.pad) // grid) * grid
            self.origin = score_from - seg.pad
            seg = Segmenter(config, vad=seg.vad, start_sample=self.origin, score_from=score_from, captions=captions)
        self.seg = seg
        self.next_seq: int | None = None
        self.next_sample = self.origin
        self.marks: list[int] = []   # sample just past each applied record ...
        self.tags: list = []         # ... and that record's tag
        self.last_seen = now
        self.last_tag = None
        self.last_arrival = now
        self.idle_flushed = False
        self.clock: tuple[int, int] | None = None  # (sample_offset, capture_time_ns) of the latest frame
        self.partial_start: int | None = None  # the open utterance the partial mark belongs to ...
        self.partial_mark = 0  # ... and the sample up to which its last partial was made (or skipped)

    def partial_due(self, every: int) -> int | None:
        """Samples since the open utterance's last partial (or its start) if at least ``every``, else None. Not
        while a pause runs inside it: the utterance may be about to close, and its final comes first."""
        seg = self.seg
        if not seg.in_utterance or seg.pausing:
            return None
        if self.partial_start != seg.open_start:
            self.partial_start, self.partial_mark = seg.open_start, seg.open_start
        new = seg.position - self.partial_mark
        return new if new >= every else None

    def capture_ns(self, sample: int) -> int | None:
        """When ``sample`` was captured, on the producer's clock (from the latest frame's capture time)."""
        if self.clock is None or not self.clock[1]:
            return None
        offset, t_ns = self.clock
        return t_ns + (sample - offset) * 1_000_000_000 // SAMPLE_RATE

    def need_tag(self, warmup: int, max_chain: int):
        """The oldest record a re-reader needs to cut this stream's next utterances exactly as we do: the pre-roll
        of the segmenter's latest restart point (or the session's start), if within ``max_chain`` samples; past
        that (minutes without a pause), the open utterance less ``warmup`` samples for the VAD's recurrent state,
        which is close but not exact."""
        seg = self.seg
        if seg.restart_point is None and seg.position - self.origin <= max_chain:
            need = self.origin  # no restart point yet: from the session's (or the gap's) start
        elif seg.restart_point is not None and seg.position - seg.restart_point <= max_chain:
            need = seg.restart_point - seg.pad  # exact: the segmenter was fresh there (Segmenter._restart)
        else:  # talk (or noise) without a pause for minutes: re-read the open utterance with a VAD warm-up
            s = seg.open_start if seg.in_utterance else seg.position
            need = max(self.origin, s - warmup)
        i = bisect.bisect_right(self.marks, need)
        if i > 64 or (i and i * 2 >= len(self.marks)):  # forget records nobody needs (amortised)
            del self.marks[:i]
            del self.tags[:i]
            i = 0
        return self.tags[i] if i < len(self.tags) else None


class SpeechStreams:
    """Every stream's segmenter, fed decoded frames in Kafka order; returns finished utterances and counts every
    sequence fact (``events``: duplicate, gap, resync, new_session, producer_gap). Sequence rules are the
    engine's (streamproc/engine.py) without the reorder hold-back: a frame ahead of its sequence is applied
    at once and the skipped frames count as a gap."""

    def __init__(self, config: SegmenterConfig, *, max_gap_fill_s: float = 1.0, vad=None, captions: bool = False):
        self.config = config
        self.max_gap_fill = int(round(max_gap_fill_s * SAMPLE_RATE))
        self.vad = vad  # a factory of VAD callables (tests); None = Silero
        self.captions = captions
        self.pending_captions: list[Finished] = []  # pause captions of open utterances, oldest first (take_captions)
        self.streams: dict[str, SpeechStream] = {}
        self.events: collections.Counter = collections.Counter()
        self.gap_seconds = 0.0

    def accept(self, stream_id: str, frame: wire.AudioFrame, now: float, tag=None) -> tuple[str, list[Finished]]:
        """File one frame (16 kHz, decoded); returns (status, utterances it finished)."""
        out: list[Finished] = []
        st = self.streams.get(stream_id)
        if st is not None and st.session_id != frame.session_id:
            self.events["new_session"] += 1
            out += self._finish(st, st.seg.flush("end"), tag, now)  # the producer restarted: the old session ended
            st = None
        if st is None:  # a session's first record, or a re-read after a crash (from a restart point's pre-roll)
            st = SpeechStream(stream_id, frame.session_id, frame.sample_offset, self.config, self.vad, now,
                              session_start=frame.sequence == 0 or frame.sample_offset == 0, captions=self.captions)
            self.streams[stream_id] = st
        elif frame.sequence < st.next_seq:
            st.last_seen = now
            self.events["duplicate"] += 1
            return "duplicate", out
        st.last_seen, st.last_tag, st.last_arrival, st.idle_flushed = now, tag, now, False
        if st.next_seq is not None and frame.sequence > st.next_seq:
            self.events["gap"] += 1  # frames skipped (their samples, if any, show as a sample gap below)
        st.next_seq = frame.sequence + 1
        if frame.gap_before:
            self.events["producer_gap"] += 1
        y = frame.mono_float32()
        offset = frame.sample_offset
        st.clock = (offset, frame.capture_time_ns)
        if offset > st.next_sample:
            missing = offset - st.next_sample
            self.gap_seconds += missing / SAMPLE_RATE
            if missing <= self.max_gap_fill:
                out += self._finish(st, st.seg.push(np.zeros(missing, np.float32)), tag, now)
                st.next_sample = offset
            else:  # too long to fill: the open utterance ends before the gap; cutting restarts after it
                self.events["resync"] += 1
                out += self._finish(st, st.seg.flush("gap"), tag, now)
                fresh = SpeechStream(stream_id, st.session_id, offset, self.config, self.vad, now,
                                     session_start=False, captions=self.captions)
                fresh.next_seq, fresh.last_tag, fresh.marks, fresh.tags = st.next_seq, tag, st.marks, st.tags
                fresh.clock = st.clock
                st = self.streams[stream_id] = fresh
        if offset < st.next_sample:  # overlaps what we have (or lies before the VAD grid): keep the new part
            y = y[min(y.size, st.next_sample - offset):]
        if y.size:
            out += self._finish(st, st.seg.push(y), tag, now)
            st.next_sample += y.size
            if self.captions:
                self.pending_captions += self._finish(st, st.seg.take_captions(), tag, now)
        st.marks.append(st.next_sample)
        st.tags.append(tag)
        if frame.end_of_stream:
            out += self._finish(st, st.seg.flush("end"), tag, now)
            del self.streams[stream_id]
        return "ok", out

    def _finish(self, st: SpeechStream, utts: list[Utterance], tag, now: float) -> list[Finished]:
        return [Finished(st.stream_id, st.session_id, u, tag, now, st.capture_ns(u.end_sample),
                         close_sample=st.seg.position) for u in utts]

    def take_captions(self) -> list[Finished]:
        """The pause captions (``Segmenter(captions=True)``) whose utterance is still open, oldest first; those whose
        utterance has closed since (its final covers them) or whose stream ended are dropped."""
        out = []
        for f in self.pending_captions:
            st = self.streams.get(f.stream_id)
            if st is not None and st.session_id == f.session_id and st.seg.open_start == f.utterance.start_sample:
                out.append(f)
        self.pending_captions = []
        return out

    def flush_idle(self, now: float, idle_flush_s: float, idle_timeout_s: float,
                   caught_up: Callable[[str], bool] = lambda sid: True) -> tuple[list[Finished], list[str]]:
        """Utterances of streams silent for ``idle_flush_s`` (tagged with their last record), and the streams
        dropped after ``idle_timeout_s``. ``caught_up(stream)``: nothing of the stream waits unread in Kafka (a
        reader that lags sees no frames for a while without the stream being silent)."""
        out, dropped = [], []
        for sid, st in list(self.streams.items()):
            quiet = now - st.last_seen
            if quiet >= idle_flush_s and not st.idle_flushed and caught_up(sid):
                st.idle_flushed = True
                out += [Finished(sid, st.session_id, u, st.last_tag, st.last_arrival, st.capture_ns(u.end_sample),
                                 close_sample=st.seg.position) for u in st.seg.flush("idle")]
            if quiet >= idle_timeout_s:
                del self.streams[sid]
                dropped.append(sid)
        return out, dropped

    def drop(self, stream_id: str) -> None:
        self.streams.pop(stream_id, None)

    def needed_tag(self, stream_id: str, warmup_s: float):
        st = self.streams.get(stream_id)
        if st is None:
            return None
        return st.need_tag(int(round(warmup_s * SAMPLE_RATE)), 60 * SAMPLE_RATE)


# -- the service -------------------------------------------------------------------------------------------------

class TranscriberService(KafkaService):
    """Build with a config, then ``run()`` until ``stop()`` (or SIGTERM in the CLI)."""

    service_name = "transcriber"
    ready_stale_s = 60.0    # a Whisper call takes seconds: the loop turns less often
    live_stale_s = 120.0

    def __init__(self, config: TranscriberConfig, registry=None, *, asr=None, vad=None):
        from streamproc.transcription import Transcriber
        self.config = config
        # fail fast, before consuming anything: a bad bundle never moves an offset
        self.asr = asr or Transcriber.load(config.asr_model, cpu_threads=config.cpu_threads,
                                           segmentation=config.segmentation)
        model = self.asr.model_id
        self.model = f"{model.get('task')}:{model.get('version') or 'dir'}"
        self.streams = SpeechStreams(self.asr.segmenter_config or SegmenterConfig(),
                                     max_gap_fill_s=config.max_gap_fill_s, vad=vad, captions=config.pause_captions)
        # per stream, the latest pause caption's (session, start, end, Transcription): a final of exactly that audio
        # reuses it instead of a second Whisper call (deterministic decoding: the same text either way)
        self._caption_cache: dict[str, tuple] = {}
        self.metrics = TranscriberMetrics(registry, model=self.model, frames_topic=config.frames_topic,
                                          output_topics=(config.transcripts_topic, config.deadletter_topic))
        self.metrics.up.set_function(lambda: 1.0 if self.ready else 0.0)
        self.instance = config.instance_id or uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._stream_partition: dict[str, tuple[str, int]] = {}
        self._lag: dict[tuple[str, int], int] = {}
        self._frame_s: dict[tuple[str, int], float] = {}  # audio seconds per record, per partition (moving mean)
        self._finals_made = False  # this loop transcribed finals: partials wait for the next one
        # (ended, wall seconds) of recent Whisper calls; bounded (a call takes far more than 10 s / 256)
        self._calls: collections.deque = collections.deque(maxlen=256)
        self._counted = collections.Counter()
        self._gap_counted = 0.0
        self._http = None
        self.metrics_port: int | None = None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.checkpoint: Checkpoint | None = None
        self._fatal: str | None = None
        self._down_since: float | None = None
        self._started = False
        self.last_loop = time.monotonic()
        self.latencies = collections.deque(maxlen=config.record_latencies) if config.record_latencies else None
        # caption latency (bench): per stream, the ends of speech segments (a pause caption's end, a final's end) not
        # yet covered by an acknowledged record; per segment once one covers it: (kind of that record, e2e, pause
        # rule, service, when acknowledged (monotonic))
        self.caption_latencies = (collections.deque(maxlen=config.record_latencies) if config.record_latencies
                                  else None)
        self._segments: dict[str, list] = {}
        self._segment_last: dict[str, tuple] = {}  # per stream, the latest pause caption's segment

    # -- lifecycle (the analyzer's) ---------------------------------------------------
    def _connect(self) -> None:
        c = self.config
        check_reachable(c.kafka)
        if c.create_topics:
            ensure_topics(c.kafka, {c.frames_topic: c.partitions, c.transcripts_topic: c.partitions,
                                    c.deadletter_topic: c.partitions})
        self.consumer = Consumer(client_logging(self._consumer_conf()))
        self.producer = Producer(producer_config(c.kafka, **self._producer_defaults()))
        self.checkpoint = for_mode(False, self.consumer, self.producer, needs=self._partition_needs,
                                   on_fail=self._fail, interval_s=c.commit_interval_s,
                                   unavailable_timeout_s=c.unavailable_timeout_s)
        self.consumer.subscribe([c.frames_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self._started = True

    def _on_commit(self, err, partitions) -> None:
        failed = err is not None or any(p.error is not None for p in partitions)
        self.metrics.commits.labels("failed" if failed else "ok").inc()

    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        try:
            committed = fetch_committed(consumer, partitions, self.config.unavailable_timeout_s)
        except KafkaException as exc:
            raise OutputDeliveryError(f"cannot read committed offsets on assignment: {exc}") from None
        for (topic, partition), (offset, done) in self.checkpoint.assign(committed).items():
            log.info("%s[%d]: rebuilding segmenter state from offset %d; transcripts up to %d already published",
                     topic, partition, offset, done)

    def _drop_partitions(self, tps: set) -> None:
        for tp in tps:
            self._lag.pop(tp, None)
        for sid in [s for s, tp in self._stream_partition.items() if tp in tps]:
            self.streams.drop(sid)
            del self._stream_partition[sid]

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        log.info("revoked %s", sorted(gone))
        self.checkpoint.revoke(gone)
        self._drop_partitions(gone)

    def _on_lost(self, consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        log.warning("partitions lost %s: not committing them", sorted(gone))
        self.checkpoint.lost(gone)
        self._drop_partitions(gone)

    def _fail(self, what: str) -> None:
        if self._fatal is None:
            self._fatal = f"{what}; input offsets not committed, exiting so they are re-read on restart"
            log.error("%s", self._fatal)
        if self.checkpoint is not None:
            self.checkpoint.fail()
        self._stop.set()

    def _partition_needs(self, tps) -> dict[tuple[str, int], int]:
        """Per partition, the oldest record an open utterance on it (with the VAD's warm-up) still needs."""
        need: dict[tuple[str, int], int] = {}
        for sid, tp in self._stream_partition.items():
            if tp not in tps:
                continue
            t = self.streams.needed_tag(sid, self.config.warmup_s)
            if t is not None and (tp not in need or t < need[tp]):
                need[tp] = t
        return need

    def run(self) -> None:
        self._connect()
        self.metrics.kafka_up.set(1)
        last_house = time.monotonic()
        try:
            while not self._stop.is_set():
                timeout = 0.002 if self.checkpoint.busy else self.config.poll_timeout
                msgs = self.consumer.consume(num_messages=self.config.batch_size, timeout=timeout)
                now = time.monotonic()
                self.last_loop = now
                if msgs:
                    if self._down_since is not None and any(m.error() is None for m in msgs):
                        self._kafka_back()
                    self.process_batch(msgs)
                self.producer.poll(0)
                self.checkpoint.tick(time.monotonic())
                now = time.monotonic()
                if now - last_house > 0.5:
                    self._housekeeping(now)
                    last_house = now
                if self.config.partial_every_s > 0 and not self._finals_made:
                    self._partial()
                self._finals_made = False
        except BaseException:
            self.checkpoint.fail()
            raise
        finally:
            self._close()
        if self._fatal:
            raise OutputDeliveryError(self._fatal)

    def _housekeeping(self, now: float) -> None:
        c, cp = self.config, self.checkpoint
        self._update_lag()
        finished, dropped = self.streams.flush_idle(
            now, c.idle_flush_s, c.idle_timeout_s,
            caught_up=lambda sid: self._lag.get(self._stream_partition.get(sid)) == 0)
        for sid in dropped:
            self._stream_partition.pop(sid, None)
            self._caption_cache.pop(sid, None)
            self._segments.pop(sid, None)
            self._segment_last.pop(sid, None)
        if finished:
            cp.begin(now)
            self._publish(finished)
            cp.end(now)
        self.metrics.active_streams.set(len(self.streams.streams))
        if self._down_since is not None:
            try:
                self.producer.list_topics(c.frames_topic, timeout=0.5)
                self._kafka_back()
            except KafkaException:
                if now - self._down_since > c.unavailable_timeout_s:
                    self._fail(f"Kafka unreachable for {now - self._down_since:.0f} s (--unavailable-timeout "
                               f"{c.unavailable_timeout_s:.0f})")

    def _update_lag(self) -> None:
        if self.consumer is None or not self.checkpoint.assigned:
            return
        tps = [TopicPartition(t, p) for t, p in sorted(self.checkpoint.assigned)]
        for tp in self.consumer.position(tps):
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except Exception:
                continue
            if high >= 0:
                lag = max(0, high - tp.offset if tp.offset >= 0 else high)
                self._lag[(tp.topic, tp.partition)] = lag
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)

    def _close(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.close()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self._http is not None:
            self._http.shutdown()
            self._http = None
        self._close_producer()

    # -- the work -------------------------------------------------------------------
    def process_batch(self, msgs) -> None:
        c, m, cp = self.config, self.metrics, self.checkpoint
        now = time.monotonic()
        high: dict[tuple[str, int], int] = {}
        finished: list[Finished] = []
        cp.begin(now)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err.str())
                continue
            tp = (msg.topic(), msg.partition())
            offset = msg.offset()
            high[tp] = max(high.get(tp, -1), offset)
            replay = cp.replaying(tp, offset)
            value = msg.value()
            if not replay:
                m.frames.labels(msg.topic()).inc()
            try:
                sid = wire.decode_stream_id(msg.key())
                frame = wire.decode(value, max_payload_bytes=c.max_frame_bytes, max_seconds=c.max_frame_seconds)
                if frame.sample_rate != SAMPLE_RATE:
                    raise FrameError("sample_rate_mismatch",
                                     f"stream {sid!r} sends {frame.sample_rate} Hz; the transcriber needs "
                                     f"{SAMPLE_RATE} Hz (resample in the producer)")
            except FrameError as exc:
                if not replay:
                    self._deadletter(msg, exc)
                continue
            self._stream_partition[sid] = tp
            fs = self._frame_s.get(tp)
            sec = frame.n_frames / frame.sample_rate
            self._frame_s[tp] = sec if fs is None else 0.95 * fs + 0.05 * sec
            status, done = self.streams.accept(sid, frame, now, tag=offset)
            for f in done:
                f.tp = tp  # kept with the utterance: an ended stream's partition is forgotten below
            finished += done
            if not replay and status == "ok":
                m.audio_seconds.inc(frame.n_frames / frame.sample_rate)
            if sid not in self.streams.streams:
                self._stream_partition.pop(sid, None)  # ended
        self._count_sequence_events()
        for f in self.streams.pending_captions:  # before any final's acknowledgement can cover them
            self._segment(f)
        self._publish(finished)
        if c.pause_captions:
            self._pause_captions()
        m.active_streams.set(len(self.streams.streams))
        cp.store(high)
        cp.end(now)

    def _count_sequence_events(self) -> None:
        ev = self.streams.events
        for kind, n in ev.items():
            if n > self._counted[kind]:
                self.metrics.sequence.labels(kind).inc(n - self._counted[kind])
                self._counted[kind] = n
        if self.streams.gap_seconds > self._gap_counted:
            self.metrics.gap_seconds.inc(self.streams.gap_seconds - self._gap_counted)
            self._gap_counted = self.streams.gap_seconds

    def _publish(self, finished: list[Finished]) -> None:
        """Transcribe and publish each finished utterance, in order; utterances a previous owner of the partition
        already published (a replay after a restart) only rebuilt state."""
        from streamproc.transcription import transcript_record
        m, cp = self.metrics, self.checkpoint
        for f in finished:
            tp = f.tp or self._stream_partition.get(f.stream_id)
            if tp is not None and f.tag is not None and cp.replaying(tp, f.tag):
                m.replayed.inc()
                continue
            u = f.utterance
            self._finals_made = True
            self._segment(f)
            cached = self._caption_cache.get(f.stream_id)
            if cached is not None and cached[:2] == (f.session_id, u.start_sample):
                del self._caption_cache[f.stream_id]
            if cached is not None and cached[:3] == (f.session_id, u.start_sample, u.end_sample):
                result = cached[3]  # its pause caption was this very audio: the same text, no second call
                m.caption_reused.labels(m.model).inc()
            else:
                result = self.asr.transcribe(u.audio, words=self.config.words)
                self._calls.append((time.monotonic(), result.seconds))
                m.engine_seconds.labels(m.model).inc(result.cpu_seconds)
            seconds = u.audio.size / SAMPLE_RATE
            m.utterances.labels(m.model, u.reason).inc()
            m.audio_transcribed.labels(m.model).inc(seconds)
            if seconds > 0:
                m.real_time_factor.labels(m.model).observe(result.cpu_seconds / seconds)
            if not result.text:
                m.empty.labels(m.model).inc()  # Whisper heard no words: no record
                self._segments.pop(f.stream_id, None)
                continue
            rec = transcript_record(stream_id=f.stream_id, session_id=f.session_id.hex(),
                                    start_sample=u.start_sample, end_sample=u.end_sample, sample_rate=SAMPLE_RATE,
                                    result=result, model=self.asr.model_id, reason=u.reason)
            self._emit(self.config.transcripts_topic, records.dumps(rec), f.stream_id.encode(),
                       on_ok=self._ack(f, rec))

    # -- pause captions: a partial at the first pause of a short utterance kept open -------------------------
    def _pause_captions(self) -> None:
        """Transcribe and publish, oldest first, the pause captions of utterances still open: the text so far, at
        once, while the final waits for more speech to pack (docs/transcription.md). Untracked like every partial;
        skipped (counted, ``pause_lag``) only when so much audio per stream waits unread that the frame closing the
        utterance may already be among it: more than the long pause less the caption pause (1.7 s with the
        bundle; at least ``--partial-max-lag``). Not for a busy recogniser either: when no speech follows, the final
        is the same audio and reuses the caption's text, so a caption is mostly the final's own call made earlier.
        (Measured: with the periodic partials' 0.5 s the lag left by one Whisper call at 10 streams skipped 13 of
        76 captions.)"""
        from streamproc.transcription import transcript_record
        c, m, cp = self.config, self.metrics, self.checkpoint
        sc = self.streams.config
        max_lag = max(c.partial_max_lag_s, sc.long_pause_s - (sc.hangover_s if sc.caption_pause_s is None
                                                               else sc.caption_pause_s))
        for f in self.streams.take_captions():
            tp = f.tp or self._stream_partition.get(f.stream_id)
            if tp is not None and f.tag is not None and cp.replaying(tp, f.tag):
                continue  # published (final) by the previous owner of the partition
            if self.behind_s(tp) > max_lag:
                m.partials_skipped.labels("pause_lag").inc()
                continue
            u = f.utterance
            result = self.asr.transcribe(u.audio, words=c.words)  # words too: a final of this audio reuses it
            self._calls.append((time.monotonic(), result.seconds))
            m.engine_seconds.labels(m.model).inc(result.cpu_seconds)
            m.partial_cpu.labels(m.model).inc(result.cpu_seconds)
            self._caption_cache[f.stream_id] = (f.session_id, u.start_sample, u.end_sample, result)
            st = self.streams.streams.get(f.stream_id)
            if st is not None and st.seg.open_start == u.start_sample:  # the periodic partial counts from here
                st.partial_start, st.partial_mark = u.start_sample, max(st.partial_mark, u.end_sample)
            if not result.text:
                m.partials_skipped.labels("no_text").inc()
                continue
            rec = transcript_record(stream_id=f.stream_id, session_id=f.session_id.hex(),
                                    start_sample=u.start_sample, end_sample=u.end_sample, sample_rate=SAMPLE_RATE,
                                    result=dataclasses.replace(result, words=None), model=self.asr.model_id,
                                    reason="partial", final=False)
            self._produce_partial(rec, "pause", f.close_sample, f.arrival)

    def _produce_partial(self, rec: dict, kind: str, trigger_sample: int | None, arrival: float) -> None:
        """Publish a partial record, untracked: a lost one is counted and logged, never re-read."""
        c, m = self.config, self.metrics
        cover = self._cover(rec, kind, trigger_sample, arrival)

        def delivered(err, msg, rec=rec):
            if err is not None:  # best effort: counted and logged, never a reason to stop or to re-read
                m.delivery_errors.labels(msg.topic()).inc()
                log.warning("partial transcript %s not delivered: %s", rec["id"], err.str())
            else:
                m.partials.labels(m.model).inc()
                cover(msg)
                if c.on_partial is not None:
                    c.on_partial(rec)
        produce(self.producer, c.transcripts_topic, records.dumps(rec), rec["stream_id"].encode(),
                on_delivery=delivered)

    def _segment(self, f: Finished) -> None:
        """Note the end of a speech segment (a pause caption's or a final's end) for the caption latency."""
        if f.end_capture_ns is None:
            return
        key = (f.session_id.hex(), f.utterance.start_sample, f.utterance.end_sample)
        if f.utterance.reason == "pause":
            self._segment_last[f.stream_id] = key
        elif self._segment_last.pop(f.stream_id, None) == key:
            return  # a final of its pause caption's audio: the caption's segment, already noted
        segs = self._segments.setdefault(f.stream_id, [])
        segs.append(key + (f.end_capture_ns,))
        if len(segs) > 256:
            del segs[:-256]

    def _cover(self, rec: dict, kind: str, trigger_sample: int | None, arrival: float):
        """An acknowledgement callback part: the segments of ``rec``'s utterance it covers (end <= its end) get their
        caption latency: segment end (capture clock) -> this record acknowledged, with its pause-rule part (segment
        end -> the sample that triggered this record, stream time) and service part (that frame read -> acked)."""
        key = (rec["session_id"], rec["start_sample"])

        def cover(msg):
            acked_mono, acked_ns = time.monotonic(), time.time_ns()  # (see _ack: when this callback is served)
            segs = self._segments.get(rec["stream_id"])
            if not segs:
                return
            keep = []
            for seg in segs:
                if seg[:2] == key and seg[2] <= rec["end_sample"]:
                    e2e = max(0.0, (acked_ns - seg[3]) / 1e9)
                    wait = None if trigger_sample is None else (trigger_sample - seg[2]) / SAMPLE_RATE
                    self.metrics.caption_latency.observe(e2e)
                    if self.caption_latencies is not None:
                        self.caption_latencies.append((kind, e2e, wait, acked_mono - arrival, acked_mono))
                else:
                    keep.append(seg)
            segs[:] = keep
        return cover

    # -- partial transcripts: best effort, after the finals ---------------------------------------------------
    def behind_s(self, tp) -> float:
        """Seconds of audio per stream waiting unread on partition ``tp`` (Kafka lag x the mean record length /
        streams on it): 0 when the service keeps up."""
        if self.consumer is None or tp is None:
            return 0.0
        try:
            (pos,) = self.consumer.position([TopicPartition(tp[0], tp[1])])
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(tp[0], tp[1]), cached=True)
        except Exception:
            return 0.0
        if high is None or high < 0 or pos.offset < 0:
            return 0.0
        lag = max(0, high - pos.offset)
        n = sum(1 for t in self._stream_partition.values() if t == tp) or 1
        return lag * self._frame_s.get(tp, 0.1) / n

    def busy_share(self, now: float, window_s: float = 10.0) -> float:
        """Share of the last ``window_s`` seconds the recogniser spent in Whisper calls (finals and partials)."""
        while self._calls and self._calls[0][0] < now - window_s:
            self._calls.popleft()
        return sum(w for _, w in self._calls) / window_s

    def _partial(self) -> None:
        """At most one partial transcript per loop, for the stream whose open utterance waited longest for one.
        Partials are never tracked by the checkpoint (they hold back no commit, and no state is rebuilt from
        them); they are skipped (counted) while the service is behind its input, and not made for utterances a
        previous owner of the partition already completed (a replay)."""
        from streamproc.transcription import transcript_record
        c, m, cp = self.config, self.metrics, self.checkpoint
        every = max(1, int(round(c.partial_every_s * SAMPLE_RATE)))
        due = []
        for sid, st in self.streams.streams.items():
            new = st.partial_due(every)
            if new is not None:
                due.append((-new, sid))
        for _, sid in sorted(due):
            st = self.streams.streams[sid]
            tp = self._stream_partition.get(sid)
            position = st.seg.position
            if tp is not None and st.last_tag is not None and cp.replaying(tp, st.last_tag):
                st.partial_mark = position  # published (final) by the previous owner: nothing to show
                continue
            if self.behind_s(tp) > c.partial_max_lag_s:
                st.partial_mark = position
                m.partials_skipped.labels("lag").inc()
                continue
            if c.partial_max_busy < 1 and self.busy_share(time.monotonic()) > c.partial_max_busy:
                # a started call is not interrupted: partials use spare time only, or finals would queue behind them
                st.partial_mark = position
                m.partials_skipped.labels("busy").inc()
                continue
            u = st.seg.open_utterance()
            st.partial_mark = position
            if u is None:
                continue
            result = self.asr.transcribe(u.audio)  # no word timings: a partial is a preview, kept cheap
            self._calls.append((time.monotonic(), result.seconds))
            m.engine_seconds.labels(m.model).inc(result.cpu_seconds)
            m.partial_cpu.labels(m.model).inc(result.cpu_seconds)
            if not result.text:
                m.partials_skipped.labels("no_text").inc()
                return
            rec = transcript_record(stream_id=sid, session_id=st.session_id.hex(), start_sample=u.start_sample,
                                    end_sample=u.end_sample, sample_rate=SAMPLE_RATE, result=result,
                                    model=self.asr.model_id, reason="partial", final=False)
            self._produce_partial(rec, "partial", position, st.last_arrival)
            return

    def _ack(self, f: Finished, rec: dict):
        """The delivery callback of a final transcript. Its latencies end when this callback is served: after
        Kafka's acknowledgement, at the service's next poll, so a final published before other Whisper calls of the
        same loop counts them too (an upper bound). librdkafka's ``Message.latency()`` cannot tell the
        acknowledgement's own time: it is computed when called (``rd_clock() - enqueue time``), i.e. now."""
        m = self.metrics
        cover = self._cover(rec, "final", f.close_sample, f.arrival)

        def ack(msg):
            cover(msg)
            acked_mono, acked_ns = time.monotonic(), time.time_ns()
            latency = acked_mono - f.arrival
            m.transcripts.labels(m.model).inc()
            m.latency.observe(latency)
            e2e = None
            if f.end_capture_ns is not None:
                e2e = max(0.0, (acked_ns - f.end_capture_ns) / 1e9)
                m.e2e_latency.observe(e2e)
            if self.latencies is not None:
                wait = None if f.close_sample is None else (f.close_sample - f.utterance.end_sample) / SAMPLE_RATE
                self.latencies.append((latency, e2e, wait, f.utterance.reason))
            if self.config.on_published is not None:
                self.config.on_published(rec)
        return ack

    def _emit(self, topic: str, value: bytes | None, key: bytes | None, headers=None, on_ok=None) -> None:
        delivered_to_checkpoint = self.checkpoint.track()

        def delivered(err, msg):
            delivered_to_checkpoint(err)
            if err is not None:
                self.metrics.delivery_errors.labels(msg.topic()).inc()
                log.error("output to %s not delivered: %s", msg.topic(), err.str())
            elif on_ok is not None:
                on_ok(msg)
        produce(self.producer, topic, value, key, on_delivery=delivered, headers=headers)

    def _deadletter(self, msg, exc: FrameError) -> None:
        self.metrics.deadletter.labels(exc.reason).inc()
        log.warning("dead-letter %s[%d]@%d: %s: %s", msg.topic(), msg.partition(), msg.offset(), exc.reason, exc)
        headers = records.deadletter_headers(msg.headers(), reason=exc.reason, error=str(exc),
                                             source=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}",
                                             analyzer=f"transcriber-{self.instance}")
        self._emit(self.config.deadletter_topic, msg.value(), msg.key(), headers=headers)


# -- CLI ---------------------------------------------------------------------------
def add_parser(sub):
    p = sub.add_parser("transcriber", help="run the speech-to-text service (audio.frames -> audio.transcripts)",
                       description=__doc__)
    add_kafka_arguments(p)
    d = TranscriberConfig(kafka={})
    p.add_argument("--asr-model", default=d.asr_model,
                   help="transcription bundle (path or transcription[:version]) or a local CTranslate2 Whisper dir")
    p.add_argument("--group-id", default=d.group_id, help="consumer group (not the analyzer's)")
    p.add_argument("--frames-topic", default=d.frames_topic)
    p.add_argument("--transcripts-topic", default=d.transcripts_topic)
    p.add_argument("--deadletter-topic", default=d.deadletter_topic)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port, help="Prometheus /metrics port (0 = any)")
    p.add_argument("--metrics-addr", default=d.metrics_addr)
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.add_argument("--idle-flush", type=float, default=d.idle_flush_s, metavar="SECONDS",
                   help="a stream that sends nothing this long has its open utterance transcribed")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="SECONDS",
                   help="seconds before a silent stream's state is dropped")
    p.add_argument("--max-gap-fill", type=float, default=d.max_gap_fill_s, metavar="SECONDS",
                   help="missing audio up to this long is filled with silence; a longer gap ends the utterance")
    p.add_argument("--words", action="store_true", help="word timings in the records (about 2x the CPU)")
    add_segmentation_arguments(p)
    p.add_argument("--partial-every", type=float, default=d.partial_every_s, metavar="SECONDS",
                   help="while an utterance is open, publish a partial transcript (final: false) per this much new "
                        "audio; 0 = finals only")
    p.add_argument("--no-pause-captions", dest="pause_captions", action="store_false",
                   help="no partial at the first pause of an utterance kept open to pack more speech (captions "
                        "then wait for the final, or the next --partial-every)")
    p.add_argument("--partial-max-lag", type=float, default=d.partial_max_lag_s, metavar="SECONDS",
                   help="skip partials while more than this much audio per stream waits unread (finals first)")
    p.add_argument("--partial-max-busy", type=float, default=d.partial_max_busy, metavar="SHARE",
                   help="skip partials while Whisper was busy more than this share of the last 10 s (1 = never)")
    p.add_argument("--cpu-threads", type=int, default=d.cpu_threads, help="threads Whisper may use")
    p.add_argument("--partitions", type=int, default=d.partitions, help="partitions for topics it creates")
    p.add_argument("--no-create-topics", action="store_true")
    p.add_argument("--from", dest="auto_offset_reset", choices=("earliest", "latest"), default=d.auto_offset_reset,
                   help="where a new consumer group starts reading")
    p.add_argument("--unavailable-timeout", type=float, default=d.unavailable_timeout_s, metavar="SECONDS",
                   help="exit non-zero (nothing more committed) when Kafka is unreachable this long")
    p.add_argument("--instance-id", default=None,
                   help="static group membership: a restarted replica with the same id takes its partitions back "
                        "at once instead of after the session timeout")
    p.set_defaults(func=run)


def config_from_args(args) -> TranscriberConfig:
    from streamproc.config import kafka_config_from_args
    if args.cpu_threads < 1:
        raise ConfigError(f"--cpu-threads {args.cpu_threads} must be at least 1")
    if not args.idle_flush > 0 or args.idle_timeout < args.idle_flush:
        raise ConfigError(f"--idle-flush {args.idle_flush} must be > 0 and at most --idle-timeout "
                          f"{args.idle_timeout}")
    if args.max_gap_fill < 0:
        raise ConfigError(f"--max-gap-fill {args.max_gap_fill} must be >= 0")
    if not args.partial_every >= 0:
        raise ConfigError(f"--partial-every {args.partial_every} must be >= 0 seconds (0 = no partial transcripts)")
    if not args.partial_max_lag >= 0:
        raise ConfigError(f"--partial-max-lag {args.partial_max_lag} must be >= 0 seconds")
    if not 0 <= args.partial_max_busy <= 1:
        raise ConfigError(f"--partial-max-busy {args.partial_max_busy} must be a share in [0, 1]")
    return TranscriberConfig(
        kafka=kafka_config_from_args(args), asr_model=args.asr_model, segmentation=segmentation_overrides(args),
        group_id=args.group_id,
        frames_topic=args.frames_topic, transcripts_topic=args.transcripts_topic,
        deadletter_topic=args.deadletter_topic, metrics_port=None if args.no_metrics else args.metrics_port,
        metrics_addr=args.metrics_addr, idle_flush_s=args.idle_flush, idle_timeout_s=args.idle_timeout,
        max_gap_fill_s=args.max_gap_fill, words=args.words, cpu_threads=args.cpu_threads,
        partial_every_s=args.partial_every, partial_max_lag_s=args.partial_max_lag,
        partial_max_busy=args.partial_max_busy, pause_captions=args.pause_captions,
        create_topics=not args.no_create_topics, partitions=args.partitions,
        auto_offset_reset=args.auto_offset_reset, unavailable_timeout_s=args.unavailable_timeout,
        instance_id=args.instance_id)


def run(args) -> int:
    config = config_from_args(args)
    service = TranscriberService(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: service.stop())
    port = service.start_metrics_server()
    print(f"transcriber {service.instance}: model {service.model} ({service.asr.model_dir}), at-least-once, "
          f"{config.frames_topic} -> {config.transcripts_topic} (group {config.group_id}); "
          f"kafka {masked(config.kafka).get('bootstrap.servers')}"
          + (f"; metrics http://{config.metrics_addr}:{port}/metrics" if port else ""), file=sys.stderr, flush=True)
    service.run()
    return 0
