"""A real Kafka broker for the integration tests, and helpers around it.

Broker, in order of preference:
1. ``AUDIOSTREAM_BOOTSTRAP`` (an existing cluster; extra librdkafka settings
   from ``AUDIOSTREAM_KAFKA_*`` as everywhere else);
2. testcontainers' Kafka, when a Docker engine answers;
3. Apache Kafka's own jars from deploy/kafka (what CI uses: no Docker there).
Every test gets fresh, uniquely named topics, so tests never see each other's data.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from consumers.analyzer import Analyzer, AnalyzerConfig
from consumers.local_broker import load_local_kafka
from streamproc.kafka import ensure_topics
from streamproc.settings import from_env

REPO = Path(__file__).resolve().parents[2]
BROKER_INFO = {}


def _docker_engine_answers() -> bool:
    try:
        import docker
        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_conf():
    """Base librdkafka config pointing at a real broker for the whole session."""
    external = os.environ.get("AUDIOSTREAM_BOOTSTRAP")
    if external:
        BROKER_INFO["broker"] = f"external cluster {external}"
        conf = from_env()
        conf["bootstrap.servers"] = external
        yield conf
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer
        with KafkaContainer().with_kraft() as kafka:
            BROKER_INFO["broker"] = f"testcontainers Kafka at {kafka.get_bootstrap_server()}"
            yield {"bootstrap.servers": kafka.get_bootstrap_server()}
        return
    lk = load_local_kafka()
    broker = lk.LocalKafka().start()
    BROKER_INFO["broker"] = f"Apache Kafka {lk.kafka_version()} from Maven jars at {broker.bootstrap_servers}"
    try:
        yield {"bootstrap.servers": broker.bootstrap_servers}
    finally:
        broker.stop()


def pytest_sessionfinish(session):
    """Under pytest-xdist (``make test`` runs two workers) each worker has its own session broker: hand what
    it ran against to the controller, whose terminal summary (tests/conftest.py) prints it."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and BROKER_INFO:
        workeroutput["audiostream_broker"] = BROKER_INFO["broker"]


def pytest_terminal_summary(terminalreporter):
    if BROKER_INFO and not hasattr(terminalreporter.config, "workeroutput"):
        terminalreporter.write_line(f"integration tests ran against: {BROKER_INFO['broker']}")


@pytest.fixture
def private_broker(tmp_path):
    """Factory: a broker of the test's own (to stop mid-test, or with a SASL listener), stopped at teardown.
    Keyword arguments go to ``LocalKafka`` (e.g. ``scram_users``)."""
    lk = load_local_kafka()
    started = []

    def start(**kw):
        broker = lk.LocalKafka(workdir=tmp_path / f"kafka-{len(started)}", **kw).start()
        started.append(broker)
        return broker
    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def topics(kafka_conf):
    """Factory: fresh frames/predictions/features/deadletter topics for one test."""
    def make(partitions: int = 1) -> dict:
        tag = uuid.uuid4().hex[:8]
        names = {k: f"test.{tag}.{k}" for k in ("frames", "predictions", "features", "deadletter")}
        ensure_topics(kafka_conf, {n: partitions for n in names.values()})
        return names
    return make


@pytest.fixture
def start_analyzer(kafka_conf):
    """Factory: an Analyzer consuming the given topics in a background thread; stopped at teardown."""
    running = []

    def start(t: dict, **kw) -> Analyzer:
        cfg = AnalyzerConfig(kafka=dict(kafka_conf), frames_topic=t["frames"], predictions_topic=t["predictions"],
                             features_topic=t["features"], deadletter_topic=t["deadletter"],
                             group_id=kw.pop("group_id", f"test-analyzer-{uuid.uuid4().hex[:8]}"),
                             metrics_port=kw.pop("metrics_port", None),
                             create_topics=False, **kw)
        a = Analyzer(cfg)
        if cfg.metrics_port is not None:
            a.start_metrics_server()
        th = a.run_in_background()
        running.append((a, th))
        return a

    yield start
    for a, th in running:
        a.stop()
        th.join(20)
        assert not th.is_alive(), "analyzer did not stop within 20 s"
        assert not th.errors, th.errors
        if a.producer is not None:  # destroyed by run() itself, not left to the interpreter's exit
            with pytest.raises(RuntimeError, match="closed"):
                a.producer.poll(0)
