import pytest

from streamproc.errors import WindowSpecError
from streamproc.windowing import WindowSpec


def test_defaults():
    s = WindowSpec()
    assert (s.sr, s.window_length, s.hop, s.n_fft, s.hop_length) == (16000, 16000, 8000, 512, 320)
    assert s.frames_per_window == 49 and s.frames_per_hop == 25
    assert s.n_features == 2 * (20 + 5 + 12) == len(s.feature_names())
    assert s.feature_names()[:2] == ["mfcc_mean[0]", "mfcc_mean[1]"]
    assert "rms_std" in s.feature_names()


def test_window_bounds_on_sample_time():
    s = WindowSpec()
    assert s.window_bounds(15999) == []
    assert s.window_bounds(16000) == [(0, 16000)]
    assert s.window_bounds(40000) == [(0, 16000), (8000, 24000), (16000, 32000), (24000, 40000)]


@pytest.mark.parametrize("kw,msg", [
    (dict(hop_length=0), "hop_length=0 must be a positive integer"),
    (dict(n_fft=-1), "n_fft=-1 must be a positive integer"),
    (dict(hop=8001), "hop=8001 must be a multiple of hop_length=320"),
    (dict(n_fft=32000), "n_fft=32000 must be <= window_length=16000"),
    (dict(features=("mfcc", "loudness")), "unknown feature"),
    (dict(features=()), "at least one feature"),
    (dict(n_mfcc=80), "n_mfcc=80 must be <= n_mels=64"),
    (dict(fmax=9000.0), "fmax=9000.0"),
    (dict(rolloff_percent=1.5), "rolloff_percent=1.5"),
    (dict(hop=32000, window_length=16000), "hop=32000 must be <= window_length"),
])
def test_validation_names_the_bad_value(kw, msg):
    with pytest.raises(WindowSpecError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        WindowSpec(**kw)


def test_dict_round_trip_and_unknown_keys():
    s = WindowSpec(n_mels=40, features=("mfcc", "rms"))
    assert WindowSpec.from_dict(s.to_dict()) == s
    with pytest.raises(WindowSpecError, match="unknown key"):
        WindowSpec.from_dict({**s.to_dict(), "colour": "red"})


def test_differences_are_readable():
    assert WindowSpec().differences(WindowSpec(n_mels=128, n_mfcc=13)) == ["n_mels: 64 != 128", "n_mfcc: 20 != 13"]


def test_from_seconds():
    assert WindowSpec.from_seconds(window_s=2.0, hop_s=0.5) == WindowSpec(window_length=32000, hop=8000)
