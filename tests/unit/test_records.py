"""Output records are built and read in one place (streamproc/records.py): what the analyzer writes,
every reader decodes back exactly."""
import json

import numpy as np
import pytest

from streamproc import records
from streamproc.engine import Gap, Window
from streamproc.windowing import WindowSpec


@pytest.fixture(scope="module")
def spec():
    return WindowSpec()


def window(spec, rng, **kw):
    vec = rng.standard_normal(spec.n_features).astype(np.float32)
    fields = dict(stream_id="kitchen", session_id=bytes(range(16)), index=3, start=24000, end=40000,
                  sample_rate=16000, vector=vec, metrics={"rms_dbfs": -20.5, "tempo_bpm": None}, gap=False,
                  arrival=10.0, capture_time_ns=1_764_000_000_123_456_789, tag=7)
    fields.update(kw)
    return Window(**fields)


def test_features_record_round_trips_its_vector_at_float32_precision(spec, rng):
    w = window(spec, rng)
    rec = json.loads(records.FeaturesEncoder(spec).encode(w))
    assert rec["type"] == "window" and records.is_window(rec) and not records.is_gap(rec)
    assert rec["id"] == "kitchen/000102030405060708090a0b0c0d0e0f/24000" and rec["padded"] is False
    assert rec["window_start_s"] == 1.5 and rec["metrics"] == w.metrics
    np.testing.assert_allclose(records.features_vector(rec, spec), w.vector, rtol=1e-6)  # %.7g


def test_features_vector_refuses_an_incomplete_or_foreign_record(spec, rng):
    rec = json.loads(records.FeaturesEncoder(spec).encode(window(spec, rng)))
    assert records.features_vector({**rec, "features": None}, spec) is None
    short = dict(rec["features"])
    short.pop(next(iter(short)))
    assert records.features_vector({**rec, "features": short}, spec) is None
    nulls = {k: None for k in rec["features"]}
    assert records.features_vector({**rec, "features": nulls}, spec) is None
    assert records.is_window({"stream_id": "old"})  # records written before `type` existed were windows


def test_prediction_record(spec, rng):
    w = window(spec, rng, padded=True)
    p = records.prediction(w, np.array([0.1, 0.7, 0.2]), ["music", "speech", "noise"], task="soundtype",
                           version="3", analyzer="a1", latency_s=0.0123456)
    assert p["label"] == "speech" and p["confidence"] == 0.7 and p["padded"] is True
    assert p["scores"] == {"music": 0.1, "speech": 0.7, "noise": 0.2}
    assert p["capture_time"] == "2025-11-24T16:00:00.123Z" and p["latency_ms"] == 12.346
    assert p["model"] == {"task": "soundtype", "version": "3"} and p["schema"] == records.PREDICTION_SCHEMA


@pytest.mark.parametrize("resynced,handling", [(False, "zero_filled_and_flagged"), (True, "resynchronised")])
def test_gap_record(resynced, handling):
    g = Gap("s", b"\x01" * 16, 16000, 32000, 4800, 3, resynced, tag=9)
    assert records.gap(g) == {"schema": 1, "type": "gap", "stream_id": "s", "session_id": "01" * 16,
                              "gap_start_sample": 32000, "gap_end_sample": 36800, "gap_start_s": 2.0, "gap_s": 0.3,
                              "missing_frames": 3, "resynced": resynced, "handling": handling, "sample_rate": 16000}


def test_deadletter_headers_keep_the_original_ones_first():
    h = records.deadletter_headers([("trace", b"1")], reason="bad_magic", error="x" * 2000, source="t[0]@5",
                                   analyzer="a1")
    assert h[0] == ("trace", b"1")
    assert dict(h[1:]) == {"audiostream.reason": b"bad_magic", "audiostream.error": b"x" * 1000,
                           "audiostream.source": b"t[0]@5", "audiostream.analyzer": b"a1"}


def test_features_record_with_orjson_reads_back_the_exact_float32_vector(spec, rng):
    pytest.importorskip("orjson", reason="orjson (analyzer extra) not installed: the json fallback is tested below")
    w = window(spec, rng)
    rec = json.loads(records.FeaturesEncoder(spec).encode(w))
    np.testing.assert_array_equal(records.features_vector(rec, spec).astype(np.float32), w.vector)


def test_records_without_orjson_have_the_same_fields_and_values(spec, rng, monkeypatch):
    w = window(spec, rng)
    enc = records.FeaturesEncoder(spec)
    fast = json.loads(enc.encode(w))
    pred = records.prediction(w, np.array([0.1, 0.7, 0.2]), ["music", "speech", "noise"], task="t", version="1",
                              analyzer="a", latency_s=0.01)
    assert json.loads(records.dumps(pred)) == pred
    monkeypatch.setattr(records, "_orjson", None)
    slow = json.loads(enc.encode(w))
    assert slow.keys() == fast.keys() and {k: v for k, v in slow.items() if k != "features"} == \
        {k: v for k, v in fast.items() if k != "features"}
    np.testing.assert_allclose(records.features_vector(slow, spec), records.features_vector(fast, spec), rtol=1e-6)
    assert json.loads(records.dumps(pred)) == pred  # the stdlib fallback


@pytest.mark.parametrize("n", [1, 7])
def test_features_records_of_a_batch_are_the_same_bytes_as_one_by_one(spec, rng, n):
    """encode_many (the analyzer's batch path) writes exactly what encode writes, whatever the values."""
    enc = records.FeaturesEncoder(spec)
    ws = [window(spec, rng, index=i, start=8000 * i, end=8000 * i + 16000) for i in range(n)]
    ws[0].vector[:4] = [np.nan, np.inf, -np.inf, 0.0]
    ws[-1].vector[-3:] = [1e-38, -3.4e38, 1e-45]
    ws[-1].vector[20] = np.float32(0.1)
    assert enc.encode_many(ws) == [enc.encode(w) for w in ws]
    assert enc.encode_many([]) == []


@pytest.mark.parametrize("n", [1, 9])
def test_prediction_records_of_a_batch_are_the_same_bytes_as_one_by_one(spec, rng, n):
    """PredictionEncoder (the analyzer's batch path) writes exactly dumps(prediction(...)): whatever the scores,
    ties, gating and capture times (a millisecond before, at and after a whole second)."""
    labels = ["music", "speech", "noise", "silence"]
    enc = records.PredictionEncoder(labels, task="soundtype", version="3", analyzer="a1")
    second = 1_764_000_001_000_000_000
    captures = [second - 1, second, second + 999_999_999, 123, second - 1_000_000]
    ws = [window(spec, rng, index=i, start=8000 * i, end=8000 * i + 16000, arrival=10.0 + i / 7,
                 capture_time_ns=captures[i % len(captures)], gap=bool(i % 2), padded=i == 3,
                 metrics={"rms_dbfs": -20.5 - i, "tempo_bpm": None}) for i in range(n)]
    scores = rng.random((n, len(labels))).astype(np.float32)
    scores[0, :2] = 0.5  # a tie: the first label, as np.argmax of one row
    gated = [i % 3 == 0 for i in range(n)]
    out, names = enc.encode_many(ws, scores, now=12.3456789, gated=gated)
    one_by_one = [records.prediction(w, s, labels, task="soundtype", version="3", analyzer="a1",
                                     latency_s=12.3456789 - w.arrival, gated=g) for w, s, g in zip(ws, scores, gated)]
    assert out == [records.dumps(p) for p in one_by_one]
    assert names == [p["label"] for p in one_by_one]
    heads = [records.window_head(w) for w in ws]
    assert enc.encode_many(ws, scores, now=12.3456789, gated=gated, heads=heads)[0] == out


def test_iso_time_with_its_cache_writes_what_it_writes_without(rng):
    seconds: dict = {}
    for ns in [0, 999_999_999, 1_000_000_000, 1_764_000_000_999_999_999, 1_764_000_001_000_000_000,
               *rng.integers(1_700_000_000 * 10**9, 1_800_000_000 * 10**9, 200).tolist()]:
        assert records.iso_time(ns, seconds) == records.iso_time(ns)
    assert len(seconds) <= 64
