"""Small Kafka helpers shared by every producer and by the analyzer's output side."""
from __future__ import annotations

import logging
import re
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .errors import AudiostreamError
from .settings import masked, warn_insecure

log = logging.getLogger(__name__)


class KafkaUnavailable(AudiostreamError):
    """The cluster could not be reached or refused an operation."""


def admin_client(conf: dict) -> AdminClient:
    return AdminClient(client_logging(conf))


def check_reachable(conf: dict, timeout: float = 10.0) -> None:
    """Raise KafkaUnavailable with an actionable message if no broker answers or it refuses our credentials."""
    warn_insecure(conf, log)
    errors: list = []
    admin = AdminClient(client_logging({**conf, "error_cb": errors.append}))
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0.1)  # serve the queued error callbacks
        auth = [e for e in errors if e.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)]
        if auth:
            user = conf.get("sasl.username")
            raise KafkaUnavailable(f"Kafka at {conf.get('bootstrap.servers')!r} refused the credentials"
                                   f"{f' of user {user!r}' if user else ''}: {auth[-1].str()}; check sasl.username / "
                                   f"sasl.password (not shown) and sasl.mechanism") from None
        security = masked({k: v for k, v in conf.items() if k.startswith(("security.", "sasl.", "ssl."))})
        raise KafkaUnavailable(f"cannot reach Kafka at {conf.get('bootstrap.servers')!r} within {timeout:.0f}s "
                               f"({exc.args[0].str() if exc.args else exc}); check --bootstrap-servers"
                               + (f" and the security settings {security}" if security else
                                  " (and -X security.protocol=... if the cluster needs TLS or SASL)")) from None
    if not md.brokers:
        raise KafkaUnavailable(f"Kafka at {conf.get('bootstrap.servers')!r} reports no brokers")


def ensure_topics(conf: dict, topics: dict[str, int], timeout: float = 15.0,
                  configs: dict[str, dict] | None = None) -> list[str]:
    """Create missing topics with explicit partition counts; return the names created."""
    admin = admin_client(conf)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot reach Kafka at {conf.get('bootstrap.servers')!r}: {exc}") from None
    new = [NewTopic(name, num_partitions=parts, replication_factor=-1, config=(configs or {}).get(name, {}))
           for name, parts in topics.items() if name not in existing]
    created = []
    for name, fut in (admin.create_topics(new, operation_timeout=timeout) if new else {}).items():
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaUnavailable(f"could not create topic {name!r}: {exc}") from None
    if created:
        _wait_until_led(admin, created, timeout)
    return created


def _wait_until_led(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Return once the broker we ask lists every new topic with a leader on each partition. On a cluster the
    controller acknowledges a creation before every broker has the metadata, and a client's first request to a
    broker that has not caught up fails with UNKNOWN_TOPIC_OR_PART; waiting here is cheaper than every caller
    retrying. Best effort: a slow cluster is logged, not fatal (librdkafka retries the topic later)."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            try:
                md = admin.list_topics(name, timeout=max(0.5, deadline - time.monotonic())).topics.get(name)
            except KafkaException:
                continue
            if md is not None and md.error is None and md.partitions and all(
                    p.leader >= 0 and p.error is None for p in md.partitions.values()):
                pending.discard(name)
        if pending:
            time.sleep(0.1)
    if pending:
        log.warning("topics %s created but not yet led on every partition after %.0fs", sorted(pending), timeout)


class DeliveryTracker:
    """Delivery callback that counts what Kafka acknowledged and what it refused."""

    def __init__(self, on_success=None, on_failure=None):
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._on_success = on_success
        self._on_failure = on_failure

    def __call__(self, err, msg) -> None:
        with self._lock:
            if err is not None:
                self.failed += 1
                self.last_error = f"{msg.topic()}: {err.str()}"
            else:
                self.delivered += 1
        if err is not None:
            log.warning("delivery to %s failed: %s", msg.topic(), err.str())
            if self._on_failure:
                self._on_failure(err, msg)
        elif self._on_success:
            self._on_success(msg)


def produce(producer: Producer, topic: str, value: bytes, key: bytes | None = None, on_delivery=None,
            headers=None) -> None:
    """producer.produce, waiting on poll() while the local queue is full instead of failing."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


class RepeatFilter(logging.Filter):
    """One line per distinct librdkafka complaint. librdkafka retries an unreachable broker every few
    milliseconds and logs each try (~20 identical ERROR lines a second); a repeat within ``window``
    seconds is counted instead of printed, and the next time that complaint prints it says how many
    were held back. Complaints are the same when they differ only in the client handle and timings."""

    _VARYING = re.compile(r"rdkafka#\w+-\d+|\(after \d+ms.*$|\d+ms")

    def __init__(self, window: float = 300.0, clock=time.monotonic):
        super().__init__()
        self.window, self.clock = window, clock
        self._seen: dict[str, list] = {}  # complaint -> [printed at, held back since]
        self._lock = threading.Lock()

    # librdkafka retries these by itself and they pass in a second (a fresh broker loading its coordinator):
    # debug detail, not a warning to greet every start with
    TRANSIENT = ("Coordinator load in progress: retrying",)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(t in text for t in self.TRANSIENT):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        key = self._VARYING.sub("", text)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            held = seen[1] if seen else 0
            self._seen[key] = [now, 0]
            if len(self._seen) > 1000:  # bounded: forget the oldest complaints
                for k in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[k]
        if held:
            record.msg, record.args = f"{text} (and {held} more like it in the last {self.window:.0f} s)", None
        return True


_KAFKA_LOGGERS: set[str] = set()


def client_logging(conf: dict, name: str = "audiostream.kafka") -> dict:
    """Route librdkafka's own log lines through Python logging instead of raw stderr, one line per distinct
    complaint (``RepeatFilter``)."""
    out = dict(conf)
    logger = logging.getLogger(name)
    if name not in _KAFKA_LOGGERS:
        logger.addFilter(RepeatFilter())
        _KAFKA_LOGGERS.add(name)
    out.setdefault("logger", logger)
    out.setdefault("log.connection.close", False)
    return out


def producer_config(base: dict, **extra) -> dict:
    conf = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "none"}
    conf.update(base)
    conf.update(extra)
    return client_logging(conf)
