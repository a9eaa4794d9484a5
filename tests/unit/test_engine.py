"""Rolling stream state: windows on sample time, each STFT frame once, sequence faults never silent."""
import dataclasses
import itertools

import numpy as np
import pytest

from streamproc import wire
from streamproc.audio import from_s16, to_s16
from streamproc.engine import Engine, StreamState
from streamproc.features import FeatureExtractor
from streamproc.windowing import WindowSpec

SR = 16000


@pytest.fixture(scope="module")
def spec():
    return WindowSpec()


@pytest.fixture(scope="module")
def fx(spec):
    return FeatureExtractor(spec)


def frames(pcm, sizes, session=b"S" * 16, start_offset=0, start_seq=0):
    off, seq, i = 0, start_seq, 0
    while off < len(pcm):
        n = sizes[i % len(sizes)]
        chunk = pcm[off:off + n]
        yield wire.decode(wire.encode(wire.AudioFrame(SR, seq, start_offset + off, 0, session, chunk[:, None])))
        off += n
        seq += 1
        i += 1


def run(engine, sid, frame_iter):
    out = []
    for f in frame_iter:
        engine.accept(sid, f)
        out += engine.step()
    return out


@pytest.mark.parametrize("sizes", [[1600], [1234, 777, 3001], [160], [16000 * 3]])
def test_streaming_equals_offline_for_any_frame_size(rng, spec, fx, sizes):
    pcm = to_s16(0.2 * rng.standard_normal(5 * SR))
    wins = run(Engine(spec, extractor=fx), "s", frames(pcm, sizes))
    bounds, V = fx.vectors_for_signal(from_s16(pcm))
    assert [(w.start, w.end) for w in wins] == bounds
    assert [w.index for w in wins] == list(range(len(bounds)))
    np.testing.assert_allclose(np.stack([w.vector for w in wins]), V, rtol=1e-5, atol=1e-4)
    assert not any(w.gap for w in wins)


def test_each_stft_frame_computed_once(rng, spec, fx):
    calls = []

    class Counting(FeatureExtractor):
        def frame_features(self, frames):
            calls.append(len(frames))
            return super().frame_features(frames)

    eng = Engine(spec, extractor=Counting(spec))
    pcm = to_s16(0.1 * rng.standard_normal(4 * SR))
    run(eng, "s", frames(pcm, [1600]))
    assert sum(calls) == 1 + (4 * SR - spec.n_fft) // spec.hop_length  # every frame exactly once


def test_session_starting_mid_stream_aligns_to_window_grid(rng, spec, fx):
    pcm = to_s16(0.1 * rng.standard_normal(3 * SR))
    wins = run(Engine(spec, extractor=fx), "s", frames(pcm, [1600], start_offset=5000))
    # samples 5000..53000: first boundary >= 5000 is 8000
    assert [(w.start, w.end) for w in wins] == [(8000, 24000), (16000, 32000), (24000, 40000), (32000, 48000)]
    _, V = fx.vectors_for_signal(from_s16(pcm)[3000:3000 + 16000])
    np.testing.assert_allclose(wins[0].vector, V[0], rtol=1e-5, atol=1e-4)


def test_two_interleaved_streams_keep_separate_state(rng, spec, fx):
    a = to_s16(0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR))
    b = to_s16(0.2 * rng.standard_normal(3 * SR))
    eng = Engine(spec, extractor=fx)
    out = []
    for fa, fb in itertools.zip_longest(frames(a, [1600], session=b"A" * 16), frames(b, [1000], session=b"B" * 16)):
        for sid, f in (("a", fa), ("b", fb)):
            if f is not None:
                eng.accept(sid, f)
        out += eng.step()
    for sid, pcm in (("a", a), ("b", b)):
        mine = [w for w in out if w.stream_id == sid]
        _, V = fx.vectors_for_signal(from_s16(pcm))
        np.testing.assert_allclose(np.stack([w.vector for w in mine]), V[:len(mine)], rtol=1e-5, atol=1e-4)
        assert len(mine) == len(V) == 5


def test_duplicates_dropped(rng, spec, fx):
    pcm = to_s16(0.1 * rng.standard_normal(2 * SR))
    fs = list(frames(pcm, [1600]))
    eng = Engine(spec, extractor=fx)
    statuses = []
    wins = []
    for f in fs[:5] + fs[3:5] + fs[5:]:
        statuses.append(eng.accept("s", f).status)
        wins += eng.step()
    assert statuses.count("duplicate") == 2
    assert [(w.start, w.end) for w in wins] == spec.window_bounds(2 * SR)


def test_short_gap_zero_filled_and_flagged(rng, spec, fx):
    pcm = to_s16(0.1 * rng.standard_normal(4 * SR))
    fs = list(frames(pcm, [1600]))
    eng = Engine(spec, extractor=fx)
    results, wins = [], []
    for i, f in enumerate(fs):
        if i in (12, 13):  # 200 ms lost at samples 19200..22400
            continue
        results.append(eng.accept("s", f))
        wins += eng.step()
    gaps = [r for r in results if r.gap_samples]
    assert len(gaps) == 1 and gaps[0].gap_samples == 3200 and gaps[0].missing_frames == 2 and not gaps[0].resynced
    assert [(w.start, w.end) for w in wins] == spec.window_bounds(4 * SR)  # no window lost
    flagged = [(w.start, w.end) for w in wins if w.gap]
    assert flagged == [(8000, 24000), (16000, 32000)]  # exactly the windows overlapping 19200..22400


def test_long_gap_resyncs_to_next_boundary(rng, spec, fx):
    pcm = to_s16(0.1 * rng.standard_normal(6 * SR))
    fs = list(frames(pcm, [1600]))
    eng = Engine(spec, extractor=fx)
    wins, results = [], []
    for i, f in enumerate(fs):
        if 15 <= i < 28:  # 1.3 s lost: samples 24000..44800 (> max_gap_fill of one window)
            continue
        results.append(eng.accept("s", f))
        wins += eng.step()
    assert any(r.resynced for r in results)
    # audio up to 24000 completes [0,16000) and [8000,24000); after the gap, windows restart at the
    # first boundary >= 44800, i.e. 48000, and run to the end (96000)
    assert [w.start for w in wins] == [0, 8000, 48000, 56000, 64000, 72000, 80000]
    # nothing zero-filled and no window spans the gap; the first one after it is flagged (a discontinuity)
    assert [w.start for w in wins if w.gap] == [48000]


def test_new_session_restarts_stream(rng, spec, fx):
    pcm = to_s16(0.1 * rng.standard_normal(2 * SR))
    eng = Engine(spec, extractor=fx)
    run(eng, "s", frames(pcm, [1600], session=b"1" * 16))
    f = next(frames(pcm, [1600], session=b"2" * 16))
    assert eng.accept("s", f).status == "new_session"
    wins = run(eng, "s", frames(pcm, [1600], session=b"2" * 16))
    assert [w.session_id for w in wins] == [b"2" * 16] * 3 and wins[0].start == 0


def test_end_of_stream_and_idle_eviction(spec, fx):
    eng = Engine(spec, extractor=fx, idle_timeout_s=5)
    f = wire.AudioFrame(SR, 0, 0, 0, b"x" * 16, np.zeros((1600, 1), np.int16), flags=wire.FLAG_END_OF_STREAM)
    eng.accept("ended", f, now=100.0)
    eng.accept("idle", wire.AudioFrame(SR, 0, 0, 0, b"y" * 16, np.zeros((1600, 1), np.int16)), now=100.0)
    eng.step(now=100.0)
    assert eng.finished() == ["ended"]
    assert eng.evict_idle(now=104.0) == []
    assert eng.evict_idle(now=106.0) == ["idle"]
    assert eng.streams == {}


def marks_bound(eng, spec, frame_samples: int = 1600) -> int:
    """Bytes of per-record marks (tag, capture time, arrival, end sample) a stream keeps: records over its
    tempo context, a window and a hop, plus the amortised trim's slack of 64."""
    seconds = eng.tempo_frames * spec.hop_length / spec.sr + (spec.window_length + 2 * spec.hop) / spec.sr
    return 32 * (int(seconds * spec.sr / frame_samples) + 2 + 64)


def test_memory_per_stream_is_bounded(rng, spec, fx):
    eng = Engine(spec, extractor=fx)
    pcm = to_s16(0.1 * rng.standard_normal(30 * SR))
    sizes = []
    for f in frames(pcm, [1600]):
        eng.accept("s", f)
        eng.step()
        sizes.append(eng.state_bytes())
    # preallocated: raw samples for a window + n_fft + slack, per-frame rows for a window + a hop + slack
    # + the onset-strength ring for tempo: the context plus a window and a hop of frames
    tempo_ring = 4 * (eng.tempo_frames + spec.frames_per_window + 2 * spec.frames_per_hop)
    bound = 4 * (spec.window_length + spec.n_fft + 4096) + 4 * fx.n_columns * (spec.frames_per_window + spec.frames_per_hop + 8)
    assert max(sizes) <= bound + tempo_ring + marks_bound(eng, spec) <= 256 * 1024  # the target: <= 256 KiB a stream
    assert max(sizes[-50:]) == max(sizes[200:250])  # does not grow with stream length


def test_window_ids_are_deterministic(rng, spec, fx):
    pcm = to_s16(0.1 * rng.standard_normal(2 * SR))
    a = run(Engine(spec, extractor=fx), "k", frames(pcm, [1600]))
    b = run(Engine(spec, extractor=fx), "k", frames(pcm, [777]))
    assert [w.window_id for w in a] == [w.window_id for w in b] == \
           [f"k/{(b'S' * 16).hex()}/{s}" for s in (0, 8000, 16000)]


def test_a_backlog_burst_does_not_keep_memory(rng, spec, fx):
    """An analyzer catching up reads many seconds of a stream in one poll; the buffers shrink back."""
    eng = Engine(spec, extractor=fx)
    pcm = to_s16(0.1 * rng.standard_normal(12 * SR))
    fs = list(frames(pcm, [1600]))
    for f in fs[:100]:  # 10 s in one batch
        eng.accept("s", f)
    assert len(eng.step()) == len(spec.window_bounds(10 * SR))
    st0 = StreamState("x", fs[0], 0.0, spec, fx.n_columns)
    steady = 4 * st0.buf_cap + 4 * st0.feats_cap * fx.n_columns  # the bound buffers grow to
    tempo_ring = 4 * (eng.tempo_frames + spec.frames_per_window + 2 * spec.frames_per_hop)
    assert eng.streams["s"].nbytes() <= steady + tempo_ring + marks_bound(eng, spec)
    for f in fs[100:]:
        eng.accept("s", f)
        eng.step()
    assert eng.streams["s"].nbytes() <= steady + tempo_ring + marks_bound(eng, spec)


def test_streaming_path_equals_librosa_directly(rng, spec, fx):
    """Odd frame sizes (windows straddle Kafka frames) and a session starting mid-frame, compared
    with librosa called on each window's samples (tolerance as in test_features)."""
    from streamproc.features import reference_window_vector

    from .test_features import assert_close_to_librosa
    t = np.arange(4 * SR) / SR
    pcm = to_s16(0.2 * np.sin(2 * np.pi * 523 * t) + 0.05 * rng.standard_normal(t.size))
    start = 3137  # not a multiple of hop_length: the session starts mid STFT frame
    wins = run(Engine(spec, extractor=fx), "s", frames(pcm[start:], [1111, 2047, 333], start_offset=start))
    y = from_s16(pcm)
    assert [w.start for w in wins] == [8000, 16000, 24000, 32000, 40000, 48000]
    for w in wins:
        assert_close_to_librosa(w.vector, reference_window_vector(y[w.start:w.end], spec), spec)


def test_producer_declared_gap_flags_windows(rng, spec, fx):
    """A capture overflow loses an unknown amount: the frame says so (GAP_BEFORE) without an offset jump."""
    pcm = to_s16(0.1 * rng.standard_normal(3 * SR))
    fs = list(frames(pcm, [1600]))
    b = bytearray(wire.encode(wire.AudioFrame(SR, fs[15].sequence, fs[15].sample_offset, 0, b"S" * 16,
                                              fs[15].samples, flags=wire.FLAG_GAP_BEFORE)))
    fs[15] = wire.decode(bytes(b))  # sample 24000
    eng = Engine(spec, extractor=fx)
    results, wins = [], []
    for f in fs:
        results.append(eng.accept("s", f))
        wins += eng.step()
    assert [r.producer_gap for r in results].count(True) == 1
    assert [(w.start, w.gap) for w in wins] == [(0, False), (8000, False), (16000, True), (24000, True),
                                                (32000, False)]


@pytest.mark.parametrize("bpm", [90, 120, 140])
def test_tempo_of_a_click_track_after_the_context_fills(spec, fx, bpm):
    """Per-window tempo over the last 8 s (Engine tempo_context_s): within +-2 BPM once 8 s were heard."""
    rng = np.random.default_rng(bpm)
    y = 0.001 * rng.standard_normal(14 * SR)
    n = int(0.03 * SR)
    click = 0.8 * np.sin(2 * np.pi * 1000 * np.arange(n) / SR) * np.exp(-np.arange(n) / SR * 80)
    for t in np.arange(0.1, 14, 60 / bpm):
        i = int(t * SR)
        y[i:i + n] += click[: len(y) - i]
    wins = run(Engine(spec, extractor=fx), "click", frames(to_s16(y), [1600]))
    early = [w.metrics["tempo_bpm"] for w in wins if w.end <= 8 * SR - 1000]
    late = [w.metrics["tempo_bpm"] for w in wins if w.end >= 8 * SR + 1000]
    assert early and all(t is None for t in early)  # not enough context yet
    assert late and all(abs(t - bpm) <= 2 for t in late), late
    assert all(w.metrics["tempo_confidence"] > 0.5 for w in wins if w.metrics["tempo_bpm"] is not None)
    assert all(w.metrics["onset_strength"] > 0 for w in wins)


@pytest.mark.parametrize("kind", ["tone", "silence"])
def test_no_pulse_means_no_tempo(spec, fx, kind):
    """A steady tone or silence has no beat: tempo is None (before: 3000 BPM for a 200 Hz tone)."""
    t = np.arange(12 * SR) / SR
    y = 0.3 * np.sin(2 * np.pi * 200 * t) if kind == "tone" else np.zeros(t.size)
    wins = run(Engine(spec, extractor=fx), kind, frames(to_s16(y), [1600]))
    assert len(wins) > 10
    assert all(w.metrics["tempo_bpm"] is None and w.metrics["tempo_confidence"] is None for w in wins), \
        [w.metrics["tempo_bpm"] for w in wins]


def test_tempo_context_survives_a_backlog_burst(spec, fx):
    """Windows completed together in one step each get the tempo of their own context."""
    y = np.zeros(12 * SR)
    for t in np.arange(0.1, 12, 0.5):  # 120 BPM
        y[int(t * SR):int(t * SR) + 200] = 0.8
    eng = Engine(spec, extractor=fx)
    for f in frames(to_s16(y), [1600]):
        eng.accept("s", f)
    wins = eng.step()  # everything in one batch
    # a window's STFT frames end a little before its last sample: 8 s of frames is reached after 8 s
    assert [round(w.metrics["tempo_bpm"]) for w in wins if w.metrics["tempo_bpm"] is not None] == \
           [120] * sum(w.end > 8 * SR for w in wins)


def test_small_reorder_is_put_right(rng, spec, fx):
    """Frames 10..13 arrive as 10, 12, 13, 11 (one frame three places late): same windows as in order."""
    pcm = to_s16(0.1 * rng.standard_normal(4 * SR))
    fs = list(frames(pcm, [1600]))
    order = fs[:11] + fs[12:14] + [fs[11]] + fs[14:]
    eng = Engine(spec, extractor=fx)
    results, wins = [], []
    for f in order:
        results.append(eng.accept("s", f))
        wins += eng.step()
    assert [r.status for r in results].count("held") == 2
    assert sum(r.reordered for r in results) == 1
    assert not any(r.gap_samples for r in results)
    ref = run(Engine(spec, extractor=fx), "s", iter(fs))
    assert [(w.start, w.gap) for w in wins] == [(w.start, False) for w in ref]
    np.testing.assert_array_equal(np.stack([w.vector for w in wins]), np.stack([w.vector for w in ref]))


def test_held_duplicate_is_dropped_and_a_real_gap_is_released_by_count_or_time(rng, spec, fx):
    pcm = to_s16(0.1 * rng.standard_normal(3 * SR))
    fs = list(frames(pcm, [1600]))
    eng = Engine(spec, extractor=fx, max_reorder=4, reorder_timeout_s=1.0)
    for f in fs[:5]:
        eng.accept("s", f, now=0.0)
    assert eng.accept("s", fs[7], now=0.0).status == "held"
    assert eng.accept("s", fs[7], now=0.0).status == "duplicate"
    eng.step(now=0.5)
    assert eng.streams["s"].held  # within the time bound: still waiting for 5 and 6
    eng.step(now=1.1)  # past it: 7 applied, 5 and 6 are a gap (zero-filled, flagged)
    st = eng.streams["s"]
    assert not st.held and st.next_seq == 8 and st.gaps == [(8000, 11200)]
    # by count: more than max_reorder frames ahead releases at once
    eng2 = Engine(spec, extractor=fx, max_reorder=4)
    for f in fs[:5]:
        eng2.accept("s", f)
    res = [eng2.accept("s", f) for f in fs[6:11]]
    assert [r.status for r in res] == ["held"] * 4 + ["ok"]
    assert res[-1].gap_samples == 1600 and res[-1].missing_frames == 1 and res[-1].reordered == 0


def test_resync_inside_one_batch_keeps_the_windows_before_the_gap(rng, spec, fx):
    """A backlog read in one poll: the audio before a long gap completes its windows before the resync."""
    pcm = to_s16(0.1 * rng.standard_normal(6 * SR))
    fs = [f for i, f in enumerate(frames(pcm, [1600])) if not 15 <= i < 28]
    eng = Engine(spec, extractor=fx)
    for f in fs:
        eng.accept("s", f)
    assert [w.start for w in eng.step()] == [0, 8000, 48000, 56000, 64000, 72000, 80000]


def test_short_lived_stream_costs_little(spec, fx):
    eng = Engine(spec, extractor=fx)
    eng.accept("s", wire.AudioFrame(SR, 0, 0, 0, b"x" * 16, np.zeros((1600, 1), np.int16)))
    eng.step()
    assert eng.state_bytes() < 24 * 1024  # grows to ~107 KiB only if the stream goes on


@pytest.mark.parametrize("crash_at", [37, 123, 250])
def test_recovery_from_needed_tag_rebuilds_windows_exactly(rng, spec, fx, crash_at):
    """The analyzer's crash recovery, without Kafka: records are numbered (tags = offsets); after
    ``crash_at`` records a new engine re-reads from the needed tag, suppresses windows completed by
    records already processed, and the union equals an uninterrupted run, tempo included."""
    t = np.arange(30 * SR) / SR
    clicks = (np.sin(2 * np.pi * 1000 * t) * (np.mod(t, 0.5) < 0.02)).astype(np.float64)
    pcm = to_s16(0.5 * clicks + 0.01 * rng.standard_normal(t.size))
    fs = list(frames(pcm, [1600, 777]))
    whole = Engine(spec, extractor=fx)
    ref = []
    for i, f in enumerate(fs):
        whole.accept("s", f, tag=i)
        ref += whole.step()
    first = Engine(spec, extractor=fx)
    got = []
    for i, f in enumerate(fs[:crash_at]):
        first.accept("s", f, tag=i)
        got += first.step()
    resume = first.needed_tag(first.streams["s"])
    assert resume is not None and resume < crash_at
    assert crash_at - resume <= 8 * SR / 1188 + 20  # ~tempo context + a window, not the whole stream
    second = Engine(spec, extractor=fx)
    for i in range(resume, len(fs)):
        second.accept("s", fs[i], tag=i)
        got += [w for w in second.step() if w.tag >= crash_at]  # completed by a record not yet processed
    assert [w.window_id for w in got] == [w.window_id for w in ref]
    np.testing.assert_array_equal(np.stack([w.vector for w in got]), np.stack([w.vector for w in ref]))
    assert [w.metrics for w in got] == [w.metrics for w in ref]
    assert any(w.metrics["tempo_bpm"] for w in got[-10:])


def test_capture_time_and_arrival_are_those_of_the_frame_that_completed_each_window(rng, spec, fx):
    """A burst (backlog, --speed max): 30 frames accepted before one step. Each window carries the
    capture time and arrival of the frame that completed it, not of the stream's last frame."""
    pcm = to_s16(0.1 * rng.standard_normal(3 * SR))
    eng = Engine(spec, extractor=fx)
    for i, f in enumerate(frames(pcm, [1600])):
        f = dataclasses.replace(f, capture_time_ns=1_000_000_000 * (i + 1))
        eng.accept("s", f, now=float(i), tag=i)
    wins = eng.step(now=100.0)
    assert len(wins) == 5
    for w in wins:
        last_sample = (w.index * spec.frames_per_hop + spec.frames_per_window - 1) * spec.hop_length + spec.n_fft - 1
        completing = last_sample // 1600  # the frame holding the window's last analysed sample
        assert w.tag == completing
        assert w.capture_time_ns == 1_000_000_000 * (completing + 1), (w.index, w.capture_time_ns)
        assert w.arrival == float(completing)


def test_events_report_every_sequence_fact_in_stream_order(rng, spec, fx):
    """One list holds windows, gaps and sequence events as they happened: a duplicate, a late frame
    (its place already given up as a gap), a reorder, a gap released by the reorder timeout (once
    unreported) and a new session."""
    from streamproc.engine import Gap, SequenceEvent, Window
    pcm = to_s16(0.1 * rng.standard_normal(4 * SR))
    fs = list(frames(pcm, [1600]))
    eng = Engine(spec, extractor=fx, events=True, max_reorder=4, reorder_timeout_s=1.0)
    for i, f in enumerate(fs[:10]):
        eng.accept("s", f, now=0.0, tag=i)
    eng.accept("s", fs[9], now=0.0, tag=100)          # duplicate
    eng.accept("s", fs[11], now=0.0, tag=11)          # ahead: held
    eng.accept("s", fs[10], now=0.0, tag=10)          # the missing one: reordered, both applied
    for i in (13, 14):                                # 12 lost; 13, 14 held (fewer than max_reorder)
        eng.accept("s", fs[i], now=0.0, tag=i)
    eng.step(now=0.5)
    assert eng.holding
    mid = eng.drain()
    assert [e.kind for e in mid if not isinstance(e, Window)] == ["duplicate", "reordered"]
    eng.step(now=1.5)                                 # the timeout releases 13, 14: a gap, reported
    assert not eng.holding
    eng.accept("s", fs[12], now=1.6, tag=12)          # too late: its place is zeros now
    evs = eng.drain()
    gaps = [e for e in evs if isinstance(e, Gap)]
    assert len(gaps) == 1 and (gaps[0].start, gaps[0].samples, gaps[0].missing_frames, gaps[0].resynced,
                               gaps[0].tag) == (12 * 1600, 1600, 1, False, 13)
    assert [e.kind for e in evs if isinstance(e, SequenceEvent)] == ["late"]
    eng.accept("s", next(frames(pcm, [1600], session=b"N" * 16)), now=2.0, tag=200)
    assert [e.kind for e in eng.drain()] == ["new_session"]
    assert eng.drop("s") and eng.streams == {} and not eng.drop("s")


def test_events_are_off_unless_asked_for(rng, spec, fx):
    eng = Engine(spec, extractor=fx)
    run(eng, "s", frames(to_s16(0.1 * rng.standard_normal(2 * SR)), [1600]))
    assert eng.drain() == []


@pytest.mark.parametrize("seconds", [0.3, 0.5, 0.99])
def test_a_stream_shorter_than_a_window_is_one_padded_window(rng, spec, fx, seconds):
    """Ended (end-of-stream flag) before its first window filled: one window, zero-padded, flagged,
    whose vector is librosa's on the clip followed by zeros."""
    from streamproc.features import reference_window_vector

    from .test_features import assert_close_to_librosa
    pcm = to_s16(0.2 * rng.standard_normal(int(seconds * SR)))
    fs = list(frames(pcm, [1600]))
    fs[-1] = dataclasses.replace(fs[-1], flags=wire.FLAG_END_OF_STREAM)
    eng = Engine(spec, extractor=fx, events=True)
    wins = run(eng, "short", fs)
    assert [(w.start, w.end, w.padded, w.gap, w.tag) for w in wins] == [(0, spec.window_length, True, False, None)]
    y = np.zeros(spec.window_length, np.float32)
    y[:len(pcm)] = from_s16(pcm)
    assert_close_to_librosa(wins[0].vector, reference_window_vector(y, spec), spec)
    assert eng.finished() == ["short"]
    # without the end-of-stream flag nothing is padded (the stream may go on), and a long stream's tail is not
    assert run(Engine(spec, extractor=fx), "open", frames(pcm, [1600])) == []
    long = to_s16(0.2 * rng.standard_normal(int(1.3 * SR)))
    lf = list(frames(long, [1600]))
    lf[-1] = dataclasses.replace(lf[-1], flags=wire.FLAG_END_OF_STREAM)
    assert [(w.start, w.padded) for w in run(Engine(spec, extractor=fx), "long", lf)] == [(0, False)]
