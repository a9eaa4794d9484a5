"""docs/schemas/ are valid JSON Schemas, agree with the record builders and the reason tokens, and refuse
what the contract forbids. Real analyzer output is validated against them in tests/integration."""
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from consumers.metrics import DEADLETTER_REASONS
from streamproc import records
from streamproc.engine import Gap, Window
from streamproc.windowing import WindowSpec

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema(name):
    s = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


@pytest.fixture(scope="module")
def spec():
    return WindowSpec()


@pytest.fixture
def win(spec, rng):
    vector = rng.standard_normal(spec.n_features).astype(np.float32)
    return Window("kitchen", bytes(range(16)), 1, 8000, 24000, 16000, vector,
                  {"rms_dbfs": -20.0, "peak_dbfs": -6.0, "spectral_centroid_hz": 900.0, "zero_crossing_rate": 0.1,
                   "spectral_flux": 1.2, "onset_rate_hz": 2.0, "onset_strength": 0.4, "tempo_bpm": None,
                   "tempo_confidence": None}, False, 1.0, 1_764_000_000_000_000_000, 3)


def test_every_schema_is_linked_from_the_docs():
    pages = " ".join(p.read_text() for p in SCHEMAS.parent.glob("*.md"))
    for path in SCHEMAS.glob("*.schema.json"):
        assert f"schemas/{path.name}" in pages, path.name
    predictions = (SCHEMAS.parent / "predictions.md").read_text()
    for name in ("audio.predictions", "audio.features", "audio.deadletter.headers"):
        assert f"schemas/{name}.schema.json" in predictions, name


def test_builders_produce_valid_records(spec, win):
    schema("audio.predictions").validate(records.prediction(
        win, np.array([0.25, 0.75]), ["a", "b"], task="t", version="1", analyzer="x", latency_s=0.01))
    schema("audio.features").validate(json.loads(records.FeaturesEncoder(spec).encode(win)))
    schema("audio.features").validate(records.gap(Gap("s", b"\0" * 16, 16000, 0, 160, 1, False)))
    headers = records.deadletter_headers(None, reason="bad_magic", error="é" * 900, source="audio.frames[3]@17",
                                         analyzer="a1")
    schema("audio.deadletter.headers").validate({k: v.decode() for k, v in headers})


def test_deadletter_reasons_are_the_metric_tokens():
    s = json.loads((SCHEMAS / "audio.deadletter.headers.schema.json").read_text())
    assert sorted(s["properties"]["audiostream.reason"]["enum"]) == sorted(DEADLETTER_REASONS)


def test_schemas_refuse_what_the_contract_forbids(spec, win):
    pred = records.prediction(win, np.array([0.25, 0.75]), ["a", "b"], task="t", version="1", analyzer="x",
                              latency_s=0.01)
    bad = [("audio.predictions", {**pred, "session_id": "XYZ"}),
           ("audio.predictions", {k: v for k, v in pred.items() if k != "padded"}),
           ("audio.predictions", {**pred, "capture_time": "yesterday"}),
           ("audio.features", {**records.gap(Gap("s", b"\0" * 16, 16000, 0, 160, 1, False)), "handling": "ignored"}),
           ("audio.features", {**json.loads(records.FeaturesEncoder(spec).encode(win)), "type": "gap"}),
           ("audio.deadletter.headers", {"audiostream.reason": "bad_vibes", "audiostream.error": "x",
                                         "audiostream.source": "t[0]@1", "audiostream.analyzer": "a"})]
    for name, record in bad:
        assert not schema(name).is_valid(record), (name, record)
