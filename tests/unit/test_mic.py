"""The mic producer's frame path without a device: resampling, framing, drop-oldest outbox."""
import numpy as np
import pytest

from producers import mic as micmod
from streamproc import wire


@pytest.fixture
def make(monkeypatch):
    def build(capture_rate=48000, **kw):
        info = {"index": 7, "name": "fake", "max_input_channels": 2, "default_samplerate": float(capture_rate)}
        monkeypatch.setattr(micmod, "resolve_device", lambda device: (7, info))
        monkeypatch.setattr(micmod, "choose_capture", lambda index, info, rate, channels: capture_rate)
        return micmod.MicProducer(kafka={"bootstrap.servers": "127.0.0.1:1"}, topic="t", stream_id="porch", **kw)
    return build


def frames(m):
    return [wire.decode(v) for _, v in m.outbox]


def test_device_rate_is_resampled_to_the_stream_rate(make):
    m = make(capture_rate=48000, channels=2)
    assert m.resampler is not None
    t = np.arange(48000 * 2) / 48000
    stereo = (np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 8000).astype(np.int16)
    for k in range(0, len(stereo), 4800):  # 100 ms blocks at the device rate
        m._process(stereo[k:k + 4800], 0)
    m._process(np.zeros((0, 2), np.int16), 0, final=True)
    fs = frames(m)
    assert all(f.sample_rate == 16000 for f in fs) and fs[-1].end_of_stream
    assert [f.sequence for f in fs] == list(range(len(fs)))
    y = np.concatenate([f.samples[:, 0] for f in fs]).astype(float)
    assert abs(len(y) - 32000) <= 1
    spectrum = np.abs(np.fft.rfft(y[4000:20000]))
    assert np.argmax(spectrum) == 440  # 16000 samples at 16 kHz: 1 Hz bins
    ref = 8000 * np.sin(2 * np.pi * 440 * np.arange(len(y)) / 16000)
    lag = np.argmax(np.correlate(y[2000:6000], ref[2000:2400], "valid"))
    seg, r = y[2000 + lag:30000], ref[2000:30000 - lag]
    assert np.corrcoef(seg, r)[0, 1] > 0.9999  # soxr HQ: the tone survives intact


def test_outbox_drops_oldest_and_flags_the_next(make):
    m = make(capture_rate=16000, buffer_seconds=0.5)  # 5 frames
    assert m.resampler is None
    for k in range(12):
        m._process(np.full((1600, 1), k, np.int16), 0)
    fs = frames(m)
    assert [f.sequence for f in fs] == [7, 8, 9, 10, 11]  # the newest audio is kept
    assert fs[0].gap_before and not any(f.gap_before for f in fs[1:])
    assert m.stats.dropped["buffer_full"] == 7


def test_capture_queue_overflow_moves_the_clock_and_flags(make):
    m = make(capture_rate=16000)
    m._process(np.zeros((1600, 1), np.int16), 0)
    m.capture_lost = 3200  # PortAudio blocks that did not fit the capture queue
    m._process(np.ones((1600, 1), np.int16), 0)
    a, b = frames(m)
    assert (a.sample_offset, b.sample_offset) == (0, 4800) and b.gap_before and not a.gap_before


def test_bad_bootstrap_is_a_configuration_error():
    from streamproc.errors import ConfigError
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        micmod.check_bootstrap("localhost")
    with pytest.raises(ConfigError, match="does not resolve"):
        micmod.check_bootstrap("no-such-host.invalid:9092")
    micmod.check_bootstrap("127.0.0.1:9092,localhost:9093")
