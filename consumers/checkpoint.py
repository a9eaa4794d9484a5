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

Exactly-once tells apart the errors a transaction survives from those the analyzer does not: an
*abortable* one (an output refused during a leader failover, a commit the coordinator answered with
an abortable error; ``produce()`` itself refused because such an error already failed the open transaction,
``refused``) aborts the transaction and **rewinds**: every partition read since the last
commit is sought back to that commit (``resume_at``: its offset and done marker) and ``on_rewind``
drops the streams on it, so their state is rebuilt from the log exactly as after a crash, and the
aborted outputs are published again in a later transaction. A *retriable* commit error retries the
commit. A *fatal* one (a fenced producer, another instance with the same transactional id) stops,
as does a rewind without an ``on_rewind`` hook or rewinds that make no progress for
``unavailable_timeout_s``.

An abort that does not complete within ``abort_timeout_s`` (librdkafka cannot finish it: e.g. the epoch
bump an OUT_OF_ORDER_SEQUENCE_NUMBER requires, KIP-360, or an abort sent while the transaction coordinator
moves, librdkafka#3779), or fails with a non-fatal error, **replaces the producer**: the wedged one is purged
and dropped, ``make_producer`` builds a new one with the same ``transactional.id``, and its
``init_transactions`` fences the old epoch and has the coordinator abort the old transaction; then the
rewind goes on as usual. Without ``make_producer`` such an abort stops, as before.

``send_offsets_to_transaction`` is bounded the same way, by ``offsets_timeout_s``: librdkafka can block in it far
past the timeout it is given while the group coordinator it has cached is down (its coordinator requests never
check their timeout, librdkafka#5456; a coordinator dropped from the metadata is never asked again, #5511). The
call runs in a thread of its own; given up, the transaction was not committed, so the producer is replaced
(the hung call keeps the old one until it returns, fenced) and the partitions rewound. A commit_transaction
is never given up this way: it may have committed, and a rewind after it would publish twice.

No I/O of its own: the Kafka consumer and producer (and the factory of replacement producers) are
passed in, so the unit tests drive it with small fakes (tests/unit/test_checkpoint.py).
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, TopicPartition

log = logging.getLogger("audiostream.checkpoint")

COMMIT_METADATA_VERSION = 1
TP = tuple  # (topic, partition)


# coordinator answers that mean "ask again": the group coordinator moving (a leader election, a broker restart)
# or still loading its partition of __consumer_offsets
_COORDINATOR_MOVING = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                       KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REQUEST_TIMED_OUT,
                       KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD}


def fetch_committed(consumer, partitions, timeout_s: float, *, clock=time.monotonic, sleep=time.sleep) -> list:
    """``consumer.committed(partitions)`` on assignment, asked again while the group coordinator moves (seen in a
    cluster test: NOT_COORDINATOR right after a leader kill), for up to ``timeout_s``; then, or on any other
    error, the KafkaException is raised."""
    deadline = clock() + timeout_s
    while True:
        try:
            return consumer.committed(partitions, timeout=max(1.0, min(30.0, deadline - clock())))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code not in _COORDINATOR_MOVING or clock() >= deadline:
                raise
            log.warning("reading committed offsets on assignment: %s; asking again", err.str())
            sleep(0.5)


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
                 clock: Callable[[], float] = time.monotonic, on_rewind: Callable[[set], None] | None = None):
        self.consumer, self.producer = consumer, producer
        self.needs = needs                  # partitions -> {tp: oldest record an open window on it still needs}
        self.on_fail = on_fail              # told once why the analyzer must stop (nothing more is committed)
        self.on_commit = on_commit          # "ok" / "failed" / "aborted", for transactions (librdkafka reports
                                            # offset commits)
        self.on_rewind = on_rewind          # partitions sought back to their last commit: drop their streams' state
        self.interval_s = interval_s
        self.unavailable_timeout_s = unavailable_timeout_s
        self.clock = clock
        self.assigned: set[TP] = set()
        self.read_upto: dict[TP, int] = {}      # last offset processed, per partition
        self.replay_until: dict[TP, int] = {}   # the previous owner's done markers still ahead of us
        self.resume_at: dict[TP, tuple[int, int]] = {}  # the last commit (offset, done), or the first record read
        self.failed = False
        self._batch: Batch | None = None
        self._delivered: Callable | None = None  # the current batch's delivery callback (begin, track)
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
            if tp.offset >= 0:
                self.resume_at[(tp.topic, tp.partition)] = (tp.offset, max(done or 0, tp.offset))
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
            self.resume_at.pop(tp, None)

    # -- batches --------------------------------------------------------------------------
    def begin(self, now: float) -> Batch:
        self._batch = Batch(now)
        self._delivered = self._delivery_callback(self._batch)
        return self._batch

    def track(self) -> Callable:
        """Count one output record of the current batch; returns its delivery callback ``(err) -> None``, to be
        called once for it. Every output of a batch gets the same callback object (one closure per batch, not
        per record: the analyzer publishes thousands of records a second)."""
        self._batch.pending += 1
        return self._delivered

    def _delivery_callback(self, batch: Batch) -> Callable:
        def delivered(err) -> None:
            batch.pending -= 1
            if err is not None:
                with self._lock:
                    self._delivery_failures += 1
        return delivered

    def refused(self, exc: KafkaException, delivered: Callable) -> bool:
        """``produce()`` raised ``exc`` for an output tracked by ``delivered`` (from ``track``): True if that is a
        refused output this checkpoint recovers from (counted as one), False if the caller must raise it."""
        return False

    def store(self, high: dict[TP, int], low: dict[TP, int] | None = None) -> None:
        """The current batch processed every record up to ``high[tp]`` (from ``low[tp]``, which says where a
        partition without a commit was first read)."""
        for tp, first in (low or {}).items():
            self.resume_at.setdefault(tp, (first, first))
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


class TransactionCallHung(Exception):
    """A transactional call did not return within its bound (librdkafka#5456): the producer is unusable."""


class ExactlyOnce(Checkpoint):
    exactly_once = True

    def __init__(self, consumer, producer, *, make_producer: Callable[[], object] | None = None,
                 abort_timeout_s: float = 10.0, offsets_timeout_s: float = 20.0, **kw):
        super().__init__(consumer, producer, **kw)
        # a new, not yet initialised producer with the same transactional.id, to replace one whose transaction
        # cannot be aborted; whoever produces outputs must use it from then on (the analyzer's factory sees to it)
        self.make_producer = make_producer
        self.abort_timeout_s = abort_timeout_s   # how long an abort may take before the producer is replaced
        # how long the input offsets may take to join the transaction (all retries) before it is given up; without
        # make_producer, --unavailable-timeout. Above a group coordinator's failover (the broker session timeout,
        # 9 s by default, then loading its __consumer_offsets partition)
        self.offsets_timeout_s = offsets_timeout_s
        self.producer_replacements = 0
        self.txn_open = False
        self.txn_started = 0.0
        self.generation = 0                 # which transaction an output belongs to (late reports of aborted ones)
        self.failing_since: float | None = None  # the first rewind since the last commit: not forever
        self.rewinds = 0

    def begin(self, now: float) -> Batch:
        if not self.txn_open and not self.failed:
            self.producer.begin_transaction()
            self.txn_open = True
            self.txn_started = now
            self.generation += 1
        return super().begin(now)

    def _delivery_callback(self, batch: Batch) -> Callable:
        """Outputs of the open transaction (``track`` counts none: the commit waits for all of them); a refusal
        reported after that transaction was aborted (librdkafka reports the purged outputs) is not held against
        the next one."""
        generation = self.generation

        def delivered(err) -> None:
            if err is not None and generation == self.generation:
                with self._lock:
                    self._delivery_failures += 1
        return delivered

    def track(self) -> Callable:
        return self._delivered

    def refused(self, exc: KafkaException, delivered: Callable) -> bool:
        """An output of the open transaction refused in ``produce()`` itself: once an earlier output was refused
        asynchronously (or a sequence gap needs an epoch bump), librdkafka moves the transaction from
        InTransaction to AbortableError and refuses every further ``produce()`` with _STATE ("Erroneous state"),
        typically in the middle of a batch. That is the same refusal, not a crash: counted against this
        transaction, which the next ``tick`` aborts and rewinds."""
        err = exc.args[0] if exc.args else None
        if err is None or err.code() != KafkaError._STATE or not self.txn_open or self.failed:
            return False
        delivered(err)
        return True

    def tick(self, now: float) -> None:
        failed = self._take_delivery_failures()
        if failed:  # a refused output inside the transaction: its commit would fail
            self.recover(f"{failed} output record(s) refused by Kafka")
        elif self.txn_open and now - self.txn_started >= self.interval_s:
            self.commit()

    def commit(self, keep_out: set = frozenset()) -> bool:
        """This transaction's outputs and its input offsets become visible together. On an abortable
        error the transaction is aborted and the partitions read (but ``keep_out``) rewound; so is it when the
        offsets cannot join it within ``offsets_timeout_s`` and the producer can be replaced."""
        if not self.txn_open or self.failed:
            return False
        marks = self.marks()
        offsets = self.offsets(marks)
        replaceable = self.make_producer is not None
        started = self.clock()
        deadline = started + self.unavailable_timeout_s
        offsets_deadline = started + (min(self.offsets_timeout_s, self.unavailable_timeout_s) if replaceable
                                      else self.unavailable_timeout_s)
        step = "send_offsets_to_transaction"
        while True:
            try:
                if offsets and step == "send_offsets_to_transaction":
                    self._send_offsets(offsets, max(0.1, min(30.0, offsets_deadline - self.clock())))
                step = "commit_transaction"
                self.producer.commit_transaction(max(30.0, self.unavailable_timeout_s))
                break
            except TransactionCallHung as exc:
                self.on_commit("failed")
                if replaceable:
                    self.recover(f"transaction not committed ({exc})", keep_out=keep_out, hung=True)
                else:
                    self.txn_open = False  # (the producer cannot be called while the call hangs)
                    self._stop(f"transaction not committed ({exc}); it is aborted when its timeout expires")
                return False
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                what = err.str() if err is not None else str(exc)
                retriable = err is not None and err.retriable() and not err.fatal() and not err.txn_requires_abort()
                if retriable and self.clock() < (offsets_deadline if step == "send_offsets_to_transaction"
                                                 else deadline):
                    log.warning("%s: %s; retrying", step, what)  # librdkafka: call it again
                    time.sleep(0.1)
                    continue
                self.on_commit("failed")
                # the offsets never joined the transaction: nothing of it can have been committed, so abort and rewind
                # (a commit_transaction that timed out may have committed: a rewind after it would publish twice)
                if err is not None and not err.fatal() and (
                        err.txn_requires_abort() or (retriable and replaceable and step != "commit_transaction")):
                    self.recover(f"transaction not committed ({what})", keep_out=keep_out)
                else:
                    self.abort()
                    self._stop(f"transaction not committed ({what}); its outputs are aborted")
                return False
        self.txn_open = False
        self.on_commit("ok")
        self.failing_since = None
        for tp, mark in marks.items():
            if tp in self.assigned:
                self.resume_at[tp] = mark
        return True

    def _send_offsets(self, offsets: list, timeout_s: float) -> None:
        """``send_offsets_to_transaction(offsets, ..., timeout_s)`` in a thread of its own, given up (raising
        TransactionCallHung) if it has not returned a second after ``timeout_s``: librdkafka waits for the group
        coordinator it has cached without ever checking the timeout (librdkafka#5456, #5511; seen in the two
        leader kills test, stuck for minutes). Its own errors are raised as they are."""
        producer, meta = self.producer, self.consumer.consumer_group_metadata()
        outcome: list = []
        done = threading.Event()

        def call() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, meta, timeout_s)
            except BaseException as exc:  # handed to the caller
                outcome.append(exc)
            finally:
                done.set()
        threading.Thread(target=call, name="send-offsets", daemon=True).start()
        if not done.wait(timeout_s + 1.0):
            raise TransactionCallHung(f"send_offsets_to_transaction did not return within {timeout_s:.0f}s")
        if outcome:
            raise outcome[0]

    def abort(self, replace: bool = False) -> bool:
        """Abort the open transaction (its outputs never become visible); True once the producer can begin
        another. A failed abort leaves the same outcome for read_committed readers, so it is not an error of
        its own, but the producer cannot go on: with ``replace`` (and a ``make_producer``) an abort that fails
        without a fatal error, or takes longer than ``abort_timeout_s``, replaces the producer (True if the new
        one is ready); else ``recover`` stops. A fatal error (fenced: another instance has our transactional id)
        never replaces: the new producer would fence that instance in turn."""
        if not self.txn_open:
            return True
        self.generation += 1  # reports of this transaction's outputs arriving from now on are not held against any
        replaceable = replace and self.make_producer is not None
        budget = min(self.abort_timeout_s, self.unavailable_timeout_s) if replaceable else self.unavailable_timeout_s
        started = self.clock()
        while True:
            left = started + budget - self.clock()
            try:
                self.producer.abort_transaction(max(0.1, min(30.0, left)))
                self.txn_open = False
                return True
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                what = err.str() if err is not None else str(exc)
                fatal = err is not None and err.fatal()
                if err is not None and err.retriable() and not fatal and self.clock() - started < budget:
                    continue  # librdkafka: call it again, the abort goes on in the background
                self.txn_open = False
                if not replaceable or fatal:
                    log.error("abort_transaction failed: %s", what)
                    return False
                return self._replace_producer(f"the transaction could not be aborted within "
                                              f"{self.clock() - started:.1f}s ({what})")

    def _replace_producer(self, why: str) -> bool:
        """Drop the producer (its queue purged: nothing of it is produced again) and take a new one with the
        same transactional.id from ``make_producer``: its ``init_transactions`` bumps the epoch on the coordinator,
        which fences the old producer and aborts its open transaction. True once the new one can begin a
        transaction; False (the caller stops) if it cannot be initialised within ``unavailable_timeout_s``."""
        log.warning("%s: replacing the transactional producer with a new one of the same transactional.id (it "
                    "fences the old one and the coordinator aborts the old transaction; counted in "
                    "audiostream_transactional_producer_replacements_total). If this recurs, look at the transaction "
                    "coordinator: the __transaction_state partition leaders and their brokers' logs", why)
        try:
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
        except (KafkaException, RuntimeError) as exc:  # a producer in a fatal state may refuse; it is dropped anyway
            log.info("purging the old producer: %s", exc)
        self.producer = None  # (the old one is destroyed once the analyzer lets go of it too: make_producer)
        self.producer_replacements += 1
        started = self.clock()
        producer = self.make_producer()
        while True:
            left = started + self.unavailable_timeout_s - self.clock()
            try:
                producer.init_transactions(max(0.1, min(30.0, left)))
                break
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if err is not None and err.retriable() and not err.fatal() and self.clock() - started < \
                        self.unavailable_timeout_s:
                    continue
                self.producer = producer
                log.error("the new transactional producer could not be initialised: %s",
                          err.str() if err is not None else exc)
                return False
        self.producer = producer
        log.warning("new transactional producer ready after %.1fs", self.clock() - started)
        return True

    def recover(self, why: str, keep_out: set = frozenset(), hung: bool = False) -> None:
        """An abortable error: abort the transaction, seek every partition read since the last commit back to
        it (``resume_at``), forget how far it was read, and have ``on_rewind`` drop the streams on it, so that
        state is rebuilt from the log and the aborted outputs are published again. Stops instead if the abort
        failed, nothing can rebuild the state, or no commit succeeded for ``unavailable_timeout_s``. ``hung``: the
        producer is inside a call that does not return, so it is replaced at once (no abort can be called on it)."""
        if self.failed:
            return
        if hung:
            self.generation += 1
            self.txn_open = False
            aborted = self._replace_producer(why)
        else:
            aborted = self.abort(replace=True)
        if not aborted:
            self._stop(f"{why}; the transaction could not be aborted"
                       + (", nor a new producer initialised" if self.make_producer is not None else ""))
            return
        if self.on_rewind is None:  # a caller that cannot rebuild its state: the fail-stop contract it was written for
            self._stop(f"{why}; transaction aborted")
            return
        self.on_commit("aborted")
        now = self.clock()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > self.unavailable_timeout_s:
            self._stop(f"{why}; transaction aborted, and none committed for {self.unavailable_timeout_s:.0f}s "
                       f"of rewinds")
            return
        tps = set(self.read_upto) - set(keep_out)
        targets = {tp: self.resume_at[tp] for tp in tps if tp in self.resume_at}
        if len(targets) < len(tps):  # read without a commit and without ``store(low=...)``: nowhere to go back to
            self._stop(f"{why}; transaction aborted, and {sorted(tps - set(targets))} have no commit to re-read from")
            return
        try:
            for (t, p), (offset, _done) in sorted(targets.items()):
                self.consumer.seek(TopicPartition(t, p, offset))
        except KafkaException as exc:
            self._stop(f"{why}; transaction aborted, and rewinding failed ({exc})")
            return
        self.rewinds += 1
        for tp in tps:
            self.read_upto.pop(tp, None)
            self.replay_until.pop(tp, None)
        for tp, (offset, done) in targets.items():
            if done > offset:
                self.replay_until[tp] = done
        log.warning("%s: transaction aborted; re-reading %s from the last commit", why,
                    ", ".join(f"{t}[{p}]@{o}" for (t, p), (o, _d) in sorted(targets.items())) or "nothing")
        self.on_rewind(tps)

    def revoke(self, tps: set) -> None:
        self.commit(keep_out=tps)
        self.forget(tps)

    def lost(self, tps: set) -> None:
        if self.txn_open:
            # the open transaction mixes lost and kept partitions: abort it all, re-read the kept ones
            self.forget(tps)
            self.recover(f"partitions {sorted(tps)} lost mid-transaction")
            return
        self.forget(tps)

    def close(self) -> None:
        if self.failed:
            self.abort()
        else:
            self.commit()
            if self.txn_open:  # the commit failed and was not aborted (a rewind on the way out)
                self.abort()


def for_mode(exactly_once: bool, consumer, producer, *, interval_s: float, make_producer=None, **kw) -> Checkpoint:
    """The checkpoint of a delivery mode; ``make_producer`` (exactly-once only) builds a replacement producer."""
    if exactly_once:
        return ExactlyOnce(consumer, producer, interval_s=interval_s, make_producer=make_producer, **kw)
    return AtLeastOnce(consumer, producer, interval_s=interval_s, **kw)
