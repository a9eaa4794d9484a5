"""The stream segmenter: utterances cut on stream time, the same for any chunking.

Exact-sample rules are checked with a level detector standing in for the VAD
(speech = a window whose peak is above 0.05), so every boundary is known in
advance; the real Silero VAD is checked on espeak-ng speech.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamproc.segmentation import (VAD_WINDOW, Segmenter, SegmenterConfig, SegmenterError, SileroVad, segment)
from tests.speech import say, silence, stream_of

SR = 16000
W = VAD_WINDOW


def level_vad(window: np.ndarray) -> float:
    return 1.0 if np.abs(window).max() > 0.05 else 0.0


def tone(n_windows: int) -> np.ndarray:
    t = np.arange(n_windows * W) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def quiet(n_windows: int) -> np.ndarray:
    return np.zeros(n_windows * W, dtype=np.float32)


def bounds(utts):
    return [(u.start_sample, u.end_sample, u.reason) for u in utts]


CFG = SegmenterConfig(hangover_s=0.5, pad_s=0.2, max_utterance_s=5.0, min_speech_s=0.1, min_utterance_s=0.0)
PAD, HANG = 3200, 8000


def test_flush_on_silence_after_the_stated_hangover_with_pads_on_both_sides():
    y = np.concatenate([quiet(20), tone(40), quiet(40)])  # speech in windows [20, 60)
    seg = Segmenter(CFG, vad=level_vad)
    first = seg.push(y[:(60 + 15) * W])  # 15 quiet windows = 0.48 s < hangover: still open
    assert first == [] and seg.in_utterance
    rest = seg.push(y[(60 + 15) * W:])
    # the hangover (0.5 s) is over at the end of the 16th quiet window: 60 + 16 windows
    assert bounds(rest) == [(20 * W - PAD, 60 * W + PAD, "silence")]
    np.testing.assert_array_equal(rest[0].audio, y[20 * W - PAD:60 * W + PAD])
    assert seg.flush("end") == []


def test_same_utterances_for_any_chunking():
    rng = np.random.default_rng(7)
    y = np.concatenate([quiet(5), tone(30), quiet(10), tone(200), quiet(30), tone(3), quiet(3)]) \
        + rng.normal(0, 0.001, (5 + 30 + 10 + 200 + 30 + 3 + 3) * W).astype(np.float32)
    whole = segment(y, CFG, vad=level_vad)
    # the 10-window pause is shorter than the hangover, so 240 windows (7.7 s) run together past max_utterance_s;
    # the 3-window blip at the end is under min_speech_s
    assert [u.reason for u in whole] == ["max_length", "silence"]
    for chunk in (1, 7, 511, 512, 513, 1600, 16000):
        got = segment(y, CFG, vad=level_vad, chunk=chunk)
        assert bounds(got) == bounds(whole), chunk
        assert all(np.array_equal(a.audio, b.audio) for a, b in zip(got, whole)), chunk
    sizes = rng.integers(1, 5000, 200)  # irregular chunk sizes, as frames of a live stream
    seg, got, k = Segmenter(CFG, vad=level_vad), [], 0
    for n in sizes:
        got += seg.push(y[k:k + n])
        k += n
    got += seg.push(y[k:]) + seg.flush("end")
    assert bounds(got) == bounds(whole)


def test_max_length_cuts_at_the_limit_and_the_speech_goes_on_in_the_next_utterance():
    y = np.concatenate([quiet(10), tone(400), quiet(30)])  # 12.8 s of unbroken speech
    utts = segment(y, CFG, vad=level_vad)
    start = 10 * W - PAD
    limit = 5 * SR
    assert [u.reason for u in utts] == ["max_length", "max_length", "silence"]
    assert utts[0].start_sample == start and utts[0].end_sample - start >= limit
    assert utts[0].end_sample - start < limit + W  # cut at the first window boundary past the limit
    for a, b in zip(utts, utts[1:]):
        assert b.start_sample == a.end_sample  # nothing lost, nothing twice
    assert utts[-1].end_sample == 410 * W + PAD
    assert sum(u.audio.size for u in utts) == utts[-1].end_sample - start


def test_max_length_prefers_the_last_pause_in_the_second_half():
    # 100 windows of speech, a 5-window pause (shorter than the hangover), more speech: the limit (5 s = 156.25
    # windows) falls in the second stretch, so the cut goes to the last quiet window of the pause
    y = np.concatenate([quiet(10), tone(100), quiet(5), tone(120), quiet(30)])
    utts = segment(y, CFG, vad=level_vad)
    assert utts[0].reason == "max_length"
    assert utts[0].end_sample == (10 + 100 + 4) * W
    assert utts[1].start_sample == utts[0].end_sample and utts[1].reason == "silence"


def test_flush_on_stream_end_keeps_the_unscored_tail():
    y = np.concatenate([quiet(10), tone(20)])[:-100]  # ends inside speech, mid-window
    seg = Segmenter(CFG, vad=level_vad)
    assert seg.push(y) == []
    (u,) = seg.flush("end")
    assert (u.start_sample, u.end_sample, u.reason) == (10 * W - PAD, y.size, "end")
    with pytest.raises(SegmenterError, match="after flush\\('end'\\)"):
        seg.push(y)


def test_idle_flush_closes_the_utterance_and_the_stream_goes_on():
    seg = Segmenter(CFG, vad=level_vad, start_sample=48000)  # stream time need not start at 0
    assert seg.push(np.concatenate([quiet(10), tone(20)])) == []
    (u,) = seg.flush("idle")
    assert (u.start_sample, u.end_sample, u.reason) == (48000 + 10 * W - PAD, 48000 + 30 * W, "idle")
    later = seg.push(np.concatenate([tone(20), quiet(20)]))  # more speech after the idle flush
    assert bounds(later) == [(48000 + 30 * W, 48000 + 50 * W + PAD, "silence")]  # never overlaps the first


def test_blips_shorter_than_min_speech_are_dropped():
    y = np.concatenate([quiet(20), tone(2), quiet(40), tone(20), quiet(40)])  # 64 ms click, then speech
    utts = segment(y, SegmenterConfig(min_speech_s=0.15, max_utterance_s=5.0, min_utterance_s=0), vad=level_vad)
    assert [u.start_sample for u in utts] == [62 * W - PAD]


def test_short_pauses_do_not_end_an_utterance_under_min_utterance_s_but_long_ones_do():
    cfg = SegmenterConfig(min_utterance_s=5.0, long_pause_s=2.0, max_utterance_s=20.0, min_speech_s=0.1)
    S, short, long_ = tone(60), quiet(25), quiet(70)  # 1.92 s of speech, 0.8 s and 2.24 s pauses
    y = np.concatenate([quiet(10), S, short, S, long_, S, short, S, short, S, short, S, short, S, long_, S,
                        quiet(30)])
    # speech runs (in windows): [10,70) [95,155) | [225,285) [310,370) [395,455) [480,540) [565,625) | [695,755)
    assert bounds(segment(y, cfg, vad=level_vad)) == [
        (10 * W - PAD, 155 * W + PAD, "silence"),   # 2.3 s at the first short pause: goes on; 5.04 s at the 2nd: ends
        (225 * W - PAD, 370 * W + PAD, "silence"),  # the same: packed to 5.04 s, ended by the next short pause
        (395 * W - PAD, 540 * W + PAD, "silence"),
        (565 * W - PAD, 625 * W + PAD, "silence"),  # only 2.3 s long, but the pause after it is a long one
        (695 * W - PAD, 755 * W + PAD, "end"),      # 0.96 s of quiet at the end: neither rule; stream end closes it
    ]


def test_a_pause_that_keeps_a_short_utterance_open_gives_a_caption_of_it_so_far():
    """Pause captions: at hangover_s of quiet inside an utterance kept open to pack more speech, the utterance so
    far (to pad_s past the last speech) is queued; none where the pause closes the utterance at once; if no
    speech follows, the final is exactly the caption's audio; the same captions for any chunking."""
    cfg = SegmenterConfig(min_utterance_s=5.0, long_pause_s=2.0, max_utterance_s=20.0, min_speech_s=0.1)
    S, short, long_ = tone(60), quiet(25), quiet(70)
    y = np.concatenate([quiet(10), S, short, S, long_, S, short, S, short, S, short, S, short, S, long_, S,
                        quiet(30)])
    expected = [(10 * W - PAD, 70 * W + PAD, "pause"),    # 1.92 s + pad: kept open, captioned at the hangover
                (225 * W - PAD, 285 * W + PAD, "pause"),
                (395 * W - PAD, 455 * W + PAD, "pause"),
                (565 * W - PAD, 625 * W + PAD, "pause"),  # the long pause then closes it: the same audio
                (695 * W - PAD, 755 * W + PAD, "pause")]  # 0.96 s of quiet, then the stream's end closes it
    for chunk in (511, 1600, 7919, y.size):
        seg, finals, caps = Segmenter(cfg, vad=level_vad, captions=True), [], []
        for k in range(0, y.size, chunk):
            finals += seg.push(y[k:k + chunk])
            caps += seg.take_captions()
        finals += seg.flush("end")
        assert bounds(caps) == expected, chunk
        assert seg.take_captions() == []
    assert bounds(finals) == bounds(segment(y, cfg, vad=level_vad))  # finals unchanged by captions
    last, final = caps[3], finals[3]
    assert (final.start_sample, final.end_sample) == (last.start_sample, last.end_sample)
    assert np.array_equal(final.audio, last.audio) and np.array_equal(caps[0].audio, y[caps[0].start_sample:
                                                                                          caps[0].end_sample])
    assert Segmenter(cfg, vad=level_vad).captions is None  # off unless asked for: nothing accumulates
    unpacked = Segmenter(dataclasses.replace(cfg, min_utterance_s=0.0), vad=level_vad, captions=True)
    unpacked.push(y)
    assert unpacked.take_captions() == []  # every pause closes an utterance: the final is the caption
    # caption_pause_s shorter than the hangover: a caption at every such pause, also before a final that closes
    # at the hangover (the same audio: the end is the pad past the last speech either way)
    early = Segmenter(dataclasses.replace(cfg, caption_pause_s=0.3), vad=level_vad, captions=True)
    finals = early.push(y) + early.flush("end")
    assert bounds(finals) == bounds(segment(y, cfg, vad=level_vad))
    assert bounds(early.take_captions()) == [
        (10 * W - PAD, 70 * W + PAD, "pause"), (10 * W - PAD, 155 * W + PAD, "pause"),
        (225 * W - PAD, 285 * W + PAD, "pause"), (225 * W - PAD, 370 * W + PAD, "pause"),
        (395 * W - PAD, 455 * W + PAD, "pause"), (395 * W - PAD, 540 * W + PAD, "pause"),
        (565 * W - PAD, 625 * W + PAD, "pause"), (695 * W - PAD, 755 * W + PAD, "pause")]


@pytest.mark.parametrize("kwargs,message", [
    ({"threshold": 0.0}, "threshold=0.0 must be in"),
    ({"neg_threshold": 0.6}, "neg_threshold=0.6 must be in"),
    ({"pad_s": 0.6, "hangover_s": 0.5}, "pad_s=0.6 must be in"),
    ({"max_utterance_s": 29.5}, "at most 29"),
    ({"max_utterance_s": 0.5}, "at least 1 second"),
    ({"min_utterance_s": 20.0}, "min_utterance_s=20.0 must be in"),
    ({"long_pause_s": 0.3}, "long_pause_s=0.3 must be >= hangover_s"),
    ({"caption_pause_s": 0.1}, "caption_pause_s=0.1 must be in"),
    ({"caption_pause_s": 0.6}, "caption_pause_s=0.6 must be in"),
])
def test_bad_settings_name_the_value(kwargs, message):
    with pytest.raises(SegmenterError, match=message):
        SegmenterConfig(**kwargs)


def test_bad_input_is_refused():
    seg = Segmenter(CFG, vad=level_vad)
    with pytest.raises(SegmenterError, match="1-D mono"):
        seg.push(np.zeros((2, 100), np.float32))
    with pytest.raises(SegmenterError, match="got int16 .*from_s16"):
        seg.push(np.zeros(100, np.int16))
    with pytest.raises(SegmenterError, match="'end', 'gap' or 'idle'"):
        seg.flush("later")


# --- the real VAD ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_sentences():
    return stream_of(["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background."],
                     [0.8, 2.5])  # a pause longer than long_pause_s: two utterances even under min_utterance_s


def test_silero_streaming_equals_faster_whispers_batched_run(two_sentences):
    from faster_whisper.vad import get_vad_model
    y = two_sentences[: two_sentences.size // W * W]
    batched = np.asarray(get_vad_model()(y)).reshape(-1)
    vad = SileroVad()
    streamed = np.array([vad(y[k:k + W]) for k in range(0, y.size, W)])
    np.testing.assert_array_equal(streamed, batched)


def test_silero_cuts_two_sentences_at_the_pause_for_any_chunking(two_sentences):
    y = two_sentences
    first_end = int(0.8 * SR) + say("The birch canoe slid on the smooth planks.").size
    second_start = first_end + int(2.5 * SR)
    utts = segment(y)
    assert [u.reason for u in utts] == ["silence", "end"] or [u.reason for u in utts] == ["silence", "silence"]
    a, b = utts
    assert a.start_sample < int(0.8 * SR) + 0.1 * SR and a.end_sample > first_end - 0.3 * SR  # covers sentence 1
    assert first_end - 0.3 * SR < a.end_sample <= b.start_sample < second_start + 0.1 * SR  # cut in the pause
    for chunk in (160, 1000, 4096):  # 10 ms frames, odd sizes, big blocks
        got = segment(y, chunk=chunk)
        assert bounds(got) == bounds(utts), chunk
        assert all(np.array_equal(p.audio, q.audio) for p, q in zip(got, utts))


def test_silero_finds_no_utterance_in_silence_or_hum():
    t = np.arange(5 * SR) / SR
    hum = (0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    assert segment(silence(5.0)) == []
    assert segment(hum) == []
