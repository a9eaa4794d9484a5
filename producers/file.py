"""``audiostream produce-file``: replay an audio file as a live stream.

The file is decoded and resampled to the stream rate (streamproc.audio.load,
the same code offline analysis uses), cut into frames (default 100 ms), and
sent keyed by stream id with a fresh producer session id, consecutive sequence
numbers and sample offsets, and capture times on the replay clock. Real-time
pacing by default; ``--speed 4`` replays 4x faster, ``--speed max`` as fast as
Kafka takes it; ``--loop`` repeats the file within one session. The last frame
carries the end-of-stream flag. Exit code 1 if any frame was not acknowledged.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Producer

from streamproc import audio, wire
from streamproc.errors import ConfigError
from streamproc.progress import Progress
from streamproc.settings import TOPIC_FRAMES, add_kafka_arguments
from streamproc.config import kafka_config_from_args

from streamproc.kafka import DeliveryTracker, check_reachable, ensure_topics, produce, producer_config

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    frames: int
    samples: int
    delivered: int
    failed: int
    session_id: bytes
    last_error: str | None = None


def parse_speed(text: str) -> float:
    """'1.0', '4', 'max' -> replay speed factor (inf = unpaced)."""
    if str(text).lower() in ("max", "inf"):
        return float("inf")
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number (1.0 = real time) or 'max'") from None
    if not speed > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return speed


def frames_of(pcm: np.ndarray, frame_samples: int):
    for start in range(0, len(pcm), frame_samples):
        yield start, pcm[start:start + frame_samples]


def replay(pcm: np.ndarray, *, producer: Producer, topic: str, stream_id: str, sr: int,
           frame_samples: int, speed: float = 1.0, loop: bool = False, encoding: str = "pcm_s16le",
           stop: threading.Event | None = None, progress: Progress | None = None,
           session_id: bytes | None = None, flush_timeout: float = 30.0) -> ReplayResult:
    """Send ``pcm`` (int16 or float32 mono) as one stream session; return what Kafka acknowledged."""
    stop = stop or threading.Event()
    session = session_id or wire.new_session_id()
    tracker = DeliveryTracker()
    key = stream_id.encode("utf-8")
    wire.decode_stream_id(key)  # validates length / characters before anything is sent
    dtype = np.int16 if encoding == "pcm_s16le" else np.float32
    pcm = np.ascontiguousarray(pcm, dtype=dtype)
    t0_wall_ns = time.time_ns()
    t0 = time.monotonic()
    seq = 0
    offset = 0
    while True:
        last_pass = not loop
        for start, chunk in frames_of(pcm, frame_samples):
            if stop.is_set():
                last_pass = True
                break
            due = t0 + offset / (sr * speed)
            delay = due - time.monotonic()
            if delay > 0:
                producer.poll(0)
                if stop.wait(delay):
                    last_pass = True
                    break
            is_last = last_pass and start + frame_samples >= len(pcm)
            value = wire.encode_pcm(chunk.tobytes(), channels=1, n_frames=len(chunk), sample_rate=sr,
                                    sequence=seq, sample_offset=offset,
                                    capture_time_ns=t0_wall_ns + offset * 1_000_000_000 // sr,
                                    session_id=session, flags=wire.FLAG_END_OF_STREAM if is_last else 0,
                                    encoding=encoding)
            produce(producer, topic, value, key, on_delivery=tracker)
            producer.poll(0)
            seq += 1
            offset += len(chunk)
            if progress:
                progress.update(min(offset, len(pcm)) if not loop else offset % max(len(pcm), 1))
        if last_pass:
            break
    if stop.is_set():  # interrupted: close the session explicitly
        value = wire.encode_pcm(b"", channels=1, n_frames=0, sample_rate=sr, sequence=seq, sample_offset=offset,
                                capture_time_ns=time.time_ns(), session_id=session,
                                flags=wire.FLAG_END_OF_STREAM, encoding=encoding)
        produce(producer, topic, value, key, on_delivery=tracker)
        seq += 1
    remaining = producer.flush(flush_timeout)
    return ReplayResult(seq, offset, tracker.delivered, tracker.failed + remaining, session, tracker.last_error)


def add_parser(sub):
    p = sub.add_parser("produce-file", help="replay an audio file (wav/flac/ogg/mp3) as a live stream",
                       description=__doc__)
    p.add_argument("path", help="audio file to replay")
    p.add_argument("--stream-id", default=None, help="stream id (Kafka key); default: the file name without extension")
    add_kafka_arguments(p)
    p.add_argument("--topic", default=TOPIC_FRAMES)
    p.add_argument("--rate", type=int, default=16000, help="stream sample rate in Hz (the file is resampled)")
    p.add_argument("--frame-ms", type=float, default=100.0, help="audio per Kafka record, in milliseconds")
    p.add_argument("--speed", type=parse_speed, default=1.0,
                   help="1.0 = real time, 4 = four times faster, 'max' = unpaced")
    p.add_argument("--loop", action="store_true", help="repeat the file until interrupted")
    p.add_argument("--encoding", choices=sorted(wire.ENCODING_IDS), default="pcm_s16le")
    p.add_argument("--partitions", type=int, default=6, help="partitions if the frames topic must be created")
    p.add_argument("--max-duration", type=float, default=audio.FILE_MAX_SECONDS, metavar="SECONDS",
                   help=f"refuse a longer file, checked before decoding (default: {audio.FILE_MAX_SECONDS:g}; 0 = none)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path
    speed = args.speed
    if args.rate <= 0:
        raise ConfigError(f"--rate {args.rate} must be a positive sample rate in Hz")
    frame_samples = round(args.frame_ms * args.rate / 1000)
    if frame_samples < 1:
        raise ConfigError(f"--frame-ms {args.frame_ms} gives no samples at {args.rate} Hz")
    stream_id = args.stream_id or Path(args.path).stem
    y = audio.load(args.path, args.rate, max_seconds=args.max_duration or None)
    pcm = audio.to_s16(y) if args.encoding == "pcm_s16le" else y
    conf = kafka_config_from_args(args)
    check_reachable(conf)
    ensure_topics(conf, {args.topic: args.partitions})
    producer = Producer(producer_config(conf))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bar = Progress(f"replaying {args.path} as {stream_id!r}", len(pcm), enabled=not args.quiet)
    result = replay(pcm, producer=producer, topic=args.topic, stream_id=stream_id, sr=args.rate,
                    frame_samples=frame_samples, speed=speed, loop=args.loop, encoding=args.encoding,
                    stop=stop, progress=bar)
    if not args.quiet:
        print(f"sent {result.frames} frames ({result.samples / args.rate:.1f} s) of stream {stream_id!r}, "
              f"session {result.session_id.hex()}: {result.delivered} acknowledged, {result.failed} failed",
              file=sys.stderr)
    if result.failed:
        print(f"error: {result.failed} frame(s) were not acknowledged by Kafka (last error: {result.last_error})",
              file=sys.stderr)
        return 1
    return 0
