"""``audiostream topics``: create the project's topics with explicit partition counts."""
from __future__ import annotations

from streamproc.kafka import admin_client, check_reachable, ensure_topics
from streamproc.config import kafka_config_from_args
from streamproc.settings import (TOPIC_DEADLETTER, TOPIC_FEATURES, TOPIC_FRAMES, TOPIC_PREDICTIONS,
                                 TOPIC_TRANSCRIPTS, add_kafka_arguments)

ALL_TOPICS = (TOPIC_FRAMES, TOPIC_PREDICTIONS, TOPIC_FEATURES, TOPIC_DEADLETTER, TOPIC_TRANSCRIPTS)


def add_parser(sub):
    p = sub.add_parser("topics", help="create or list audiostream's topics")
    p.add_argument("action", choices=("create", "list"))
    add_kafka_arguments(p)
    p.add_argument("--partitions", type=int, default=6,
                   help="partitions per topic: the unit of scale-out (analyzer replicas <= partitions)")
    p.set_defaults(func=run)


def run(args) -> int:
    conf = kafka_config_from_args(args)
    check_reachable(conf)  # unreachable: one clear error, exit 2 (not a KafkaException traceback)
    if args.action == "create":
        created = ensure_topics(conf, {t: args.partitions for t in ALL_TOPICS})
        for t in ALL_TOPICS:
            print(f"{t}: {'created' if t in created else 'exists'}")
        return 0
    md = admin_client(conf).list_topics(timeout=10)
    for name in ALL_TOPICS:
        t = md.topics.get(name)
        print(f"{name}: {len(t.partitions)} partitions" if t else f"{name}: missing")
    return 0
