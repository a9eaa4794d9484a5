"""Offline analysis (streamproc/analysis.analyze_pcm, behind `batch` and /v1/classify) goes through the
live engine: a clip shorter than one window is one zero-padded window, flagged, as in the analyzer."""
import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from consumers.batch import arrow_schema, run_local
from streamproc.analysis import analyze_pcm
from streamproc.audio import from_s16, to_s16
from streamproc.features import FeatureExtractor
from streamproc.inference import ModelBundle
from streamproc.settings import DEFAULT_MODEL


@pytest.fixture(scope="module")
def bundle():
    return ModelBundle.load(DEFAULT_MODEL)


@pytest.mark.parametrize("seconds", [0.3, 0.5])
def test_a_clip_shorter_than_a_window_is_one_padded_window(bundle, rng, seconds):
    spec = bundle.spec
    pcm = to_s16(0.2 * rng.standard_normal(int(seconds * spec.sr)))
    rows = analyze_pcm(pcm, bundle, file="short.wav", stream_id="short")
    assert [(r["window_index"], r["start_sample"], r["end_sample"], r["padded"], r["gap"]) for r in rows] == \
        [(0, 0, spec.window_length, True, False)]
    padded = np.zeros(spec.window_length, np.float32)
    padded[:len(pcm)] = from_s16(pcm)
    _, V = FeatureExtractor(spec).vectors_for_signal(padded)
    np.testing.assert_allclose(rows[0]["features"], V[0], rtol=1e-5, atol=1e-4)
    assert rows[0]["label"] in bundle.labels


def test_a_clip_of_a_window_or_more_is_not_padded_and_its_tail_is_not_analysed(bundle, rng):
    spec = bundle.spec
    rows = analyze_pcm(to_s16(0.2 * rng.standard_normal(int(1.7 * spec.sr))), bundle, file="f", stream_id="f")
    assert [(r["start_sample"], r["padded"]) for r in rows] == [(0, False), (spec.hop, False)]
    assert analyze_pcm(np.zeros(0, np.int16), bundle, file="empty", stream_id="empty") == []


def test_batch_rows_carry_the_padded_column(bundle, rng, tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, 0.2 * rng.standard_normal(int(0.3 * bundle.spec.sr)), bundle.spec.sr, subtype="PCM_16")
    rows, errors = run_local([(str(path), str(tmp_path), None)], DEFAULT_MODEL, workers=1, progress=False)
    assert errors == []
    table = pa.Table.from_pylist(rows, schema=arrow_schema(bundle.labels, bundle.spec.n_features))
    assert table.column("padded").to_pylist() == [True]
