"""The rhythm view (streamproc/rhythm.py): key from chroma, tempo/beats/key on fluidsynth tracks of known
tempo and key, and the batch --rhythm columns."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from streamproc import rhythm

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None,
                                      reason="fluidsynth is not installed (deploy/setup.sh installs it)")


@pytest.mark.parametrize("tonic,minor", [(0, False), (9, True), (6, False), (1, True)])
def test_key_of_a_profile_shaped_chroma(tonic, minor):
    """A chroma shaped like a key's own profile is that key, with a clear margin."""
    profile = rhythm.MINOR_PROFILE if minor else rhythm.MAJOR_PROFILE
    key, conf, corr = rhythm.estimate_key(np.roll(profile, tonic))
    assert key == f"{rhythm.NOTES[tonic]} {'minor' if minor else 'major'}" and conf > 0.1 and corr.shape == (24,)


def test_key_of_no_pitch_is_none():
    assert rhythm.estimate_key(np.zeros(12))[:2] == (None, 0.0)
    with pytest.raises(ValueError, match="12 pitch classes"):
        rhythm.estimate_key(np.ones(7))


def test_silence_and_short_signals_have_no_tempo():
    assert rhythm.analyze(np.zeros(16000 * 5, np.float32), 16000)["tempo_bpm"] is None
    assert rhythm.analyze(np.ones(8000, np.float32), 16000)["beats_s"] == []


@needs_fluidsynth
@pytest.mark.parametrize("tempo,tonic,minor,program,drums", [(90, 9, True, 0, True),
                                                             (96, 11, True, 24, False)])
def test_tempo_beats_and_key_of_a_known_track(tmp_path, tempo, tonic, minor, program, drums):
    y = rhythm.render_track(tempo, tonic, minor, 12.0, tmp_path, program=program, drums=drums, seed=tempo)
    view = rhythm.analyze(y, 16000)
    assert abs(view["tempo_bpm"] / tempo - 1) <= 0.04, view["tempo_bpm"]
    assert view["key"] == f"{rhythm.NOTES[tonic]} {'minor' if minor else 'major'}", view["key"]
    beats = np.array(view["beats_s"])
    assert np.allclose(np.diff(beats), 60 / tempo, rtol=0.08)  # an even grid at the known period
    assert view["downbeats_s"] == view["beats_s"][view["beats_s"].index(view["downbeats_s"][0])::4]
    assert view["tempo_stability"] >= 0.9


def test_batch_columns_put_each_beat_in_its_window():
    view = {"tempo_bpm": 120.0, "tempo_stability": 1.0, "key": "C major", "key_confidence": 0.2,
            "beats_s": [0.25, 0.75, 1.25, 1.75], "downbeats_s": [0.25], "tempo_curve": [(0.0, 119.0), (1.0, 121.0)]}
    rows = rhythm.add_columns([{"start_s": 0.0, "end_s": 1.0}, {"start_s": 1.0, "end_s": 2.0}], view)
    assert [r["beats_s"] for r in rows] == [[0.25, 0.75], [1.25, 1.75]]
    assert [r["downbeats_s"] for r in rows] == [[0.25], []]
    assert [r["local_tempo_bpm"] for r in rows] == [119.0, 121.0] and rows[1]["key"] == "C major"
