"""What every consumer service of audiostream shares around its own loop: the analyzer
(consumers/analyzer.py) and the transcriber (consumers/transcriber.py).

``KafkaService`` is a mixin for a class that has ``config`` (``kafka``, ``group_id``, ``auto_offset_reset``,
``instance_id``, ``consumer_overrides``, ``metrics_port``, ``metrics_addr``), ``metrics`` (with ``registry`` and
``kafka_up``), ``instance``, ``producer`` (None until connected), ``_stop`` (an Event), ``_started``, ``_down_since``, ``_fatal``, ``last_loop``,
``_fail(what)``, ``_on_commit(err, partitions)`` and ``run()``. It gives the lifecycle (``stop``, ``ready``,
``run_in_background``), /metrics with /healthz and /ready, the reaction to the Kafka client's errors (cluster
down and back, fatal errors), and the consumer's configuration, whose delivery settings (no auto commit,
read_committed, static membership) no user setting may change.
"""
from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException


class KafkaService:
    service_name = "service"   # thread names, client ids, the logger: audiostream.<name>
    ready_stale_s = 30.0       # /ready: the loop turned within this long (and the cluster is reachable)
    live_stale_s = 60.0        # /healthz: the loop turned within this long (a slow model call is not a hang)

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(f"audiostream.{self.service_name}")

    def stop(self) -> None:
        self._stop.set()

    @property
    def ready(self) -> bool:
        """Subscribed, the cluster reachable, the loop turning."""
        return (self._started and self._down_since is None and self._fatal is None and not self._stop.is_set()
                and time.monotonic() - self.last_loop < self.ready_stale_s)

    def run_in_background(self, on_error=None) -> threading.Thread:
        """``run()`` in a daemon thread; an exception it raises is kept in ``thread.errors``
        (and passed to ``on_error``) for the caller to surface."""
        errors: list[BaseException] = []

        def target():
            try:
                self.run()
            except BaseException as exc:
                errors.append(exc)
                if on_error is not None:
                    on_error(exc)

        thread = threading.Thread(target=target, name=f"{self.service_name}-{self.instance}", daemon=True)
        thread.errors = errors
        thread.start()
        return thread

    def start_metrics_server(self) -> int | None:
        """/metrics, /healthz (the loop is turning) and /ready (consuming, cluster reachable)."""
        if self.config.metrics_port is None:
            return None
        from .health import serve
        self._http = serve(self.config.metrics_addr, self.config.metrics_port, self.metrics.registry,
                           ready=lambda: self.ready,
                           live=lambda: self._fatal is None and time.monotonic() - self.last_loop < self.live_stale_s)
        self.metrics_port = self._http.server_port
        return self.metrics_port

    def _consumer_conf(self, defaults: dict | None = None) -> dict:
        """The consumer's settings: ours, then the user's (-X, config file), then what the delivery guarantees rest
        on (never the user's to change), then the bench's overrides."""
        c = self.config
        conf = {"session.timeout.ms": 45000, "max.poll.interval.ms": 300000, "fetch.wait.max.ms": 20,
                "client.id": f"audiostream-{self.service_name}-{self.instance}", **(defaults or {})}
        conf.update(c.kafka)
        conf.update({"group.id": c.group_id, "enable.auto.commit": False, "enable.auto.offset.store": False,
                     "auto.offset.reset": c.auto_offset_reset, "allow.auto.create.topics": False,
                     "isolation.level": "read_committed", "error_cb": self._on_kafka_error,
                     "on_commit": self._on_commit})
        if c.instance_id:  # static membership: a restart with the same id takes its partitions back at once
            conf["group.instance.id"] = c.instance_id
        conf.update(c.consumer_overrides)
        return conf

    def _producer_defaults(self) -> dict:
        """The outputs' producer settings before the caller's own: low linger (latency), and a delivery timeout
        past ``--unavailable-timeout`` so the service, not librdkafka, decides when Kafka was away too long."""
        return {"linger.ms": 2, "socket.nagle.disable": True,
                "client.id": f"audiostream-{self.service_name}-{self.instance}",
                "message.timeout.ms": int(self.config.unavailable_timeout_s * 1000) + 5000,
                "error_cb": self._on_kafka_error}

    def _on_kafka_error(self, err) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if self._down_since is None:
                self._down_since = time.monotonic()
                self.metrics.kafka_up.set(0)
                self._log.warning("Kafka unreachable (%s); not ready until it is back", err.str())
        elif err.fatal():
            self._fail(f"fatal Kafka error: {err.str()}")
        else:
            self._log.info("kafka: %s", err.str())

    def _close_producer(self) -> None:
        """Destroy the output producer at the end of ``run`` (after the checkpoint's close): its librdkafka threads
        stop here, not when the interpreter exits, where the frozen heap (``freeze_heap``) can keep it alive and
        one of its broker threads once crashed the exiting process (SIGSEGV after a clean stop). Records still
        unacknowledged now were not committed (a restart re-reads them), so they are purged first:
        ``Producer.close()`` would otherwise wait for them without limit."""
        producer = self.producer
        if producer is None:
            return
        try:
            if producer.flush(0):
                producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.close()
        except (KafkaException, RuntimeError) as exc:  # (a producer in a fatal state); it is dropped anyway
            self._log.info("closing the producer: %s", exc)

    def _kafka_back(self) -> None:
        if self._down_since is not None:
            self._log.warning("Kafka reachable again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
            self.metrics.kafka_up.set(1)
