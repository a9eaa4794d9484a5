"""The transcriber service's per-stream logic (consumers/transcriber.py SpeechStreams), without a broker or
Whisper: sequence rules, flushes, and the re-read point that lets a restarted transcriber cut the same
utterances. A level detector stands in for Silero (tests/unit/test_segmentation.py does the same); the real
VAD and Whisper run through Kafka in tests/integration/test_transcriber.py."""
from __future__ import annotations

import numpy as np
import pytest

from consumers.transcriber import SpeechStreams
from streamproc import wire
from streamproc.segmentation import SegmenterConfig, segment

SR = 16000
CFG = SegmenterConfig(hangover_s=0.5, pad_s=0.2, max_utterance_s=5.0, min_speech_s=0.1, min_utterance_s=0.0,
                      long_pause_s=0.5)
SESSION = bytes(range(16))


def level_vad(window: np.ndarray) -> float:
    return 1.0 if np.abs(window).max() > 0.05 else 0.0


def vad_factory():
    return level_vad


def signal(pattern) -> np.ndarray:
    """(seconds, 'tone'|'quiet') pieces -> float32 samples (int16-exact, as frames carry them)."""
    parts = []
    for seconds, kind in pattern:
        n = int(seconds * SR)
        t = np.arange(n) / SR
        parts.append((0.3 * np.sin(2 * np.pi * 440 * t)) if kind == "tone" else np.zeros(n))
    y = np.concatenate(parts).astype(np.float32)
    return (np.round(y * 32768).clip(-32768, 32767) / 32768).astype(np.float32)


def frames(y: np.ndarray, size: int, session: bytes = SESSION, start_seq: int = 0, offset0: int = 0):
    out = []
    for k, i in enumerate(range(0, y.size, size)):
        chunk = y[i:i + size]
        pcm = np.round(chunk * 32768).clip(-32768, 32767).astype("<i2")
        last = i + size >= y.size
        out.append(wire.decode(wire.encode_pcm(pcm.tobytes(), channels=1, n_frames=chunk.size, sample_rate=SR,
                                               sequence=start_seq + k, sample_offset=offset0 + i,
                                               capture_time_ns=0, session_id=session,
                                               flags=wire.FLAG_END_OF_STREAM if last else 0)))
    return out


def bounds(finished):
    return [(f.utterance.start_sample, f.utterance.end_sample, f.utterance.reason) for f in finished]


def feed(streams, fs, sid="s", first_tag=0):
    out = []
    for k, f in enumerate(fs):
        out += streams.accept(sid, f, now=0.0, tag=first_tag + k)[1]
    return out


Y = signal([(0.7, "quiet"), (1.3, "tone"), (1.0, "quiet"), (6.0, "tone"), (0.9, "quiet"), (0.8, "tone"),
            (1.2, "quiet")])


@pytest.mark.parametrize("size", [160, 1000, 1600, 4096])
def test_frames_of_any_size_give_the_offline_utterances(size):
    expected = [(u.start_sample, u.end_sample, u.reason) for u in segment(Y, CFG, vad=level_vad)]
    got = feed(SpeechStreams(CFG, vad=vad_factory), frames(Y, size))
    assert bounds(got) == expected and [r for *_, r in expected] == ["silence", "max_length", "silence", "silence"]
    assert all(f.tag is not None for f in got)


def test_duplicates_are_dropped_small_gaps_filled_long_gaps_end_the_utterance():
    fs = frames(Y, 1600)
    streams = SpeechStreams(CFG, max_gap_fill_s=1.0, vad=vad_factory)
    dup = feed(streams, fs[:20] + fs[15:20] + fs[20:])  # five frames again: dropped
    assert bounds(dup) == bounds(feed(SpeechStreams(CFG, vad=vad_factory), fs))
    assert streams.events["duplicate"] == 5

    # frames 12-15 lost (0.4 s, inside the tone): zero-filled, the stream is cut as if they were silence
    streams = SpeechStreams(CFG, max_gap_fill_s=1.0, vad=vad_factory)
    got = feed(streams, fs[:12] + fs[16:])
    holed = Y.copy()
    holed[12 * 1600:16 * 1600] = 0
    assert bounds(got) == [(u.start_sample, u.end_sample, u.reason) for u in segment(holed, CFG, vad=level_vad)]
    assert streams.events["gap"] == 1 and streams.gap_seconds == pytest.approx(0.4)

    # 2 s lost inside the long tone: the open utterance ends at the gap, cutting restarts after it
    streams = SpeechStreams(CFG, max_gap_fill_s=1.0, vad=vad_factory)
    got = bounds(feed(streams, fs[:40] + fs[60:]))
    assert ("gap" in [r for *_, r in got]) and streams.events["resync"] == 1
    gap_end = [e for s, e, r in got if r == "gap"][0]
    assert gap_end <= 40 * 1600 and all(s >= 60 * 1600 for s, e, r in got if s > gap_end)


def test_a_new_session_ends_the_old_ones_utterance_and_end_of_stream_frees_the_state():
    first = frames(Y[: 4 * SR], 1600)[:-1]  # no end-of-stream: the producer died mid-utterance ...
    streams = SpeechStreams(CFG, vad=vad_factory)
    got = feed(streams, first)
    got += feed(streams, frames(Y, 1600, session=bytes(16)), first_tag=100)  # ... and came back
    assert streams.events["new_session"] == 1
    assert [r for *_, r in bounds(got)][:2] == ["silence", "end"] and bounds(got)[1][1] == 4 * SR - 1600
    assert got[1].tag == 100  # the new session's first record ended it
    assert "s" not in streams.streams  # the second session ended with its end-of-stream frame


def test_idle_streams_are_flushed_then_dropped():
    streams = SpeechStreams(CFG, vad=vad_factory)
    fs = frames(signal([(0.5, "quiet"), (2.0, "tone")]), 1000)[:-1]  # still talking, then nothing arrives
    for k, f in enumerate(fs):
        assert streams.accept("s", f, now=0.0, tag=k)[1] == []
    done, dropped = streams.flush_idle(1.0, idle_flush_s=2.0, idle_timeout_s=60.0)
    assert done == [] and dropped == []
    done, dropped = streams.flush_idle(2.5, idle_flush_s=2.0, idle_timeout_s=60.0)
    assert bounds(done) == [(15 * 512 - int(0.2 * SR), 39000, "idle")] and done[0].tag == len(fs) - 1
    assert streams.flush_idle(3.0, 2.0, 60.0) == ([], [])  # once
    # the stream goes on after its idle flush, which ended between two VAD windows
    more = frames(signal([(2.5, "quiet"), (1.0, "tone"), (1.0, "quiet")]), 1000)[len(fs):]
    after = feed(streams, more, first_tag=len(fs))
    assert [r for *_, r in bounds(after)] == ["silence"] and bounds(after)[0][0] >= 39000
    assert "s" not in streams.streams  # its end-of-stream frame freed it
    streams.accept("t", fs[0], now=0.0, tag=0)
    assert streams.flush_idle(61.0, 2.0, 60.0) == ([], ["t"]) and not streams.streams  # silent for the timeout


def restarted_reader_agrees(cfg, y, vad, crash_points, frame=1600):
    """What the checkpoint commits (the record the segmenter's latest restart point needs) is enough: a fresh
    reader from there reproduces every utterance completed at or after the crash point, bounds and audio."""
    fs = frames(y, frame)
    whole = feed(SpeechStreams(cfg, vad=vad), fs)
    needs = []
    for crash_after in crash_points:
        streams = SpeechStreams(cfg, vad=vad)
        feed(streams, fs[:crash_after])
        need = streams.needed_tag("s", warmup_s=1.0)
        assert need is not None and need <= crash_after
        needs.append(need)
        rebuilt = feed(SpeechStreams(cfg, vad=vad), fs[need:], first_tag=need)
        after = lambda fin: [(b, f.utterance.audio.tobytes()) for f, b in zip(fin, bounds(fin))  # noqa: E731
                             if f.tag >= crash_after]
        assert after(rebuilt) == after(whole) and after(whole), crash_after
    return whole, needs


def test_a_reader_restarted_from_the_needed_record_cuts_the_same_utterances():
    cfg = SegmenterConfig(**{**CFG.__dict__, "vad_reset_s": 0.512})
    whole, needs = restarted_reader_agrees(cfg, Y, vad_factory, [5, 18, 31, 47, 70, 88, 104])
    assert len(set(needs)) > 2 and max(needs) > 40  # the committed point moves on: a restart re-reads little


def test_with_silero_the_restart_points_make_a_re_read_exact():
    """Silero's recurrent state depends on all the audio before: a reader that starts anywhere else may cut an
    utterance a window apart. From a restart point (state zeroed while idle) it cuts the same ones."""
    from pathlib import Path

    import yaml

    from streamproc.segmentation import SileroVad
    from tests.speech import HARVARD, stream_of
    meta = yaml.safe_load((Path(__file__).resolve().parents[2] / "models/transcription/1/model.yaml").read_text())
    cfg = SegmenterConfig.from_dict(meta["segmentation"])
    assert cfg.vad_reset_s
    y = stream_of(HARVARD[:4], [0.8, 2.5, 1.2, 2.5])
    y = (np.round(y * 32768).clip(-32768, 32767) / 32768).astype(np.float32)
    whole, needs = restarted_reader_agrees(cfg, y, SileroVad, list(range(20, y.size // 1600, 23)))
    assert len(whole) >= 3
