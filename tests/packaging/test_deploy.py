"""Deployment files validated offline (no Docker engine or cluster here), and cross-checked against the code."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def test_compose_file_against_the_compose_spec():
    exe = Path(sys.executable).parent / "check-jsonschema"
    r = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"kafka", "analyzer", "replay", "prometheus", "grafana"} <= set(compose["services"])
    for svc in compose["services"].values():  # every mounted file exists in the repo
        for vol in svc.get("volumes", []):
            assert (DEPLOY / vol.split(":")[0]).exists(), vol


def test_kubernetes_manifests_against_kubernetes_schemas(tmp_path):
    import kubernetes_validate
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "audiostream.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)  # raises on any schema error
    # the ConfigMap's analyzer config is one our config loader accepts
    from streamproc.config import resolve
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    (tmp_path / "c.yaml").write_text(cm["data"]["audiostream.yaml"])
    s = resolve(config_file=str(tmp_path / "c.yaml"), environ={})
    assert s.analyzer["metrics_port"] == 9400 and s.analyzer["create_topics"] is False
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9400"


def test_dockerfiles_use_real_extras_and_commands():
    from streamproc.cli import COMMANDS
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, extra in (("Dockerfile.analyzer", "analyzer"), ("Dockerfile.producer", "producer")):
        text = (DEPLOY / "docker" / name).read_text()
        assert f'pip install --no-cache-dir ".[{extra}]"' in text and extra in extras
        for src in re.findall(r"^COPY (\S+) ", text, re.M):
            assert (REPO / src).exists(), (name, src)
        cmd = re.search(r'^CMD \["([a-z-]+)"', text, re.M).group(1)
        assert cmd in COMMANDS, (name, cmd)
    assert "librosa" not in str(extras["producer"]) and "onnxruntime" not in str(extras["producer"])
