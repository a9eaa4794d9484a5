"""The checkpoint: which input offsets are committed, and when, for the outputs published.

One object owns the delivery guarantee of an analyzer (docs/guarantees.md), in two strategies
of one interface:

- ``AtLeastOnce``: each batch counts its output records; batches settle strictly in order once
  Kafka acknowledged all their outputs, and a commit never passes an unacknowledged output;
  commits are asynchronous at most once per ``interval_s``, synchronous on revoke and close.
- ``ExactlyOnce``: batches go into a Kafka transaction that commits, with the input offsets
  (``send_offsets_to_transaction``), every ``interval_s``.

Either way the committed offset of a partition is the oldest record an open window on it still
needs (``needs``), and the commit's metadata ``{"v":1,"done":N}`` (the *done marker*) says outputs
are out for every record below ``N``: whoever owns the partition next re-reads from the offset to
rebuild window state and publishes nothing below ``N`` again (``replaying``).

The interface, in the order the analyzer's loop calls it:
``assign`` (done markers of the previous owner) · ``begin`` a batch · ``track`` each output ·
``store`` the offsets the batch read · ``end`` it · ``tick`` (settle, commit when due) ·
``revoke`` / ``lost`` · ``close``. ``fail()`` after an unexpected exception: nothing is committed
any more, and ``close`` aborts an open transaction instead of committing it (a crash in the middle
of a batch must not make part of its outputs visible while the offsets point before it).

No I/O of its own: the Kafka consumer and producer are passed in, so the unit tests drive it
with small fakes (tests/unit/test_checkpoint.py).
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Callable

from confluent_kafka import KafkaException, TopicPartition

log = logging.getLogger("audiostream.checkpoint")

COMMIT_METADATA_VERSION = 1
TP = tuple  # (topic, partition)


def commit_metadata(done: int) -> str:
    """Offset-commit metadata: every window completed by a record below ``done`` was published."""
    return json.dumps({"v": COMMIT_METADATA_VERSION, "done": done}, separators=(",", ":"))


def parse_commit_metadata(text: str | None) -> int | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return int(data["done"]) if data.get("v") == COMMIT_METADATA_VERSION else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class Batch:
    """Outputs still unacknowledged for one consumed batch, and the commits it allows:
    ``offsets[(topic, partition)] = (offset to commit, done marker)``."""

    __slots__ = ("pending", "offsets", "started")

    def __init__(self, started: float):
        self.pending = 0
        self.offsets: dict[TP, tuple[int, int]] = {}
        self.started = started


class Checkpoint:
    """What both strategies share: partitions owned, offsets read, done markers, failure."""

    exactly_once = False

    def __init__(self, consumer, producer, *, needs: Callable[[set], dict], on_fail: Callable[[str], None],
                 interval_s: float, unavailable_timeout_s: float, on_commit: Callable[[str], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic):
        self.consumer, self.producer = consumer, producer
        self.needs = needs                  # partitions -> {tp: oldest record an open window on it still needs}
        self.on_fail = on_fail              # told once why the analyzer must stop (nothing more is committed)
        self.on_commit = on_commit          # "ok" / "failed", for transactions (librdkafka reports offset commits)
        self.interval_s = interval_s
        self.unavailable_timeout_s = unavailable_timeout_s
        self.clock = clock
        self.assigned: set[TP] = set()
        self.read_upto: dict[TP, int] = {}      # last offset processed, per partition
        self.replay_until: dict[TP, int] = {}   # the previous owner's done markers still ahead of us
        self.failed = False
        self._batch: Batch | None = None
        self._lock = threading.Lock()
        self._delivery_failures = 0

    # -- partitions -----------------------------------------------------------------
    def assign(self, committed) -> dict[TP, tuple[int, int]]:
        """Own ``committed`` (TopicPartitions as ``consumer.committed()`` returns them); returns
        ``{tp: (offset, done)}`` for partitions whose outputs run ahead of their offset (a replay)."""
        self.assigned |= {(tp.topic, tp.partition) for tp in committed}
        resumed = {}
        for tp in committed:
            done = parse_commit_metadata(tp.metadata)
            if done is not None and tp.offset >= 0 and done > tp.offset:
                self.replay_until[(tp.topic, tp.partition)] = done
                resumed[(tp.topic, tp.partition)] = (tp.offset, done)
        return resumed

    def replaying(self, tp: TP, offset: int) -> bool:
        """The record at ``offset`` was processed, and its outputs published, by a previous owner."""
        return offset < self.replay_until.get(tp, -1)

    def forget(self, tps: set) -> None:
        self.assigned -= tps
        for tp in tps:
            self.replay_until.pop(tp, None)
            self.read_upto.pop(tp, None)

    # -- batches --------------------------------------------------------------------------
    def begin(self, now: float) -> Batch:
        self._batch = Batch(now)
        return self._batch

    def track(self) -> Callable:
        """Count one output record of the current batch; returns its delivery callback ``(err) -> None``."""
        batch = self._batch
        batch.pending += 1

        def delivered(err) -> None:
            batch.pending -= 1
            if err is not None:
                with self._lock:
                    self._delivery_failures += 1
        return delivered

    def store(self, high: dict[TP, int]) -> None:
        """The current batch processed every record up to ``high[tp]``."""
        for tp, last in high.items():
            self.read_upto[tp] = last
            if tp in self.replay_until and last + 1 >= self.replay_until[tp]:
                del self.replay_until[tp]  # caught up with what the previous owner had published

    def end(self, now: float) -> None:
        """The current batch is complete (all its outputs tracked)."""

    def marks(self) -> dict[TP, tuple[int, int]]:
        """What to commit for the current state: per partition, re-read from the oldest record an open
        window still needs; outputs are out for every record up to the last one read."""
        needs = self.needs(set(self.read_upto))
        out = {}
        for tp, last in self.read_upto.items():
            done = max(last + 1, self.replay_until.get(tp, 0))
            out[tp] = (min(needs.get(tp, last + 1), last + 1), done)
        return out

    def offsets(self, marks: dict) -> list:
        """TopicPartitions to commit for ``marks``, partitions we still own only."""
        return [TopicPartition(t, p, o, metadata=commit_metadata(done))
                for (t, p), (o, done) in marks.items() if (t, p) in self.assigned]

    def fail(self) -> None:
        """Commit nothing from now on (an unexpected exception, a refused output, a lost partition)."""
        self.failed = True

    def _take_delivery_failures(self) -> int:
        with self._lock:
            n, self._delivery_failures = self._delivery_failures, 0
        return n

    def _stop(self, what: str) -> None:
        self.fail()
        self.on_fail(what)

    # -- strategy -----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Outputs await acknowledgement: the loop should come back quickly to serve their callbacks."""
        return False

    def tick(self, now: float) -> None:
        raise NotImplementedError

    def revoke(self, tps: set) -> None:
        raise NotImplementedError

    def lost(self, tps: set) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class AtLeastOnce(Checkpoint):
    def __init__(self, consumer, producer, **kw):
        super().__init__(consumer, producer, **kw)
        self.inflight: collections.deque[Batch] = collections.deque()
        self.to_commit: dict[TP, tuple[int, int]] = {}
        self.last_commit = 0.0
        self.last_marks = float("-inf")

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

    def end(self, now: float) -> None:
        # twice per commit interval a batch carries marks (scanning every stream's needs per batch would
        # cost more than the features); they are committed once its outputs, and all earlier ones, are acked
        if now - self.last_marks >= self.interval_s / 2:
            self._batch.offsets = self.marks()
            self.last_marks = now
        self.inflight.append(self._batch)

    def settle(self) -> None:
        """Release the commits of every leading batch whose outputs Kafka has acknowledged.

        A refused output, or one unacknowledged for ``unavailable_timeout_s``, stops the analyzer
        without committing: a restart re-reads that input."""
        failed = self._take_delivery_failures()
        if failed:
            self._stop(f"{failed} output record(s) refused by Kafka")
            return
        while self.inflight and self.inflight[0].pending == 0:
            self.to_commit.update(self.inflight.popleft().offsets)  # later batches hold later offsets
        if self.inflight and self.clock() - self.inflight[0].started > self.unavailable_timeout_s:
            self._stop(f"{self.inflight[0].pending} output record(s) not acknowledged by Kafka within "
                       f"{self.unavailable_timeout_s:.0f}s")

    def tick(self, now: float) -> None:
        self.settle()
        if self.to_commit and now - self.last_commit >= self.interval_s:
            self.commit(sync=False)

    def commit(self, sync: bool) -> None:
        """Commit what settled batches allow."""
        if not self.to_commit or self.failed:
            return
        offsets = self.offsets(self.to_commit)
        self.to_commit = {}
        self.last_commit = self.clock()
        if not offsets:
            return
        try:  # the outcome is counted by the consumer's on_commit callback (librdkafka reports every commit)
            self.consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:  # e.g. the group rebalanced: the next owner re-reads, nothing lost
            log.warning("offset commit failed: %s", exc.args[0].str() if exc.args else exc)

    def flush_and_commit(self) -> None:
        """Wait for every output, then commit the current state synchronously (revoke, close)."""
        if self.failed:
            return
        remaining = self.producer.flush(self.unavailable_timeout_s)
        self.settle()
        if remaining or self.inflight or self.failed:
            return  # not everything acknowledged: commit nothing newer than what settled
        self.to_commit.update(self.marks())
        self.commit(sync=True)

    def revoke(self, tps: set) -> None:
        self.flush_and_commit()  # everything delivered, for the partitions' next owner
        self.forget(tps)

    def lost(self, tps: set) -> None:
        for b in self.inflight:
            for tp in tps:
                b.offsets.pop(tp, None)
        self.forget(tps)

    def forget(self, tps: set) -> None:
        super().forget(tps)
        for tp in tps:
            self.to_commit.pop(tp, None)

    def fail(self) -> None:
        super().fail()
        self.inflight.clear()
        self.to_commit = {}

    def close(self) -> None:
        self.flush_and_commit()


class ExactlyOnce(Checkpoint):
    exactly_once = True

    def __init__(self, consumer, producer, **kw):
        super().__init__(consumer, producer, **kw)
        self.txn_open = False
        self.txn_started = 0.0

    def begin(self, now: float) -> Batch:
        if not self.txn_open and not self.failed:
            self.producer.begin_transaction()
            self.txn_open = True
            self.txn_started = now
        return super().begin(now)

    def tick(self, now: float) -> None:
        if self._take_delivery_failures():  # a refused output inside the transaction: its commit would fail
            self.abort()
            self._stop("output record(s) refused by Kafka; transaction aborted")
        elif self.txn_open and now - self.txn_started >= self.interval_s:
            self.commit()

    def commit(self) -> None:
        """This transaction's outputs and its input offsets become visible together."""
        if not self.txn_open or self.failed:
            return
        offsets = self.offsets(self.marks())
        try:
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(max(30.0, self.unavailable_timeout_s))
            self.on_commit("ok")
        except KafkaException as exc:
            self.on_commit("failed")
            err = exc.args[0] if exc.args else None
            if err is not None and err.txn_requires_abort():
                self.abort()
            self.txn_open = False
            self._stop(f"transaction not committed ({err.str() if err is not None else exc}); its outputs are "
                       f"aborted")
            return
        self.txn_open = False

    def abort(self) -> None:
        """Abort the open transaction (its outputs never become visible); an abort that fails too
        leaves the same outcome for read_committed readers, so it is not an error of its own."""
        if not self.txn_open:
            return
        try:
            self.producer.abort_transaction(30)
        except KafkaException:
            pass
        self.txn_open = False

    def revoke(self, tps: set) -> None:
        self.commit()
        self.forget(tps)

    def lost(self, tps: set) -> None:
        if self.txn_open:
            # the open transaction mixes lost and kept partitions: abort it all and restart from the commits
            self.abort()
            self.forget(tps)
            self._stop(f"partitions {sorted(tps)} lost mid-transaction; transaction aborted")
            return
        self.forget(tps)

    def close(self) -> None:
        if self.failed:
            self.abort()
        else:
            self.commit()


def for_mode(exactly_once: bool, consumer, producer, *, interval_s: float, **kw) -> Checkpoint:
    return (ExactlyOnce if exactly_once else AtLeastOnce)(consumer, producer, interval_s=interval_s, **kw)
