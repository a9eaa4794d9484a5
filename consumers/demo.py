"""``audiostream demo``: the whole product on one machine in one command.

Starts a local Apache Kafka broker (deploy/kafka), the analyzer with the default
model, replays a demo clip as a live stream, and prints each prediction as it
arrives. The demo clip is made on first use and cached (deterministic: 4 s of
espeak-ng speech, 4 s of fluidsynth music, 3 s of an environment sound, 3 s of
silence) unless ``--clip`` names your own file.

With ``--bootstrap-servers`` it runs against your cluster without touching its
data: it creates topics of its own (``audiostream-demo-<id>.frames``,
``.predictions``, ``.features``, ``.deadletter``), analyses only its own stream
there, and deletes them at exit (``--keep-topics`` keeps them).
"""
from __future__ import annotations

import collections
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
from streamproc.kafka import admin_client, ensure_topics, producer_config
from streamproc import audio
from streamproc.errors import ConfigError
from streamproc.settings import TOPIC_DEADLETTER, TOPIC_FEATURES, TOPIC_FRAMES, TOPIC_PREDICTIONS, TOPIC_TRANSCRIPTS
from streamproc.config import kafka_config

from .analyzer import DEFAULT_MODEL, Analyzer, AnalyzerConfig
from .local_broker import load_local_kafka
from .watch import format_line, subscribe



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
    p.add_argument("--bootstrap-servers", "-b", default=None,
                   help="use this cluster instead of a local broker (in topics of the demo's own, deleted at exit)")
    p.add_argument("--keep-topics", action="store_true",
                   help="with --bootstrap-servers: keep the demo's own topics at exit")
    p.add_argument("--clip", default=None, help="audio file to replay (default: the generated demo clip)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--speed", type=parse_speed, default=1.0, help="replay speed (1.0 = real time, 'max' = unpaced)")
    p.add_argument("--duration", type=float, default=None, help="stop the replay after this many seconds of audio")
    p.add_argument("--metrics-port", type=int, default=9400, help="analyzer /metrics port (0 = any free)")
    p.set_defaults(func=run)


def demo_topics(external: bool) -> dict[str, str]:
    """The topics the demo uses: the standard ones on its own broker; on a user's cluster, topics of this
    run's own, so it neither reads other producers' frames nor publishes predictions for their streams."""
    if not external:  # the transcriber's topic too, so `audiostream transcriber` can join the demo's broker
        return {"frames": TOPIC_FRAMES, "predictions": TOPIC_PREDICTIONS, "features": TOPIC_FEATURES,
                "deadletter": TOPIC_DEADLETTER, "transcripts": TOPIC_TRANSCRIPTS}
    run_id = uuid.uuid4().hex[:8]
    return {kind: f"audiostream-demo-{run_id}.{kind}"
            for kind in ("frames", "predictions", "features", "deadletter", "transcripts")}


def delete_topics(conf: dict, names: list[str], timeout: float = 15.0) -> str | None:
    """Delete the demo's own topics; the error text if the cluster refused (e.g. no DeleteTopics ACL)."""
    admin = admin_client(conf)  # held until the futures resolve: a destroyed client fails them all
    futures = admin.delete_topics(names, operation_timeout=timeout)
    errors = []
    for name, fut in futures.items():
        try:
            fut.result(timeout)
        except Exception as exc:  # KafkaException with the broker's reason
            errors.append(f"{name}: {exc}")
    return "; ".join(errors) or None


def speed_text(speed: float) -> str:
    return "as fast as Kafka takes it" if speed == float("inf") else f"at {speed:g}x"


def run(args) -> int:
    logging.getLogger("audiostream.analyzer").setLevel(logging.WARNING)
    broker = None
    external = bool(args.bootstrap_servers)
    if external:
        conf = kafka_config(args.bootstrap_servers)
    else:
        lk = load_local_kafka()
        print("demo: starting a local Apache Kafka broker (first run downloads its jars) ...", file=sys.stderr,
              flush=True)
        broker = lk.LocalKafka().start()
        conf = kafka_config(broker.bootstrap_servers)
        print(f"demo: broker ready on {broker.bootstrap_servers}", file=sys.stderr, flush=True)
    topics = demo_topics(external)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    analyzer = analyzer_thread = None
    created: list[str] = []
    try:
        partitions = 1 if external else 3
        created = ensure_topics(conf, {name: partitions for name in topics.values()})
        if external:
            print(f"demo: analysing in topics of its own on {args.bootstrap_servers}: "
                  f"{topics['frames'].rsplit('.', 1)[0]}.* "
                  f"({'kept' if args.keep_topics else 'deleted'} at exit)", file=sys.stderr, flush=True)
        analyzer = Analyzer(AnalyzerConfig(kafka=conf, model=args.model, metrics_port=args.metrics_port,
                                           partitions=partitions, frames_topic=topics["frames"],
                                           predictions_topic=topics["predictions"], features_topic=topics["features"],
                                           deadletter_topic=topics["deadletter"],
                                           group_id=f"audiostream-demo-{uuid.uuid4().hex[:6]}"))
        try:
            port = analyzer.start_metrics_server()
        except ConfigError:  # the default port is taken (an analyzer runs here): any free one will do
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
              f"({len(y) / analyzer.spec.sr:.1f} s, {speed_text(args.speed)}) as stream {stream_id!r}; "
              f"{expected} windows of {analyzer.spec.window_seconds:g} s every {analyzer.spec.hop_seconds:g} s; "
              f"metrics on http://127.0.0.1:{port}/metrics", file=sys.stderr, flush=True)
        sent = {}

        def produce_clip():
            producer = Producer(producer_config(conf))
            sent["result"] = replay(audio.to_s16(y), producer=producer, topic=topics["frames"], stream_id=stream_id,
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
        for p in subscribe(kafka=conf, topic=topics["predictions"], from_beginning=True, stop=watch_stop,
                           poll_timeout=0.1):
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
        if external and created and not args.keep_topics:
            err = delete_topics(conf, created)
            if err:
                print(f"demo: could not delete its topics ({err}); delete them by hand", file=sys.stderr)
        if broker is not None:
            broker.stop()
