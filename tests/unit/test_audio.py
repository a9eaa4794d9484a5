"""File decoding is the same everywhere: formats, resampling, clear errors."""
import numpy as np
import pytest
import soundfile as sf

from streamproc import audio
from streamproc.errors import AudioInputError


@pytest.mark.parametrize("fmt,subtype,tol", [("WAV", "PCM_16", 1e-4), ("FLAC", "PCM_16", 1e-4),
                                             ("OGG", "VORBIS", 0.05), ("MP3", "MPEG_LAYER_III", 0.05)])
def test_formats_decode_and_resample(tmp_path, fmt, subtype, tol):
    sr = 44100
    t = np.arange(2 * sr) / sr
    y = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, np.stack([y, y], axis=1), sr, format=fmt, subtype=subtype)  # stereo in
    out = audio.load(path, 16000)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 32000) <= 1200  # lossy codecs pad a little
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / 16000)
    spectrum = np.abs(np.fft.rfft(out[4000:20000]))
    assert abs(np.argmax(spectrum) - 440) <= 2  # 16000 samples at 16 kHz: 1 Hz bins; the tone is at 440 Hz
    assert abs(np.sqrt(np.mean(out[4000:20000] ** 2)) - np.sqrt(np.mean(ref ** 2))) < tol


def test_same_file_same_samples(tmp_path, rng):
    path = tmp_path / "n.wav"
    sf.write(path, rng.standard_normal(22050).astype(np.float32) * 0.1, 22050, subtype="FLOAT")
    np.testing.assert_array_equal(audio.load(path, 16000), audio.load(path, 16000))


def test_s16_round_trip_is_what_the_wire_does():
    y = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5], np.float32)
    np.testing.assert_array_equal(audio.to_s16(y), [0, 16384, -16384, 32767, -32768, 32767])
    np.testing.assert_array_equal(audio.from_s16(audio.to_s16(y))[:3], [0.0, 0.5, -0.5])


@pytest.mark.parametrize("content,msg", [(None, "no such file"), (b"", "cannot decode"),
                                         (b"RIFF\x00\x00\x00\x00WAVEjunk", "cannot decode")])
def test_bad_files(tmp_path, content, msg):
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioInputError, match=msg):
        audio.load(path, 16000)


def test_float_to_s16_rounds_half_to_even_as_docs_wire_format_says():
    """docs/wire-format.md: round half to even (C's lround / Java's Math.round differ by 1 LSB on ties)."""
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 32767.5, -32768.5], np.float32) / np.float32(32768)
    assert audio.to_s16(ties).tolist() == [0, 2, 2, 0, -2, -2, 32767, -32768]


# -- hostile files: refused by the header before decoding, or stopped at the cap while decoding ---------------
import struct  # noqa: E402
import tracemalloc  # noqa: E402


def _silence(path, seconds, fmt, subtype, sr=16000):
    """``seconds`` of digital silence written in blocks (compresses to almost nothing in FLAC/OGG/MP3)."""
    with sf.SoundFile(path, "w", sr, 1, format=fmt, subtype=subtype) as f:
        block = np.zeros(sr * 10, np.float32)
        for _ in range(int(seconds // 10)):
            f.write(block)
    return path


def _peak_bytes(fn):
    """Peak bytes allocated (numpy included) while ``fn`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
    except AudioInputError as exc:
        raised = exc
    else:
        raised = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III"),
                                         ("WAV", "PCM_16")])
def test_declared_length_over_the_limit_is_refused_before_decoding(tmp_path, fmt, subtype):
    path = _silence(tmp_path / f"bomb.{fmt.lower()}", 300, fmt, subtype)  # 300 s; the limit is 30 s
    peak, exc = _peak_bytes(lambda: audio.load(path, 16000, max_seconds=30))
    assert isinstance(exc, audio.AudioTooLongError) and "300 s long (declared by its header)" in str(exc)
    assert "the limit is 30 s" in str(exc)
    assert peak < 2 << 20, peak  # nothing decoded: 30 s of samples alone would be 1.9 MB


def test_unknown_length_stops_decoding_at_the_cap(tmp_path):
    """A FLAC whose STREAMINFO says 0 total samples ("unknown", allowed by the format) holding 20 minutes:
    decoding stops once the cap is passed, memory stays near the cap's worth of samples."""
    path = _silence(tmp_path / "a.flac", 1200, "FLAC", "PCM_16")
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0  # STREAMINFO total samples (36 bits from byte 21, low nibble) := 0
    data[22:26] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    assert sf.info(path).frames >= audio.UNKNOWN_FRAMES
    peak, exc = _peak_bytes(lambda: audio.load(path, 16000, max_seconds=30))
    assert isinstance(exc, audio.AudioTooLongError) and "decoding stopped there" in str(exc), exc
    assert peak < 4 * 30 * 16000 * 4, peak  # 1200 s decoded would be 77 MB
    y = audio.load(path, 16000)  # no limit: all of it, still in blocks (libsndfile fails on the read that
    assert 1200 * 16000 - 4096 < len(y) <= 1200 * 16000  # passes the end of such a stream: < 4096 samples lost)


def _wav_header_patch(tmp_path, name, offset_in_fmt, fmt_code, value):
    path = tmp_path / name
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    i = data.find(b"fmt ") + 8 + offset_in_fmt
    data[i:i + struct.calcsize(fmt_code)] = struct.pack(fmt_code, value)
    path.write_bytes(bytes(data))
    return path


def test_absurd_headers_are_refused_with_the_value(tmp_path):
    with pytest.raises(AudioInputError, match="sample rate of 1000000000 Hz; 1000 to 384000 Hz are accepted"):
        audio.load(_wav_header_patch(tmp_path, "ghz.wav", 4, "<I", 1_000_000_000), 16000)
    with pytest.raises(AudioInputError, match="Channel count is zero"):  # libsndfile refuses it itself
        audio.load(_wav_header_patch(tmp_path, "zero.wav", 2, "<H", 0), 16000)
    with pytest.raises(AudioInputError, match="1 to 64 are accepted"):
        audio.check_header("x", sr=16000, channels=0, frames=1, max_seconds=None)


def test_streaming_resample_gives_the_one_shot_samples(tmp_path, rng):
    """Blocks in, blocks resampled: the same samples as resampling the whole signal at once."""
    import soxr
    x = (rng.standard_normal(3 * audio.BLOCK_FRAMES + 77) * 0.1).astype(np.float32)
    path = tmp_path / "n.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    np.testing.assert_array_equal(audio.load(path, 16000), soxr.resample(x, 44100, 16000, quality="HQ"))


def test_errors_say_what_they_mean(tmp_path):
    with pytest.raises(AudioInputError, match="is a directory"):
        audio.load(tmp_path, 16000)
    path = tmp_path / "x.m4a"
    path.write_bytes(b"\0\0\0\x20ftypM4A " + bytes(100))
    with pytest.raises(AudioInputError) as info:
        audio.load(path, 16000)
    assert not str(info.value).endswith(": )") and "no decoder for this format" in str(info.value)


def test_urls_are_copied_to_disk_in_blocks_and_checked_the_same_way(tmp_path):
    """An fsspec URL is copied to a temporary file (not held in memory) and refused by its header like a path."""
    import fsspec
    bomb = _silence(tmp_path / "bomb.flac", 300, "FLAC", "PCM_16")
    with fsspec.open("memory://corpus/bomb.flac", "wb") as f:
        f.write(bomb.read_bytes())
    with pytest.raises(audio.AudioTooLongError, match="memory://corpus/bomb.flac: the audio is 300 s long"):
        audio.load("memory://corpus/bomb.flac", 16000, max_seconds=30)
    assert len(audio.load("memory://corpus/bomb.flac", 16000)) == 300 * 16000
    with pytest.raises(AudioInputError, match="memory://corpus/none.wav: cannot read: no such file"):
        audio.load("memory://corpus/none.wav", 16000)
