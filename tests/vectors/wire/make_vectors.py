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
