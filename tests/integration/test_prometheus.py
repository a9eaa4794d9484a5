"""Alert rules against a real Prometheus (Debian package): promtool, and live evaluation on a running system."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from .fakemic import PulseMic
from .helpers import (all_evaluated, alert_rules, cli, consume, free_port, prometheus_tool, query,
                      start_prometheus)

pytestmark = pytest.mark.integration
PROM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = prometheus_tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(PROM_DIR / "alerts.yml")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "SUCCESS: 16 rules found" in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=PROM_DIR, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=PROM_DIR, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_expression_evaluates_on_a_live_system(kafka_conf, topics, start_analyzer, tmp_path):
    t = topics()
    analyzer = start_analyzer(t, metrics_port=0)
    mic = PulseMic(tmp_path / "pulse").start()
    producer_port = free_port()
    producer = subprocess.Popen(cli("produce-mic", "--device", "pulse", "--stream-id", "porch", "-b",
                                    kafka_conf["bootstrap.servers"], "--topic", t["frames"], "--metrics-port",
                                    str(producer_port)), env=mic.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    prom = None
    try:
        assert "capturing" in producer.stderr.readline()
        rules = PROM_DIR / "alerts.yml"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "audiostream-analyzer", "static_configs": [{"targets": [f"127.0.0.1:{analyzer.metrics_port}"]}]},
                {"job_name": "audiostream-producer", "static_configs": [{"targets": [f"127.0.0.1:{producer_port}"]}]},
            ],
        }
        prom, port = start_prometheus(config, tmp_path)
        # something for every metric to show: a file replay (predictions, features, latencies) and a bad frame
        wav = tmp_path / "tone.wav"
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)).astype(np.float32), 16000)
        p = subprocess.run(cli("produce-file", str(wav), "--stream-id", "tone", "-b", kafka_conf["bootstrap.servers"],
                               "--topic", t["frames"], "--speed", "max", "-q"), capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        from confluent_kafka import Producer
        bad = Producer({"bootstrap.servers": kafka_conf["bootstrap.servers"]})
        bad.produce(t["frames"], value=b"not a frame", key=b"junk")
        bad.flush(10)
        del bad
        consume(kafka_conf, t["predictions"], count=5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            up = query(port, "up")
            if up.get("status") == "success" and len(up["data"]["result"]) == 2 and \
                    all(r["value"][1] == "1" for r in up["data"]["result"]):
                break
            time.sleep(0.5)

        deadline = time.monotonic() + 60  # wait for every rule to have been evaluated, not a fixed time
        while time.monotonic() < deadline and not all_evaluated(alert_rules(port)):
            time.sleep(0.5)
        loaded = alert_rules(port)
        assert len(loaded) == 16 and all(r["health"] == "ok" for r in loaded), loaded

        alerts = yaml.safe_load(rules.read_text())["groups"][0]["rules"]
        names = set()
        for rule in alerts:
            res = query(port, rule["expr"])
            assert res["status"] == "success", (rule["alert"], res)
            names |= set(re.findall(r"\b(audiostream_[a-z_]+|up)\b", rule["expr"]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                query(port, name).get("data", {}).get("result") for name in names):
            time.sleep(0.5)
        for name in sorted(names):
            res = query(port, name)
            assert res["status"] == "success" and res["data"]["result"], f"{name} has no data in Prometheus"
        # every query of every Grafana panel parses and returns data for the running system
        dashboard = json.loads((PROM_DIR.parent / "grafana" / "dashboards" / "audiostream.json").read_text())
        exprs = [(p["title"], tgt["expr"]) for p in dashboard["panels"] for tgt in p["targets"]]
        assert len(dashboard["panels"]) >= 15 and len(exprs) >= 20
        deadline = time.monotonic() + 60  # rate() panels need two scrapes in their range: wait for data
        while time.monotonic() < deadline and not all(
                query(port, expr).get("data", {}).get("result") for _, expr in exprs):
            time.sleep(1.0)
        for title, expr in exprs:
            res = query(port, expr)
            assert res["status"] == "success" and res["data"]["result"], (title, expr, res)
        firing = query(port, 'ALERTS{alertstate="firing"}')["data"]["result"]
        assert not [a for a in firing if a["metric"]["alertname"] == "AudiostreamAnalyzerDown"]
    finally:
        producer.terminate()
        producer.wait(30)
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        mic.stop()
