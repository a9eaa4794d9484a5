import pytest

from streamproc.errors import ConfigError
from streamproc.settings import masked
from streamproc.config import kafka_config


def test_precedence_flags_over_file_over_env(tmp_path):
    f = tmp_path / "k.properties"
    f.write_text("# comment\nsasl.mechanism=PLAIN\nclient.id=from-file\n")
    env = {"AUDIOSTREAM_BOOTSTRAP_SERVERS": "env:9092", "AUDIOSTREAM_KAFKA_CLIENT_ID": "from-env",
           "AUDIOSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    conf = kafka_config(None, ["client.id=from-flag"], str(f), environ=env)
    assert conf == {"bootstrap.servers": "env:9092", "client.id": "from-flag", "sasl.mechanism": "PLAIN",
                    "security.protocol": "sasl.ssl".upper().replace(".", "_")}
    assert kafka_config("flag:1", environ=env)["bootstrap.servers"] == "flag:1"
    assert kafka_config(environ={})["bootstrap.servers"] == "localhost:9092"


def test_bad_values_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="'oops' is not key=value"):
        kafka_config("h:1", ["oops"], environ={})
    with pytest.raises(ConfigError, match="no such file"):
        kafka_config("h:1", [], str(tmp_path / "missing"), environ={})


def test_secrets_are_masked():
    conf = {"sasl.password": "hunter2", "sasl.jaas.config": "x password=y", "ssl.key.password": "k",
            "sasl.username": "alice", "bootstrap.servers": "h:1"}
    m = masked(conf)
    assert "hunter2" not in str(m) and "password=y" not in str(m) and m["ssl.key.password"] == "***"
    assert m["sasl.username"] == "alice" and m["bootstrap.servers"] == "h:1"


def test_tls_verification_off_is_warned_about(caplog):
    import logging
    from streamproc.settings import warn_insecure
    with caplog.at_level(logging.WARNING):
        assert warn_insecure({"security.protocol": "SSL"}) is False
        assert not caplog.records  # on by default: nothing to say
        assert warn_insecure({"enable.ssl.certificate.verification": "false", "ssl.key.password": "k3y"}) is True
    assert "TLS certificate verification is OFF" in caplog.text and "k3y" not in caplog.text


def test_settings_does_not_import_config():
    """The config <-> settings cycle is broken: settings holds the primitives, config builds on them."""
    import subprocess
    import sys
    code = "import sys, streamproc.settings; print('streamproc.config' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stdout + r.stderr
    import inspect

    import streamproc.settings
    assert "from .config" not in inspect.getsource(streamproc.settings)
