"""`audiostream bench` runs and reports what it promises (fields only: no timing assertions in tests)."""
from __future__ import annotations

import json
import subprocess

import pytest

from .helpers import cli

pytestmark = pytest.mark.integration
COMMON = {"mode", "streams", "streams_per_core", "latency_p50_ms", "latency_p99_ms", "bytes_per_stream"}


def test_engine_bench_json():
    p = subprocess.run(cli("bench", "--streams", "40", "--seconds", "3.5", "--json"), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert COMMON | {"speedup_vs_naive", "naive_streams_per_core", "windows"} <= set(r)
    assert r["mode"] == "engine" and r["streams"] == 40
    assert r["windows"] > 0 and r["streams_per_core"] > 0 and r["speedup_vs_naive"] > 0
    assert r["latency_p50_ms"] is not None and r["bytes_per_stream"] > 0
    # timed in steady state: after every stream's tempo context (tests/unit/test_bench_engine.py)
    assert r["warmup_seconds"] >= 9.0 and r["audio_seconds_per_stream"] == 3.5


def test_engine_bench_table_of_two_models_side_by_side(tmp_path):
    """`bench --model A --model B`: both in one run, one table, B's streams per core over A's (the MLP
    default against a log-mel CNN bundle, which the bench feeds its patches)."""
    from tests.bundles import cnn_bundle
    cnn = cnn_bundle(tmp_path)
    p = subprocess.run(cli("bench", "--streams", "20", "--seconds", "3", "--model", "soundtype", "--model", str(cnn)),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for row in ("streams per core, optimised", "streams per core, naive librosa", "speed-up vs naive",
                "window latency p50 / p99", "state per stream"):
        assert row in p.stdout
    model_row = next(ln for ln in p.stdout.splitlines() if ln.startswith("model "))
    assert "soundtype:" in model_row and "|  soundtype-cnn:0" in model_row
    assert "streams per core, soundtype-cnn:0 / soundtype:" in p.stdout


@pytest.mark.parametrize("frame_ms", [100, 200])
def test_kafka_bench_json(kafka_conf, frame_ms):
    """--frame-ms 200: the load generator and the engine's bar both send 200 ms frames (half the records for the
    same audio); every window is still expected, predicted and counted once."""
    p = subprocess.run(cli("bench", "--kafka", "--streams", "10", "--duration", "6", "--json", "--engine-seconds", "3",
                           "--frame-ms", str(frame_ms), "--bootstrap-servers", kafka_conf["bootstrap.servers"]),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["frame_ms"] == frame_ms
    assert COMMON | {"sustained", "lag_trend_records_per_s", "windows", "windows_expected", "lag_samples"} <= set(r)
    assert r["mode"] == "kafka" and r["streams"] == 10
    assert r["windows"] == r["windows_expected"] > 0  # every window of every stream predicted
    # the bar measured in the same run: the engine alone on the analyzer's CPU with the same streams
    assert r["engine_streams_per_core"] > 0 and r["engine_latency_p99_ms"] is not None
    assert r["kafka_vs_engine_basis"] in ("sustained", "served (not sustained)")
    kafka_spc = r["streams_per_core"] if r["kafka_vs_engine_basis"] == "sustained" else r["served_streams_per_core"]
    assert r["kafka_vs_engine"] == pytest.approx(kafka_spc / r["engine_streams_per_core"], rel=0.01)
    # the latency split: the analyzer's part and the wait for Kafka's acknowledgement, each no more than the whole;
    # capture -> acknowledged includes the frames' way to the analyzer, so no less than arrival -> acknowledged
    assert 0 <= r["latency_to_produce_p50_ms"] <= r["latency_p50_ms"]
    assert 0 <= r["ack_wait_p50_ms"] <= r["latency_p50_ms"]
    assert r["capture_to_ack_p50_ms"] >= r["latency_p50_ms"]


@pytest.mark.parametrize("backlog", [False, True])
def test_kafka_group_bench_json(kafka_conf, backlog):
    """bench --kafka --analyzers N: real `audiostream analyze` processes in one group; every window is counted.
    --backlog: the load is produced first, and the group's catch-up is what is timed."""
    p = subprocess.run(cli("bench", "--kafka", "--analyzers", "1", "--streams", "10", "--duration", "4", "--json",
                           "--bootstrap-servers", kafka_conf["bootstrap.servers"], *(["--backlog"] if backlog else [])),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["mode"] == "kafka-group" and r["analyzers"] == 1 and len(r["analyzer_cpu_busy"]) == 1
    assert r["windows"] == r["windows_expected"] > 0  # the group predicted every window of every stream
    assert r["windows_per_s"] > 0 and r["served_streams_per_core"] > 0
    assert r["load"].startswith("backlog") == backlog
    assert (r["catch_up_seconds"] is not None and r["catch_up_seconds"] > 0) == backlog
