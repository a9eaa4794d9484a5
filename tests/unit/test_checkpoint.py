"""The checkpoint without a broker: when offsets are committed, with which done marker, and that a
failure commits nothing (consumers/checkpoint.py). Kafka clients are replaced by recorders of the calls
the checkpoint makes; the real-broker behaviour is proved in tests/integration/test_reliability.py."""
from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.checkpoint import (AtLeastOnce, ExactlyOnce, commit_metadata, for_mode, parse_commit_metadata)

TP0, TP1 = ("frames", 0), ("frames", 1)


class Consumer:
    def __init__(self):
        self.commits = []
        self.seeks = []

    def seek(self, tp):
        self.seeks.append(((tp.topic, tp.partition), tp.offset))

    def commit(self, offsets, asynchronous):
        self.commits.append(({(o.topic, o.partition): (o.offset, parse_commit_metadata(o.metadata)) for o in offsets},
                             asynchronous))

    def consumer_group_metadata(self):
        return "group-metadata"


class Producer:
    def __init__(self, commit_error=None, commit_errors=(), abort_errors=(), init_errors=(), clock=None,
                 offsets_errors=(), offsets_hang: threading.Event | None = None):
        self.calls = []
        self.offsets_errors = list(offsets_errors)  # (error, seconds the call takes before raising it), in order
        self.offsets_hang = offsets_hang  # set: send_offsets_to_transaction blocks until it is set (librdkafka#5456)
        self.sent = []
        self.commit_error = commit_error
        self.commit_errors = list(commit_errors)  # raised once each, in order, before commit_error
        self.abort_errors = list(abort_errors)    # (error, seconds the call blocks before raising it), in order
        self.init_errors = list(init_errors)
        self.clock = clock

    def begin_transaction(self):
        self.calls.append("begin")

    def send_offsets_to_transaction(self, offsets, meta, timeout):
        assert meta == "group-metadata"
        if self.offsets_hang is not None:
            self.calls.append("send_offsets...")
            self.offsets_hang.wait()
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced by the new producer", fatal=True))
        if self.offsets_errors:
            err, takes_s = self.offsets_errors.pop(0)
            self.calls.append("send_offsets?")
            self.clock.t += min(takes_s, timeout)
            raise KafkaException(err)
        self.sent.append({(o.topic, o.partition): (o.offset, parse_commit_metadata(o.metadata)) for o in offsets})

    def commit_transaction(self, timeout):
        if self.commit_errors:
            self.calls.append("commit?")
            if self.clock is not None:
                self.clock.t += 1.0   # each attempt takes a second
            raise KafkaException(self.commit_errors.pop(0))
        if self.commit_error is not None:
            raise KafkaException(self.commit_error)
        self.calls.append("commit")

    def abort_transaction(self, timeout):
        if self.abort_errors:
            err, blocks_s = self.abort_errors.pop(0)
            self.calls.append("abort?")
            self.clock.t += min(blocks_s, timeout)
            raise KafkaException(err)
        self.calls.append("abort")

    def init_transactions(self, timeout):
        if self.init_errors:
            self.calls.append("init?")
            raise KafkaException(self.init_errors.pop(0))
        self.calls.append("init")

    def purge(self, in_queue, in_flight, blocking):
        self.calls.append("purge")

    def flush(self, timeout):
        return 0


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make(kind, needs=None, **kw):
    consumer, producer = Consumer(), kw.pop("producer", None) or Producer()
    clock, failures, outcomes = kw.pop("clock", None) or Clock(), [], []
    kw.setdefault("unavailable_timeout_s", 10.0)
    cp = kind(consumer, producer, needs=lambda tps: dict(needs or {}), on_fail=failures.append,
              on_commit=outcomes.append, interval_s=1.0, clock=clock, **kw)
    cp.assign([TopicPartition(*TP0, -1001), TopicPartition(*TP1, -1001)])
    return cp, consumer, producer, clock, failures, outcomes


def batch(cp, now, high, outputs=0, low=None):
    """One consumed batch: ``outputs`` records produced for it; returns their delivery callbacks."""
    cp.begin(now)
    acks = [cp.track() for _ in range(outputs)]
    cp.store(high, low)
    cp.end(now)
    return acks


def test_commit_metadata_round_trip_and_garbage():
    assert parse_commit_metadata(commit_metadata(42)) == 42
    for bad in (None, "", "nonsense", '{"v":2,"done":3}', '{"v":1}', "[1]"):
        assert parse_commit_metadata(bad) is None


def test_at_least_once_commits_only_after_every_earlier_output_is_acknowledged():
    cp, consumer, _p, clock, failures, _ = make(AtLeastOnce, needs={TP0: 5})
    first = batch(cp, 0.0, {TP0: 9}, outputs=2)     # carries marks (first of the interval)
    clock.t = 0.6
    second = batch(cp, 0.6, {TP0: 19}, outputs=1)   # half an interval later: carries marks too
    assert cp.busy
    second[0](None)                                  # the later batch acknowledged first
    cp.tick(1.0)
    assert consumer.commits == []                    # never past the unacknowledged first batch
    first[0](None)
    first[1](None)
    clock.t = 1.2
    cp.tick(1.2)
    # offset = the oldest record an open window needs (5); done marker = one past the last record read
    assert consumer.commits == [({TP0: (5, 20)}, True)]
    assert not cp.busy and failures == []


def test_at_least_once_refused_output_stops_and_commits_nothing_even_on_close():
    cp, consumer, _p, _c, failures, _ = make(AtLeastOnce)
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1)
    acks[0](KafkaError(KafkaError._MSG_TIMED_OUT))
    cp.tick(2.0)
    assert failures and "refused" in failures[0]
    cp.close()
    cp.revoke({TP0})
    assert consumer.commits == []


def test_at_least_once_unacknowledged_too_long_stops():
    cp, consumer, _p, clock, failures, _ = make(AtLeastOnce)
    batch(cp, 0.0, {TP0: 3}, outputs=1)
    clock.t = 11.0
    cp.tick(11.0)
    assert failures and "not acknowledged" in failures[0] and consumer.commits == []


def test_at_least_once_after_an_unexpected_exception_close_and_revoke_commit_nothing():
    cp, consumer, *_ = make(AtLeastOnce)
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1)
    acks[0](None)
    cp.fail()
    cp.revoke({TP0, TP1})
    cp.close()
    assert consumer.commits == []


def test_at_least_once_revoke_commits_synchronously_and_forgets_the_partition():
    cp, consumer, *_ = make(AtLeastOnce, needs={TP1: 2})
    acks = batch(cp, 0.0, {TP0: 7, TP1: 4}, outputs=1)
    acks[0](None)
    cp.revoke({TP0})
    assert consumer.commits == [({TP0: (8, 8), TP1: (2, 5)}, False)]
    assert TP0 not in cp.assigned and TP0 not in cp.read_upto
    batch(cp, 0.1, {TP1: 9})
    cp.close()
    assert consumer.commits[-1] == ({TP1: (2, 10)}, False)  # a partition no longer owned is not committed


def test_at_least_once_lost_partitions_are_never_committed():
    cp, consumer, *_ = make(AtLeastOnce)
    acks = batch(cp, 0.0, {TP0: 3, TP1: 3}, outputs=1)
    cp.lost({TP0})
    acks[0](None)
    cp.tick(2.0)
    assert consumer.commits == [({TP1: (4, 4)}, True)]


def test_done_markers_of_the_previous_owner_suppress_a_replay_until_caught_up():
    cp, *_ = make(AtLeastOnce)
    resumed = cp.assign([TopicPartition(*TP0, 100, metadata=commit_metadata(130)),
                         TopicPartition(*TP1, 50, metadata=commit_metadata(50))])
    assert resumed == {TP0: (100, 130)}
    assert cp.replaying(TP0, 129) and not cp.replaying(TP0, 130) and not cp.replaying(TP1, 50)
    batch(cp, 0.0, {TP0: 120})
    assert cp.marks()[TP0] == (121, 130)  # the marker never goes backwards while replaying
    batch(cp, 0.1, {TP0: 129})
    assert not cp.replaying(TP0, 110)  # caught up: the marker is forgotten


def test_exactly_once_one_transaction_per_interval_with_offsets_and_marker():
    cp, consumer, producer, _c, failures, outcomes = make(ExactlyOnce, needs={TP0: 4})
    batch(cp, 0.0, {TP0: 9}, outputs=3)
    batch(cp, 0.5, {TP0: 12}, outputs=1)
    cp.tick(0.5)
    assert producer.calls == ["begin"]  # one transaction collects both batches
    cp.tick(1.0)
    assert producer.calls == ["begin", "commit"] and producer.sent == [{TP0: (4, 13)}]
    assert outcomes == ["ok"] and consumer.commits == [] and failures == []
    batch(cp, 1.1, {TP0: 14})
    assert producer.calls[-1] == "begin"


def test_exactly_once_crash_aborts_instead_of_committing():
    cp, _c, producer, *_ = make(ExactlyOnce)
    batch(cp, 0.0, {TP0: 9}, outputs=2)
    cp.fail()           # an unexpected exception in the middle of a batch
    cp.revoke({TP0})    # consumer.close() revokes everything
    cp.close()
    assert producer.calls == ["begin", "abort"] and producer.sent == []


def test_exactly_once_lost_partition_mid_transaction_aborts_and_stops():
    cp, _c, producer, _clock, failures, _ = make(ExactlyOnce)
    batch(cp, 0.0, {TP0: 9, TP1: 2}, outputs=1)
    cp.lost({TP0})
    assert producer.calls == ["begin", "abort"] and failures and "lost" in failures[0]
    cp.close()
    assert producer.calls == ["begin", "abort"]


def test_exactly_once_fenced_producer_is_fatal_aborts_and_stops():
    err = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    cp, _c, producer, _clock, failures, outcomes = make(ExactlyOnce, producer=Producer(commit_error=err))
    batch(cp, 0.0, {TP0: 1}, outputs=1)
    cp.tick(5.0)
    assert producer.calls == ["begin", "abort"] and outcomes == ["failed"] and failures


@pytest.mark.parametrize("exactly_once,kind", [(False, AtLeastOnce), (True, ExactlyOnce)])
def test_for_mode(exactly_once, kind):
    assert type(for_mode(exactly_once, Consumer(), Producer(), interval_s=1, needs=dict, on_fail=print,
                         unavailable_timeout_s=1)) is kind


def make_rewinding(**kw):
    rewound = []
    cp, consumer, producer, clock, failures, outcomes = make(ExactlyOnce, on_rewind=rewound.append, **kw)
    return cp, consumer, producer, clock, failures, outcomes, rewound


def test_exactly_once_refused_output_aborts_and_rewinds_to_the_last_commit():
    """A leader failover refuses an output of the open transaction: the transaction is aborted, every partition
    read is sought back to its last commit (offset, done marker) and its streams dropped; the analyzer goes on."""
    cp, consumer, producer, clock, failures, outcomes, rewound = make_rewinding(needs={TP0: 4, TP1: 0})
    batch(cp, 0.0, {TP0: 9, TP1: 2}, outputs=1, low={TP0: 0, TP1: 0})
    cp.tick(1.0)                                            # committed: TP0 (4, 10), TP1 (0, 3)
    assert producer.sent == [{TP0: (4, 10), TP1: (0, 3)}] and outcomes == ["ok"]
    acks = batch(cp, 1.1, {TP0: 15}, outputs=2, low={TP0: 10})
    acks[0](KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))      # refused inside the second transaction
    clock.t = 1.2
    cp.tick(1.2)
    assert producer.calls == ["begin", "commit", "begin", "abort"] and failures == []
    assert outcomes == ["ok", "aborted"] and not cp.failed
    assert sorted(consumer.seeks) == [(TP0, 4), (TP1, 0)] and rewound == [{TP0, TP1}]
    assert cp.read_upto == {} and cp.replaying(TP0, 9) and not cp.replaying(TP0, 10) and cp.replaying(TP1, 2)
    acks[1](KafkaError(KafkaError._PURGE_QUEUE))            # the aborted transaction's late report is not held
    cp.tick(1.3)                                            # against the next one
    assert failures == [] and producer.calls[-1] == "abort" and len(rewound) == 1
    batch(cp, 1.4, {TP0: 15}, outputs=1, low={TP0: 4})      # re-read: a new transaction, committed as usual
    clock.t = 2.5
    cp.tick(2.5)
    assert producer.calls[-2:] == ["begin", "commit"] and producer.sent[-1][TP0] == (4, 16)
    acks = batch(cp, 100.0, {TP0: 20}, outputs=1)           # much later: the commit reset the no-progress clock
    clock.t = 100.0
    acks[0](KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))
    cp.tick(100.0)
    assert failures == [] and consumer.seeks[-1] == (TP0, 4) and len(rewound) == 2


def test_exactly_once_abortable_commit_error_rewinds_and_retriable_one_retries():
    abortable = KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, "not enough replicas", txn_requires_abort=True)
    retriable = KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)
    producer = Producer(commit_errors=[retriable, abortable])
    cp, consumer, producer, clock, failures, outcomes, rewound = make_rewinding(producer=producer)
    cp.assign([TopicPartition(*TP0, 100, metadata=commit_metadata(130))])   # the previous owner's commit
    batch(cp, 0.0, {TP0: 140}, outputs=1)
    cp.tick(1.0)       # retriable: commit again; then abortable: abort and rewind
    assert producer.calls == ["begin", "commit?", "commit?", "abort"] and failures == []
    assert outcomes == ["failed", "aborted"] and consumer.seeks == [(TP0, 100)] and rewound == [{TP0}]
    assert cp.replaying(TP0, 129) and not cp.replaying(TP0, 130)  # the previous owner's outputs stay suppressed


def test_exactly_once_rewind_without_a_hook_or_without_progress_stops():
    cp, consumer, producer, _c, failures, _ = make(ExactlyOnce)                  # no on_rewind: the old contract
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1, low={TP0: 0})
    acks[0](KafkaError(KafkaError._MSG_TIMED_OUT))
    cp.tick(0.1)
    assert failures and "aborted" in failures[0] and consumer.seeks == [] and cp.failed
    cp, consumer, producer, clock, failures, _o, rewound = make_rewinding()
    clock.t = 500.0                          # a long idle start is no failure of its own
    acks = batch(cp, 500.0, {TP0: 3}, outputs=1, low={TP0: 0})
    acks[0](KafkaError(KafkaError._MSG_TIMED_OUT))
    cp.tick(500.0)
    assert failures == [] and rewound == [{TP0}]
    acks = batch(cp, 500.1, {TP0: 3}, outputs=1, low={TP0: 0})
    clock.t = 511.0                          # rewinding again and again, no commit for unavailable_timeout_s
    acks[0](KafkaError(KafkaError._MSG_TIMED_OUT))
    cp.tick(511.0)
    assert failures and "none committed" in failures[0] and len(rewound) == 1


def test_exactly_once_partition_read_without_commit_or_first_offset_cannot_rewind():
    cp, consumer, producer, _c, failures, _o, rewound = make_rewinding()
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1)            # store() without low: no place to go back to
    acks[0](KafkaError(KafkaError._MSG_TIMED_OUT))
    cp.tick(0.1)
    assert failures and "no commit" in failures[0] and rewound == []


def test_exactly_once_lost_partition_with_a_hook_rewinds_the_kept_ones():
    cp, consumer, producer, _c, failures, _o, rewound = make_rewinding()
    batch(cp, 0.0, {TP0: 9, TP1: 2}, outputs=1, low={TP0: 5, TP1: 0})
    cp.lost({TP0})
    assert producer.calls == ["begin", "abort"] and failures == []
    assert consumer.seeks == [(TP1, 0)] and rewound == [{TP1}] and TP0 not in cp.assigned


def test_exactly_once_abortable_error_while_revoking_rewinds_only_the_kept_partitions():
    abortable = KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, "x", txn_requires_abort=True)
    cp, consumer, producer, _c, failures, _o, rewound = make_rewinding(producer=Producer(commit_errors=[abortable]))
    batch(cp, 0.0, {TP0: 9, TP1: 2}, outputs=1, low={TP0: 5, TP1: 0})
    cp.revoke({TP0})
    assert consumer.seeks == [(TP1, 0)] and rewound == [{TP1}] and failures == [] and TP0 not in cp.assigned


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "Failed to flush all outstanding messages within the API timeout",
                       retriable=True)


def make_replacing(old, **kw):
    """A rewinding exactly-once checkpoint whose producer can be replaced: ``made`` lists the new producers."""
    made = []

    def make_producer():
        made.append(Producer())
        return made[-1]
    cp, consumer, producer, clock, failures, outcomes, rewound = make_rewinding(
        producer=old, clock=old.clock, make_producer=make_producer, unavailable_timeout_s=120.0, **kw)
    return cp, consumer, clock, failures, outcomes, rewound, made


def test_exactly_once_abort_that_cannot_complete_replaces_the_producer_and_rewinds():
    """An abort that keeps timing out (librdkafka cannot finish the epoch bump an OUT_OF_ORDER_SEQUENCE_NUMBER
    requires) is given up after abort_timeout_s, not --unavailable-timeout: the producer is purged and replaced by
    one with the same transactional.id (initialised: it fences the old one), the partitions are rewound, and the
    next transaction goes through the new producer."""
    clock = Clock()
    old = Producer(abort_errors=[(TIMED_OUT, 30.0)] * 20, clock=clock)
    cp, consumer, clock, failures, outcomes, rewound, made = make_replacing(old)
    acks = batch(cp, 0.0, {TP0: 9}, outputs=1, low={TP0: 0})
    acks[0](KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER))
    cp.tick(0.1)
    assert failures == [] and not cp.failed
    assert clock.t <= 0.1 + cp.abort_timeout_s < cp.unavailable_timeout_s   # the loop was held 10 s, not 120 s
    assert old.calls == ["begin", "abort?", "purge"] and len(made) == 1 and made[0].calls == ["init"]
    assert cp.producer is made[0] and cp.producer_replacements == 1
    assert outcomes == ["aborted"] and consumer.seeks == [(TP0, 0)] and rewound == [{TP0}]
    batch(cp, clock.t, {TP0: 9}, outputs=1, low={TP0: 0})        # re-read on the new producer, committed
    clock.t += 1.0
    cp.tick(clock.t)
    assert made[0].calls == ["init", "begin", "commit"] and old.calls == ["begin", "abort?", "purge"]
    assert outcomes == ["aborted", "ok"] and failures == []


def test_exactly_once_abort_refused_in_an_erroneous_state_replaces_the_producer():
    state = KafkaError(KafkaError._STATE, "Operation not valid in state AbortableError")   # neither retriable nor fatal
    old = Producer(abort_errors=[(state, 0.0)], clock=Clock())
    cp, consumer, clock, failures, outcomes, rewound, made = make_replacing(old)
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1, low={TP0: 0})
    acks[0](KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    cp.tick(0.1)
    assert failures == [] and len(made) == 1 and cp.producer is made[0] and rewound == [{TP0}]


def test_exactly_once_fenced_abort_or_a_new_producer_that_cannot_start_stops():
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    old = Producer(abort_errors=[(fenced, 0.0)], clock=Clock())
    cp, consumer, clock, failures, outcomes, rewound, made = make_replacing(old)
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1, low={TP0: 0})
    acks[0](KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))
    cp.tick(0.1)
    # another instance owns our transactional.id: a new producer would fence it in turn
    assert made == [] and failures and "could not be aborted" in failures[0] and rewound == [] and cp.failed

    old = Producer(abort_errors=[(TIMED_OUT, 30.0)] * 20, clock=Clock())
    cp, consumer, clock, failures, outcomes, rewound, made = make_replacing(old)
    refused = KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "not authorised", fatal=True)
    cp.make_producer = lambda: made.append(Producer(init_errors=[refused])) or made[-1]
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1, low={TP0: 0})
    acks[0](KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))
    cp.tick(0.1)
    assert made[0].calls == ["init?"] and failures and "nor a new producer initialised" in failures[0]


def test_exactly_once_without_a_producer_factory_a_wedged_abort_stops_after_the_unavailable_timeout():
    old = Producer(abort_errors=[(TIMED_OUT, 30.0)] * 20, clock=Clock())
    cp, consumer, _p, clock, failures, _o, rewound = make_rewinding(producer=old, clock=old.clock,
                                                                    unavailable_timeout_s=120.0)
    acks = batch(cp, 0.0, {TP0: 3}, outputs=1, low={TP0: 0})
    acks[0](KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))
    cp.tick(0.1)
    assert clock.t >= 120.0 and failures and "could not be aborted" in failures[0] and rewound == []


def test_exactly_once_produce_refused_in_a_failed_transaction_rewinds_instead_of_crashing():
    """An output refused asynchronously moves librdkafka's transaction to AbortableError, and every produce() of the
    batch still running raises _STATE ("Erroneous state"). The analyzer hands that exception to the checkpoint:
    counted as a refused output of the open transaction, aborted and rewound at the next tick (it crashed the
    analyzer before: issue #19, 0 of 44 windows); any other produce error is the caller's to raise."""
    cp, consumer, producer, clock, failures, outcomes, rewound = make_rewinding()
    state = KafkaException(KafkaError(KafkaError._STATE, "Unable to produce message: Local: Erroneous state"))
    cp.begin(0.0)
    first = cp.track()
    first(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER))      # the async refusal (served later, or not yet)
    assert cp.refused(state, cp.track()) and cp.refused(state, cp.track())
    assert not cp.refused(KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad")), cp.track())
    cp.store({TP0: 9}, {TP0: 0})
    cp.end(0.0)
    cp.tick(0.1)
    assert producer.calls == ["begin", "abort"] and failures == [] and outcomes == ["aborted"]
    assert consumer.seeks == [(TP0, 0)] and rewound == [{TP0}]
    at_least_once, *_ = make(AtLeastOnce)
    at_least_once.begin(0.0)
    assert not at_least_once.refused(state, at_least_once.track())   # no transaction: an error to raise


def test_the_analyzer_hands_a_produce_refused_mid_batch_to_the_checkpoint_and_keeps_running():
    """The analyzer's side of the test above, with the analyzer's own output path: the producer starts refusing
    produce() with _STATE in the middle of a batch; the batch completes, the next tick aborts and rewinds."""
    from consumers.analyzer import Analyzer, AnalyzerConfig
    from streamproc import wire

    from .test_analyzer_moves import Msg, frames

    class FailingProducer(Producer):
        def __init__(self, accept):
            super().__init__()
            self.accept, self.out = accept, []

        def produce(self, topic, value=None, key=None, on_delivery=None, headers=None):
            if len(self.out) >= self.accept:
                raise KafkaException(KafkaError(KafkaError._STATE, "Unable to produce message: Local: Erroneous state"))
            self.out.append(topic)

        def poll(self, timeout=0):
            return 0

    a = Analyzer(AnalyzerConfig(kafka={}, metrics_port=None, frames_topic="f", predictions_topic="p",
                                features_topic="x", deadletter_topic="d", exactly_once=True))
    a.producer, a.consumer = FailingProducer(accept=2), Consumer()
    a.checkpoint = ExactlyOnce(a.consumer, a.producer, needs=a._partition_needs, on_fail=a._fail,
                               on_rewind=a._rewind, interval_s=1.0, unavailable_timeout_s=10.0)
    a.checkpoint.assign([TopicPartition("f", 0, 0)])
    f = frames(wire.new_session_id(), range(40))
    a.process_batch([Msg("f", 0, i, b"s", f[i]) for i in range(40)])   # 4 s: several windows, each two outputs
    assert len(a.producer.out) == 2 and a._fatal is None
    a.checkpoint.tick(0.1)
    assert a.producer.calls == ["begin", "abort"] and a.consumer.seeks == [(("f", 0), 0)]
    assert a.metrics.registry.get_sample_value("audiostream_transaction_rewinds_total") == 1
    assert a._fatal is None and not a.checkpoint.failed and "s" not in a.engine.streams


def test_committed_offsets_are_asked_again_while_the_coordinator_moves():
    """NOT_COORDINATOR on assignment (a leader kill moved the group coordinator) is asked again, not fatal;
    another error, or a coordinator still moving after the timeout, is raised."""
    from consumers.checkpoint import fetch_committed
    now = [0.0]

    class Answers:
        def __init__(self, *answers):
            self.answers, self.calls = list(answers), 0

        def committed(self, partitions, timeout):
            self.calls += 1
            a = self.answers.pop(0) if self.answers else KafkaError(KafkaError.NOT_COORDINATOR)
            if isinstance(a, KafkaError):
                raise KafkaException(a)
            return a

    def sleep(s):
        now[0] += s
    tps = [TopicPartition("frames", 0, 42)]
    moving = Answers(KafkaError(KafkaError.NOT_COORDINATOR), KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS), tps)
    assert fetch_committed(moving, tps, 120, clock=lambda: now[0], sleep=sleep) == tps and moving.calls == 3
    refused = Answers(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    with pytest.raises(KafkaException):
        fetch_committed(refused, tps, 120, clock=lambda: now[0], sleep=sleep)
    assert refused.calls == 1
    now[0] = 0.0
    never = Answers()
    with pytest.raises(KafkaException):
        fetch_committed(never, tps, 10, clock=lambda: now[0], sleep=sleep)
    assert never.calls == 21 and now[0] == pytest.approx(10.0)  # every 0.5 s until the 10 s are up


def test_exactly_once_offsets_call_that_hangs_is_given_up_and_the_producer_replaced():
    """librdkafka can block in send_offsets_to_transaction for as long as its cached group coordinator is down,
    whatever the timeout it was given (librdkafka#5456, #5511; seen in the two leader kills cluster test). After
    offsets_timeout_s (+1 s) the call is left to hang in its thread; its transaction was not committed, so the
    producer is replaced without calling it again (purged; the new one fences it) and the partitions rewound."""
    hang = threading.Event()
    old = Producer(offsets_hang=hang, clock=Clock())
    cp, consumer, clock, failures, outcomes, rewound, made = make_replacing(old, offsets_timeout_s=0.2)
    try:
        batch(cp, 0.0, {TP0: 9}, outputs=1, low={TP0: 0})
        cp.tick(1.0)
        assert failures == [] and not cp.failed
        assert old.calls == ["begin", "send_offsets...", "purge"] and len(made) == 1 and made[0].calls == ["init"]
        assert cp.producer is made[0] and cp.producer_replacements == 1
        assert outcomes == ["failed", "aborted"] and consumer.seeks == [(TP0, 0)] and rewound == [{TP0}]
        batch(cp, 1.1, {TP0: 9}, outputs=1, low={TP0: 0})   # re-read, and committed through the new producer
        clock.t = 2.2
        cp.tick(2.2)
        assert made[0].calls == ["init", "begin", "commit"] and made[0].sent == [{TP0: (10, 10)}]
        assert outcomes == ["failed", "aborted", "ok"] and failures == []
    finally:
        hang.set()   # the old call returns, fenced: nothing reads it


def test_exactly_once_offsets_call_that_hangs_without_a_producer_factory_stops():
    hang = threading.Event()
    old = Producer(offsets_hang=hang, clock=Clock())
    cp, consumer, _p, clock, failures, outcomes, rewound = make_rewinding(producer=old, clock=old.clock,
                                                                          offsets_timeout_s=0.2)
    cp.unavailable_timeout_s = 0.2   # without a factory the bound is --unavailable-timeout
    try:
        batch(cp, 0.0, {TP0: 9}, outputs=1, low={TP0: 0})
        cp.tick(1.0)
        assert cp.failed and failures and "did not return" in failures[0] and rewound == []
        assert old.calls == ["begin", "send_offsets..."]   # no abort called into the hung producer
    finally:
        hang.set()


def test_exactly_once_offsets_that_keep_timing_out_rewind_after_offsets_timeout_not_unavailable_timeout():
    """send_offsets_to_transaction answering a retriable timeout again and again (its group coordinator moving)
    is retried for offsets_timeout_s, then the transaction is aborted and the partitions rewound: nothing of it
    was committed. Before, it was retried for --unavailable-timeout (120 s) and then stopped the analyzer."""
    clock = Clock()
    old = Producer(offsets_errors=[(TIMED_OUT, 30.0)] * 20, clock=clock)
    cp, consumer, clock, failures, outcomes, rewound, made = make_replacing(old)
    batch(cp, 0.0, {TP0: 9}, outputs=1, low={TP0: 0})
    cp.tick(1.0)
    assert failures == [] and not cp.failed and clock.t <= 1.0 + cp.offsets_timeout_s < cp.unavailable_timeout_s
    assert old.calls[0] == "begin" and old.calls[-1] == "abort" and "commit" not in old.calls and made == []
    assert outcomes == ["failed", "aborted"] and consumer.seeks == [(TP0, 0)] and rewound == [{TP0}]


def test_exactly_once_commit_transaction_that_times_out_is_never_rewound():
    """A commit_transaction that keeps timing out may have committed on the coordinator: it is retried for
    --unavailable-timeout and then stops (a restart reads the committed offsets), never rewound, which would
    publish the transaction's outputs a second time."""
    clock = Clock()
    old = Producer(commit_errors=[TIMED_OUT] * 100, clock=clock)
    cp, consumer, clock, failures, outcomes, rewound, made = make_replacing(old)
    cp.unavailable_timeout_s = 3.5   # three retries of a second each
    batch(cp, 0.0, {TP0: 9}, outputs=1, low={TP0: 0})
    cp.tick(1.0)
    assert old.calls.count("commit?") == 4 and old.calls[-1] == "abort"
    assert rewound == [] and made == [] and cp.failed and failures and "not committed" in failures[0]
