"""Regenerate the wire-format test vectors (deterministic). Run from the repo root:

    python tests/vectors/wire/make_vectors.py

Each vector is NAME.bin (the exact Kafka record value) and NAME.json (the key,
every header field, and the samples), so another implementation can check its
decoder against the .bin and its encoder against the .json.
"""
import json
from pathlib import Path

import numpy as np

from streamproc import wire

HERE = Path(__file__).resolve().parent
SESSION = bytes.fromhex("00112233445566778899aabbccddeeff")

VECTORS = {
    "s16_mono": dict(key="kitchen", sample_rate=16000, sequence=7, sample_offset=11200,
                     capture_time_ns=1_700_000_000_123_456_789, flags=0, encoding="pcm_s16le",
                     samples=[[0], [1], [-1], [32767], [-32768], [1234], [-4321], [100]]),
    "s16_stereo_eos": dict(key="porch/mic-2", sample_rate=48000, sequence=0, sample_offset=0,
                           capture_time_ns=0, flags=wire.FLAG_END_OF_STREAM, encoding="pcm_s16le",
                           samples=[[1, -1], [2, -2], [3, -3]]),
    "f32_mono_gap": dict(key="caf\u00e9", sample_rate=22050, sequence=2**40, sample_offset=2**33,
                         capture_time_ns=-5, flags=wire.FLAG_GAP_BEFORE, encoding="pcm_f32le",
                         samples=[[0.0], [0.5], [-0.25], [1.0], [-1.0]]),
    "empty_eos": dict(key="s", sample_rate=16000, sequence=3, sample_offset=4800, capture_time_ns=99,
                      flags=wire.FLAG_END_OF_STREAM, encoding="pcm_s16le", samples=[]),
}


# Reject vectors: one bad record per reason, in reject/. Each is reject/NAME.json (the key as UTF-8 text or
# hex, the value as hex or null for a NULL record, the limits in force and the reason) plus reject/NAME.bin
# (the exact value; absent for a NULL value). Checks run in docs/wire-format.md's order: key, then value.
LIMITS = {"max_payload_bytes": 1 << 20, "max_seconds": 10.0, "model_sample_rate": 16000}


def _good(**kw) -> bytes:
    v = dict(VECTORS["s16_mono"], **kw)
    return build(v)


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    import struct
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _fixcrc(data: bytes) -> bytes:
    import zlib
    return _patch(data, 60, "<I", zlib.crc32(data[data[5]:]))


def rejects() -> dict:
    good = _good()
    f32 = build(dict(VECTORS["f32_mono_gap"], samples=[[0.0], [float("nan")]]))
    return {
        "null_value": ("kitchen", None, "empty"),
        "zero_bytes": ("kitchen", b"", "too_short"),
        "five_bytes": ("kitchen", good[:5], "too_short"),
        "bad_magic": ("kitchen", b"RIFF" + good[4:], "bad_magic"),
        "version_2": ("kitchen", good[:4] + b"\x02" + good[5:], "unsupported_version"),
        "header_cut": ("kitchen", good[:40], "too_short"),
        "header_length_63": ("kitchen", good[:5] + b"\x3f" + good[6:], "bad_header"),
        "header_length_past_end": ("kitchen", good[:5] + b"\xff" + good[6:], "bad_header"),
        "encoding_9": ("kitchen", good[:6] + b"\x09" + good[7:], "unsupported_encoding"),
        "channels_0": ("kitchen", good[:7] + b"\x00" + good[8:], "bad_channels"),
        "channels_9": ("kitchen", good[:7] + b"\x09" + good[8:], "bad_channels"),
        "sample_rate_0": ("kitchen", _patch(good, 12, "<I", 0), "bad_sample_rate"),
        "reserved_set": ("kitchen", _patch(good, 10, "<H", 1), "bad_header"),
        "oversized": ("kitchen", _patch(good, 16, "<I", 1 << 20), "oversized"),  # 2 MiB announced
        "too_long": ("kitchen", _patch(_patch(good, 12, "<I", 400), 16, "<I", 8000), "too_long"),  # 20 s announced
        "truncated": ("kitchen", good[:-2], "length_mismatch"),
        "trailing_bytes": ("kitchen", good + b"\x00\x00", "length_mismatch"),
        "crc_wrong": ("kitchen", good[:-2] + b"\x00\x00", "checksum_mismatch"),
        "nan_sample": ("caf\u00e9", f32, "non_finite"),
        "no_key": (None, good, "bad_stream_id"),
        "key_not_utf8": (b"\xff\xfe", good, "bad_stream_id"),
        "key_control_char": ("kit\nchen", good, "bad_stream_id"),
        "key_257_bytes": ("k" * 257, good, "bad_stream_id"),
        "key_and_value_bad": (None, b"garbage", "bad_stream_id"),  # the key is checked first
        "sample_rate_mismatch": ("kitchen", _good(sample_rate=44100), "sample_rate_mismatch"),
    }


def build(v: dict) -> bytes:
    dtype = np.int16 if v["encoding"] == "pcm_s16le" else np.float32
    samples = np.array(v["samples"], dtype=dtype).reshape(len(v["samples"]), -1 if v["samples"] else 1)
    frame = wire.AudioFrame(sample_rate=v["sample_rate"], sequence=v["sequence"], sample_offset=v["sample_offset"],
                            capture_time_ns=v["capture_time_ns"], session_id=SESSION, samples=samples,
                            encoding=v["encoding"], flags=v["flags"])
    return wire.encode(frame)


if __name__ == "__main__":
    for name, v in VECTORS.items():
        data = build(v)
        (HERE / f"{name}.bin").write_bytes(data)
        doc = dict(v, session_id=SESSION.hex(), channels=len(v["samples"][0]) if v["samples"] else 1,
                   n_frames=len(v["samples"]), value_hex=data.hex(), value_length=len(data))
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(name, len(data), "bytes")
    (HERE / "reject").mkdir(exist_ok=True)
    for name, (key, value, reason) in rejects().items():
        doc = {"reason": reason, **LIMITS}
        if isinstance(key, bytes):
            doc["key_hex"] = key.hex()
        else:
            doc["key"] = key
        doc["value_hex"] = None if value is None else value.hex()
        if value is not None:
            (HERE / "reject" / f"{name}.bin").write_bytes(value)
        (HERE / "reject" / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print("reject", name, reason)
