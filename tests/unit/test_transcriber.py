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


def test_reading_the_open_utterance_changes_nothing_and_starts_where_its_final_starts():
    """Partials read the open utterance after every frame; the utterances cut are the same, and each partial
    starts at its final's first sample and ends no later."""
    from streamproc.segmentation import Segmenter
    plain = segment(Y, CFG, vad=level_vad, chunk=1600)
    seg = Segmenter(CFG, vad=level_vad)
    got, partials = [], []
    for k in range(0, Y.size, 1600):
        got += seg.push(Y[k:k + 1600])
        p = seg.open_utterance()
        if p is not None:
            assert p.reason == "partial" and p.audio.size == p.end_sample - p.start_sample
            assert np.array_equal(p.audio, Y[p.start_sample:p.end_sample])
            partials.append(p)
    got += seg.flush("end")
    assert [(u.start_sample, u.end_sample, u.audio.tobytes()) for u in got] == \
        [(u.start_sample, u.end_sample, u.audio.tobytes()) for u in plain]
    finals = {u.start_sample: u for u in got}
    assert partials and all(p.start_sample in finals and p.end_sample <= finals[p.start_sample].end_sample
                            for p in partials)


def test_a_partial_falls_due_per_interval_of_new_audio_and_not_during_a_pause():
    streams = SpeechStreams(CFG, vad=vad_factory)
    every = SR  # 1 s
    due = []
    for k, f in enumerate(frames(Y, 1600)[:-1]):
        streams.accept("s", f, now=0.0, tag=k)
        st = streams.streams["s"]
        if st.partial_due(every) is not None:
            assert st.seg.in_utterance and not st.seg.pausing
            due.append((st.seg.open_start, st.seg.position))
            st.partial_mark = st.seg.position  # what the service does once it made (or skipped) one
    # one per second of new audio in each open utterance, counted from its (padded) start
    # the 1.3 s tone (0.7-2.0 s), the 6 s one (3.0-9.0 s, cut at max_utterance 5 s and going on as the next
    # utterance) and the 0.8 s one (9.9-10.7 s), each from its start padded back 0.2 s on the VAD grid
    starts = sorted({s for s, _ in due})
    assert [round(s / SR, 2) for s in starts] == [0.47, 2.78, 7.78, 9.69]
    for start in starts:  # the first frame end one second past the start, then one second past the last one
        mine = [p for s, p in due if s == start]
        assert mine[0] - start >= every and mine[0] - start < every + 1600
        assert all(every <= b - a < every + 1600 for a, b in zip(mine, mine[1:]))
    assert len(due) == 7


class _Engine:
    """A stand-in recogniser for the service's partial logic (no Whisper): records what it was asked."""
    model_id = {"task": "transcription", "version": "test"}
    segmenter_config = CFG

    def __init__(self):
        self.calls = []

    def transcribe(self, y, words=False):
        from streamproc.transcription import Transcription
        self.calls.append(y.size)
        return Transcription("words so far", -0.1, "en", None, 0.0, 0.01)


class _Checkpoint:
    def replaying(self, tp, offset):
        return False


class _Producer:
    def __init__(self):
        self.sent = []

    def produce(self, topic, value=None, key=None, on_delivery=None, headers=None):
        self.sent.append((topic, key, value))


def _service(lag_s: float):
    from consumers.transcriber import TranscriberConfig, TranscriberService
    engine = _Engine()
    svc = TranscriberService(TranscriberConfig(kafka={}, metrics_port=None, partial_every_s=1.0,
                                               partial_max_lag_s=0.5), asr=engine, vad=vad_factory)
    svc.checkpoint, svc.producer = _Checkpoint(), _Producer()
    svc.behind_s = lambda tp: lag_s
    for k, f in enumerate(frames(Y, 1600)[:45]):  # into the long tone: an utterance open for 1.5 s
        svc._stream_partition["s"] = ("frames", 0)
        svc.streams.accept("s", f, now=0.0, tag=k)
    return svc, engine


def test_partials_are_skipped_and_counted_while_the_service_is_behind():
    svc, engine = _service(lag_s=2.0)
    svc._partial()
    m = svc.metrics.registry.get_sample_value
    assert engine.calls == [] and svc.producer.sent == []
    assert m("audiostream_partial_transcripts_skipped_total", {"reason": "lag"}) == 1
    svc._partial()  # skipped: not due again until another interval of new audio
    assert m("audiostream_partial_transcripts_skipped_total", {"reason": "lag"}) == 1


def test_partials_are_skipped_while_the_recogniser_has_no_spare_time():
    import time
    svc, engine = _service(lag_s=0.0)
    svc._calls.extend([(time.monotonic(), 3.0), (time.monotonic(), 3.0)])  # 6 s of the last 10 in Whisper
    svc._partial()
    assert engine.calls == [] and svc.metrics.registry.get_sample_value(
        "audiostream_partial_transcripts_skipped_total", {"reason": "busy"}) == 1
    svc, engine = _service(lag_s=0.0)
    svc._calls.append((time.monotonic() - 11.0, 9.0))  # long ago: forgotten
    svc._partial()
    assert engine.calls and len(svc.producer.sent) == 1


def test_a_partial_when_caught_up_is_published_outside_the_checkpoint():
    import json
    svc, engine = _service(lag_s=0.0)
    svc._partial()
    (topic, key, value), = svc.producer.sent
    rec = json.loads(value)
    assert topic == svc.config.transcripts_topic and key == b"s" and engine.calls
    assert rec["final"] is False and rec["utterance_id"] == f"s/{SESSION.hex()}/{rec['start_sample']}"
    assert rec["end_sample"] == 45 * 1600 and rec["text"] == "words so far"
    assert svc.metrics.registry.get_sample_value("audiostream_partial_transcription_cpu_seconds_total",
                                                 {"model": "transcription:test"}) == pytest.approx(0.01)
    svc._partial()
    assert len(svc.producer.sent) == 1  # nothing new to show yet


PACKED = SegmenterConfig(hangover_s=0.5, pad_s=0.2, max_utterance_s=20.0, min_speech_s=0.1, min_utterance_s=5.0,
                         long_pause_s=2.0)


class _PackedEngine(_Engine):
    segmenter_config = PACKED


class _TrackingCheckpoint(_Checkpoint):
    def track(self):
        return lambda err: None


def _caption_service(lag_s: float = 0.0):
    """A service with the bundle's packing (5 s, long pause 2 s) fed one 1.5 s sentence then 0.9 s of quiet: the
    pause reached the hangover, the utterance stays open (too short), its caption is pending."""
    from consumers.transcriber import TranscriberConfig, TranscriberService
    engine = _PackedEngine()
    svc = TranscriberService(TranscriberConfig(kafka={}, metrics_port=None, partial_every_s=0.0), asr=engine,
                             vad=vad_factory)
    svc.checkpoint, svc.producer = _TrackingCheckpoint(), _Producer()
    svc.behind_s = lambda tp: lag_s
    y = signal([(0.5, "quiet"), (1.5, "tone"), (3.0, "quiet")])
    fs = frames(y, 1600)
    finished = []
    for k, f in enumerate(fs[:29]):  # to 2.9 s: 0.9 s of quiet after the sentence
        svc._stream_partition["s"] = ("frames", 0)
        finished += svc.streams.accept("s", f, now=0.0, tag=k)[1]
    assert finished == [] and svc.streams.streams["s"].seg.in_utterance
    return svc, engine, fs, finished


def test_a_pause_caption_is_published_at_once_and_its_final_reuses_it():
    import json
    svc, engine, fs, _ = _caption_service()
    svc._pause_captions()
    (topic, key, value), = svc.producer.sent
    cap = json.loads(value)
    uid = f"s/{SESSION.hex()}/{cap['start_sample']}"
    assert cap["final"] is False and cap["reason"] == "partial" and cap["utterance_id"] == uid
    assert cap["id"] == f"{uid}/partial/{cap['end_sample']}" and cap["words"] is None
    assert cap["end_sample"] == 63 * 512 + 3200  # the last speech window + pad: the final if no speech follows
    assert len(engine.calls) == 1
    svc._pause_captions()
    assert len(svc.producer.sent) == 1  # once per pause
    finished = []
    for k, f in enumerate(fs[29:], start=29):  # the pause grows to 2 s: the final closes, the same audio
        finished += svc.streams.accept("s", f, now=0.0, tag=k)[1]
    assert [(f.utterance.start_sample, f.utterance.end_sample) for f in finished] == [
        (cap["start_sample"], cap["end_sample"])]
    svc._publish(finished)
    final = json.loads(svc.producer.sent[-1][2])
    assert final["id"] == uid and final["final"] is True and final["text"] == cap["text"]
    assert len(engine.calls) == 1  # no second Whisper call for the same audio
    assert svc.metrics.registry.get_sample_value("audiostream_pause_captions_reused_total",
                                                 {"model": "transcription:test"}) == 1


def test_a_pause_caption_is_skipped_while_behind_and_dropped_once_its_utterance_closed():
    svc, engine, fs, _ = _caption_service(lag_s=1.0)  # behind, but less than the 1.5 s to the long pause
    svc._pause_captions()
    assert len(svc.producer.sent) == 1
    svc, engine, fs, _ = _caption_service(lag_s=2.0)  # the frame that closes it may be unread already
    svc._pause_captions()
    assert svc.producer.sent == [] and engine.calls == []
    assert svc.metrics.registry.get_sample_value("audiostream_partial_transcripts_skipped_total",
                                                 {"reason": "pause_lag"}) == 1
    svc, engine, fs, _ = _caption_service()
    finished = []
    for k, f in enumerate(fs[29:], start=29):  # the final closes before the caption was served
        finished += svc.streams.accept("s", f, now=0.0, tag=k)[1]
    svc._publish(finished)
    svc._pause_captions()
    assert len(engine.calls) == 1 and len(svc.producer.sent) == 1  # the final only: it covers the caption


def _caption(uid_start: int, end: int, text: str, final: bool, stream: str = "s"):
    import json

    from consumers.watch import Caption
    uid = f"{stream}/-/{uid_start}"
    rec = {"id": uid if final else f"{uid}/partial/{end}", "stream_id": stream, "start_s": uid_start / SR,
           "end_s": end / SR, "text": text, "final": final}
    if not final:
        rec["utterance_id"] = uid
    return Caption.from_json(json.dumps(rec))


def test_watch_shows_a_partial_as_an_updating_line_replaced_by_the_final():
    import io

    from consumers.watch import CaptionView, format_caption
    out = io.StringIO()
    view = CaptionView(out, tty=True)
    a1, a2, fa = _caption(0, 32000, "the birch", False), _caption(0, 48000, "the birch canoe", False), \
        _caption(0, 56000, "The birch canoe slid.", True)
    b1 = _caption(16000, 40000, "glue the", False, stream="t")
    assert [view.add(c) for c in (a1, a2, b1, fa, a2, fa)] == [False, False, False, True, False, False]
    clear, up = CaptionView.CLEAR, CaptionView.UP
    assert out.getvalue() == (format_caption(a1) + " ..."
                              + clear + format_caption(a2) + " ..."
                              # two streams talking: one line each, the block redrawn
                              + clear + format_caption(a2) + " ...\n" + format_caption(b1) + " ..."
                              # a's final above, b's partial stays
                              + clear + up + clear + format_caption(fa) + "\n" + format_caption(b1) + " ...")
    assert view.shown == 1  # b's line is open at the bottom (watch ends it with a newline on exit)
    view = CaptionView(io.StringIO(), tty=True)
    view.add(b1), view.add(_caption(16000, 48000, "glue the sheet", True, stream="t"))
    assert view.shown == 0 and not view.live  # every utterance final: nothing left open on the screen
    # a pipe or a log: the finals only, each once
    out = io.StringIO()
    view = CaptionView(out, tty=False)
    for c in (a1, a2, b1, fa, fa):
        view.add(c)
    assert out.getvalue() == format_caption(fa) + "\n"


def test_watch_keeps_the_newest_streams_partials_each_cut_to_the_terminal():
    import io

    from consumers.watch import CaptionView
    out = io.StringIO()
    view = CaptionView(out, tty=True, max_live=2, width=40)
    for i, sid in enumerate(("s1", "s2", "s3", "s2")):
        view.add(_caption(0, 16000 * (i + 1), "a long sentence that goes on and on " * 2, False, stream=sid))
    assert list(view.live) == ["s3", "s2"] and view.shown == 2  # s1 dropped from the block, s2 moved to the bottom
    last_block = out.getvalue().rsplit(CaptionView.CLEAR, 1)[1].split("\n")
    assert len(last_block) == 2 and all(len(ln) <= 39 and ln.endswith("~") for ln in last_block)
    assert last_block[0].startswith("s3") and last_block[1].startswith("s2")


def test_the_one_core_replay_of_bench_transcribe_queues_first_come_first_served():
    """bench --transcribe's load-independent latency: utterances that close together wait for each other."""
    from consumers.bench_transcribe import one_core_replay
    engine = {"_utterances": [(2.0, 2.5, 1.0), (2.2, 2.6, 1.0), (6.0, 6.5, 0.5)], "_vad_rtf": 0.0,
              "_records": [(2.5, "final", 0, 2.0, 1.0), (2.6, "final", 1, 2.2, 1.0), (6.5, "final", 2, 6.0, 0.5)]}
    r = one_core_replay(engine, 10.0, streams=1, duration=10.0, warmup_s=0.0)
    assert r["finals"] == 3 and r["e2e_max_s"] == pytest.approx(2.3)  # 2.5 + 1 + 1 - 2.2: queued behind the first
    assert r["e2e_p50_s"] == pytest.approx(1.5) and r["core_busy"] == pytest.approx(0.25)
    two = one_core_replay({**engine, "_vad_rtf": 0.25}, 10.0, streams=2, duration=10.0, warmup_s=0.0)
    assert two["vad_share"] == 0.5 and two["finals"] > r["finals"]  # the VAD of both streams halves the core


def test_the_one_core_replay_times_captions_per_speech_segment_by_the_first_record_covering_it():
    """Caption latency: each segment (a pause caption's end, a final's end) is shown by the first record of its
    utterance done that reaches it; a final that reuses its caption costs nothing but still queues."""
    from consumers.bench_transcribe import one_core_replay
    records = [(2.5, "final", 0, 2.0, 1.0),   # another utterance's final: busy 2.5-3.5
               (2.6, "pause", 1, 2.1, 0.4),   # caption queued behind it: done 3.9
               (4.1, "final", 1, 2.1, 0.0),   # its final, the caption's audio (reused): done 4.1
               (7.0, "pause", 2, 6.5, 0.4),   # done 7.4
               (8.0, "final", 2, 7.5, 0.5)]   # more speech packed after the caption: done 8.5
    r = one_core_replay({"_utterances": [(2.0, 2.5, 1.0)], "_vad_rtf": 0.0, "_records": records}, 10.0,
                        streams=1, duration=10.0, warmup_s=0.0)
    assert r["finals"] == 3 and r["e2e_max_s"] == pytest.approx(2.0)  # 4.1 - 2.1
    assert r["caption_segments"] == 4 and r["caption_max_s"] == pytest.approx(1.8)  # 3.9 - 2.1
    assert sorted([r["caption_p50_s"], r["caption_max_s"]]) == [pytest.approx(1.25), pytest.approx(1.8)]
    assert r["caption_pause_rule_p50_s"] == pytest.approx(0.5) and r["core_busy"] == pytest.approx(0.23)
