"""One configuration file format for every command, with documented precedence.

Precedence, highest first: command-line flags > environment > config file > defaults.

File (YAML, ``--config FILE`` or ``AUDIOSTREAM_CONFIG``)::

    kafka:                          # any librdkafka setting, passed through untouched
      bootstrap.servers: kafka-1:9093,kafka-2:9093
      security.protocol: SASL_SSL
      sasl.mechanism: SCRAM-SHA-512
      sasl.username: analyzer
      sasl.password: ...            # masked in 'config show' and logs
    analyzer:
      model: soundtype:1
      group_id: audiostream-analyzer
      metrics_port: 9400
      idle_timeout_s: 60

Environment: ``AUDIOSTREAM_BOOTSTRAP_SERVERS``, ``AUDIOSTREAM_KAFKA_<KEY>`` (librdkafka
key upper-cased, dots as underscores) and ``AUDIOSTREAM_ANALYZER_<KEY>`` (e.g.
``AUDIOSTREAM_ANALYZER_METRICS_PORT=9500``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ConfigError
from .settings import (DEFAULT_BOOTSTRAP, DEFAULT_MODEL, TOPIC_DEADLETTER, TOPIC_FEATURES, TOPIC_FRAMES,
                       TOPIC_PREDICTIONS, add_kafka_arguments, from_env, masked, parse_kv, read_properties)

@dataclass(frozen=True)
class Setting:
    """One analyzer setting, defined once: its name is the key of the config file's ``analyzer:``
    section, of ``AUDIOSTREAM_ANALYZER_<NAME>`` and of ``consumers.analyzer.AnalyzerConfig``; ``flag``
    is the ``analyze`` option (its help shows ``default``). A bool's flag sets ``flag_sets``. A count with a
    ``minimum`` is refused below it, wherever it was set, naming the setting and its source."""

    name: str
    type: type
    default: object
    flag: str
    help: str
    metavar: str | None = None
    choices: tuple | None = None
    flag_sets: bool = True
    minimum: int | None = None


ANALYZER_SETTINGS: tuple[Setting, ...] = (
    Setting("model", str, DEFAULT_MODEL, "--model", "model bundle: a directory, or task[:version] under models/"),
    Setting("group_id", str, "audiostream-analyzer", "--group-id", "consumer group"),
    Setting("frames_topic", str, TOPIC_FRAMES, "--frames-topic", "topic the frames come from"),
    Setting("predictions_topic", str, TOPIC_PREDICTIONS, "--predictions-topic", "topic predictions go to"),
    Setting("features_topic", str, TOPIC_FEATURES, "--features-topic", "topic features and gap markers go to"),
    Setting("deadletter_topic", str, TOPIC_DEADLETTER, "--deadletter-topic", "topic refused frames go to"),
    Setting("metrics_port", int, 9400, "--metrics-port", "Prometheus /metrics port (0 = any free port)"),
    Setting("metrics_addr", str, "127.0.0.1", "--metrics-addr",
            "address /metrics binds to; loopback by default, 0.0.0.0 to expose it"),
    Setting("max_frame_bytes", int, 1 << 20, "--max-frame-bytes", "largest frame payload accepted, in bytes"),
    Setting("max_frame_seconds", float, 10.0, "--max-frame-seconds", "longest frame accepted, in seconds"),
    Setting("idle_timeout_s", float, 60.0, "--idle-timeout", "seconds before a silent stream is evicted",
            metavar="SECONDS"),
    Setting("partitions", int, 6, "--partitions", "partitions for topics the analyzer creates"),
    Setting("create_topics", bool, True, "--no-create-topics", "do not create missing topics", flag_sets=False),
    Setting("auto_offset_reset", str, "earliest", "--from", "where a new consumer group starts reading",
            choices=("earliest", "latest")),
    Setting("exactly_once", bool, False, "--exactly-once",
            "Kafka transactions: outputs and input offsets commit together (read outputs with "
            "isolation.level=read_committed); without it, at-least-once with deterministic ids"),
    Setting("instance_id", str, None, "--instance-id",
            "stable id of this replica (e.g. the pod name): static group membership, so a restart gets its "
            "partitions back without a rebalance, and the transactional id that fences a crashed "
            "predecessor's open transaction in --exactly-once mode"),
    Setting("unavailable_timeout_s", float, 120.0, "--unavailable-timeout",
            "exit non-zero if Kafka stays unreachable (or outputs unacknowledged) this long", metavar="SECONDS"),
    Setting("max_reorder", int, 4, "--max-reorder",
            "frames held back per stream to put a reordering right before calling it a gap", metavar="FRAMES",
            minimum=0),
    Setting("batch_size", int, 1000, "--max-batch",
            "most frames taken from Kafka per step: smaller batches cut window latency when the analyzer is "
            "near its capacity, at some cost in streams per core (docs/performance.md)", metavar="FRAMES",
            minimum=1),
    Setting("blas_threads", int, 1, "--blas-threads",
            "threads BLAS (numpy's matmuls) may use in this process; one analyzer is sized as one core, "
            "scale with replicas", metavar="N", minimum=1),
)
# analyzer settings: key -> (type, default), derived from ANALYZER_SETTINGS
ANALYZER_KEYS: dict[str, tuple[type, object]] = {s.name: (s.type, s.default) for s in ANALYZER_SETTINGS}
SECTIONS = ("kafka", "analyzer")


def add_analyzer_arguments(parser) -> None:
    """One flag per analyzer setting (``ANALYZER_SETTINGS``); a flag not given is None (= not set)."""
    for s in ANALYZER_SETTINGS:
        if s.type is bool:
            parser.add_argument(s.flag, dest=s.name, action="store_const", const=s.flag_sets, default=None,
                                help=s.help)
        else:
            default = "none" if s.default is None else s.default
            parser.add_argument(s.flag, dest=s.name, type=s.type, default=None, metavar=s.metavar,
                                choices=s.choices, help=f"{s.help} (default {default})")


def analyzer_flags(args) -> dict:
    """The analyzer settings given as flags (None = not given), for ``resolve(flags_analyzer=...)``."""
    return {s.name: getattr(args, s.name, None) for s in ANALYZER_SETTINGS}


def _coerce(key: str, value, typ: type, source: str):
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
    else:
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return typ(value)
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"{source}: analyzer.{key}={value!r} must be {typ.__name__}")


def read_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: must be a mapping with sections {list(SECTIONS)}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config file {str(p)!r}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    for section in SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"config file {str(p)!r}: section {section!r} must be a mapping")
    bad = sorted(set(data.get("analyzer", {})) - set(ANALYZER_KEYS))
    if bad:
        raise ConfigError(f"config file {str(p)!r}: unknown key(s) analyzer.{', analyzer.'.join(bad)}; "
                          f"known: {sorted(ANALYZER_KEYS)}")
    return data


class Settings:
    """The effective settings and where each value came from (``sources``)."""

    def __init__(self, kafka: dict, analyzer: dict, sources: dict):
        self.kafka = kafka
        self.analyzer = analyzer
        self.sources = sources

    def show(self) -> str:
        """YAML of the effective settings, secrets masked, each value's source as a comment."""
        lines = ["kafka:"]
        for k, v in masked(self.kafka).items():
            lines.append(f"  {k}: {yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                         f"   # {self.sources.get('kafka.' + k, 'default')}")
        lines.append("analyzer:")
        for k, v in self.analyzer.items():
            lines.append(f"  {k}: {yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                         f"   # {self.sources.get('analyzer.' + k, 'default')}")
        return "\n".join(lines)


def resolve(*, config_file: str | None = None, kafka_properties: dict | None = None, bootstrap: str | None = None,
            flags_kafka: dict | None = None, flags_analyzer: dict | None = None, environ=None) -> Settings:
    """Kafka: defaults < YAML file < environment < ``--kafka-config`` properties < ``--bootstrap-servers``
    < ``-X``. Analyzer: defaults < YAML file < environment < flags."""
    env = os.environ if environ is None else environ
    config_file = config_file or env.get("AUDIOSTREAM_CONFIG")
    file_data = read_file(config_file) if config_file else {}
    sources: dict[str, str] = {}

    kafka = {"bootstrap.servers": DEFAULT_BOOTSTRAP}
    for k, v in (file_data.get("kafka") or {}).items():
        kafka[str(k)] = str(v) if not isinstance(v, bool) else str(v).lower()
        sources["kafka." + str(k)] = f"file {config_file}"
    for k, v in from_env(env).items():
        kafka[k] = v
        sources["kafka." + k] = "environment"
    for k, v in (kafka_properties or {}).items():
        kafka[k] = v
        sources["kafka." + k] = "flag (--kafka-config)"
    if bootstrap:
        kafka["bootstrap.servers"] = bootstrap
        sources["kafka.bootstrap.servers"] = "flag"
    for k, v in (flags_kafka or {}).items():
        kafka[k] = v
        sources["kafka." + k] = "flag"
    if not str(kafka["bootstrap.servers"]).strip():
        raise ConfigError("kafka.bootstrap.servers is empty: pass --bootstrap-servers HOST:PORT")

    analyzer = {k: default for k, (_, default) in ANALYZER_KEYS.items()}
    for k, v in (file_data.get("analyzer") or {}).items():
        analyzer[k] = _coerce(k, v, ANALYZER_KEYS[k][0], f"config file {config_file}")
        sources["analyzer." + k] = f"file {config_file}"
    prefix = "AUDIOSTREAM_ANALYZER_"
    for name, v in env.items():
        if name.startswith(prefix):
            k = name[len(prefix):].lower()
            if k not in ANALYZER_KEYS:
                raise ConfigError(f"environment {name}: unknown analyzer setting {k!r}; known: {sorted(ANALYZER_KEYS)}")
            analyzer[k] = _coerce(k, v, ANALYZER_KEYS[k][0], f"environment {name}")
            sources["analyzer." + k] = "environment"
    for k, v in (flags_analyzer or {}).items():
        if v is not None:
            analyzer[k] = _coerce(k, v, ANALYZER_KEYS[k][0], "flag")
            sources["analyzer." + k] = "flag"
    for st in ANALYZER_SETTINGS:
        if st.minimum is not None and analyzer[st.name] < st.minimum:
            raise ConfigError(f"analyzer.{st.name}={analyzer[st.name]} ({sources.get('analyzer.' + st.name, 'default')})"
                              f" must be {'0 or more' if st.minimum == 0 else f'at least {st.minimum}'}")
    if analyzer["auto_offset_reset"] not in ("earliest", "latest"):
        raise ConfigError(f"analyzer.auto_offset_reset={analyzer['auto_offset_reset']!r} must be earliest or latest")
    return Settings(kafka, analyzer, sources)


def resolve_args(args, flags_analyzer: dict | None = None, environ=None) -> Settings:
    """``resolve`` for a command's parsed arguments (the flags ``add_kafka_arguments`` adds)."""
    props = read_properties(args.kafka_config) if getattr(args, "kafka_config", None) else None
    return resolve(config_file=getattr(args, "config", None), kafka_properties=props,
                   bootstrap=args.bootstrap_servers, flags_kafka=parse_kv(getattr(args, "kafka_overrides", None), "-X"),
                   flags_analyzer=flags_analyzer, environ=environ)


def kafka_config(bootstrap_servers: str | None = None, overrides=None, config_file: str | None = None,
                 environ=None) -> dict:
    """Base librdkafka config (bootstrap + security) for producers, consumers and admin clients.

    The same resolution as every command (streamproc.config.resolve): ``config_file`` is a
    ``--kafka-config`` properties file, ``overrides`` are ``-X key=value`` items.
    """
    props = read_properties(config_file) if config_file else None
    return resolve(kafka_properties=props, bootstrap=bootstrap_servers,
                   flags_kafka=parse_kv(overrides, "-X"), environ=environ).kafka


def kafka_config_from_args(args) -> dict:
    """Flags > environment > --config file > defaults (streamproc.config)."""
    return resolve_args(args).kafka


def add_parser(sub):
    p = sub.add_parser("config", help="show the effective configuration (secrets masked)", description=__doc__)
    p.add_argument("action", choices=["show"])
    add_kafka_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    print(resolve_args(args).show())
    return 0
