"""The analyzer's partition-growth rule without a broker (docs/guarantees.md, "Adding partitions"): a stream's
state is bound to one partition; frames continuing on another restart it there with the first window flagged,
and older frames still arriving from the partition it left are dropped as late. The Kafka clients are replaced
by recorders; the real-broker behaviour is tests/integration/test_cluster.py's partition-growth test."""
from __future__ import annotations

import json

import numpy as np
import pytest

from consumers.analyzer import Analyzer, AnalyzerConfig
from consumers.checkpoint import AtLeastOnce
from streamproc import wire

SR, FRAME = 16000, 1600


class Msg:
    def __init__(self, topic, partition, offset, key, value):
        self._t, self._p, self._o, self._k, self._v = topic, partition, offset, key, value

    def topic(self): return self._t
    def partition(self): return self._p
    def offset(self): return self._o
    def key(self): return self._k
    def value(self): return self._v
    def error(self): return None
    def headers(self): return None


class Producer:
    def __init__(self):
        self.out = []

    def produce(self, topic, value=None, key=None, on_delivery=None, headers=None):
        self.out.append((topic, value))

    def poll(self, timeout=0):
        return 0


class Consumer:
    def commit(self, offsets, asynchronous):
        pass


@pytest.fixture
def analyzer():
    a = Analyzer(AnalyzerConfig(kafka={}, metrics_port=None, frames_topic="f", predictions_topic="p",
                                features_topic="x", deadletter_topic="d"))
    a.producer = Producer()
    a.checkpoint = AtLeastOnce(Consumer(), a.producer, needs=lambda tps: {}, on_fail=print, interval_s=1.0,
                               unavailable_timeout_s=10.0)
    return a


def frames(session: bytes, seqs, rng=np.random.default_rng(1)):
    return {s: wire.encode_pcm((rng.standard_normal(FRAME) * 3000).astype(np.int16).tobytes(), channels=1,
                               n_frames=FRAME, sample_rate=SR, sequence=s, sample_offset=s * FRAME,
                               capture_time_ns=0, session_id=session) for s in seqs}


def windows(a) -> dict[int, bool]:
    return {r["start_sample"]: r["gap"] for r in (json.loads(v) for t, v in a.producer.out if t == "p")}


def test_a_stream_continuing_on_another_partition_restarts_there_flagged_and_late_frames_are_dropped(analyzer):
    a, session = analyzer, wire.new_session_id()
    f = frames(session, range(40))
    a.process_batch([Msg("f", 0, i, b"s", f[i]) for i in range(23)])       # 2.3 s on partition 0
    assert windows(a) == {0: False, 8000: False, 16000: False}
    a.process_batch([Msg("f", 5, i - 23, b"s", f[i]) for i in range(23, 40)])  # the key re-mapped to partition 5
    a.process_batch([Msg("f", 0, 23, b"s", f[20])])                         # an older frame from partition 0
    got = windows(a)
    # windows holding the move point (sample 36800: 24000 and 32000) cannot be computed; the first one after it
    # (40000, the next boundary) is flagged; nothing after it is missing or flagged
    assert got == {0: False, 8000: False, 16000: False, 40000: True, 48000: False}
    assert a.metrics.registry.get_sample_value("audiostream_stream_moves_total") == 1
    assert a.metrics.registry.get_sample_value("audiostream_stream_sequence_events_total", {"event": "late"}) == 1
    assert a._stream_partition["s"] == ("f", 5)


def test_a_stream_first_seen_mid_session_outside_a_replay_is_flagged_but_a_replay_is_not(analyzer):
    a = analyzer
    f = frames(wire.new_session_id(), range(10, 40))
    a.process_batch([Msg("f", 0, i, b"s", f[i]) for i in range(10, 40)])
    assert min(windows(a)) == 16000 and windows(a)[16000] is True   # first window at the boundary after 16000
    b_session = wire.new_session_id()
    g = frames(b_session, range(10, 40))
    a.checkpoint.replay_until[("f", 1)] = 1000  # a previous owner published everything below offset 1000
    a.process_batch([Msg("f", 1, i, b"r", g[i]) for i in range(10, 40)])
    assert a.metrics.registry.get_sample_value("audiostream_stream_moves_total") == 1  # the replayed one is not
