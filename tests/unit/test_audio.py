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
