"""One config format: flags > environment > file > defaults; bad keys named; secrets masked."""
import re
import subprocess
import sys

import pytest

from streamproc.config import resolve
from streamproc.errors import ConfigError


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "audiostream.yaml"
    path.write_text("kafka:\n  bootstrap.servers: file-host:9093\n  sasl.password: hunter2\n"
                    "  security.protocol: SASL_SSL\nanalyzer:\n  model: soundtype:1\n  metrics_port: 9500\n"
                    "  idle_timeout_s: 30\n")
    return path


def test_precedence_and_sources(cfg):
    env = {"AUDIOSTREAM_ANALYZER_METRICS_PORT": "9600", "AUDIOSTREAM_KAFKA_CLIENT_ID": "env-client"}
    s = resolve(config_file=str(cfg), environ=env)
    assert s.kafka["bootstrap.servers"] == "file-host:9093" and s.kafka["client.id"] == "env-client"
    assert (s.analyzer["model"], s.analyzer["metrics_port"], s.analyzer["idle_timeout_s"]) == ("soundtype:1", 9600, 30.0)
    assert s.analyzer["group_id"] == "audiostream-analyzer"  # default
    assert s.sources["analyzer.metrics_port"] == "environment" and s.sources["analyzer.model"].startswith("file ")
    s = resolve(config_file=str(cfg), environ=env, bootstrap="flag-host:1", flags_kafka={"client.id": "flag"},
                flags_analyzer={"metrics_port": 9700, "model": None})
    assert s.kafka["bootstrap.servers"] == "flag-host:1" and s.kafka["client.id"] == "flag"
    assert s.analyzer["metrics_port"] == 9700 and s.analyzer["model"] == "soundtype:1"  # None flag = not given
    assert s.sources["kafka.bootstrap.servers"] == "flag"
    assert resolve(environ={"AUDIOSTREAM_CONFIG": str(cfg)}).analyzer["model"] == "soundtype:1"


@pytest.mark.parametrize("text,msg", [
    ("analyzer:\n  modle: x\n", r"unknown key\(s\) analyzer.modle"),
    ("analyser:\n  model: x\n", r"unknown section\(s\) \['analyser'\]"),
    ("analyzer:\n  metrics_port: lots\n", r"analyzer.metrics_port='lots' must be int"),
    ("analyzer:\n  auto_offset_reset: middle\n", "must be earliest or latest"),
    ("kafka: [1, 2]\n", "section 'kafka' must be a mapping"),
    ("kafka: {bootstrap.servers: x\n", "not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, msg):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        resolve(config_file=str(path), environ={})


def test_bad_environment_names_the_variable():
    with pytest.raises(ConfigError, match="AUDIOSTREAM_ANALYZER_MODLE: unknown analyzer setting 'modle'"):
        resolve(environ={"AUDIOSTREAM_ANALYZER_MODLE": "x"})


def cli(*args, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "streamproc.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_config_show_masks_secrets_and_says_where_values_come_from(cfg):
    p = cli("config", "show", "--config", str(cfg), "-X", "client.id=cli", env={"AUDIOSTREAM_KAFKA_SASL_USERNAME": "ana"})
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "hunter2" not in out and "sasl.password: '***'" in out
    assert "bootstrap.servers: file-host:9093   # file" in out
    assert "sasl.username: ana   # environment" in out and "client.id: cli   # flag" in out
    assert "model: soundtype:1   # file" in out and "group_id: audiostream-analyzer   # default" in out


def test_analyze_reads_the_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("analyzer:\n  model: nosuchtask\n")
    p = cli("analyze", "--config", str(path), "--no-metrics")
    assert p.returncode == 2 and "no model task 'nosuchtask'" in p.stderr
    path.write_text("analyzer:\n  modle: x\n")
    p = cli("analyze", "--config", str(path))
    assert p.returncode == 2 and "analyzer.modle" in p.stderr


def test_explicit_bootstrap_flag_beats_a_kafka_config_file(tmp_path):
    props = tmp_path / "k.properties"
    props.write_text("bootstrap.servers=file-host:1\nclient.id=from-file\n")
    p = cli("config", "show", "--kafka-config", str(props), "-b", "flag-host:2", "-X", "client.id=from-x")
    assert p.returncode == 0, p.stderr
    assert "bootstrap.servers: flag-host:2   # flag" in p.stdout and "client.id: from-x   # flag" in p.stdout
    from streamproc.config import kafka_config
    assert kafka_config("flag-host:2", [], str(props), environ={})["bootstrap.servers"] == "flag-host:2"


def test_every_analyzer_setting_is_defined_once():
    """ANALYZER_SETTINGS is the one definition: the config keys, the AnalyzerConfig defaults and the
    `analyze` flags (with their help's default) all come from it."""
    import argparse
    import dataclasses

    from consumers.analyzer import AnalyzerConfig, add_parser, config_from_args
    from streamproc.config import ANALYZER_KEYS, ANALYZER_SETTINGS
    fields = {f.name: f.default for f in dataclasses.fields(AnalyzerConfig)}
    assert set(ANALYZER_KEYS) == {s.name for s in ANALYZER_SETTINGS}
    for s in ANALYZER_SETTINGS:
        assert fields[s.name] == s.default, s.name
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers())
    analyze = root._subparsers._group_actions[0].choices["analyze"]
    help_text = " ".join(analyze.format_help().split())
    for s in ANALYZER_SETTINGS:
        assert s.flag in help_text, s.flag
        if s.type is not bool:
            assert f"(default {'none' if s.default is None else s.default})" in help_text, s.name
    args = root.parse_args(["analyze", "--no-create-topics", "--exactly-once", "--from", "latest", "--idle-timeout",
                            "5", "--max-reorder", "2", "-b", "h:1"])
    cfg = config_from_args(args)
    assert (cfg.create_topics, cfg.exactly_once, cfg.auto_offset_reset, cfg.idle_timeout_s, cfg.max_reorder) == \
        (False, True, "latest", 5.0, 2)
    assert cfg.model == fields["model"] and cfg.kafka["bootstrap.servers"] == "h:1"


def test_an_analyzer_runs_blas_on_the_threads_its_setting_allows():
    """`--blas-threads` (default 1: one analyzer is one core) holds for the whole process from the start."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from consumers.analyzer import Analyzer, AnalyzerConfig
    blas = lambda: {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}  # noqa: E731
    with threadpool_limits(2, user_api="blas"):  # as a 2-core machine starts
        a = Analyzer(AnalyzerConfig(kafka={"bootstrap.servers": "127.0.0.1:1"}, metrics_port=None))
        assert a.config.blas_threads == 1 and blas() == {1}
        Analyzer(AnalyzerConfig(kafka={"bootstrap.servers": "127.0.0.1:1"}, metrics_port=None, blas_threads=2))
        assert blas() == {2}


def analyze_args(argv):
    import argparse

    from consumers.analyzer import add_parser
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers())
    return root.parse_args(argv)


def _config(args):
    from consumers.analyzer import config_from_args
    return config_from_args(args)


@pytest.mark.parametrize("flag,value,msg", [("--max-batch", "0", "analyzer.batch_size=0 (flag) must be at least 1"),
                                            ("--blas-threads", "0", "analyzer.blas_threads=0 (flag) must be at least 1"),
                                            ("--max-reorder", "-1", "analyzer.max_reorder=-1 (flag) must be 0 or more")])
def test_counts_out_of_range_are_refused_naming_the_setting(flag, value, msg):
    args = analyze_args(["analyze", flag, value, "-b", "h:1"])
    with pytest.raises(ConfigError, match=re.escape(msg)):
        _config(args)


def test_max_batch_reaches_the_analyzer(monkeypatch):
    assert _config(analyze_args(["analyze", "-b", "h:1"])).batch_size == 1000
    monkeypatch.setenv("AUDIOSTREAM_ANALYZER_BATCH_SIZE", "250")
    assert _config(analyze_args(["analyze", "-b", "h:1"])).batch_size == 250
    assert _config(analyze_args(["analyze", "--max-batch", "100", "-b", "h:1"])).batch_size == 100
