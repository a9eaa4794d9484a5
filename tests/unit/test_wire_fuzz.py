"""Property-based fuzzing of the frame decoder (hypothesis): whatever bytes arrive, ``decode`` either
returns a frame that re-encodes to the same bytes or raises FrameError with a known reason; it never
raises anything else, never reads past the payload, and checks sizes before decoding."""
import struct
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc import wire
from streamproc.errors import FrameError

REASONS = {"empty", "too_short", "bad_magic", "unsupported_version", "bad_header", "unsupported_encoding",
           "bad_channels", "bad_sample_rate", "length_mismatch", "checksum_mismatch", "oversized", "too_long", "non_finite",
           "bad_stream_id"}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(data: bytes, **kw):
    try:
        f = wire.decode(data, **kw)
    except FrameError as exc:
        assert exc.reason in REASONS, exc.reason
        return None
    assert wire.encode(f) == bytes(data)  # a frame we accept is exactly what it says it is
    return f


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data):
    _check(data)


@st.composite
def valid_frames(draw):
    enc = draw(st.sampled_from(["pcm_s16le", "pcm_f32le"]))
    ch = draw(st.integers(1, 3))
    n = draw(st.integers(0, 40))
    if enc == "pcm_s16le":
        samples = np.array(draw(st.lists(st.integers(-32768, 32767), min_size=n * ch, max_size=n * ch)), np.int16)
    else:
        samples = np.array(draw(st.lists(st.floats(-1, 1, width=32), min_size=n * ch, max_size=n * ch)), np.float32)
    return wire.encode(wire.AudioFrame(sample_rate=draw(st.integers(1, wire.MAX_SAMPLE_RATE)),
                                       sequence=draw(st.integers(0, 2**64 - 1)),
                                       sample_offset=draw(st.integers(0, 2**64 - 1)),
                                       capture_time_ns=draw(st.integers(-2**63, 2**63 - 1)),
                                       session_id=draw(st.binary(min_size=16, max_size=16)),
                                       samples=samples.reshape(n, ch), encoding=enc,
                                       flags=draw(st.integers(0, 0xFFFF)),
                                       header_extension=draw(st.binary(max_size=24))))


@FUZZ
@given(valid_frames())
def test_valid_frames_round_trip(data):
    assert _check(data) is not None


@FUZZ
@given(valid_frames(), st.data())
def test_mutated_frames(data, draw):
    """Flip, truncate, extend or overwrite header bytes of a valid frame: each mutation is caught or
    yields an honest frame (the CRC covers the payload only, so header fields mutate freely)."""
    b = bytearray(data)
    op = draw.draw(st.sampled_from(["flip", "truncate", "extend", "header_field"]))
    if op == "flip" and b:
        i = draw.draw(st.integers(0, len(b) - 1))
        b[i] ^= 1 << draw.draw(st.integers(0, 7))
    elif op == "truncate":
        b = b[:draw.draw(st.integers(0, len(b)))]
    elif op == "extend":
        b += draw.draw(st.binary(min_size=1, max_size=64))
    else:  # overwrite one header byte with an arbitrary value
        i = draw.draw(st.integers(4, 59))
        b[i] = draw.draw(st.integers(0, 255))
    _check(bytes(b))


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(1, wire.MAX_CHANNELS))
def test_sizes_checked_before_decoding(n_frames, channels):
    """A header announcing a huge payload is refused as oversized/length_mismatch without allocating it."""
    header = wire.HEADER.pack(wire.MAGIC, 1, 64, 1, channels, 0, 0, 16000, n_frames, 0, 0, 0, b"s" * 16,
                              zlib.crc32(b""))
    try:
        wire.decode(header, max_payload_bytes=1 << 20)
    except FrameError as exc:
        assert exc.reason in ({"oversized"} if n_frames * channels * 2 > 1 << 20 else {"length_mismatch"})
    else:
        assert n_frames == 0


@FUZZ
@given(st.integers(1, 48000 * 20), st.sampled_from([8000, 16000, 48000]))
def test_duration_limit_checked_before_decoding(n_frames, sr):
    header = wire.HEADER.pack(wire.MAGIC, 1, 64, 1, 1, 0, 0, sr, n_frames, 0, 0, 0, b"s" * 16, zlib.crc32(b""))
    try:
        wire.decode(header, max_payload_bytes=1 << 30, max_seconds=10.0)
    except FrameError as exc:  # no payload follows: only the limit, or the missing bytes, can be the reason
        assert exc.reason == ("too_long" if n_frames > 10 * sr else "length_mismatch")


def test_non_finite_float_samples_refused():
    x = np.array([[0.1], [np.nan]], np.float32)
    payload = x.tobytes()
    header = wire.HEADER.pack(wire.MAGIC, 1, 64, 2, 1, 0, 0, 16000, 2, 0, 0, 0, b"s" * 16, zlib.crc32(payload))
    try:
        wire.decode(header + payload)
    except FrameError as exc:
        assert exc.reason == "non_finite"
    else:
        raise AssertionError("NaN samples were accepted")
    assert struct.calcsize("<f") == 4


@FUZZ
@given(st.binary(max_size=300))
def test_stream_ids(key):
    try:
        sid = wire.decode_stream_id(key)
    except FrameError as exc:
        assert exc.reason == "bad_stream_id"
    else:
        assert 0 < len(key) <= wire.MAX_STREAM_ID_BYTES and sid.encode() == key
