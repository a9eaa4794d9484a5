"""``audiostream tag``: the music tagger service. Frames in (``audio.frames``), music tags out (``audio.tags``).

A model family of its own (docs/architecture.md): its own consumer group on the frames topic, so the
tagger (~36 ms of CPU per 3 s window, docs/models.md) never delays the sound-type analyzer. Per stream
it keeps the musictags bundle's engine (~3 s log-mel windows) and the sound-type bundle's engine, and
publishes a record (docs/schemas/audio.tags.schema.json) for each tag window the sound type mostly
calls music, or for every window with ``--every-window``. Bad frames are counted and skipped (the analyzer dead-letters them).

Delivery: at least once. Offsets are committed only after the batch's records were acknowledged; a
restart resumes from the committed offset, so a window that was in progress then is not published
(the analyzer's replay-based recovery is not built into this service yet).
"""
from __future__ import annotations

import logging
import signal
import time

from streamproc import records, wire
from streamproc.errors import FrameError
from streamproc.settings import TOPIC_FRAMES, add_kafka_arguments

log = logging.getLogger("audiostream.tagger")
GROUP = "audiostream-tagger"


class TaggerService:
    def __init__(self, kafka: dict, tagger, *, frames_topic: str = TOPIC_FRAMES, tags_topic: str | None = None,
                 group_id: str = GROUP, auto_offset_reset: str = "earliest"):
        from confluent_kafka import Consumer, Producer

        from streamproc.kafka import client_logging, producer_config
        from streamproc.musicnn.tagging import TOPIC_TAGS
        self.tagger, self.tags_topic = tagger, tags_topic or TOPIC_TAGS
        self.consumer = Consumer(client_logging({**kafka, "group.id": group_id, "enable.auto.commit": False,
                                                 "auto.offset.reset": auto_offset_reset,
                                                 "isolation.level": "read_committed"}))
        self.producer = Producer(producer_config(kafka, **{"linger.ms": 5}))
        self.consumer.subscribe([frames_topic])
        self.published = self.bad_frames = self.failed = 0
        self._stop = False

    def stop(self, *_):
        self._stop = True

    def run(self, *, max_idle_s: float | None = None) -> None:
        idle_since = time.monotonic()
        try:
            while not self._stop:
                msgs = self.consumer.consume(500, timeout=0.2)
                now = time.monotonic()
                if not msgs:
                    if max_idle_s is not None and now - idle_since > max_idle_s:
                        return
                    self.tagger.step(now)
                    continue
                idle_since = now
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    try:
                        sid = wire.decode_stream_id(msg.key())
                        frame = wire.decode(msg.value())
                        if frame.sample_rate != self.tagger.tagger.spec.sr:
                            raise FrameError("sample_rate_mismatch", f"{frame.sample_rate} Hz")
                    except FrameError as exc:
                        self.bad_frames += 1
                        log.warning("skipping a bad frame at %s[%d]@%d: %s", msg.topic(), msg.partition(),
                                    msg.offset(), exc)
                        continue
                    self.tagger.accept(sid, frame, now)
                for rec in self.tagger.step(now):
                    self.producer.produce(self.tags_topic, records.dumps(rec), key=rec["stream_id"].encode(),
                                          on_delivery=self._delivered)
                self.tagger.finished()
                if self.producer.flush(30) != 0 or self.failed:
                    raise RuntimeError(f"{self.failed} tag record(s) not acknowledged; not committing")
                self.consumer.commit(asynchronous=False)  # only after the batch's records are acknowledged
        finally:
            self.consumer.close()

    def _delivered(self, err, msg):
        if err is not None:
            self.failed += 1
            log.error("tag record not delivered: %s", err)
        else:
            self.published += 1


def add_parser(sub):
    p = sub.add_parser("tag", help="music tagger service: audio.frames -> audio.tags (musicnn)", description=__doc__)
    p.add_argument("--model", default="musictags", help="the tagger bundle (task[:version] or a directory)")
    p.add_argument("--gate-model", default="soundtype", help="the sound-type bundle whose 'music' windows are tagged")
    p.add_argument("--every-window", action="store_true",
                   help="tag every window, music or not (the gate still runs: each record's music_share says which "
                        "were music, which the genre/mood summaries keep to); --gate-model none: no gate")
    p.add_argument("--tags-topic", default="audio.tags")
    p.add_argument("--frames-topic", default=TOPIC_FRAMES)
    p.add_argument("--group-id", default=GROUP)
    add_kafka_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from streamproc.config import kafka_config_from_args
    from streamproc.kafka import check_reachable, ensure_topics
    from streamproc.musicnn import tagging
    gate = None if str(args.gate_model).lower() == "none" else args.gate_model
    if gate is None and not args.every_window:
        from streamproc.errors import ConfigError
        raise ConfigError("--gate-model none tags every window: say so with --every-window")
    kafka = kafka_config_from_args(args)
    check_reachable(kafka)
    ensure_topics(kafka, {args.tags_topic: 6})
    tagger = tagging.load(args.model, gate, every_window=args.every_window)
    service = TaggerService(kafka, tagger, frames_topic=args.frames_topic, tags_topic=args.tags_topic,
                            group_id=args.group_id)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    log.info("tagging %s with %s (%s) -> %s", args.frames_topic, tagger.tagger.ref,
             "every window" if tagger.every_window else f"music windows of {tagger.gate.ref}", args.tags_topic)
    service.run()
    return 0
