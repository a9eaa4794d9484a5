"""dataset synth's random peak level: the range is a parameter, the draw stays behind the seed."""
import numpy as np
import pytest

from streamproc.errors import ConfigError
from streamproc.training.dataset import PEAK_DBFS, augment, parse_peak


def peak_dbfs(x):
    return 20 * np.log10(np.max(np.abs(x)))


def test_peak_range_is_drawn_from_the_seed_and_lands_in_range(tmp_path):
    t = np.arange(16000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    seen = []
    for seed in range(40):
        y, applied = augment(x, np.random.default_rng(seed), "music", tmp_path, peak_dbfs=(-45.0, -40.0))
        again, _ = augment(x, np.random.default_rng(seed), "music", tmp_path, peak_dbfs=(-45.0, -40.0))
        np.testing.assert_array_equal(y, again)  # reproducible from the seed
        drawn = float(next(a for a in applied if a.startswith("peak ")).split()[1])
        assert -45 <= drawn <= -40
        if not any(a.startswith(("clipped", "ogg")) for a in applied):  # the steps after the gain
            seen.append(peak_dbfs(y))
            assert -45.0 - 0.95 <= seen[-1] <= -40.0 - 0.9 + 0.01  # the 0.9 headroom
    assert len(seen) >= 20
    # the same seed draws the same number whatever the range: the default range gives the old datasets
    old, a_old = augment(x, np.random.default_rng(3), "speech", tmp_path)
    new, a_new = augment(x, np.random.default_rng(3), "speech", tmp_path, peak_dbfs=PEAK_DBFS)
    np.testing.assert_array_equal(old, new)


def test_silence_clips_keep_their_own_levels(tmp_path):
    x = 1e-4 * np.random.default_rng(0).standard_normal(16000)
    y, applied = augment(x, np.random.default_rng(1), "silence", tmp_path, peak_dbfs=(-45.0, 3.0))
    assert applied == [] and np.allclose(y, x.astype(np.float32))


def test_parse_peak():
    assert parse_peak(None) == PEAK_DBFS == (-30.0, 3.0)
    assert parse_peak("-45,3") == (-45.0, 3.0)
    for bad in ("-45", "3,-45", "a,b", "-200,0"):
        with pytest.raises(ConfigError):
            parse_peak(bad)


def test_parse_silence_range_names_its_flag():
    from streamproc.training.dataset import SILENCE_DBFS
    assert parse_peak(None, SILENCE_DBFS, "--silence-dbfs") == SILENCE_DBFS == (-75.0, -50.0)
    assert parse_peak("-75,-40", SILENCE_DBFS, "--silence-dbfs") == (-75.0, -40.0)
    with pytest.raises(ConfigError, match="--silence-dbfs"):
        parse_peak("-40,-75", SILENCE_DBFS, "--silence-dbfs")
