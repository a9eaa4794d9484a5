import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from streamproc import wire
from streamproc.errors import FrameError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "wire"
SESSION = bytes(range(16))


def frame(samples, **kw):
    base = dict(sample_rate=16000, sequence=5, sample_offset=8000, capture_time_ns=123, session_id=SESSION)
    base.update(kw)
    return wire.AudioFrame(samples=samples, **base)


@pytest.mark.parametrize("encoding,dtype", [("pcm_s16le", np.int16), ("pcm_f32le", np.float32)])
@pytest.mark.parametrize("channels", [1, 2, 8])
def test_round_trip(rng, encoding, dtype, channels):
    x = (rng.standard_normal((1600, channels)) * (1000 if dtype == np.int16 else 0.3)).astype(dtype)
    f = frame(x, encoding=encoding, flags=wire.FLAG_END_OF_STREAM)
    data = wire.encode(f)
    assert len(data) == wire.HEADER_SIZE + x.nbytes
    g = wire.decode(data)
    assert (g.sample_rate, g.sequence, g.sample_offset, g.capture_time_ns, g.session_id, g.encoding) == \
           (16000, 5, 8000, 123, SESSION, encoding)
    assert g.end_of_stream and not g.gap_before
    np.testing.assert_array_equal(g.samples, x)


def test_encode_pcm_fast_path_matches_encode(rng):
    x = (rng.standard_normal(160) * 3000).astype(np.int16)
    a = wire.encode(frame(x[:, None]))
    b = wire.encode_pcm(x.tobytes(), channels=1, n_frames=160, sample_rate=16000, sequence=5, sample_offset=8000,
                        capture_time_ns=123, session_id=SESSION)
    assert a == b


def test_mono_float32_scaling_and_downmix():
    f = frame(np.array([[32767, -32768], [0, 16384]], dtype=np.int16))
    np.testing.assert_array_equal(f.mono_float32(), np.array([(32767 - 32768) / 2 / 32768, 0.25], np.float32))


@pytest.mark.parametrize("name", ["s16_mono", "s16_stereo_eos", "f32_mono_gap", "empty_eos"])
def test_checked_in_vectors_decode_exactly(name):
    data = (VECTORS / f"{name}.bin").read_bytes()
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    assert data.hex() == doc["value_hex"]
    f = wire.decode(data)
    assert f.sample_rate == doc["sample_rate"]
    assert f.sequence == doc["sequence"]
    assert f.sample_offset == doc["sample_offset"]
    assert f.capture_time_ns == doc["capture_time_ns"]
    assert f.flags == doc["flags"]
    assert f.encoding == doc["encoding"]
    assert f.session_id.hex() == doc["session_id"]
    assert f.channels == doc["channels"] and f.n_frames == doc["n_frames"]
    assert f.samples.tolist() == (doc["samples"] if doc["samples"] else [])
    assert wire.decode_stream_id(doc["key"].encode()) == doc["key"]


def test_vectors_are_what_the_encoder_writes():
    import importlib.util
    spec = importlib.util.spec_from_file_location("mk", VECTORS / "make_vectors.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    for name, v in mk.VECTORS.items():
        assert mk.build(v) == (VECTORS / f"{name}.bin").read_bytes(), name


def good_bytes(n=160):
    return wire.encode(frame(np.arange(n, dtype=np.int16)[:, None]))


def patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize("make,reason", [
    (lambda: b"", "too_short"),
    (lambda: b"hello world, not audio at all" * 3, "bad_magic"),
    (lambda: good_bytes()[:40], "too_short"),
    (lambda: good_bytes()[:-3], "length_mismatch"),
    (lambda: good_bytes() + b"\x00\x00", "length_mismatch"),
    (lambda: patched(good_bytes(), 4, "<B", 2), "unsupported_version"),
    (lambda: patched(good_bytes(), 4, "<B", 0), "unsupported_version"),
    (lambda: patched(good_bytes(), 6, "<B", 9), "unsupported_encoding"),
    (lambda: patched(good_bytes(), 7, "<B", 0), "bad_channels"),
    (lambda: patched(good_bytes(), 7, "<B", 200), "bad_channels"),
    (lambda: patched(good_bytes(), 12, "<I", 0), "bad_sample_rate"),
    (lambda: patched(good_bytes(), 10, "<H", 1), "bad_header"),
    (lambda: patched(good_bytes(), 5, "<B", 10), "bad_header"),
    (lambda: patched(good_bytes(), 16, "<I", 10**8), "oversized"),
    (lambda: good_bytes()[:-1] + b"\x7f", "checksum_mismatch"),
])
def test_garbage_raises_frame_error_with_reason(make, reason):
    with pytest.raises(FrameError) as e:
        wire.decode(make())
    assert e.value.reason == reason
    assert str(e.value)  # a message a person can act on


def test_none_value_is_empty():
    with pytest.raises(FrameError) as e:
        wire.decode(None)
    assert e.value.reason == "empty"


def test_oversized_checked_before_copy():
    data = good_bytes(1000)
    with pytest.raises(FrameError, match="exceeds the limit of 100 bytes") as e:
        wire.decode(data, max_payload_bytes=100)
    assert e.value.reason == "oversized"


def test_non_finite_float_samples():
    x = np.array([[0.1], [np.nan]], dtype=np.float32)
    payload = x.tobytes()
    data = wire.encode_pcm(payload, channels=1, n_frames=2, sample_rate=16000, sequence=0, sample_offset=0,
                           capture_time_ns=0, session_id=SESSION, encoding="pcm_f32le")
    with pytest.raises(FrameError) as e:
        wire.decode(data)
    assert e.value.reason == "non_finite"


def test_header_crc_is_crc32_of_payload():
    data = good_bytes()
    assert struct.unpack_from("<I", data, 60)[0] == zlib.crc32(data[64:])


@pytest.mark.parametrize("key,ok", [(b"kitchen", True), ("café".encode(), True), (b"", False), (None, False),
                                    (b"\xff\xfe", False), (b"a" * 257, False), (b"a\nb", False),
                                    (b"a" * 256, True)])
def test_stream_id(key, ok):
    if ok:
        assert wire.decode_stream_id(key) == key.decode()
    else:
        with pytest.raises(FrameError) as e:
            wire.decode_stream_id(key)
        assert e.value.reason == "bad_stream_id"


def test_random_bytes_never_crash(rng):
    """Whatever the bytes, decode either returns a frame or raises FrameError."""
    base = good_bytes()
    for i in range(3000):
        data = bytearray(base)
        for _ in range(rng.integers(1, 6)):
            data[rng.integers(len(data))] = rng.integers(256)
        cut = rng.integers(0, len(data) + 1) if i % 3 == 0 else len(data)
        try:
            wire.decode(bytes(data[:cut]))
        except FrameError:
            pass


def test_a_longer_header_is_kept_not_checksummed_and_re_encoded_as_it_came():
    """header_length > 64: bytes 64..header_length are a header extension (for a later minor version). A v1
    decoder skips them for the payload, the CRC does not cover them, and re-encoding keeps them."""
    data = good_bytes(8)
    ext = b"EXT:" + bytes(range(12))
    longer = data[:5] + bytes([64 + len(ext)]) + data[6:64] + ext + data[64:]
    f = wire.decode(longer)
    assert f.header_extension == ext and f.samples[:, 0].tolist() == list(range(8))
    assert wire.encode(f) == longer
    other = longer[:64] + b"x" * len(ext) + longer[64 + len(ext):]  # the CRC covers the payload only
    assert wire.decode(other).samples.tolist() == f.samples.tolist()
    with pytest.raises(FrameError) as exc:
        wire.encode(dataclasses.replace(f, header_extension=bytes(192)))  # header_length is one byte
    assert exc.value.reason == "bad_header"


def reason_of(key, value, limits) -> str | None:
    """What a v1 reader reports for one record, checks in docs/wire-format.md's order: key, value, model rate."""
    try:
        wire.decode_stream_id(key)
        f = wire.decode(value, max_payload_bytes=limits["max_payload_bytes"], max_seconds=limits["max_seconds"])
    except FrameError as exc:
        return exc.reason
    return "sample_rate_mismatch" if f.sample_rate != limits["model_sample_rate"] else None


REJECTS = sorted(p.stem for p in (VECTORS / "reject").glob("*.json"))


@pytest.mark.parametrize("name", REJECTS)
def test_reject_vectors_give_their_reason(name):
    doc = json.loads((VECTORS / "reject" / f"{name}.json").read_text())
    key = bytes.fromhex(doc["key_hex"]) if "key_hex" in doc else (None if doc["key"] is None else doc["key"].encode())
    binf = VECTORS / "reject" / f"{name}.bin"
    value = binf.read_bytes() if doc["value_hex"] is not None else None
    assert binf.exists() == (value is not None)
    if value is not None:
        assert value.hex() == doc["value_hex"]
    assert reason_of(key, value, doc) == doc["reason"]


def test_one_reject_vector_per_reason_and_all_regenerate():
    import importlib.util

    from consumers.metrics import DEADLETTER_REASONS
    spec = importlib.util.spec_from_file_location("mk", VECTORS / "make_vectors.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    rejects = mk.rejects()
    assert sorted(rejects) == REJECTS
    assert {reason for _k, _v, reason in rejects.values()} == set(DEADLETTER_REASONS)
    for name, (_k, value, _r) in rejects.items():
        if value is not None:
            assert (VECTORS / "reject" / f"{name}.bin").read_bytes() == value, name
