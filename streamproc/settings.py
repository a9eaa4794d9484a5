"""Kafka connection settings shared by every command (pure data, no client import).

Precedence: ``-X key=value`` flags > ``--kafka-config FILE`` > environment.
Any librdkafka key passes through untouched (SASL, TLS, timeouts, ...).

Environment: ``AUDIOSTREAM_BOOTSTRAP_SERVERS`` and ``AUDIOSTREAM_KAFKA_<KEY>``
where KEY is the librdkafka key upper-cased with dots as underscores, e.g.
``AUDIOSTREAM_KAFKA_SASL_MECHANISM=SCRAM-SHA-512``.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

DEFAULT_BOOTSTRAP = "localhost:9092"
# What analyze, batch, serve, demo and bench serve without --model: the latest sound-type classifier
# (docs/training.md). The starter bundle (silence / tonal / noise) stays as a minimal example and for tests.
DEFAULT_MODEL = "soundtype"

TOPIC_FRAMES = "audio.frames"
TOPIC_PREDICTIONS = "audio.predictions"
TOPIC_FEATURES = "audio.features"
TOPIC_DEADLETTER = "audio.deadletter"
TOPIC_DETECTIONS = "audio.detections"  # a multi-label detector's output (audiostream detect: BirdNET)
TOPIC_TRANSCRIPTS = "audio.transcripts"  # the transcriber service's output (docs/transcription.md)

SECRET_MARKERS = ("password", "secret", "jaas", "ssl.key.pem", "ssl_key", "ssl.keystore", "token")


def is_secret(key: str) -> bool:
    k = key.lower()
    return any(m in k for m in SECRET_MARKERS)


def masked(conf: dict) -> dict:
    """A copy safe to print or log: secret values replaced by '***'."""
    return {k: ("***" if is_secret(k) else v) for k, v in conf.items()}


def warn_insecure(conf: dict, logger=None) -> bool:
    """Log a warning when TLS certificate verification was turned off; return True if it was."""
    value = str(conf.get("enable.ssl.certificate.verification", "true")).strip().lower()
    if value in ("false", "0", "no", "off"):
        import logging
        (logger or logging.getLogger("audiostream")).warning(
            "TLS certificate verification is OFF (enable.ssl.certificate.verification=%s): the broker's identity "
            "is not checked; use this only against a test cluster", conf["enable.ssl.certificate.verification"])
        return True
    return False


def parse_kv(items, source: str) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def read_properties(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--kafka-config {path!r}: no such file")
    lines = [ln.strip() for ln in p.read_text().splitlines()]
    return parse_kv([ln for ln in lines if ln and not ln.startswith("#")], f"--kafka-config {path}")


def from_env(environ=None) -> dict:
    env = os.environ if environ is None else environ
    conf = {}
    for name, value in env.items():
        if name.startswith("AUDIOSTREAM_KAFKA_"):
            conf[name[len("AUDIOSTREAM_KAFKA_"):].lower().replace("_", ".")] = value
    if env.get("AUDIOSTREAM_BOOTSTRAP_SERVERS"):
        conf["bootstrap.servers"] = env["AUDIOSTREAM_BOOTSTRAP_SERVERS"]
    return conf


def add_kafka_arguments(parser) -> None:
    """The connection flags every Kafka command takes."""
    parser.add_argument("--bootstrap-servers", "-b", default=None,
                        help=f"Kafka bootstrap servers (env AUDIOSTREAM_BOOTSTRAP_SERVERS; default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("-X", dest="kafka_overrides", action="append", metavar="KEY=VALUE", default=[],
                        help="any librdkafka setting, e.g. -X security.protocol=SASL_SSL (repeatable)")
    parser.add_argument("--kafka-config", default=None, metavar="FILE",
                        help="librdkafka settings file (key=value lines)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="audiostream YAML config (env AUDIOSTREAM_CONFIG); flags > environment > file")
