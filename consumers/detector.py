"""``audiostream detect``: a multi-label detector (BirdNET) served as a consumer group of its own.

The analyzer's engine, delivery rules and metrics, with a detector's defaults: the imported
``birdnet`` bundle (``audiostream models import-birdnet``), group ``audiostream-detector`` (scaled and
restarted independently of the sound-type analyzer, so a 85 ms-per-window model never delays
labels), output ``audio.detections``: one record per 3 s window with every class at or above the
threshold that the species and range filters allow (docs/models.md). No features or gap records
unless ``--features-topic`` is given: the detector's 48 kHz windows are not the analyzer's.

Streams must be at the bundle's rate (48 kHz); others are dead-lettered with reason
``sample_rate_mismatch`` (resample in the producer: ``produce-file --rate 48000``).
"""
from __future__ import annotations

import signal
import sys

from streamproc.config import add_analyzer_arguments, analyzer_flags, resolve_args
from streamproc.settings import TOPIC_DETECTIONS, add_kafka_arguments, masked

from .analyzer import Analyzer, AnalyzerConfig

DEFAULTS = {"model": "birdnet", "group_id": "audiostream-detector", "predictions_topic": TOPIC_DETECTIONS,
            "metrics_port": 9401}  # beside an analyzer on 9400


def add_parser(sub):
    p = sub.add_parser("detect", help="run a multi-label detector (BirdNET) as its own consumer group",
                       description=__doc__)
    add_kafka_arguments(p)
    add_analyzer_arguments(p)  # the analyzer's settings; --predictions-topic is where detections go
    g = p.add_argument_group("detections (BirdNET's rules)")
    g.add_argument("--threshold", type=float, default=None, help="minimum confidence (default: the bundle's, 0.25)")
    g.add_argument("--sensitivity", type=float, default=None,
                   help="0.1-1.5: higher reports more (BirdNET's sigmoid sensitivity; default 1.0)")
    g.add_argument("--species-list", default=None, metavar="FILE",
                   help="report only these classes (one per line: scientific, common or full label)")
    g.add_argument("--latitude", type=float, default=None, help="range filter: where the microphones are")
    g.add_argument("--longitude", type=float, default=None)
    g.add_argument("--week", type=int, default=-1, help="range filter: week of the year 1-48 (BirdNET's), -1 all year")
    g.add_argument("--location-threshold", type=float, default=None,
                   help="range filter: minimum occurrence of a species there and then (default 0.03)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.set_defaults(func=run)


def config_from_args(args) -> AnalyzerConfig:
    flags = analyzer_flags(args)
    for key, value in DEFAULTS.items():  # the detector's own defaults, unless a flag says otherwise
        if flags.get(key) is None:
            flags[key] = value
    s = resolve_args(args, flags_analyzer=flags)
    a = dict(s.analyzer)
    if args.features_topic is None:
        a["features_topic"] = None
    if args.no_metrics:
        a["metrics_port"] = None
    detector = {"threshold": args.threshold, "sensitivity": args.sensitivity, "species_list": args.species_list,
                "latitude": args.latitude, "longitude": args.longitude, "week": args.week,
                "location_threshold": args.location_threshold}
    return AnalyzerConfig(kafka=s.kafka, **a, detector=detector)


def run(args) -> int:
    config = config_from_args(args)
    det = Analyzer(config)
    if det.detector is None:
        print(f"detect: model {det.bundle.ref} gives one label per window, not detections; serve it with "
              f"'audiostream analyze --model {det.bundle.ref}'", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: det.stop())
    port = det.start_metrics_server()
    b, d = det.bundle, det.detector
    print(f"detector {det.instance}: model {b.ref} ({len(b.labels)} classes; threshold {d.threshold}, "
          f"sensitivity {d.sensitivity}{'; filters ' + ', '.join(d.filters) if d.filters else ''}; "
          f"{b.spec.window_length / b.spec.sr:g} s windows every {b.spec.hop / b.spec.sr:g} s at {b.spec.sr} Hz), "
          f"{'exactly-once' if config.exactly_once else 'at-least-once'}, group {config.group_id}, "
          f"{config.frames_topic} -> {config.predictions_topic}; kafka {masked(config.kafka).get('bootstrap.servers')}"
          + (f"; metrics http://{config.metrics_addr}:{port}/metrics" if port else ""), file=sys.stderr, flush=True)
    if (b.meta.get("license") or {}).get("id"):
        print(f"detector: {b.ref} is licensed {b.meta['license']['id']}: {b.meta['license'].get('notice', '')}",
              file=sys.stderr, flush=True)
    det.run()
    return 0
