"""``audiostream produce-mic``: a live microphone as a stream, built for small boxes on flaky networks.

Capture runs in PortAudio's callback (sounddevice), which only copies each block
into a bounded queue. A sender thread downmixes to mono, resamples to the stream
rate when the device cannot capture at it (soxr's streaming "HQ" resampler), cuts
wire-format v1 frames (default 100 ms) and hands them to Kafka through an outbox:

- at most ``--max-in-flight`` frames are inside librdkafka at a time (idempotent
  producer, retried forever: ``message.timeout.ms=0``), so during a broker outage
  the backlog waits in the outbox, in order;
- the outbox holds ``--buffer-seconds`` of audio; beyond that the oldest frames are
  dropped, counted, and the frame after a drop carries the gap flag, while its
  sequence number and sample offset jump, so the analyzer reports the hole;
- capture problems are never silent either: PortAudio input overflows and a full
  capture queue are counted and flag the next frame.

Sequence numbers and sample offsets continue across broker reconnects (one
producer session). SIGTERM/SIGINT stops capture, sends what is buffered with an
end-of-stream flag, and flushes.
"""
from __future__ import annotations

import collections
import logging
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Producer

from streamproc import wire
from streamproc.errors import AudiostreamError, ConfigError, bind_error
from streamproc.settings import TOPIC_FRAMES, add_kafka_arguments
from streamproc.config import kafka_config_from_args

from streamproc.kafka import KafkaUnavailable, check_reachable, ensure_topics, produce, producer_config

log = logging.getLogger("audiostream.mic")
CAPTURE_QUEUE_SECONDS = 10.0


class MicError(AudiostreamError):
    """The capture device cannot be used as asked."""


def import_sounddevice():
    try:
        import sounddevice as sd
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise MicError(f"PortAudio is not available ({exc}); install it (Debian: apt-get install libportaudio2)") from None
    except ImportError:
        raise MicError("sounddevice is not installed: pip install 'audiostream[producer]'") from None
    return sd


def input_devices() -> list[dict]:
    sd = import_sounddevice()
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_input_channels"] > 0:
            out.append({"index": i, "name": d["name"], "channels": d["max_input_channels"],
                        "default_samplerate": d["default_samplerate"], "hostapi": apis[d["hostapi"]]["name"]})
    return out


def resolve_device(device: str | int | None) -> tuple[int, dict]:
    sd = import_sounddevice()
    key = int(device) if isinstance(device, str) and device.isdigit() else device
    try:
        info = sd.query_devices(key, kind="input")
    except (ValueError, sd.PortAudioError) as exc:
        names = ", ".join(f"{d['index']}: {d['name']}" for d in input_devices()) or "none"
        raise MicError(f"no input device {device!r} ({exc}); input devices: {names} (see 'audiostream devices')") from None
    return info["index"], info


def choose_capture(index: int, info: dict, rate: int, channels: int) -> int:
    """The capture rate: the stream rate when the device takes it, else its default rate (resampled)."""
    sd = import_sounddevice()
    if channels > info["max_input_channels"]:
        raise MicError(f"device {info['name']!r} has {info['max_input_channels']} input channel(s); "
                       f"--channels {channels} is not possible")
    for candidate in (rate, int(info["default_samplerate"])):
        try:
            sd.check_input_settings(device=index, samplerate=candidate, channels=channels, dtype="int16")
            return candidate
        except Exception as exc:  # PortAudioError or ValueError, depending on the host API
            last = exc
    raise MicError(f"device {info['name']!r} supports neither {rate} Hz nor its default "
                   f"{info['default_samplerate']:.0f} Hz with {channels} channel(s) of 16-bit audio ({last})")


def check_bootstrap(servers: str) -> None:
    """A malformed or unresolvable address is a configuration error, not an outage to wait out."""
    for entry in servers.split(","):
        entry = entry.strip().split("://")[-1]
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bootstrap server {entry!r} is not HOST:PORT")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port))
        except socket.gaierror as exc:
            raise ConfigError(f"bootstrap server host {host!r} does not resolve ({exc.strerror})") from None


@dataclass
class MicStats:
    sent: int = 0              # acknowledged by Kafka
    bytes_sent: int = 0
    dropped: collections.Counter = None
    overflows: int = 0
    in_flight: int = 0
    outbox: int = 0

    def __post_init__(self):
        self.dropped = collections.Counter()


class MicProducer:
    """Capture -> frames -> Kafka, with a bounded outbox (see module doc)."""

    def __init__(self, *, kafka: dict, topic: str, stream_id: str, device=None, rate: int = 16000,
                 frame_ms: float = 100.0, channels: int = 1, buffer_seconds: float = 120.0, max_in_flight: int = 50,
                 metrics=None):
        self.key = stream_id.encode()
        wire.decode_stream_id(self.key)
        if rate <= 0 or frame_ms <= 0:
            raise ConfigError(f"--rate {rate} and --frame-ms {frame_ms} must be positive")
        self.topic = topic
        self.rate = rate
        self.frame_samples = round(rate * frame_ms / 1000)
        self.channels = channels
        self.index, self.info = resolve_device(device)
        self.capture_rate = choose_capture(self.index, self.info, rate, channels)
        self.resampler = None
        if self.capture_rate != rate:
            import soxr
            self.resampler = soxr.ResampleStream(self.capture_rate, rate, 1, dtype="int16", quality="HQ")
        self.session = wire.new_session_id()
        self.sequence = 0
        self.offset = 0
        self.pending_gap = False
        self.buf = np.zeros(0, dtype=np.int16)
        self.outbox: collections.deque = collections.deque()
        self.outbox_limit = max(1, round(buffer_seconds * 1000 / frame_ms))
        self.max_in_flight = max_in_flight
        # ~10 s of blocks between PortAudio's thread and ours (320 KB at 16 kHz mono): a loaded edge device
        # can stall the sending thread for seconds (CPU, a slow log reader); only a longer stall loses audio
        self.capture_q: queue.Queue = queue.Queue(maxsize=max(8, round(CAPTURE_QUEUE_SECONDS * 1000 / frame_ms)))
        self.stats = MicStats()
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.producer = Producer(producer_config(kafka, **{"message.timeout.ms": 0, "linger.ms": 10,
                                                           "queue.buffering.max.messages": max_in_flight * 4 + 100}))
        self._lock = threading.Lock()
        self.capture_lost = 0  # capture-rate samples dropped because the capture queue was full
        self._stream = None

    # -- capture (PortAudio's thread: copy and return) ------------------------------------
    def _callback(self, indata, frames, time_info, status) -> None:
        overflow = bool(status.input_overflow)
        try:
            self.capture_q.put_nowait((indata.copy(), time.time_ns(), overflow))
        except queue.Full:
            with self._lock:
                self.stats.dropped["capture_queue_full"] += frames
                self.capture_lost += frames
                self.stats.overflows += overflow

    def start(self) -> None:
        """Open and start the capture stream (idempotent)."""
        if self._stream is not None:
            return
        sd = import_sounddevice()
        blocksize = round(self.capture_rate * self.frame_samples / self.rate)
        try:
            self._stream = sd.InputStream(device=self.index, samplerate=self.capture_rate, channels=self.channels,
                                          dtype="int16", blocksize=blocksize, callback=self._callback,
                                          latency="high")  # larger device buffers: robustness over a few ms
            self._stream.start()
        except sd.PortAudioError as exc:
            raise MicError(f"cannot open input device {self.info['name']!r} at {self.capture_rate} Hz: {exc} "
                           "(busy, unplugged, or in use by another program?)") from None

    # -- sending (our thread) ---------------------------------------------------------------
    def _cut_frames(self, mono: np.ndarray, capture_ns: int, final: bool = False) -> None:
        with self._lock:
            lost, self.capture_lost = self.capture_lost, 0
        if lost:  # blocks lost before this one: send what preceded them, move the clock on, flag the next frame
            if self.buf.size:
                self._enqueue(self.buf, capture_ns, False)
                self.buf = np.zeros(0, dtype=np.int16)
            self.offset += round(lost * self.rate / self.capture_rate)
            self.pending_gap = True
        self.buf = np.concatenate((self.buf, mono)) if self.buf.size else mono
        n = self.frame_samples
        while self.buf.size >= n:
            chunk, self.buf = self.buf[:n], self.buf[n:]
            self._enqueue(chunk, capture_ns, False)
        if final:  # the rest (possibly nothing) closes the session
            self._enqueue(self.buf, capture_ns, True)
            self.buf = np.zeros(0, dtype=np.int16)

    def _enqueue(self, chunk: np.ndarray, capture_ns: int, last: bool) -> None:
        flags = (wire.FLAG_GAP_BEFORE if self.pending_gap else 0) | (wire.FLAG_END_OF_STREAM if last else 0)
        self.pending_gap = False
        value = wire.encode_pcm(chunk.tobytes(), channels=1, n_frames=chunk.size, sample_rate=self.rate,
                                sequence=self.sequence, sample_offset=self.offset, capture_time_ns=capture_ns,
                                session_id=self.session, flags=flags)
        self.sequence += 1
        self.offset += chunk.size
        if len(self.outbox) >= self.outbox_limit:
            self.outbox.popleft()  # oldest first: the newest audio matters most to a live analyzer
            with self._lock:
                self.stats.dropped["buffer_full"] += 1
            if self.outbox:  # the frame now first in line follows a hole
                seq, old = self.outbox[0]
                b = bytearray(old)
                b[8] |= wire.FLAG_GAP_BEFORE
                self.outbox[0] = (seq, bytes(b))
        self.outbox.append((time.monotonic(), value))

    def _feed_kafka(self) -> None:
        while self.outbox and len(self.producer) < self.max_in_flight:
            queued_at, value = self.outbox.popleft()
            produce(self.producer, self.topic, value, self.key, on_delivery=self._delivered(queued_at, len(value)))
        self.producer.poll(0)
        self.stats.outbox = len(self.outbox)
        self.stats.in_flight = len(self.producer)
        if self.metrics:
            self.metrics.update(self.stats)

    def _delivered(self, queued_at: float, size: int):
        def cb(err, msg):
            with self._lock:
                if err is not None:
                    self.stats.dropped["undeliverable"] += 1
                    log.error("frame not delivered: %s", err.str())
                else:
                    self.stats.sent += 1
                    self.stats.bytes_sent += size
                    if self.metrics:
                        self.metrics.send_latency.observe(time.monotonic() - queued_at)
        return cb

    def _note_overflow(self, overflow: bool) -> None:
        """PortAudio discarded input before this block (amount unknown): flag the next frame."""
        if overflow:
            self.stats.overflows += 1
            self.pending_gap = True
            log.warning("capture overflow: audio was lost before this block (flagged in the stream)")

    def _process(self, block: np.ndarray, capture_ns: int, final: bool = False) -> None:
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1).round().astype(np.int16)
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=final)
        self._cut_frames(np.ascontiguousarray(mono, dtype=np.int16), capture_ns, final)

    def run(self, status=None, status_every: float = 5.0) -> MicStats:
        """Send until stop(); then end the session and flush. Returns the final counters."""
        self.start()
        last_status = time.monotonic()
        try:
            while not self.stop_event.is_set():
                try:
                    block, capture_ns, overflow = self.capture_q.get(timeout=0.05)
                except queue.Empty:
                    pass
                else:
                    self._note_overflow(overflow)
                    self._process(block, capture_ns)
                self._feed_kafka()
                if status and time.monotonic() - last_status >= status_every:
                    status(self.stats)
                    last_status = time.monotonic()
        finally:
            if self._stream is not None:
                self._stream.abort()  # stop() waits for pending buffers; a stalled device would hang SIGTERM
                self._stream.close()
            while True:  # what was captured before the stop
                try:
                    block, capture_ns, overflow = self.capture_q.get_nowait()
                except queue.Empty:
                    break
                self._note_overflow(overflow)
                self._process(block, capture_ns)
            self._process(np.zeros((0, self.channels), dtype=np.int16), time.time_ns(), final=True)
            deadline = time.monotonic() + 30
            while (self.outbox or len(self.producer)) and time.monotonic() < deadline:
                self._feed_kafka()
                self.producer.flush(0.2)
            self.stats.dropped["undeliverable"] += len(self.outbox) + len(self.producer)
            if self.metrics:
                self.metrics.update(self.stats)
        return self.stats

    def stop(self) -> None:
        self.stop_event.set()


class ProducerMetrics:
    """Edge producer metrics (docs/metrics.md), on their own registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        r = self.registry = CollectorRegistry()
        self.sent = Counter("audiostream_producer_frames_sent_total", "Frames acknowledged by Kafka", registry=r)
        self.bytes = Counter("audiostream_producer_sent_bytes_total", "Bytes acknowledged by Kafka", registry=r)
        self.dropped = Counter("audiostream_producer_dropped_total", "Audio lost, by reason: frames "
                               "(buffer_full, undeliverable) or capture samples (capture_queue_full)",
                               ["reason"], registry=r)
        self.overflows = Counter("audiostream_producer_capture_overflows_total", "PortAudio input overflows",
                                 registry=r)
        self.outbox = Gauge("audiostream_producer_queue_frames", "Frames waiting in the outbox", registry=r)
        self.in_flight = Gauge("audiostream_producer_in_flight_frames", "Frames inside the Kafka client", registry=r)
        self.send_latency = Histogram("audiostream_producer_send_latency_seconds",
                                      "From a frame entering the outbox to Kafka's acknowledgement", registry=r,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        for reason in ("buffer_full", "capture_queue_full", "undeliverable"):
            self.dropped.labels(reason)
        self._seen = {"sent": 0, "bytes": 0, "overflows": 0, "dropped": collections.Counter()}

    def update(self, s: MicStats) -> None:
        """Advance the counters by what changed since the last call."""
        seen = self._seen
        self.sent.inc(s.sent - seen["sent"])
        self.bytes.inc(s.bytes_sent - seen["bytes"])
        self.overflows.inc(s.overflows - seen["overflows"])
        for reason, n in s.dropped.items():
            self.dropped.labels(reason).inc(n - seen["dropped"][reason])
        seen.update(sent=s.sent, bytes=s.bytes_sent, overflows=s.overflows, dropped=collections.Counter(s.dropped))
        self.outbox.set(s.outbox)
        self.in_flight.set(s.in_flight)


def add_parser(sub):
    p = sub.add_parser("produce-mic", help="stream a microphone (edge devices: buffering, reconnect)",
                       description=__doc__)
    p.add_argument("--device", default=None, help="input device index or name (see 'audiostream devices')")
    p.add_argument("--stream-id", required=True)
    add_kafka_arguments(p)
    p.add_argument("--topic", default=TOPIC_FRAMES)
    p.add_argument("--rate", type=int, default=16000, help="stream sample rate (the device is resampled if needed)")
    p.add_argument("--frame-ms", type=float, default=100.0)
    p.add_argument("--channels", type=int, default=1, help="channels to capture (downmixed to mono)")
    p.add_argument("--buffer-seconds", type=float, default=120.0,
                   help="audio kept while Kafka is unreachable; beyond it the oldest is dropped (counted)")
    p.add_argument("--max-in-flight", type=int, default=50, help="frames handed to the Kafka client at once")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--partitions", type=int, default=6, help="partitions if the topic must be created")
    p.set_defaults(func=run)


def format_status(stream_id: str, s: MicStats) -> str:
    dropped = sum(s.dropped.values())
    return (f"{stream_id}: {s.sent} frames sent ({s.bytes_sent / 1e6:.1f} MB), outbox {s.outbox}, "
            f"in flight {s.in_flight}, dropped {dropped}{' ' + dict(s.dropped).__repr__() if dropped else ''}, "
            f"overflows {s.overflows}")


def run(args) -> int:
    conf = kafka_config_from_args(args)
    check_bootstrap(conf["bootstrap.servers"])
    try:
        check_reachable(conf, timeout=5)
        ensure_topics(conf, {args.topic: args.partitions})
    except KafkaUnavailable as exc:
        print(f"warning: {exc}; capturing anyway and buffering up to {args.buffer_seconds:g} s until it answers",
              file=sys.stderr)
    metrics = ProducerMetrics() if args.metrics_port is not None else None
    if metrics:  # before the device opens: a taken port is an error naming it, not a traceback
        from prometheus_client import start_http_server
        try:
            start_http_server(args.metrics_port, addr=args.metrics_addr, registry=metrics.registry)
        except OSError as exc:
            raise bind_error(exc, args.metrics_addr, args.metrics_port) from None
    mic = MicProducer(kafka=conf, topic=args.topic, stream_id=args.stream_id, device=args.device, rate=args.rate,
                      frame_ms=args.frame_ms, channels=args.channels, buffer_seconds=args.buffer_seconds,
                      max_in_flight=args.max_in_flight, metrics=metrics)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: mic.stop())
    resample = f", resampled from {mic.capture_rate} Hz (soxr HQ)" if mic.resampler else ""
    mic.start()  # the device is open and capturing before we say so
    print(f"capturing {mic.info['name']!r} at {mic.rate} Hz{resample} as stream {args.stream_id!r} "
          f"(session {mic.session.hex()}) -> {args.topic}", file=sys.stderr, flush=True)
    status = (lambda s: print(format_status(args.stream_id, s), file=sys.stderr, flush=True)) \
        if sys.stderr.isatty() else None
    stats = mic.run(status=status)
    print("stopped: " + format_status(args.stream_id, stats), file=sys.stderr, flush=True)
    return 1 if stats.dropped["undeliverable"] else 0
