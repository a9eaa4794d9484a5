"""``audiostream demo``: the whole product on one machine in one command.

Starts a local Apache Kafka broker (deploy/kafka, unless ``--bootstrap-servers``
points at a cluster), the analyzer with the default model, replays a demo clip
as a live stream, and prints each prediction as it arrives. The demo clip is
made on first use (deterministic: tones, noise, silence) unless ``--clip`` names
your own file.
"""
from __future__ import annotations

import collections
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from producers.file import parse_speed, replay
from producers.kafka import ensure_topics, producer_config
from streamproc import audio
from streamproc.settings import TOPIC_FRAMES, kafka_config

from .analyzer import DEFAULT_MODEL, Analyzer, AnalyzerConfig
from .watch import format_line, subscribe

REPO = Path(__file__).resolve().parent.parent


def load_local_kafka():
    """deploy/kafka/local_kafka.py as a module (it is a standalone script, not a package)."""
    path = REPO / "deploy" / "kafka" / "local_kafka.py"
    spec = importlib.util.spec_from_file_location("audiostream_local_kafka", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def demo_clip() -> Path:
    """A 14 s clip: 4 s of speech (espeak-ng), 4 s of music (fluidsynth), 3 s of an environment sound, 3 s of
    silence -- one stretch per label of the default model. Written once to the cache at the generators' rate
    (16 kHz; the replay resamples to the model's), same bytes every time."""
    import tempfile

    import numpy as np
    import soundfile as sf

    from streamproc.training import dataset

    cache = Path(os.environ.get("AUDIOSTREAM_CACHE") or
                 Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audiostream")
    path = cache / "demo-clip-v2.wav"
    if path.exists():
        return path
    dataset.require_tools()
    rng = np.random.default_rng(2024)
    sr = dataset.SR
    parts = []
    with tempfile.TemporaryDirectory() as td:
        for label, seconds in (("speech", 4), ("music", 4), ("environment", 3)):
            x, _ = dataset.GENERATORS[label](rng, seconds * sr, Path(td))
            parts.append(np.asarray(x, np.float64) / (np.max(np.abs(x)) + 1e-9) * 0.5)
    parts.append(np.zeros(3 * sr))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    sf.write(str(tmp), np.concatenate(parts), sr, subtype="PCM_16")
    tmp.rename(path)
    return path


def add_parser(sub):
    p = sub.add_parser("demo", help="local broker + analyzer + replayed clip, printing live predictions",
                       description=__doc__)
    p.add_argument("--bootstrap-servers", "-b", default=None, help="use this cluster instead of a local broker")
    p.add_argument("--clip", default=None, help="audio file to replay (default: the generated demo clip)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--speed", type=parse_speed, default=1.0, help="replay speed (1.0 = real time, 'max' = unpaced)")
    p.add_argument("--duration", type=float, default=None, help="stop the replay after this many seconds of audio")
    p.add_argument("--metrics-port", type=int, default=9400, help="analyzer /metrics port (0 = any free)")
    p.set_defaults(func=run)


def run(args) -> int:
    logging.getLogger("audiostream.analyzer").setLevel(logging.WARNING)
    broker = None
    if args.bootstrap_servers:
        conf = kafka_config(args.bootstrap_servers)
    else:
        lk = load_local_kafka()
        print("demo: starting a local Apache Kafka broker (first run downloads its jars) ...", file=sys.stderr,
              flush=True)
        broker = lk.LocalKafka().start()
        conf = kafka_config(broker.bootstrap_servers)
        print(f"demo: broker ready on {broker.bootstrap_servers}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    analyzer = analyzer_thread = None
    try:
        ensure_topics(conf, {TOPIC_FRAMES: 3})
        analyzer = Analyzer(AnalyzerConfig(kafka=conf, model=args.model, metrics_port=args.metrics_port,
                                           partitions=3, group_id=f"audiostream-demo-{uuid.uuid4().hex[:6]}"))
        try:
            port = analyzer.start_metrics_server()
        except OSError:
            analyzer.config.metrics_port = 0
            port = analyzer.start_metrics_server()
        analyzer_thread = analyzer.run_in_background(on_error=lambda exc: stop.set())
        failure = analyzer_thread.errors  # surfaced in the main thread

        clip = Path(args.clip) if args.clip else demo_clip()
        y = audio.load(clip, analyzer.spec.sr)
        if args.duration:
            y = y[: int(args.duration * analyzer.spec.sr)]
        stream_id = f"demo-{uuid.uuid4().hex[:6]}"
        expected = len(analyzer.spec.window_bounds(len(y)))
        print(f"demo: model {analyzer.bundle.ref} ({', '.join(analyzer.bundle.labels)}); replaying {clip.name} "
              f"({len(y) / analyzer.spec.sr:.1f} s at {args.speed}x) as stream {stream_id!r}; "
              f"{expected} windows of {analyzer.spec.window_seconds:g} s every {analyzer.spec.hop_seconds:g} s; "
              f"metrics on http://127.0.0.1:{port}/metrics", file=sys.stderr, flush=True)
        sent = {}

        def produce_clip():
            producer = Producer(producer_config(conf))
            sent["result"] = replay(audio.to_s16(y), producer=producer, topic=TOPIC_FRAMES, stream_id=stream_id,
                                    sr=analyzer.spec.sr, frame_samples=analyzer.spec.sr // 10, speed=args.speed,
                                    stop=stop)

        threading.Thread(target=produce_clip, name="replay", daemon=True).start()
        labels = collections.Counter()
        got = 0
        watch_stop = threading.Event()

        def watchdog():
            # after the replay ends (or is interrupted), give the analyzer 30 s to publish the rest
            while "result" not in sent and not failure:
                time.sleep(0.1)
            watch_stop.wait(30)
            watch_stop.set()

        threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
        for p in subscribe(kafka=conf, from_beginning=True, stop=watch_stop, poll_timeout=0.1):
            if p.stream_id != stream_id:
                continue
            got += 1
            labels[p.label] += 1
            print(format_line(p), flush=True)
            if got >= expected:
                break
        watch_stop.set()
        if failure:
            raise failure[0]
        summary = ", ".join(f"{k} {v}" for k, v in labels.most_common())
        print(f"demo: {got}/{expected} windows predicted ({summary})", file=sys.stderr, flush=True)
        return 0 if got == expected else 1
    finally:
        if analyzer is not None:
            analyzer.stop()
            if analyzer_thread is not None:
                analyzer_thread.join(15)
        if broker is not None:
            broker.stop()
