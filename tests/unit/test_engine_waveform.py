"""Waveform windows (a bundle that takes audio, BirdNET): each window's samples are exactly the stream's."""
import numpy as np
import pytest

from streamproc import wire
from streamproc.audio import from_s16, to_s16
from streamproc.engine import Engine
from streamproc.windowing import WindowSpec

SR = 48000
# BirdNET's windows: 3 s at 48 kHz; STFT frames (40 ms every 10 ms) end exactly at each window's end
SPEC = WindowSpec(sr=SR, window_length=3 * SR, hop=3 * SR, n_fft=1920, hop_length=480)


def frames(pcm, n, session=b"W" * 16, skip=()):
    for seq, off in enumerate(range(0, len(pcm), n)):
        if seq in skip:
            continue
        yield wire.decode(wire.encode(wire.AudioFrame(SR, seq, off, 0, session, pcm[off:off + n, None])))


@pytest.mark.parametrize("hop_s,frame", [(3.0, 4800), (1.5, 4800), (3.0, 7777)])
def test_window_samples_are_the_streams_own(rng, hop_s, frame):
    spec = WindowSpec(**{**SPEC.to_dict(), "hop": int(hop_s * SR)})
    pcm = to_s16(0.3 * rng.standard_normal(10 * SR))
    eng = Engine(spec, waveform=True)
    wins = []
    for f in frames(pcm, frame):
        eng.accept("bird", f)
        wins += eng.step()
    y = from_s16(pcm)
    assert len(wins) == 1 + (len(y) - spec.window_length) // spec.hop
    for w in wins:
        np.testing.assert_array_equal(w.samples, y[w.start:w.end])
    # the stream keeps about one window of audio, not the whole stream
    assert eng.streams["bird"].buf_len < spec.window_length + 2 * frame + spec.n_fft


def test_a_gap_is_zeros_in_the_samples_and_flagged(rng):
    pcm = to_s16(0.3 * rng.standard_normal(6 * SR))
    eng = Engine(SPEC, waveform=True, max_gap_fill=SR)
    wins = []
    for f in frames(pcm, 4800, skip={3}):  # 0.3-0.4 s missing
        eng.accept("bird", f)
        wins += eng.step()
    first = wins[0]
    assert first.gap and not wins[1].gap
    assert not first.samples[3 * 4800:4 * 4800].any() and first.samples[:3 * 4800].any()


def test_features_only_engines_carry_no_samples(rng):
    eng = Engine(SPEC)
    pcm = to_s16(0.3 * rng.standard_normal(4 * SR))
    wins = []
    for f in frames(pcm, 4800):
        eng.accept("s", f)
        wins += eng.step()
    assert wins and all(w.samples is None for w in wins)


def test_a_spec_whose_frames_stop_short_of_the_window_end_is_refused():
    with pytest.raises(ValueError, match="multiple of hop_length"):
        Engine(WindowSpec(sr=SR, window_length=3 * SR, hop=3 * SR, n_fft=2048, hop_length=480), waveform=True)
