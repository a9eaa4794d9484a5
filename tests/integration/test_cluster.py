"""A three-node KRaft cluster from the same Apache Kafka jars (issue #19): replication factor 3,
min.insync.replicas 2, nodes killed with SIGKILL while audio flows."""
from __future__ import annotations

import collections
import json
import os
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
    # proxied: a VIA listener per node, so the soak can cut one producer's network (tests/integration/netpause.py)
    c = lk.LocalCluster(3, workdir=tmp_path_factory.mktemp("cluster"), proxied=True)
    c.start()
    yield c
    c.stop()


def test_cluster_is_replicated_as_production_runs_it(cluster):
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource
    topic = f"cluster.{uuid.uuid4().hex[:6]}"
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    ensure_topics(conf, {topic: 3})
    admin = AdminClient(conf)
    md = admin.list_topics(topic, timeout=10).topics[topic]
    assert all(len(p.replicas) == 3 for p in md.partitions.values())

    def described():
        # each broker learns a new topic from the metadata log on its own; until the one answering has, this
        # request fails with UNKNOWN_TOPIC_OR_PART (CI saw it once), so ask until one answers
        try:
            return list(admin.describe_configs([ConfigResource("topic", topic)]).values())[0].result(10)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None
            raise
    configs = wait_for(described, 30, f"the brokers to describe {topic}")
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
    # (a node that has not seen a new topic's metadata yet answers without its partitions)
    return all(p in md.partitions and len(md.partitions[p].isrs) == len(cluster.nodes) for p in range(partitions))


# -- rolling restart, partition growth, chaos: streams that keep coming ---------------------------------------
def all_in_sync(cluster) -> bool:
    """Every partition of every topic (the internal offsets and transaction logs too) has its full ISR:
    what an operator waits for between two nodes of a rolling restart (no under-replicated partition)."""
    from confluent_kafka.admin import AdminClient
    try:
        md = AdminClient({"bootstrap.servers": cluster.bootstrap_servers}).list_topics(timeout=10)
    except Exception:
        return False
    return all(len(p.isrs) == len(cluster.nodes) for t in md.topics.values() for p in t.partitions.values())


class Waves:
    """``n`` real-time streams replaying ``clip_s`` clips back to back (each clip a new producer session) until
    ``stop()``; ``expected`` holds the window ids of every clip started, ``results`` every replay's outcome."""

    def __init__(self, conf: dict, topic: str, n: int, clip_s: float, speed: float = 1.0):
        from .test_reliability import Streams
        self.conf, self.topic, self.n, self.clip_s, self.speed = conf, topic, n, clip_s, speed
        self.expected: set = set()
        self.results: list = []
        self.clips = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._make = Streams
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        tag = uuid.uuid4().hex[:6]
        while not self._stop.is_set():
            wave = self._make(self.n, self.clip_s, prefix=f"w{tag}")  # the same ids, a new session each clip
            with self._lock:
                self.expected |= wave.expected
                self.clips += self.n
            senders = wave.produce(self.conf, self.topic, speed=self.speed)
            for s in senders:
                s.join(300)
            self.results += senders[0].results

    def stop(self, timeout: float = 300, wait: bool = True) -> None:
        self._stop.set()
        if not wait:  # (several stopped together: none starts a new clip while another finishes its own)
            return
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the streams did not finish"


def delivered_as_promised(report: dict, exactly_once: bool) -> bool:
    """Kafka's system-test verdicts: ALL-RECORDS-DELIVERED passes; MORE only in at-least-once and only when
    the duplicates are the sole difference (deduped count equal to the expected one); LESS never."""
    if report["missing"] or report["unexpected"]:
        return False
    return report["duplicates"] == 0 or not exactly_once


def start_pair(conf: dict, frames: str, tag: str):
    """Two analyzers on the same frames, one per delivery mode, each with its own group and outputs."""
    from consumers.analyzer import Analyzer, AnalyzerConfig
    out = {}
    for eos in (False, True):
        mode = "eos" if eos else "alo"
        t = {k: f"cl.{tag}.{mode}.{k}" for k in ("predictions", "features", "deadletter")}
        ensure_topics(conf, {n: 3 for n in t.values()})
        a = Analyzer(AnalyzerConfig(kafka=dict(conf), frames_topic=frames, predictions_topic=t["predictions"],
                                    features_topic=t["features"], deadletter_topic=t["deadletter"],
                                    group_id=f"cluster-{tag}-{mode}", metrics_port=None, create_topics=False,
                                    exactly_once=eos))
        out[eos] = (a, a.run_in_background(), t)
    return out


def stop_pair(pair) -> None:
    for a, th, _t in pair.values():
        a.stop()
    for a, th, _t in pair.values():
        th.join(60)
        if th.is_alive():  # say where it hangs (seen once in a rolling restart: exactly-once, no rewind logged)
            import sys
            import traceback
            frame = sys._current_frames().get(th.ident)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            print(f"{th.name} still running; checkpoint failed={a.checkpoint.failed} "
                  f"txn_open={getattr(a.checkpoint, 'txn_open', None)}:\n{stack}", file=sys.stderr)
        assert not th.is_alive() and not th.errors, th.errors


def group_coordinator(conf: dict, group: str) -> int:
    """The node coordinating ``group`` (its __consumer_offsets partition's leader), once the group has members."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient
    admin = AdminClient(conf)

    def described():
        try:
            d = admin.describe_consumer_groups([group])[group].result(10)
        except KafkaException:  # (NOT_COORDINATOR while the group is being created)
            return None
        return d.coordinator.id if d.members else None
    return wait_for(described, 60, f"group {group} to have members")


def test_analyzer_delivers_every_window_through_two_leader_kills(cluster):
    """Six streams replay into two analyzers (at-least-once and exactly-once, one run for both) while the leader
    of a frames partition, then (once it is back) the leader of a predictions partition (the exactly-once
    group's coordinator where it leads one), are SIGKILLed, the second kept down while six more streams are
    sent and to the end: every expected window is predicted by each (after dedupe); a read_committed reader of
    the exactly-once one sees none twice. An abortable transactional error on the way rewinds instead of
    stopping, and so does an offsets call that hangs on the dead coordinator (librdkafka#5456)."""
    from .test_reliability import Streams, classify, read_predictions
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    tag = uuid.uuid4().hex[:6]
    frames = f"cl.{tag}.frames"
    ensure_topics(conf, {frames: 3})
    pair = start_pair(conf, frames, tag)
    try:
        outputs = [frames] + [n for _a, _th, t in pair.values() for n in t.values()]
        wait_for(lambda: all(full_isr(cluster, n, 3) for n in outputs), 90, "full ISRs")
        streams = Streams(6, 12.0)
        senders = streams.produce(conf, frames, speed=2.0)  # ~6 s of sending
        time.sleep(1.5)
        first = cluster.leader(frames, 0)
        cluster.kill(first)
        time.sleep(1.5)
        cluster.restart(first)
        eos_predictions = pair[True][2]["predictions"]
        wait_for(lambda: full_isr(cluster, eos_predictions, 3), 120, "the first victim back in every ISR")
        # the second victim leads a predictions partition and, where one does, is the exactly-once group's
        # coordinator too: kept down, it once held send_offsets_to_transaction for minutes (librdkafka#5456)
        leaders = {cluster.leader(eos_predictions, p) for p in range(3)}
        coordinator = group_coordinator(conf, pair[True][0].config.group_id)
        second = coordinator if coordinator in leaders else cluster.leader(eos_predictions, 0)
        print(f"second victim: node {second} (exactly-once group coordinator: node {coordinator}); "
              f"{sum(s.is_alive() for s in senders)} of 6 streams still sending")
        cluster.kill(second)
        # six more streams, sent with the second victim down: transactions must commit without it
        after = Streams(6, 6.0)
        senders += after.produce(conf, frames, speed=2.0)
        expected = streams.expected | after.expected
        for s in senders:
            s.join(180)
        results = senders[0].results + senders[6].results
        assert len(results) == 12 and all(r.failed == 0 and r.delivered == r.frames for r in results), results
        try:
            for eos, (a, _th, t) in pair.items():
                preds = read_predictions(conf, t["predictions"], expected, timeout=240, read_committed=eos)
                report = classify(preds, expected)
                rewinds = a.metrics.registry.get_sample_value("audiostream_transaction_rewinds_total")
                replaced = a.metrics.registry.get_sample_value(
                    "audiostream_transactional_producer_replacements_total")
                mode = "exactly-once" if eos else "at-least-once"
                print(f"two leader kills, {mode}: {report}, rewinds {rewinds:.0f}, producers replaced {replaced:.0f}")
                assert report["missing"] == 0 and report["unexpected"] == 0, report
                if eos:
                    assert report["duplicates"] == 0, report
        finally:
            cluster.restart(second)
    finally:
        stop_pair(pair)  # an abortable error rewinds, it does not stop: no analyzer errors


def test_exactly_once_refused_output_aborts_rewinds_and_delivers_once(cluster):
    """An output the cluster refuses inside a transaction (here: the predictions topic's max.message.bytes
    lowered below a prediction's size, then restored, the deterministic stand-in for a refusal during a leader
    failover) aborts the transaction; the analyzer rewinds to its last commit instead of stopping, rebuilds the
    streams from the log, and a read_committed reader sees every window once. The refusal arrives while batches
    produce: librdkafka then refuses produce() itself ("Erroneous state"), which once crashed the analyzer
    (issue #19: 0 of 44); and after a refused batch the next one on that partition meets a sequence gap that
    needs an epoch bump in the abort (KIP-360)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
    from consumers.analyzer import Analyzer, AnalyzerConfig

    from .test_reliability import Streams, classify, read_predictions
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    # the test before restarts its last victim without waiting: start only once every partition (the
    # transaction state log's too) has its full ISR, so no coordinator or leader moves under this test's
    # transactions (an abort sent to a moving coordinator can block for minutes: librdkafka#3779)
    wait_for(lambda: all_in_sync(cluster), 180, "every partition's full ISR", step=1.0)
    tag = uuid.uuid4().hex[:6]
    t = {k: f"cl.{tag}.{k}" for k in ("frames", "predictions", "features", "deadletter")}
    ensure_topics(conf, {name: 2 for name in t.values()})
    admin = AdminClient(conf)

    def max_bytes(value: str) -> None:
        entry = ConfigEntry("max.message.bytes", value, incremental_operation=AlterConfigOpType.SET)

        def altered() -> bool:  # (a broker that has not caught up with the new topic yet does not know it)
            try:
                for f in admin.incremental_alter_configs([ConfigResource("topic", t["predictions"],
                                                                         incremental_configs=[entry])]).values():
                    f.result(30)
                return True
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    return False
                raise
        wait_for(altered, 60, f"max.message.bytes={value} on {t['predictions']}")

    # A probe: a transaction (always aborted: a read_committed reader never sees it) with a 300-byte record to
    # each predictions partition. Each leader applies an altered config from the metadata log on its own time;
    # an analyzer started before every leader refuses could see all its outputs accepted and never rewind
    # (CI timed out waiting for the rewind once).
    probe = Producer(producer_config(conf, **{"transactional.id": f"probe-{tag}"}))
    probe.init_transactions(60)

    def refused_by_every_leader() -> bool:
        outcomes = []
        probe.begin_transaction()
        for partition in range(2):
            probe.produce(t["predictions"], b"p" * 300, partition=partition,
                          on_delivery=lambda err, _msg: outcomes.append(err))
        probe.flush(30)
        probe.abort_transaction(30)
        return len(outcomes) == 2 and all(e is not None and e.code() == KafkaError.MSG_SIZE_TOO_LARGE
                                          for e in outcomes)
    max_bytes("200")  # a prediction is larger: refused by the broker
    wait_for(refused_by_every_leader, 60, "every predictions leader to refuse a record over 200 bytes", step=0.5)
    analyzer = Analyzer(AnalyzerConfig(kafka=dict(conf), frames_topic=t["frames"], predictions_topic=t["predictions"],
                                       features_topic=t["features"], deadletter_topic=t["deadletter"],
                                       group_id=f"cluster-{tag}", metrics_port=None, create_topics=False,
                                       exactly_once=True))
    th = analyzer.run_in_background()
    reg = analyzer.metrics.registry
    try:
        streams = Streams(4, 6.0)
        senders = streams.produce(conf, t["frames"], speed=3.0)
        def rewound() -> bool:
            assert th.is_alive(), th.errors  # not stopped (a dead analyzer would otherwise be waited on for 120 s)
            return (reg.get_sample_value("audiostream_transaction_rewinds_total") or 0) >= 1
        try:
            wait_for(rewound, 120, "a transaction aborted and rewound")
        except AssertionError:
            # seen once in a full-module run on a loaded machine (refused outputs logged, then no rewind, no
            # stop within 120 s, not reproduced in isolation): say where every thread is, the analyzer's too
            import faulthandler
            import sys
            faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)  # fd 2: captured by pytest
            print(f"checkpoint: txn_open={analyzer.checkpoint.txn_open} failed={analyzer.checkpoint.failed} "
                  f"rewinds={analyzer.checkpoint.rewinds}", file=sys.stderr)
            raise
        max_bytes("1048588")  # the default: outputs accepted again
        for s in senders:
            s.join(120)
        preds = read_predictions(conf, t["predictions"], streams.expected, timeout=180, read_committed=True)
        report = classify(preds, streams.expected)
        assert report["verdict"] == "all-delivered", (report, th.errors)  # (an analyzer that died says why)
        assert (reg.get_sample_value("audiostream_offset_commits_total", {"outcome": "aborted"}) or 0) >= 1
        print(f"rewinds: {reg.get_sample_value('audiostream_transaction_rewinds_total'):.0f}")
    finally:
        analyzer.stop()
        th.join(60)
    assert not th.is_alive() and not th.errors, th.errors


def test_rolling_restart_of_every_node_under_twenty_real_time_streams(cluster):
    """Each node in turn stopped (controlled shutdown) and started again, waiting for every partition's full
    ISR in between, while 20 streams replay short clips in real time into two analyzers (at-least-once and
    exactly-once): windows expected against predictions received, classified like Kafka's system tests."""
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    tag = uuid.uuid4().hex[:6]
    frames = f"cl.{tag}.frames"
    ensure_topics(conf, {frames: 3})
    wait_for(lambda: all_in_sync(cluster), 120, "full ISRs")
    pair = start_pair(conf, frames, tag)
    try:
        waves = Waves(conf, frames, n=20, clip_s=3.0)
        for node in (n.node_id for n in cluster.nodes):
            t0 = time.monotonic()
            cluster.stop_node(node)
            t1 = time.monotonic()
            cluster.restart(node)
            t2 = time.monotonic()
            wait_for(lambda: all_in_sync(cluster), 180, f"node {node} back in every ISR")
            print(f"node {node}: stopped in {t1 - t0:.1f} s, started in {t2 - t1:.1f} s, "
                  f"in sync {time.monotonic() - t2:.1f} s later")
        waves.stop()
        assert waves.results and all(r.failed == 0 and r.delivered == r.frames for r in waves.results), \
            [r for r in waves.results if r.failed or r.delivered != r.frames][:3]
        from .test_reliability import classify, read_predictions
        for eos, (a, _th, t) in pair.items():
            preds = read_predictions(conf, t["predictions"], waves.expected, timeout=180, read_committed=eos)
            report = classify(preds, waves.expected)
            print(f"rolling restart, {'exactly-once' if eos else 'at-least-once'}: {waves.clips} clips, {report}")
            assert delivered_as_promised(report, eos), report
    finally:
        stop_pair(pair)


def test_adding_partitions_moves_streams_with_the_first_window_after_the_move_flagged(cluster):
    """Partitions added to the frames topic while 8 streams run: some keys re-map to a new partition mid-stream
    (docs/guarantees.md, "Adding partitions"). A stream that did not move loses nothing and is never flagged; a
    stream that moved restarts on its new partition with its first window there flagged (`gap: true`), and the
    only windows missing are the ones just before that flag (their audio straddles the move), none after."""
    from confluent_kafka.admin import AdminClient, NewPartitions
    from consumers.analyzer import Analyzer, AnalyzerConfig

    from .test_reliability import SPEC, Streams
    # producers and the analyzer notice the new partitions within a second (librdkafka's default is 5 min)
    conf = {"bootstrap.servers": cluster.bootstrap_servers, "topic.metadata.refresh.interval.ms": 1000}
    tag = uuid.uuid4().hex[:6]
    t = {k: f"cl.{tag}.{k}" for k in ("frames", "predictions", "features", "deadletter")}
    ensure_topics(conf, {name: 2 for name in t.values()})
    analyzer = Analyzer(AnalyzerConfig(kafka=dict(conf), frames_topic=t["frames"], predictions_topic=t["predictions"],
                                       features_topic=t["features"], deadletter_topic=t["deadletter"],
                                       group_id=f"cluster-{tag}", metrics_port=None, create_topics=False))
    th = analyzer.run_in_background()
    try:
        streams = Streams(8, 12.0, prefix="grow")  # fixed ids: which keys move from 2 to 6 partitions is fixed
        senders = streams.produce(conf, t["frames"], speed=2.0)
        time.sleep(2.5)
        admin = AdminClient(conf)
        admin.create_partitions([NewPartitions(t["frames"], 6)])[t["frames"]].result(30)
        for s in senders:
            s.join(120)
        assert all(r.failed == 0 and r.delivered == r.frames for r in senders[0].results)
        last = {sid: max(a for w in streams.expected if w.startswith(sid + "/") for a in [int(w.rsplit("/", 1)[1])])
                for sid in streams.ids}
        frames = consume(conf, t["frames"], count=sum(r.frames for r in senders[0].results), timeout=60)
        partitions = collections.defaultdict(set)
        for m in frames:
            partitions[m.key().decode()].add(m.partition())
        moved = {sid for sid, ps in partitions.items() if len(ps) > 1}
        assert moved, f"no stream re-mapped: {dict(partitions)}"

        def all_ends_seen(msgs):
            seen = {(p["stream_id"], p["start_sample"]) for p in map(lambda m: json.loads(m.value()), msgs)}
            return all((sid, a) in seen for sid, a in last.items())
        preds = [json.loads(m.value()) for m in consume(conf, t["predictions"], until=all_ends_seen, timeout=120,
                                                          settle=2.0)]
    finally:
        analyzer.stop()
        th.join(60)
    assert not th.is_alive() and not th.errors, th.errors
    got = collections.defaultdict(dict)
    for p in preds:
        got[p["stream_id"]][p["start_sample"]] = p["gap"]
    for sid in streams.ids:
        want = {a for a, _b in SPEC.window_bounds(len(streams.pcm[streams.ids.index(sid)]))}
        missing = sorted(want - set(got[sid]))
        flagged = sorted(a for a, g in got[sid].items() if g)
        print(f"{sid}: partitions {sorted(partitions[sid])}, {len(got[sid])}/{len(want)} windows, "
              f"missing {missing}, flagged {flagged}")
        if sid not in moved:
            assert not missing and not flagged, (sid, missing, flagged)
            continue
        assert flagged, f"{sid} moved but no window is flagged"
        first = flagged[0]
        # the hole is right before the flag: a contiguous run of hops ending at the flagged window
        assert missing == list(range(first - len(missing) * SPEC.hop, first, SPEC.hop)), (sid, missing, first)
    assert analyzer.metrics.registry.get_sample_value("audiostream_stream_moves_total") >= len(moved)


def test_leader_held_down_past_the_mic_buffers_counts_every_drop_and_explains_every_gap(cluster, tmp_path):
    """The leader of the microphone's partition held down (SIGSTOP: silent, still registered, still leader, as
    Kafka's process-stop fault does) for longer than the producer's buffers hold (1 s outbox + 5 frames in
    flight), then resumed, while it captures and an analyzer reads: the producer drops the oldest frames and
    counts them (docs/architecture.md), the topic has exactly that many sequence holes and nothing else missing,
    and the analyzer's gap markers account for every dropped frame: nothing is silently missing."""
    import re

    from consumers.analyzer import Analyzer, AnalyzerConfig

    from .fakemic import PulseMic
    from .test_mic import frames_of, known_signal, start_producer, stop_producer
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    tag = uuid.uuid4().hex[:6]
    t = {k: f"cl.{tag}.{k}" for k in ("frames", "predictions", "features", "deadletter")}
    ensure_topics(conf, {name: 1 for name in t.values()})
    wait_for(lambda: all(full_isr(cluster, n, 1) for n in t.values()), 90, "full ISRs")
    mic = PulseMic(tmp_path / "pulse").start()
    analyzer = Analyzer(AnalyzerConfig(kafka=dict(conf), frames_topic=t["frames"], predictions_topic=t["predictions"],
                                       features_topic=t["features"], deadletter_topic=t["deadletter"],
                                       group_id=f"cluster-{tag}", metrics_port=None, create_topics=False))
    th = analyzer.run_in_background()
    paused = None
    try:
        p = start_producer(mic, cluster.bootstrap_servers, t["frames"], "--buffer-seconds", "1", "--max-in-flight", "5")
        player = mic.play(known_signal(8.0, seed=6))
        time.sleep(2.0)
        paused = cluster.leader(t["frames"])
        cluster.pause(paused)
        time.sleep(4.0)
        cluster.resume(paused)
        paused = None
        assert player.wait(60)
        time.sleep(1.0)
        rc, err = stop_producer(p)
        assert rc == 0, err
        dropped = int(re.search(r"'buffer_full': (\d+)", err).group(1))
        sent = int(re.search(r"porch: (\d+) frames sent", err).group(1))
        assert dropped >= 10, err  # the outage outlasted the buffers
        frames = frames_of(consume(conf, t["frames"], until=lambda ms: ms and wire.decode(ms[-1].value()).end_of_stream,
                                   timeout=120))
        seqs = [f.sequence for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        missing = set(range(seqs[-1] + 1)) - set(seqs)
        assert len(missing) == dropped and sent == len(frames), (len(missing), dropped, sent, len(frames))

        def gap_frames(msgs):
            records = (json.loads(m.value()) for m in msgs)
            return sum(r["missing_frames"] for r in records if r.get("type") == "gap")
        features = consume(conf, t["features"], until=lambda ms: gap_frames(ms) >= dropped, timeout=120, settle=2.0)
        markers = [json.loads(m.value()) for m in features if json.loads(m.value()).get("type") == "gap"]
        print(f"leader held down: {dropped} frames dropped and counted, {len(missing)} sequence holes, "
              f"{len(markers)} gap marker(s) covering {gap_frames(features)} frames")
        assert gap_frames(features) == dropped, markers  # every dropped frame is in a gap the analyzer reported
    finally:
        if paused is not None:
            cluster.resume(paused)
        analyzer.stop()
        th.join(60)
        mic.stop()
    assert not th.is_alive() and not th.errors, th.errors


# -- the chaos soak --------------------------------------------------------------------------------------------
class Replica:
    """One ``audiostream analyze`` process (a replica of the group), its output in a file, its RSS sampled."""

    def __init__(self, cmd: list[str], log_dir, name: str, static: bool):
        import subprocess
        self.name, self.static = name, static
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.peak_rss = 0
        self.stopped = self.restarted = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> int:
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
        except OSError:
            pass
        return self.peak_rss

    def stop(self, sig, timeout: float = 90) -> int | None:
        self.stopped = True
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except Exception:
            self.proc.kill()
            return self.proc.wait(30)


def soak(cluster, tmp_path, *, seconds: float, streams: int, seed: int, every: float, bounces: bool,
         clip_s: float = 6.0, max_replicas: int = 3, net_pause_s: float = 0.0, net_pause_at: float | None = None,
         paused_streams: int = 1) -> dict:
    """``streams`` real-time streams (``clip_s`` clips back to back) for ``seconds`` while a seeded schedule,
    every ``every`` s, SIGKILLs or SIGTERMs a replica (restarted at once, as a supervisor does), adds a replica
    or removes one (rebalances), (``bounces``) SIGKILLs a broker node for a few seconds and (``net_pause_s``)
    pauses the network of one more producer (``paused_streams`` streams, reaching the cluster only through
    pausable proxies) for ``net_pause_s`` s; with ``net_pause_at``, once at that second of the run instead of
    on the schedule.
    Returns the accounting: windows expected / received / duplicated, gap markers and the frames they cover
    against producer drops, peak RSS."""
    import random
    import signal as sig

    from .netpause import Proxies
    from .test_reliability import analyze_cmd, classify, read_predictions
    rng = random.Random(seed)
    conf = {"bootstrap.servers": cluster.bootstrap_servers}
    tag = uuid.uuid4().hex[:6]
    t = {k: f"soak.{tag}.{k}" for k in ("frames", "predictions", "features", "deadletter")}
    ensure_topics(conf, {n: 6 for n in t.values()})
    wait_for(lambda: all(full_isr(cluster, n, 6) for n in t.values()), 120, "full ISRs")
    group = f"soak-{tag}"
    # a replica killed without leaving the group holds its partitions until the session times out: 10 s here
    extra = ("-X", "session.timeout.ms=10000", "-X", "heartbeat.interval.ms=1000")
    counts = collections.Counter()
    replicas: list[Replica] = []
    serial = iter(range(10_000))

    def start(name: str | None = None) -> Replica:
        static = name is not None  # the first replicas keep an instance id (a StatefulSet pod): restarts are quick
        name = name or f"dyn{next(serial)}"
        cmd = analyze_cmd(conf, t, group, *extra, *(("--instance-id", name) if static else ()))
        r = Replica(cmd, tmp_path, name, static)
        replicas.append(r)
        return r

    def live() -> list[Replica]:
        return [r for r in replicas if r.alive()]

    bad_exits = []
    exits = []  # replicas that exited without being told to

    def terminate(r: Replica) -> None:
        rc = r.stop(sig.SIGTERM)
        # a replica terminated while still importing (before its banner) dies by the signal, as a pod would
        started = "analyzer " in r.log_path.read_text(errors="replace")
        if rc != 0 and (started or rc != -sig.SIGTERM):
            bad_exits.append((r.name, rc, r.log_path.read_text()[-2000:]))

    peak = [0]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(1.0):
            peak[0] = max([peak[0]] + [r.sample_rss() for r in live()])
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for name in ("s0", "s1"):
        start(name)
    bouncing: list[threading.Thread] = []

    def bounce(node: int) -> None:
        """SIGKILL one node for 3 s; the bounce ends once every partition has its full ISR again (the next one
        must not find the last victim still catching up: two nodes out of three would stop acks=all)."""
        cluster.kill(node)
        time.sleep(3.0)
        deadline = time.monotonic() + 900
        while True:  # on a loaded machine a start can give up (registration with the quorum timed out): again
            try:
                cluster.restart(node, timeout=180)
                break
            except RuntimeError:
                counts["restart_retries"] += 1
                if time.monotonic() > deadline:
                    raise
        wait_for(lambda: all_in_sync(cluster), 300, f"node {node} back in every ISR", step=1.0)

    def all_nodes_up() -> bool:
        return all(n.proc is not None and n.proc.poll() is None for n in cluster.nodes)

    proxies = Proxies(cluster.proxy_routes()) if net_pause_s else None
    pausing: list[threading.Thread] = []

    def net_pause(after: float = 0.0) -> None:
        """The proxied producer's network silent for ``net_pause_s`` s (connections open, nothing moves)."""
        time.sleep(after)
        proxies.pause()
        try:
            time.sleep(net_pause_s)
        finally:
            proxies.resume()

    def start_pause(after: float = 0.0) -> None:
        th = threading.Thread(target=net_pause, args=(after,), daemon=True)
        th.start()
        pausing.append(th)
    waves = Waves(conf, t["frames"], n=streams, clip_s=clip_s)
    # the producer whose network is paused: its own streams, bootstrapped on the proxies, which the brokers'
    # VIA listeners advertise for every node, so none of its traffic bypasses them
    pwaves = Waves({"bootstrap.servers": proxies.bootstrap_servers}, t["frames"], n=paused_streams,
                   clip_s=clip_s) if proxies else None
    t0 = time.monotonic()
    if proxies and net_pause_at is not None:
        start_pause(net_pause_at)
        counts["netpause"] += 1
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(every)
            kinds = ["sigkill", "sigterm", "add", "remove"] + (["bounce"] if bounces else []) + \
                (["netpause"] if proxies and net_pause_at is None else [])
            kind = rng.choice(kinds)
            running = live()
            if kind == "add" and len(running) >= max_replicas or kind == "remove" and len(running) <= 1:
                kind = "sigkill"
            if kind == "bounce" and (any(b.is_alive() for b in bouncing) or not all_nodes_up()):
                kind = "sigterm"
            if kind == "netpause" and any(p.is_alive() for p in pausing):
                kind = "sigterm"
            victim = rng.choice(running) if running else None
            if kind in ("sigkill", "sigterm") and victim is not None:
                if kind == "sigkill":
                    victim.stop(sig.SIGKILL)
                else:
                    terminate(victim)
                start(victim.name if victim.static else None)
            elif kind == "add":
                start()
            elif kind == "remove" and victim is not None:
                terminate(victim)
            elif kind == "bounce":
                b = threading.Thread(target=bounce, args=(rng.choice([n.node_id for n in cluster.nodes]),),
                                     daemon=True)
                b.start()
                bouncing.append(b)
            elif kind == "netpause":
                start_pause()
            counts[kind] += 1
            for r in [r for r in replicas if not r.alive() and not r.stopped and not r.restarted]:
                # exited on its own (e.g. "cannot reach Kafka" while starting during a bounce on a loaded
                # machine): a supervisor restarts it, as Kubernetes would; counted, and its exit code kept
                r.restarted = True
                exits.append((r.name, r.proc.returncode, r.log_path.read_text(errors="replace")[-300:]))
                start(r.name if r.static else None)
        for p in pausing:
            p.join(net_pause_s + 60)
        all_waves = [waves] + ([pwaves] if pwaves else [])
        for w in all_waves:
            w.stop(wait=False)
        for w in all_waves:
            w.stop()
        for b in bouncing:
            b.join(180)
        if not live():
            start("s0")
        elapsed = time.monotonic() - t0
        expected = set().union(*(w.expected for w in all_waves))
        results = [r for w in all_waves for r in w.results]
        preds = read_predictions(conf, t["predictions"], expected, timeout=max(180.0, seconds / 2))
        report = classify(preds, expected)
        features = consume(conf, t["features"], count=len(preds), timeout=60, settle=2.0)
        gaps = [g for g in (json.loads(m.value()) for m in features) if g.get("type") == "gap"]
    finally:
        sampling.set()
        if proxies:
            proxies.resume()
            proxies.close()
        for r in live():
            terminate(r)
        for n in cluster.nodes:  # whatever a bounce left down
            if n.proc is None or n.proc.poll() is not None:
                n.start(120)
    failed = [r for r in results if r.failed or r.delivered != r.frames]
    summary = {"seconds": round(elapsed), "streams": streams + (paused_streams if pwaves else 0),
               "clips": sum(w.clips for w in all_waves), "seed": seed,
               **{k: counts[k] for k in ("sigkill", "sigterm", "add", "remove", "bounce", "restart_retries",
                                         "netpause")},
               "net_paused_s": round(counts["netpause"] * net_pause_s),
               "proxied_clips": pwaves.clips if pwaves else 0,
               "proxied_mib": round(sum(p.bytes for p in proxies.proxies) / 2**20, 1) if proxies else 0,
               "replicas_started": len(replicas), "expected": report["expected"], "received": report["received"],
               "distinct": report["distinct"], "duplicates": report["duplicates"], "missing": report["missing"],
               "unexpected": report["unexpected"], "verdict": report["verdict"], "gap_markers": len(gaps),
               "gap_frames": sum(g["missing_frames"] for g in gaps),
               "producer_drops": sum(r.failed for r in results), "producer_failures": len(failed),
               "peak_rss_mib": round(peak[0] / 2**20), "bad_exits": len(bad_exits),
               "restarted_after_exit": len(exits),
               "exit_reasons": sorted({("cannot reach Kafka" if "cannot reach Kafka" in text else f"exit {rc}")
                                       for _n, rc, text in exits})}
    print("\nchaos soak summary\n" + "\n".join(f"  {k:<18} {v}" for k, v in summary.items()))
    assert not bad_exits, bad_exits  # every SIGTERM a clean stop
    return summary


def check_soak(s: dict) -> None:
    # at-least-once: ALL, or MORE made of duplicates only (deduped count equal to what was expected)
    assert s["missing"] == 0 and s["unexpected"] == 0 and s["distinct"] == s["expected"], s
    assert s["producer_failures"] == 0, s
    # every gap explained by a counted producer drop, frame for frame; the file producer's buffer (librdkafka's
    # queue, message.timeout.ms 300 s) outlasts every pause here, so there are none of either
    assert s["gap_frames"] == s["producer_drops"] == 0 and s["gap_markers"] == 0, s
    assert s["peak_rss_mib"] < 1024, s  # bounded: the slow-model test's RSS bound for one replica, with room


def test_chaos_soak_short_form(cluster, tmp_path):
    """CI form of the soak: 8 real-time streams for ~18 s while a seeded schedule SIGKILLs, SIGTERMs, adds and
    removes analyzer replicas (no broker bounces here: the rolling-restart test bounces every node), and a
    ninth stream's producer loses its network for 4 s (within its buffer: no drop, no gap)."""
    s = soak(cluster, tmp_path, seconds=18, streams=8, seed=30, every=4.5, bounces=False, net_pause_s=4.0,
             net_pause_at=2.0)
    assert all(s[k] >= 1 for k in ("sigkill", "sigterm", "add", "remove", "netpause")), s  # seed 30: add, term,
    # kill, remove on the schedule, the pause at 2 s
    assert s["proxied_clips"] >= 1 and s["proxied_mib"] > 0, s  # the paused producer's traffic went through
    check_soak(s)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("AUDIOSTREAM_SOAK_MINUTES"), reason="long form: set AUDIOSTREAM_SOAK_MINUTES")
@pytest.mark.timeout(int(float(os.environ.get("AUDIOSTREAM_SOAK_MINUTES") or 0) * 60) + 1800)  # over the 300 s default
def test_chaos_soak_long_form(cluster, tmp_path):
    """The long soak: AUDIOSTREAM_SOAK_MINUTES of 20 streams (and 2 more behind the pausable proxies), an event
    every 20 s, broker bounces and 40 s network pauses included (past librdkafka's 30 s request timeout, within
    its 300 s message timeout: the paused producer must drop nothing)."""
    minutes = float(os.environ["AUDIOSTREAM_SOAK_MINUTES"])
    s = soak(cluster, tmp_path, seconds=minutes * 60, streams=int(os.environ.get("AUDIOSTREAM_SOAK_STREAMS", 20)),
             seed=int(os.environ.get("AUDIOSTREAM_SOAK_SEED", 19)), every=20.0, bounces=True,
             net_pause_s=float(os.environ.get("AUDIOSTREAM_SOAK_PAUSE_S", 40)), paused_streams=2)
    assert s["netpause"] >= 1 and s["proxied_clips"] >= 1, s
    check_soak(s)
