"""``audiostream loadgen``: N synthetic real-time streams from one process.

Each stream replays one of a few pre-rendered clips (tone, noise, chirp,
silence ...) as wire-format v1 frames with its own session, sequence numbers
and sample offsets, paced at real time (one frame per stream every
``--frame-ms``). PCM payloads are cut from the pre-rendered clips, so the
per-frame cost is a header pack, a CRC and a produce call.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Producer

from streamproc import wire
from streamproc.settings import TOPIC_FRAMES, add_kafka_arguments
from streamproc.config import kafka_config_from_args

from streamproc.kafka import DeliveryTracker, check_reachable, ensure_topics, produce, producer_config


def clip_pool(sr: int, seconds: float = 4.0, seed: int = 0) -> list[np.ndarray]:
    """A few distinct int16 clips so streams do not all carry identical audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    clips = [0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * rng.standard_normal(t.size),
             0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t), 1e-4 * rng.standard_normal(t.size),
             0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2,
             0.05 * np.cumsum(rng.standard_normal(t.size)) / np.sqrt(t.size)]
    return [np.clip(np.round(c * 32768), -32768, 32767).astype("<i2") for c in clips]


@dataclass
class LoadResult:
    streams: int
    frames: int
    delivered: int
    failed: int
    seconds: float
    late_ticks: int  # ticks that started more than one frame late (the generator could not keep up)


def generate(producer: Producer, *, topic: str, streams: int, duration: float, sr: int = 16000,
             frame_ms: float = 100.0, prefix: str = "load", stop: threading.Event | None = None,
             report=None, stagger_s: float = 0.5) -> LoadResult:
    """Stream i starts ``(i % k) * frame_ms`` late, k = stagger_s / frame_ms: independent sources do not
    start in lock-step, so their windows do not all complete in the same instant."""
    stop = stop or threading.Event()
    n = round(sr * frame_ms / 1000)
    pool = clip_pool(sr)
    pool_bytes = [c.tobytes() for c in pool]
    frames_per_clip = [len(c) // n for c in pool]
    keys = [f"{prefix}-{i:05d}".encode() for i in range(streams)]
    sessions = [wire.new_session_id() for _ in range(streams)]
    clip_of = [i % len(pool) for i in range(streams)]
    phase = [(i * 7) % frames_per_clip[clip_of[i]] for i in range(streams)]  # streams start mid-clip
    tracker = DeliveryTracker()
    ticks = int(duration * 1000 / frame_ms)
    stagger = max(1, round(stagger_s * 1000 / frame_ms))
    t0 = time.monotonic()
    wall0 = time.time_ns()
    late = 0
    sent = 0
    tick = 0
    for tick in range(ticks):
        due = t0 + tick * frame_ms / 1000
        delay = due - time.monotonic()
        if delay > 0:
            producer.poll(0)
            if stop.wait(delay):
                break
        elif -delay > frame_ms / 1000:
            late += 1
        capture = wall0 + tick * n * 1_000_000_000 // sr
        for i in range(streams):
            local = tick - i % stagger
            if local < 0:
                continue
            c = clip_of[i]
            j = (phase[i] + local) % frames_per_clip[c]
            pcm = memoryview(pool_bytes[c])[j * n * 2:(j + 1) * n * 2]
            value = wire.encode_pcm(pcm, channels=1, n_frames=n, sample_rate=sr, sequence=local,
                                    sample_offset=local * n, capture_time_ns=capture, session_id=sessions[i])
            produce(producer, topic, value, keys[i], on_delivery=tracker)
            sent += 1
        producer.poll(0)
        if report and tick % max(1, int(5000 / frame_ms)) == 0:
            report(tick, ticks, sent, tracker)
    remaining = producer.flush(30)
    return LoadResult(streams, sent, tracker.delivered, tracker.failed + remaining, time.monotonic() - t0, late)


def add_parser(sub):
    p = sub.add_parser("loadgen", help="N synthetic real-time streams from one process", description=__doc__)
    add_kafka_arguments(p)
    p.add_argument("--topic", default=TOPIC_FRAMES)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--frame-ms", type=float, default=100.0)
    p.add_argument("--rate", type=int, default=16000)
    p.add_argument("--prefix", default="load", help="stream ids are PREFIX-00000 ...")
    p.add_argument("--partitions", type=int, default=6, help="partitions if the topic must be created")
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.cpu is not None:
        import os
        os.sched_setaffinity(0, {args.cpu})
    conf = kafka_config_from_args(args)
    check_reachable(conf)
    ensure_topics(conf, {args.topic: args.partitions})
    producer = Producer(producer_config(conf, **{"linger.ms": 20, "batch.size": 1_000_000,
                                                 "queue.buffering.max.kbytes": 1_048_576}))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def report(tick, ticks, sent, tracker):
        print(f"loadgen: {tick * args.frame_ms / 1000:.0f}/{ticks * args.frame_ms / 1000:.0f} s, {sent} frames sent, "
              f"{tracker.delivered} acknowledged, {tracker.failed} failed", file=sys.stderr, flush=True)

    r = generate(producer, topic=args.topic, streams=args.streams, duration=args.duration, sr=args.rate,
                 frame_ms=args.frame_ms, prefix=args.prefix, stop=stop, report=report)
    print(f"loadgen: {r.streams} streams, {r.frames} frames in {r.seconds:.1f} s: {r.delivered} acknowledged, "
          f"{r.failed} failed, {r.late_ticks} late ticks", file=sys.stderr, flush=True)
    return 1 if r.failed else 0
