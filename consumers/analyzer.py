"""``audiostream analyze``: the analyzer service.

A consumer-group member that reads ``audio.frames``, keeps a rolling state per
stream (streamproc.engine), featurises and infers every window that becomes
complete in one batch per poll, and publishes:

- ``audio.predictions``: one JSON prediction per window (docs/predictions.md);
- ``audio.features``: per-window audio metrics and the model's feature vector,
  and a gap marker for every gap in a stream;
- ``audio.deadletter``: every frame it cannot accept, original bytes + reason.

The service is a loop and its callbacks: poll, decode (or dead-letter), file frames into
the engine, step it, publish the events it drained (streamproc.records builds every record),
let the checkpoint commit. Delivery (docs/guarantees.md) belongs to the checkpoint
(consumers/checkpoint.py): at-least-once by default, exactly-once with ``--exactly-once``
(Kafka transactions); either way the committed offset of a partition is the oldest record an
open window on it still needs, and the commit's metadata says how far outputs were already
published, so whoever owns the partition next rebuilds each stream's window state from Kafka
and does not publish a window twice.
"""
from __future__ import annotations

import collections
import gc
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

from streamproc.kafka import check_reachable, client_logging, ensure_topics, produce, producer_config
from streamproc import records, wire
from streamproc.engine import Gap, Engine, SequenceEvent, Window
from streamproc.errors import AudiostreamError, ConfigError, FrameError, WindowSpecError
from streamproc.birdnet.detect import Detector
from streamproc.inference import ModelBundle
from streamproc.windowing import WindowSpec
from streamproc.config import ANALYZER_SETTINGS, add_analyzer_arguments, analyzer_flags
from streamproc.settings import DEFAULT_MODEL, add_kafka_arguments, masked  # noqa: F401 (demo, bench import it)

from .checkpoint import Checkpoint, fetch_committed, for_mode
from .service import KafkaService
from .metrics import AnalyzerMetrics, observe_many

log = logging.getLogger("audiostream.analyzer")


class OutputDeliveryError(AudiostreamError):
    """Kafka did not acknowledge output records: input offsets were not committed."""


class KafkaUnavailableTooLong(AudiostreamError):
    """The cluster was unreachable for longer than ``unavailable_timeout_s``."""


_D = {s.name: s.default for s in ANALYZER_SETTINGS}  # the one definition: streamproc.config.ANALYZER_SETTINGS


@dataclass
class AnalyzerConfig:
    """What an Analyzer runs with. The fields named in ``streamproc.config.ANALYZER_SETTINGS`` (settable by
    flag, environment and config file) take their defaults from there; the others are for code and tests."""

    kafka: dict
    model: str = _D["model"]
    group_id: str = _D["group_id"]
    frames_topic: str = _D["frames_topic"]
    predictions_topic: str = _D["predictions_topic"]
    features_topic: str | None = _D["features_topic"]  # None: no features or gap records (the detector)
    deadletter_topic: str = _D["deadletter_topic"]
    metrics_port: int | None = _D["metrics_port"]  # None = no HTTP endpoint; 0 = any free port
    metrics_addr: str = _D["metrics_addr"]
    max_frame_bytes: int = _D["max_frame_bytes"]
    max_frame_seconds: float = _D["max_frame_seconds"]
    idle_timeout_s: float = _D["idle_timeout_s"]
    create_topics: bool = _D["create_topics"]
    partitions: int = _D["partitions"]
    auto_offset_reset: str = _D["auto_offset_reset"]
    exactly_once: bool = _D["exactly_once"]
    instance_id: str | None = _D["instance_id"]
    unavailable_timeout_s: float = _D["unavailable_timeout_s"]
    max_reorder: int = _D["max_reorder"]
    blas_threads: int = _D["blas_threads"]
    batch_size: int = _D["batch_size"]  # --max-batch
    poll_timeout: float = 0.02
    commit_interval_s: float = 1.0        # at-least-once: how often acknowledged progress is committed
    transaction_interval_s: float = 0.1   # exactly-once: how long one transaction collects batches
    queued_max_kbytes: int = 65536        # librdkafka prefetch bound (its default; 16 MiB starved 1000 streams)
    consumer_overrides: dict = field(default_factory=dict)
    producer_overrides: dict = field(default_factory=dict)  # bench experiments (linger.ms, compression.type ...)
    expect_spec: WindowSpec | None = None  # refuse a bundle trained with any other window/feature spec
    record_latencies: int = 0  # keep the last N window latencies for bench: (arrival -> produced, -> acknowledged,
    #                            capture -> acknowledged), seconds
    before_inference: Callable | None = None  # test hook: called with each batch's windows (e.g. a slow model)
    detector: dict = field(default_factory=dict)  # a multi-label bundle's Detector options (audiostream detect)


try:  # glibc: give freed heap pages back after mass eviction (small numpy buffers live in malloc arenas)
    import ctypes
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


def _release_freed_memory() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def freeze_heap() -> None:
    """Once a service's long-lived objects exist (modules, the model, numba's and scipy's caches): move them
    out of the cyclic collector's sight (``gc.freeze``). Python's full collections otherwise walk all of them,
    ~70 ms each on a loaded machine, about every 5 s under 1000 streams: a pause in the middle of a batch that
    every window in flight waits for. Reference counting still frees them; only cycles among them stay.
    For processes that run one analyzer (the CLI, bench), not for test processes that build many."""
    gc.collect()
    gc.freeze()


def limit_blas_threads(n: int) -> None:
    """BLAS on ``n`` threads for the rest of this process (process-wide: threadpoolctl).

    One analyzer is sized and measured as one core (``bench`` runs it so), and scales with replicas; on
    its own OpenBLAS would start a thread per CPU for matmuls of a few hundred rows, which only contend
    with librdkafka's threads and the other replicas. Two analyzers in one process calling a threaded
    OpenBLAS 0.3.31 at once were also seen hung in the same ``power @ mel_chroma`` matmul (a test's
    pair of analyzers); on one thread each call runs in its caller."""
    if n and n > 0:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")


class Analyzer(KafkaService):
    """Build with a config, then ``run()`` until ``stop()`` (or SIGTERM in the CLI)."""

    service_name = "analyzer"   # (the loop's staleness bounds for /ready and /healthz: KafkaService's)

    def __init__(self, config: AnalyzerConfig, registry=None):
        self.config = config
        # Fail fast, before consuming anything: a bad bundle never moves an offset.
        self.bundle = ModelBundle.load(config.model, expect_spec=config.expect_spec)
        self.spec = self.bundle.spec
        self.engine = Engine(self.spec, idle_timeout_s=config.idle_timeout_s, max_reorder=config.max_reorder,
                             events=True, logmel=self.bundle.logmel, waveform=self.bundle.waveform)
        # a multi-label bundle (BirdNET) publishes detections; its thousands of classes get metric series
        # only once detected
        self.detector = Detector(self.bundle, **config.detector) if self.bundle.multilabel else None
        self.metrics = AnalyzerMetrics(registry, model_task=self.bundle.task, model_version=self.bundle.version,
                                       labels=() if self.detector else self.bundle.labels,
                                       frames_topic=config.frames_topic,
                                       output_topics=tuple(t for t in (config.predictions_topic, config.features_topic,
                                                                       config.deadletter_topic) if t))
        self.instance = config.instance_id or uuid.uuid4().hex[:8]
        self.metrics.up.set_function(lambda: 1.0 if self.ready else 0.0)  # read at scrape time: what /ready says
        self._stop = threading.Event()
        self._stream_partition: dict[str, tuple[str, int]] = {}
        self._sids: dict[bytes, str] = {}  # record key -> its validated stream id
        self._label_counters: dict = {}  # label -> its predictions counter child (no look-up per record)
        self._http = None
        self.metrics_port: int | None = None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.checkpoint: Checkpoint | None = None
        self._fatal: str | None = None
        self._fatal_type: type = OutputDeliveryError
        self._features = records.FeaturesEncoder(self.spec)
        self._predictions = records.PredictionEncoder(self.bundle.labels, task=self.bundle.task,
                                                      version=self.bundle.version, analyzer=self.instance)
        self._tracked = self._delivered = None  # the current batch's delivery callbacks (checkpoint's, ours)
        self._acked: list = []  # (label, arrival, capture ns, produced, acknowledged): for _count_acks
        self.latencies = collections.deque(maxlen=config.record_latencies) if config.record_latencies else None
        self.last_lag: dict[tuple[str, int], int] = {}
        self.batch_shape = [0, 0, 0]  # batches processed, records in them, windows their Engine.step returned (bench)
        self._down_since: float | None = None
        self._started = False
        self.last_loop = time.monotonic()
        limit_blas_threads(config.blas_threads)  # last: every BLAS the model and engine loaded is limited too

    # -- lifecycle ----------------------------------------------------------------
    @property
    def assigned(self) -> set[tuple[str, int]]:
        """The (topic, partition)s this analyzer owns right now."""
        return set(self.checkpoint.assigned) if self.checkpoint is not None else set()

    def _connect(self) -> None:
        c = self.config
        check_reachable(c.kafka)
        if c.create_topics:
            ensure_topics(c.kafka, {t: c.partitions for t in (c.frames_topic, c.predictions_topic, c.features_topic,
                                                              c.deadletter_topic) if t})
        self.consumer = Consumer(client_logging(self._consumer_conf(
            {"queued.max.messages.kbytes": c.queued_max_kbytes})))  # (defaults a user's settings may change)
        pconf = self._producer_defaults()
        if c.exactly_once:
            pconf["transactional.id"] = f"audiostream-{c.group_id}-{self.instance}"
            pconf["transaction.timeout.ms"] = pconf["message.timeout.ms"]  # librdkafka: must be >= the message timeout
        pconf.update(c.producer_overrides)
        self._producer_conf = producer_config(c.kafka, **pconf)
        self.producer = Producer(self._producer_conf)
        if c.exactly_once:
            try:
                self.producer.init_transactions(30)
            except KafkaException as exc:
                raise ConfigError(f"--exactly-once: the cluster refused transactions ({exc.args[0].str()}); "
                                  f"transactions need a broker with a transaction state log") from None
        self.checkpoint = for_mode(
            c.exactly_once, self.consumer, self.producer, needs=self._partition_needs, on_fail=self._fail,
            on_commit=lambda outcome: self.metrics.commits.labels(outcome).inc(), on_rewind=self._rewind,
            interval_s=c.transaction_interval_s if c.exactly_once else c.commit_interval_s,
            unavailable_timeout_s=c.unavailable_timeout_s, make_producer=self._replacement_producer)
        self.consumer.subscribe([c.frames_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self._started = True

    def _replacement_producer(self) -> Producer:
        """Exactly-once: the checkpoint gave up on a producer whose transaction could not be aborted; outputs go
        to this new one (same transactional.id; the checkpoint initialises it, which fences the old one)."""
        self.metrics.producer_replacements.inc()
        self.producer = Producer(self._producer_conf)
        return self.producer

    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        try:  # the previous owner's commit: where to re-read from, and how far outputs were published
            committed = fetch_committed(consumer, partitions, self.config.unavailable_timeout_s)
        except KafkaException as exc:
            raise OutputDeliveryError(f"cannot read committed offsets on assignment: {exc}") from None
        for (topic, partition), (offset, done) in self.checkpoint.assign(committed).items():
            log.info("%s[%d]: rebuilding window state from offset %d; outputs up to %d already published",
                     topic, partition, offset, done)

    def _drop_partitions(self, tps: set) -> None:
        for t, p in tps:
            if self.last_lag.pop((t, p), None) is not None:
                self.metrics.lag.remove(t, str(p))  # a partition we no longer own has no lag of ours
        for sid in [s for s, tp in self._stream_partition.items() if tp in tps]:
            self.engine.drop(sid)
            del self._stream_partition[sid]

    def _rewind(self, tps: set) -> None:
        """The checkpoint aborted a transaction and sought ``tps`` back to their last commit: drop the
        streams on them, whose state is rebuilt from the log as after a crash (docs/guarantees.md)."""
        for sid in [s for s, tp in self._stream_partition.items() if tp in tps]:
            self.engine.drop(sid)
            del self._stream_partition[sid]
        self.metrics.rewinds.inc()

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        log.info("revoked %s", sorted(gone))
        self.checkpoint.revoke(gone)  # everything delivered and committed for the next owner (unless failed)
        self._drop_partitions(gone)

    def _on_lost(self, consumer, partitions) -> None:
        """Partitions taken away without a clean hand-over (e.g. max.poll.interval.ms passed): their
        offsets are not ours to commit any more; the next owner re-reads from the last commit."""
        gone = {(p.topic, p.partition) for p in partitions}
        log.warning("partitions lost %s: not committing them", sorted(gone))
        self.metrics.partitions_lost.inc(len(gone))
        self.checkpoint.lost(gone)
        self._drop_partitions(gone)

    def run(self) -> None:
        """Consume until stop(); raises on unrecoverable errors (after closing cleanly)."""
        limit_blas_threads(self.config.blas_threads)  # and any loaded since (threadpoolctl acts on loaded ones)
        self._connect()
        self.metrics.kafka_up.set(1)
        last_house = time.monotonic()
        try:
            while not self._stop.is_set():
                # while outputs await acknowledgement, come back quickly to serve their callbacks
                # (acks and the offsets they release are noticed at our next poll)
                timeout = 0.002 if self.checkpoint.busy else self.config.poll_timeout
                msgs = self.consumer.consume(num_messages=self.config.batch_size, timeout=timeout)
                now = time.monotonic()
                self.last_loop = now
                if msgs:
                    if self._down_since is not None and any(m.error() is None for m in msgs):
                        self._kafka_back()
                    self.process_batch(msgs)
                elif self.engine.holding:  # frames held for a reorder are released on time, traffic or not
                    self.process_batch([])
                self.producer.poll(0)  # delivery callbacks
                self._count_acks()
                self.checkpoint.tick(now)
                now = time.monotonic()  # a slow batch may have taken seconds: lag and eviction must not wait
                if now - last_house > 1.0:
                    self._housekeeping(now)
                    last_house = now
        except BaseException:
            # whatever went wrong may have left part of a batch's outputs in the open transaction (or in
            # flight) while the offsets point before that batch: commit nothing, abort (quixstreams' _failed)
            self.checkpoint.fail()
            raise
        finally:
            self._close()
        if self._fatal:
            raise self._fatal_type(self._fatal)

    def _housekeeping(self, now: float) -> None:
        evicted = self.engine.evict_idle(now)  # (held frames of an evicted stream go with it)
        for sid in evicted:
            self._stream_partition.pop(sid, None)
        if len(evicted) >= 100:
            _release_freed_memory()  # many small buffers went back to malloc: return them to the system
        self.metrics.active_streams.set(len(self.engine.streams))
        self.metrics.state_bytes.set(self.engine.state_bytes())
        self.update_lag()
        if self._down_since is not None:
            try:  # a metadata round trip: is the cluster back?
                self.producer.list_topics(self.config.frames_topic, timeout=0.5)
                self._kafka_back()
            except KafkaException:
                if now - self._down_since > self.config.unavailable_timeout_s:
                    self._fatal_type = KafkaUnavailableTooLong
                    self._fail(f"Kafka at {self.config.kafka.get('bootstrap.servers')!r} unreachable for "
                               f"{now - self._down_since:.0f} s (--unavailable-timeout "
                               f"{self.config.unavailable_timeout_s:.0f})")

    def update_lag(self) -> dict[tuple[str, int], int]:
        """Records behind the high watermark, per assigned partition (cached watermarks: no round trip).

        Call from the analyzer's own thread only (the run loop does, every second); other
        threads read ``last_lag``. A confluent-kafka consumer must not be used concurrently.
        """
        if self.consumer is None or not self.checkpoint.assigned:
            return {}
        tps = [TopicPartition(t, p) for t, p in sorted(self.checkpoint.assigned)]
        lag = {}
        for tp in self.consumer.position(tps):
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except Exception:  # not fetched yet
                continue
            if high < 0:
                continue
            behind = high - tp.offset if tp.offset >= 0 else high
            lag[(tp.topic, tp.partition)] = max(0, behind)
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, behind))
        self.last_lag = lag
        return lag

    def _close(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.close()  # commits what is due, or after a failure aborts and commits nothing
        self._count_acks()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self._http is not None:
            self._http.shutdown()
            self._http = None
        self._close_producer()

    def _on_commit(self, err, partitions) -> None:
        failed = err is not None or any(p.error is not None for p in partitions)
        self.metrics.commits.labels("failed" if failed else "ok").inc()
        if failed:
            log.warning("offset commit failed: %s", err.str() if err is not None else
                        [f"{p.topic}[{p.partition}]: {p.error}" for p in partitions if p.error is not None])

    def _partition_needs(self, tps) -> dict[tuple[str, int], int]:
        """Per partition, the oldest record an open window on it still needs."""
        need: dict[tuple[str, int], int] = {}
        eng = self.engine
        for sid, tp in self._stream_partition.items():
            if tp not in tps:
                continue
            st = eng.streams.get(sid)
            if st is None or st.ended:
                continue
            t = eng.needed_tag(st)
            if t is not None and (tp not in need or t < need[tp]):
                need[tp] = t
        return need

    # -- the work -------------------------------------------------------------------
    def process_batch(self, msgs) -> None:
        c, m, cp = self.config, self.metrics, self.checkpoint
        now = time.monotonic()
        high: dict[tuple[str, int], int] = {}
        low: dict[tuple[str, int], int] = {}
        cp.begin(now)
        # the per-record path is the analyzer's cost floor (10 000 records/s at 1000 streams): no metric
        # label look-ups, no repeated key validation, no method call that can be a dict look-up; counters move
        # once per batch. Every frame it accepts has the model's sample rate (the others are dead-lettered).
        counted: dict[str, list] = {}  # topic -> [records, bytes]
        accepted = 0  # samples of audio accepted
        sids, spec_sr, accept, where = self._sids, self.spec.sr, self.engine.accept, self._stream_partition
        streams, replay_until = self.engine.streams, cp.replay_until  # (the previous owners' done markers)
        decode, max_bytes, max_s = wire.decode, c.max_frame_bytes, c.max_frame_seconds
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err.str())
                continue
            topic = msg.topic()
            tp = (topic, msg.partition())
            offset = msg.offset()
            if tp in high:
                if offset > high[tp]:
                    high[tp] = offset
            else:
                high[tp] = low[tp] = offset
            replay = cp.replaying(tp, offset) if replay_until else False  # processed (and published) by a previous owner
            value = msg.value()
            if not replay:
                n = counted.get(topic)
                if n is None:
                    n = counted[topic] = [0, 0]
                n[0] += 1
                n[1] += len(value) if value else 0
            try:
                key = msg.key()
                sid = sids.get(key) if key is not None else None
                if sid is None:
                    sid = wire.decode_stream_id(key)
                    if len(sids) >= 100_000:  # bounded: a flood of distinct keys cannot grow it for ever
                        sids.clear()
                    sids[key] = sid
                frame = decode(value, max_payload_bytes=max_bytes, max_seconds=max_s)
                if frame.sample_rate != spec_sr:
                    raise FrameError("sample_rate_mismatch",
                                     f"stream {sid!r} sends {frame.sample_rate} Hz; model "
                                     f"{self.bundle.ref} needs {self.spec.sr} Hz (resample in the producer)")
            except FrameError as exc:
                if not replay:
                    self._deadletter(msg, exc)
                continue
            if where.get(sid) == tp and sid in streams:  # the common case: a stream continuing where it was
                res = accept(sid, frame, now, offset)
            else:
                moved = self._moved(sid, tp, frame, replay)
                if moved is None:
                    continue  # an older frame from the partition the stream left: superseded
                res = accept(sid, frame, now, offset)
                where[sid] = tp
                if moved:
                    self._flag_first_window(sid)
            if not replay and res.status not in ("duplicate", "late"):
                accepted += frame.samples.shape[0]
        for topic, (n, nbytes) in counted.items():
            m.frames.labels(topic).inc(n)
            m.frame_bytes.labels(topic).inc(nbytes)
        if accepted:
            m.audio_seconds.inc(accepted / spec_sr)

        # serve the acknowledgements of earlier batches' outputs that arrived meanwhile (here and after the
        # features): otherwise they wait for this whole batch, and its offsets for the next commit after that
        poll = self.producer.poll
        poll(0)
        t0 = time.perf_counter()
        ready = self.engine.step(now)
        if ready:
            m.feature_seconds.observe(time.perf_counter() - t0)
        poll(0)
        shape = self.batch_shape
        shape[0] += 1
        shape[1] += len(msgs)
        shape[2] += len(ready)
        self._handle(self.engine.drain())
        for sid in self.engine.finished():
            self._stream_partition.pop(sid, None)
        m.active_streams.set(len(self.engine.streams))
        cp.store(high, low)
        cp.end(now)

    def _moved(self, sid: str, tp: tuple[str, int], frame, replay: bool) -> bool | None:
        """Partition growth re-maps keys (docs/guarantees.md, "Adding partitions"): True when ``frame`` continues,
        on this partition, a stream this analyzer has not seen the start of here: its frames came from another
        partition (a stream state is bound to one partition: offsets, done markers), or it is first seen
        mid-session outside a replay. Its state starts afresh (windows spanning the move cannot be computed)
        and its first window is flagged. None: the frame is an older one from the partition the stream left."""
        st = self.engine.streams.get(sid)
        prev = self._stream_partition.get(sid)
        if st is not None and prev is not None and prev != tp:
            if frame.session_id == st.session_id and frame.sequence < st.next_seq:
                self.metrics.sequence.labels("late").inc()
                return None
            self.engine.drop(sid)
            moved = frame.session_id == st.session_id
        else:
            moved = st is None and frame.sequence > 0 and not replay
        if moved:
            self.metrics.stream_moves.inc()
            log.info("stream %r continues on %s[%d] at sequence %d without its earlier frames here: state "
                     "rebuilt from this point, first window flagged", sid, tp[0], tp[1], frame.sequence)
        return moved

    def _flag_first_window(self, sid: str) -> None:
        st = self.engine.streams.get(sid)
        if st is not None:
            boundary = st.next_window * self.spec.hop  # like a resync: the first window after the move has gap: true
            st.gaps.append((boundary, boundary + 1))

    def _handle(self, events: list) -> None:
        """Publish the engine's events (one inference call for all windows): the windows' predictions, then their
        features and the gap markers in the events' order; count every sequence fact. Events of records a previous
        owner already processed (a replay after a restart or rebalance) only rebuild state."""
        m, cp = self.metrics, self.checkpoint
        if cp.replay_until:  # a previous owner's outputs are still ahead on some partition
            fresh = []
            for ev in events:
                tp = self._stream_partition.get(ev.stream_id)
                if ev.tag is not None and tp is not None and cp.replaying(tp, ev.tag):
                    if isinstance(ev, Window):
                        m.replayed.inc()
                    continue
                fresh.append(ev)
        else:
            fresh = events
        windows = [ev for ev in fresh if isinstance(ev, Window)]
        feats = None
        if windows:  # every window's records, for the whole batch in a few numpy/orjson calls
            scores = self._infer(windows)
            ok = np.isfinite(scores)
            finite = ok.all(axis=1).tolist()
            heads = [records.window_head(w) for w in windows]  # the fields both records of a window share
            keys = [w.stream_id.encode() for w in windows]
            preds = labels = None
            if self.detector is None:
                gated = self.bundle.is_gated(np.array([w.metrics["rms_dbfs"] for w in windows], np.float64)).tolist()
                preds, labels = self._predictions.encode_many(windows, np.where(ok, scores, 0.0),
                                                              now=time.monotonic(), gated=gated, heads=heads)
            # the batch's predictions first, then its features: the predictions reach the producer without waiting
            # for the features' encoding (per key, each topic's records keep their order; nothing orders the two
            # topics). Which partition's request librdkafka sends first stays its own choice (docs/performance.md)
            for i, w in enumerate(windows):
                self._publish_prediction(w, keys[i], scores[i], finite[i], preds and preds[i], labels and labels[i])
            if self.config.features_topic:
                feats = self._features.encode_many(windows, heads)
        i = 0
        for ev in fresh:
            if isinstance(ev, Window):
                if feats is not None:
                    self._emit(self.config.features_topic, feats[i], keys[i])
                i += 1
            elif isinstance(ev, Gap):
                self._gap(ev)
            elif isinstance(ev, SequenceEvent):
                m.sequence.labels(ev.kind).inc()

    def _gap(self, g: Gap) -> None:
        m, sr = self.metrics, g.sample_rate
        m.sequence.labels("gap").inc()
        if g.resynced:
            m.sequence.labels("resync").inc()
        m.gap_seconds.inc(g.samples / sr)
        log.info("stream %r: gap of %.3f s at sample %d%s", g.stream_id, g.samples / sr, g.start,
                 " (resynchronised)" if g.resynced else " (zero-filled, windows flagged)")
        m.gap_events.inc()
        if self.config.features_topic:
            self._emit(self.config.features_topic, records.dumps(records.gap(g)), g.stream_id.encode())

    def _fail(self, what: str) -> None:
        """Stop without committing anything more: a restart re-reads from the last commit."""
        if self._fatal is None:
            self._fatal = f"{what}; input offsets not committed, exiting so they are re-read on restart"
            log.error("%s", self._fatal)
        if self.checkpoint is not None:
            self.checkpoint.fail()
        self._stop.set()

    def _emit(self, topic: str, value: bytes | None, key: bytes | None, headers=None, ack: tuple | None = None) -> None:
        """Produce one output record, tracked by the checkpoint for the current batch; ``ack``: (window, label) of a
        prediction, whose acknowledgement is counted and timed (``_count_acks``)."""
        to_checkpoint = self.checkpoint.track()
        if to_checkpoint is not self._tracked:  # a new batch: one delivery callback for all its records
            self._tracked, self._delivered = to_checkpoint, self._delivery_callback(to_checkpoint)
        delivered = self._delivered if ack is None else self._ack_callback(self._delivered, ack)
        try:
            try:  # the common case without the helper's call; a full local queue waits in produce()
                self.producer.produce(topic, value=value, key=key, on_delivery=delivered, headers=headers)
            except BufferError:
                produce(self.producer, topic, value, key, on_delivery=delivered, headers=headers)
        except KafkaException as exc:  # exactly-once: the open transaction already failed (the checkpoint rewinds)
            if not self.checkpoint.refused(exc, to_checkpoint):
                raise
            self.metrics.delivery_errors.labels(topic).inc()

    def _delivery_callback(self, to_checkpoint):
        """Kafka's report on one output record of a batch, ``(err, msg)``: the checkpoint's count, failures logged."""
        errors = self.metrics.delivery_errors

        def delivered(err, msg):
            to_checkpoint(err)
            if err is not None:
                errors.labels(msg.topic()).inc()
                log.error("output to %s not delivered: %s", msg.topic(), err.str())
        return delivered

    def _ack_callback(self, delivered, ack: tuple):
        """A prediction's report: as ``delivered``, and once acknowledged, noted for ``_count_acks`` (the only work
        here: the callbacks of a thousand streams run 2000 times a second)."""
        acked, clock = self._acked, time.monotonic
        w, label = ack
        noted = (w.arrival, w.capture_time_ns, clock())  # ... and the prediction handed to the producer now

        def ack_delivered(err, msg):
            delivered(err, msg)
            if err is None:
                acked.append((label, *noted, clock()))  # served by our poll, at most ~2 ms after Kafka's ack
        return ack_delivered

    def _count_acks(self) -> None:
        """The predictions acknowledged since the last call, counted by label and timed, in bulk: from the window's
        last frame arriving (``audiostream_window_processing_seconds``) and from its capture on the producer's
        clock (``audiostream_end_to_end_latency_seconds``)."""
        if not self._acked:
            return
        done = self._acked[:]  # (label, arrival, capture ns, produced, acknowledged)
        self._acked.clear()  # (the callbacks run in our own poll: nothing is appended meanwhile)
        m = self.metrics
        for label, n in collections.Counter(d[0] for d in done).items():
            counter = self._label_counters.get(label)
            if counter is None:
                counter = self._label_counters[label] = m.predictions.labels(m.model, label)
            counter.inc(n)
        arrival, capture, produced, acked = np.array([d[1:] for d in done], dtype=np.float64).T
        # capture -> acknowledged: the acknowledgement's wall-clock time from its monotonic one
        wall, mono = time.time_ns(), time.monotonic()
        e2e = np.maximum(0.0, (wall - capture) / 1e9 - (mono - acked))
        latency = acked - arrival
        observe_many(m.window_latency, latency)
        observe_many(m.e2e_latency, e2e)
        if self.latencies is not None:
            self.latencies.extend(zip((produced - arrival).tolist(), latency.tolist(), e2e.tolist()))

    def _infer(self, windows: list[Window]) -> np.ndarray:
        c, m, b = self.config, self.metrics, self.bundle
        if c.before_inference is not None:
            c.before_inference(windows)
        t0 = time.perf_counter()
        scores = b.score(windows)
        m.inference_seconds.labels(m.model).observe(time.perf_counter() - t0)
        m.batch_windows.observe(len(windows))
        m.windows.labels(m.model).inc(len(windows))
        return scores

    def _publish_prediction(self, w: Window, key: bytes, s: np.ndarray, finite: bool, prediction: bytes | None,
                            label: str | None) -> None:
        """A window's prediction (``PredictionEncoder``'s) or detections; none for non-finite scores."""
        c, m, b = self.config, self.metrics, self.bundle
        if not finite:
            m.invalid_outputs.labels(m.model).inc()
            log.error("model %s returned non-finite scores for window %s; not published", b.ref, w.window_id)
            return
        if self.detector is not None:
            d = self.detector
            found = d.found(d.confidences(s))
            rec = records.detection(w, found, task=b.task, version=b.version, analyzer=self.instance,
                                    latency_s=time.monotonic() - w.arrival, threshold=d.threshold, filters=d.filters)
            self._emit(c.predictions_topic, records.dumps(rec), key, ack=(w, found[0][0] if found else "none"))
            return
        self._emit(c.predictions_topic, prediction, key, ack=(w, label))

    def _deadletter(self, msg, exc: FrameError) -> None:
        self.metrics.deadletter.labels(exc.reason).inc()
        log.warning("dead-letter %s[%d]@%d: %s: %s", msg.topic(), msg.partition(), msg.offset(), exc.reason, exc)
        headers = records.deadletter_headers(msg.headers(), reason=exc.reason, error=str(exc),
                                             source=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}",
                                             analyzer=self.instance)
        self._emit(self.config.deadletter_topic, msg.value(), msg.key(), headers=headers)  # NULL stays NULL


# -- CLI ---------------------------------------------------------------------------
def add_parser(sub):
    p = sub.add_parser("analyze", help="run the analyzer service (consumer group member)", description=__doc__)
    add_kafka_arguments(p)
    p.add_argument("--window-spec", default=None, metavar="FILE",
                   help="YAML window/feature spec this deployment expects; a bundle trained otherwise is refused")
    add_analyzer_arguments(p)  # one flag per setting of streamproc.config.ANALYZER_SETTINGS
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.set_defaults(func=run)


def read_window_spec(path: str) -> WindowSpec:
    import yaml
    try:
        data = yaml.safe_load(open(path))
    except OSError as exc:
        raise ConfigError(f"--window-spec {path!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--window-spec {path!r}: not valid YAML: {exc}") from None
    try:
        return WindowSpec.from_dict(data.get("window_spec", data) if isinstance(data, dict) else data)
    except (WindowSpecError, TypeError) as exc:
        raise ConfigError(f"--window-spec {path!r}: {exc}") from None


def config_from_args(args) -> AnalyzerConfig:
    """Flags > environment > --config file > defaults (streamproc.config)."""
    from streamproc.config import resolve_args
    s = resolve_args(args, flags_analyzer=analyzer_flags(args))
    a = dict(s.analyzer)
    if args.no_metrics:
        a["metrics_port"] = None
    return AnalyzerConfig(kafka=s.kafka, **a,
                          expect_spec=read_window_spec(args.window_spec) if args.window_spec else None)


def run(args) -> int:
    config = config_from_args(args)
    analyzer = Analyzer(config)
    freeze_heap()  # the model and every module are loaded: full collections need not walk them again
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: analyzer.stop())
    port = analyzer.start_metrics_server()
    b = analyzer.bundle
    classes = f"{len(b.labels)} classes, multi-label" if b.multilabel else ", ".join(b.labels)
    print(f"analyzer {analyzer.instance}: model {b.ref} ({classes}), "
          f"{'exactly-once' if config.exactly_once else 'at-least-once'}, "
          f"{config.frames_topic} -> {', '.join(t for t in (config.predictions_topic, config.features_topic) if t)}; "
          f"kafka {masked(config.kafka).get('bootstrap.servers')}"
          + (f"; metrics http://{config.metrics_addr}:{port}/metrics" if port else ""), file=sys.stderr, flush=True)
    analyzer.run()
    return 0
