"""Small Kafka helpers shared by every producer and by the analyzer's output side."""
from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.errors import AudiostreamError
from streamproc.settings import masked, warn_insecure

log = logging.getLogger(__name__)


class KafkaUnavailable(AudiostreamError):
    """The cluster could not be reached or refused an operation."""


def admin_client(conf: dict) -> AdminClient:
    return AdminClient(dict(conf))


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
        raise KafkaUnavailable(f"cannot reach Kafka at {conf.get('bootstrap.servers')!r} within {timeout:.0f}s "
                               f"({exc.args[0].str() if exc.args else exc}); check --bootstrap-servers and "
                               f"security settings {masked({k: v for k, v in conf.items() if k != 'bootstrap.servers'})}") from None
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
    return created


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


def client_logging(conf: dict, name: str = "audiostream.kafka") -> dict:
    """Route librdkafka's own log lines through Python logging instead of raw stderr."""
    out = dict(conf)
    out.setdefault("logger", logging.getLogger(name))
    out.setdefault("log.connection.close", False)
    return out


def producer_config(base: dict, **extra) -> dict:
    conf = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "none"}
    conf.update(base)
    conf.update(extra)
    return client_logging(conf)
