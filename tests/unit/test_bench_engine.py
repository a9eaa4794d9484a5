"""The engine bench times windows in steady state: all of them estimate a tempo, as the analyzer's do once
its streams have run a few seconds (the bar of bench --kafka's kafka_vs_engine)."""
import numpy as np

from consumers.bench import steady_state_s
from streamproc import wire
from streamproc.engine import Engine
from streamproc.windowing import WindowSpec


def click_track(sr: int, seconds: float) -> np.ndarray:
    y = np.zeros(int(sr * seconds), np.int16)
    for start in range(0, y.size - 160, sr // 2):  # 120 bpm: a clear pulse, so a tempo is estimated
        y[start:start + 160] = 20000
    return y


def windows_by_end(start_tick: int, ticks: int, spec: WindowSpec, frame_ms: int = 100) -> list:
    """(seconds of the stream's audio when the window came out, its metrics), one stream starting
    ``start_tick`` frames late, as the bench staggers them."""
    eng = Engine(spec)
    n = spec.sr * frame_ms // 1000
    y = click_track(spec.sr, ticks * frame_ms / 1000)
    sid, session, out = "s", wire.new_session_id(), []
    for tick in range(ticks):
        local = tick - start_tick
        if local >= 0:
            frame = wire.decode(wire.encode_pcm(y[local * n:(local + 1) * n].tobytes(), channels=1, n_frames=n,
                                                sample_rate=spec.sr, sequence=local, sample_offset=local * n,
                                                capture_time_ns=0, session_id=session))
            eng.accept(sid, frame, float(tick))
        out += [(tick * frame_ms / 1000, w.metrics) for w in eng.step(float(tick))]
    return out


def test_every_window_after_the_warm_up_estimates_a_tempo_and_earlier_ones_do_not():
    spec = WindowSpec()
    warm = steady_state_s(Engine(spec), 100)
    assert 9.0 <= warm <= 10.0  # 8 s of tempo context, a window, the 0.5 s start stagger
    stagger = spec.hop * 1000 // spec.sr // 100  # the bench starts stream i (i % stagger) frames late
    for late in (0, stagger - 1):
        ws = windows_by_end(late, int(round((warm + 3) * 10)), spec)
        timed = [m for t, m in ws if t >= warm]
        assert timed and all(m["tempo_bpm"] is not None for m in timed)
        early = [m for t, m in ws if t < 7.0]  # a bar timed here (as it was) measured windows without tempo
        assert early and all(m["tempo_bpm"] is None for m in early)
