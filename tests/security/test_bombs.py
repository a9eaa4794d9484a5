"""Decompression bombs, lying and absurd headers, malformed containers, nested content and hostile file
names, each uploaded to a real ``audiostream serve`` process: the status, the message, and the server's
memory (VmRSS sampled while the request runs, VmHWM against docs/security.md's bound)."""
from __future__ import annotations

import gzip
import io
import struct
import threading
import zipfile

import httpx
import numpy as np
import pytest
import soundfile as sf

from .conftest import SR, silence, sox, unknown_length


class RssSampler:
    """The server's VmRSS read every few milliseconds while a request runs: its peak growth over the start."""

    def __init__(self, server):
        self.server, self.peak, self._stop = server, 0, threading.Event()

    def __enter__(self):
        self.start = self.server.status("VmRSS")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.status("VmRSS"))
            self._stop.wait(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)


def post(server, name: str, data: bytes, **kw) -> httpx.Response:
    return httpx.post(server.url + "/v1/classify", files={"file": (name, data)}, timeout=120, **kw)


def test_the_three_hour_flac_of_issue_24_is_refused_before_decoding(server, tmp_path):
    """``sox -D -n -r 16000 -c 1 -b 16 bomb.flac trim 0 10800``: 546 KB, 10800 s. It used to be decoded whole
    (RSS 95 MB -> 940 MB); now the header says 10800 s and nothing is decoded."""
    bomb = tmp_path / "bomb.flac"
    sox("-D", "-n", "-r", "16000", "-c", "1", "-b", "16", str(bomb), "trim", "0", "10800")
    assert bomb.stat().st_size < 1 << 20
    with RssSampler(server) as rss:
        r = post(server, "bomb.flac", bomb.read_bytes())
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == "bomb.flac: the audio is 10800 s long (declared by its header); the limit is 60 s"
    assert rss.growth < 8 << 20, rss.growth  # 10800 s decoded: 691 MB as float32
    server.assert_within_bound()


def _flac(tmp_path, seconds):
    return silence(tmp_path / "b.flac", seconds, "FLAC", "PCM_16").read_bytes()


def _ogg(tmp_path, seconds):
    return silence(tmp_path / "b.ogg", seconds, "OGG", "VORBIS").read_bytes()


def _mp3(tmp_path, seconds):  # 8 kbit/s: 20 minutes in 1.2 MB
    sox("-D", "-n", "-r", "8000", "-c", "1", "-C", "8", str(tmp_path / "b.mp3"), "trim", "0", str(seconds))
    return (tmp_path / "b.mp3").read_bytes()


def _adpcm_wav(tmp_path, seconds):  # IMA ADPCM in a WAV: 4 bits a sample, 8 kHz
    sox("-D", "-n", "-r", "8000", "-c", "1", "-e", "ima-adpcm", str(tmp_path / "b.wav"), "trim", "0", str(seconds))
    return (tmp_path / "b.wav").read_bytes()


def _lying_wav(tmp_path, seconds):
    """A PCM WAV whose RIFF and data sizes say 0xFFFFFFFF (4 GiB, the "streaming" lie)."""
    data = bytearray(silence(tmp_path / "b.wav", seconds, "WAV", "PCM_16").read_bytes())
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    i = data.find(b"data")
    data[i + 4:i + 8] = struct.pack("<I", 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("name,make,seconds", [
    ("bomb.flac", _flac, 1200),
    ("bomb.ogg", _ogg, 1200),
    ("bomb.mp3", _mp3, 1200),
    ("adpcm.wav", _adpcm_wav, 400),  # 4 bits a sample: 400 s in 1.6 MB
    ("lying.wav", _lying_wav, 62),  # 62 s of PCM fits in 2 MiB; libsndfile measures it from the file size
])
def test_bombs_in_every_accepted_format_are_refused_by_their_header(server, tmp_path, name, make, seconds):
    data = make(tmp_path, seconds)
    assert len(data) < server.limits["max_upload_mb"] << 20
    with RssSampler(server) as rss:
        r = post(server, name, data)
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"{name}: the audio is ") and "(declared by its header); the limit is 60 s" in detail
    assert abs(float(detail.split("the audio is ")[1].split(" s long")[0]) - seconds) <= 1
    assert rss.growth < 8 << 20, rss.growth  # 60 s at 16 kHz is 3.8 MB of float32: nothing was decoded
    server.assert_within_bound()


def test_unknown_length_stops_at_the_cap(server, tmp_path):
    """A FLAC that declares no length (0 total samples) holding 20 minutes: decoding stops at 60 s."""
    data = unknown_length(silence(tmp_path / "u.flac", 1200, "FLAC", "PCM_16")).read_bytes()
    per_request = server.bound - server.base_rss
    with RssSampler(server) as rss:
        r = post(server, "unknown.flac", data)
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == ("unknown.flac: the audio is longer than the limit of 60 s (decoding stopped "
                                  "there; the header did not say, or said less)")
    assert rss.growth < per_request // server.limits["max_concurrent"], rss.growth  # 20 min decoded: 77 MB
    server.assert_within_bound()


def _patched_wav(offset_in_fmt: int, code: str, value: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(SR, np.float32), SR, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    i = data.find(b"fmt ") + 8 + offset_in_fmt
    data[i:i + struct.calcsize(code)] = struct.pack(code, value)
    return bytes(data)


def _flac_bytes(seconds=3.0) -> bytes:
    buf = io.BytesIO()
    y = (np.random.default_rng(0).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)
    sf.write(buf, y, SR, format="FLAC")
    return buf.getvalue()


def _zip(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, payload)
    return buf.getvalue()


@pytest.mark.parametrize("name,payload,status,message", [
    ("ghz.wav", lambda: _patched_wav(4, "<I", 1_000_000_000), 415,
     "ghz.wav: the header declares a sample rate of 1000000000 Hz; 1000 to 384000 Hz are accepted"),
    ("zero.wav", lambda: _patched_wav(2, "<H", 0), 415, "Channel count is zero"),
    ("many.wav", lambda: _patched_wav(2, "<H", 4000), 415, "zero"),  # libsndfile refuses it, or we do
    ("truncated.flac", lambda: _flac_bytes()[:3000], 415, "flac decoder lost sync"),
    ("header-only.wav", lambda: _patched_wav(0, "<H", 1)[:40], 415, "cannot decode audio"),
    ("noise.wav", lambda: np.random.default_rng(1).bytes(50000), 415, "not audio we can decode"),
    ("nested.zip", lambda: _zip("inner.flac", _flac_bytes()), 415, "not audio we can decode"),
    ("zip-in-zip.wav", lambda: _zip("a.zip", _zip("b.wav", _patched_wav(0, "<H", 1))), 415, "cannot decode"),
    ("gzipped.wav", lambda: gzip.compress(b"RIFF" + bytes(1 << 22)), 415, "not audio we can decode"),
])
def test_malformed_and_nested_content_gets_a_clear_415(server, name, payload, status, message):
    """Nothing is unpacked: a zip, a zip in a zip, or a gzip bomb (4 MiB of zeros in 4 KB) is just bytes that
    are not audio."""
    with RssSampler(server) as rss:
        r = post(server, name, payload())
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert message in detail or (name == "many.wav" and "channels" in detail), detail
    assert not detail.endswith(": )"), detail  # every cause says something
    assert rss.growth < 8 << 20, rss.growth
    server.assert_within_bound()


def test_gzip_content_encoding_is_not_inflated(server):
    """A body sent with Content-Encoding: gzip is not decompressed by the server (no request-body inflation
    anywhere in the stack): 4 MiB of zeros in 4 KB arrives as 4 KB of not-audio."""
    inner = io.BytesIO()
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"z.wav\"\r\n\r\n".encode()
            + b"RIFF" + bytes(1 << 22) + f"\r\n--{boundary}--\r\n".encode())
    inner.write(gzip.compress(body))
    r = httpx.post(server.url + "/v1/classify", content=inner.getvalue(), timeout=60,
                   headers={"content-type": f"multipart/form-data; boundary={boundary}", "content-encoding": "gzip"})
    assert r.status_code in (400, 422), r.text  # not a multipart body at all: FastAPI says the form is missing
    server.assert_within_bound()


def test_hostile_file_names(server, tmp_path):
    """Names are never paths: a traversal name writes nothing outside the server's temp dir, a 5000-character
    name is refused by the multipart parser (400), control characters and long names are cut in messages."""
    wav = _patched_wav(0, "<H", 1)
    before = {p.name for p in tmp_path.parent.rglob("*")}
    r = post(server, "../../../../tmp/pwned.wav", wav)
    assert r.status_code == 200, r.text
    assert not any(p.name == "pwned.wav" for p in tmp_path.parent.rglob("*")) and "pwned.wav" not in before
    r = post(server, "n" * 5000 + ".wav", wav)
    assert r.status_code == 400, r.text
    evil = "\x1b[31mred" + "x" * 600 + ".wav"  # a terminal escape and 612 characters
    r = post(server, evil, b"not audio" * 100)
    assert r.status_code == 415
    detail = r.json()["detail"]
    assert "\x1b" not in detail and "?[31mred" in detail
    assert f"... ({len(evil)} characters)" in detail and len(detail) < 700, detail  # the name, cut, twice
    server.assert_within_bound()
