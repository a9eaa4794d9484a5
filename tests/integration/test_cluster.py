"""A three-node KRaft cluster from the same Apache Kafka jars (issue #19): replication factor 3,
min.insync.replicas 2, nodes killed with SIGKILL while audio flows."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Producer

from consumers.local_broker import load_local_kafka
from producers.file import replay
from streamproc.kafka import ensure_topics, producer_config
from streamproc import wire

from .helpers import consume, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lk = load_local_kafka()
    c = lk.LocalCluster(3, workdir=tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


def test_cluster_is_replicated_as_production_runs_it(cluster):
    from confluent_kafka.admin import AdminClient, ConfigResource
    topic = f"cluster.{uuid.uuid4().hex[:6]}"
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    ensure_topics(conf, {topic: 3})
    admin = AdminClient(conf)
    md = admin.list_topics(topic, timeout=10).topics[topic]
    assert all(len(p.replicas) == 3 for p in md.partitions.values())
    configs = list(admin.describe_configs([ConfigResource("topic", topic)]).values())[0].result(10)
    assert configs["min.insync.replicas"].value == "2"
    assert cluster.controller() in (1, 2, 3)


@pytest.mark.parametrize("victim", ["frames leader", "active controller"])
def test_killing_a_node_mid_replay_loses_and_repeats_nothing(cluster, victim):
    """SIGKILL the leader of the stream's partition (or the active KRaft controller) while a file replays:
    every frame is acknowledged, and the topic holds each sequence number exactly once, in order (acks=all
    and idempotence in producer_config)."""
    topic = f"frames.{uuid.uuid4().hex[:6]}"
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    ensure_topics(conf, {topic: 1})
    wait_for(lambda: cluster.leader(topic) in (1, 2, 3), 90, "a leader with a full ISR")
    rng = np.random.default_rng(5)
    pcm = (rng.standard_normal(30 * 16000) * 2000).astype(np.int16)  # 30 s: 300 frames of 100 ms
    result = {}
    producer = Producer(producer_config(conf))
    sender = threading.Thread(target=lambda: result.update(r=replay(
        pcm, producer=producer, topic=topic, stream_id="porch", sr=16000, frame_samples=1600, speed=6.0)))
    sender.start()
    node = cluster.leader(topic) if victim == "frames leader" else cluster.controller()
    time.sleep(1.0)  # mid-replay: ~60 of 300 frames sent
    cluster.kill(node)
    sender.join(120)
    assert not sender.is_alive(), "the replay did not finish"
    r = result["r"]
    assert r.failed == 0 and r.delivered == r.frames == 300, r
    try:
        frames = [wire.decode(m.value()) for m in consume(conf, topic, count=300, timeout=90)]
        assert [f.sequence for f in frames] == list(range(300))  # none lost, none twice, in order
    finally:
        cluster.restart(node)
    wait_for(lambda: full_isr(cluster, topic, 1), 120, "the restarted node back in the ISR")


def full_isr(cluster, topic: str, partitions: int) -> bool:
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": cluster.bootstrap_servers}).list_topics(topic, timeout=10).topics[topic]
    return all(len(md.partitions[p].isrs) == len(cluster.nodes) for p in range(partitions))


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_analyzer_delivers_every_window_through_two_leader_kills(cluster, exactly_once):
    """Six streams replay while the leader of a frames partition, then (once it is back) the leader of a
    predictions partition, are SIGKILLed: every expected window is predicted (after dedupe); with
    --exactly-once a read_committed reader sees none twice."""
    from consumers.analyzer import Analyzer, AnalyzerConfig

    from .test_reliability import Streams, classify, read_predictions
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    tag = uuid.uuid4().hex[:6]
    t = {k: f"cl.{tag}.{k}" for k in ("frames", "predictions", "features", "deadletter")}
    ensure_topics(conf, {name: 3 for name in t.values()})
    wait_for(lambda: all(full_isr(cluster, n, 3) for n in t.values()), 90, "full ISRs")
    analyzer = Analyzer(AnalyzerConfig(kafka=dict(conf), frames_topic=t["frames"], predictions_topic=t["predictions"],
                                       features_topic=t["features"], deadletter_topic=t["deadletter"],
                                       group_id=f"cluster-{tag}", metrics_port=None, create_topics=False,
                                       exactly_once=exactly_once))
    th = analyzer.run_in_background()
    try:
        streams = Streams(6, 12.0)
        senders = streams.produce(conf, t["frames"], speed=2.0)  # ~6 s of sending
        time.sleep(1.5)
        first = cluster.leader(t["frames"], 0)
        cluster.kill(first)
        time.sleep(1.5)
        cluster.restart(first)
        wait_for(lambda: full_isr(cluster, t["predictions"], 3), 120, "the first victim back in every ISR")
        second = cluster.leader(t["predictions"], 0)
        cluster.kill(second)
        for s in senders:
            s.join(180)
        results = senders[0].results
        assert len(results) == 6 and all(r.failed == 0 and r.delivered == r.frames for r in results), results
        preds = read_predictions(conf, t["predictions"], streams.expected, timeout=240, read_committed=exactly_once)
        report = classify(preds, streams.expected)
        assert report["missing"] == 0 and report["unexpected"] == 0, report
        if exactly_once:
            assert report["duplicates"] == 0, report
        cluster.restart(second)
    finally:
        analyzer.stop()
        th.join(60)
    assert not th.is_alive() and not th.errors, th.errors
