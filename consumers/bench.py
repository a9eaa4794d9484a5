"""``audiostream bench``: how many live streams one core carries, measured side by side.

Engine mode (default, no Kafka): N synthetic streams of 100 ms wire frames are
decoded, filed, featurised and inferred in one process pinned to one CPU with
one BLAS/ONNX thread, for ``--seconds`` of audio per stream, timed once every stream is in steady
state (its windows estimate a tempo from 8 s of context: before that they do ~5% less). In the same run,
the naive approach (librosa's feature functions on each window's samples, then
one ONNX call per window) is timed on real windows of the same audio. Printed:
streams per core at real time for both, the ratio, window latency percentiles
and memory per stream.

Kafka mode (``--kafka``): a real broker (``--bootstrap-servers`` or a local one),
a load-generator process producing N real-time streams (pinned to another CPU),
and the analyzer in this process pinned to one CPU, for ``--duration`` seconds.
Printed: consumer lag over time and its trend, whether the load was sustained,
latency from a window's last frame arriving to its prediction being
acknowledged by Kafka (p50/p99), memory per stream.

Two models (``--model A --model B``, engine mode): both measured in one run on the same streams,
side by side, with the ratio of B's streams per core to A's (e.g. a log-mel CNN against the MLP);
``--repeat N`` measures each N times, alternating A, B, A, B, and keeps each one's best (the run
least disturbed by other work on the machine).

Absolute numbers depend on the machine; ratios printed by one run compare like
with like. ``--json`` prints one JSON object for scripts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import uuid

import numpy as np

from producers.loadgen import clip_pool
from streamproc import wire
from streamproc.audio import from_s16
from streamproc.engine import Engine
from streamproc.features import reference_logmel, reference_window_vector
from streamproc.inference import ModelBundle

from .analyzer import DEFAULT_MODEL, freeze_heap


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin_to_one_cpu(cpu: int | None) -> int:
    """Pin this process to one CPU (default: the last one we may use); returns it."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def percentile_ms(values, q) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 3) if len(values) else None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- engine mode ----------------------------------------------------------------------
def steady_state_s(engine: Engine, frame_ms: int) -> float:
    """Seconds of audio after which every stream of an engine bench (started up to 500 ms apart, as the load
    generator's are) computes windows as it will for ever after: tempo from a full context before each window
    (``tempo_context_s``, 8 s), plus a window. Before that, no window estimates a tempo: ~5% less work."""
    spec = engine.spec
    stagger = max(1, spec.hop * 1000 // spec.sr // frame_ms) * frame_ms / 1000
    return (engine.tempo_frames / engine.fps if engine.tempo_frames else 0.0) + spec.window_length / spec.sr + stagger


def engine_bench(*, streams: int, seconds: float, model: str = DEFAULT_MODEL, hop_length: int | None = None,
                 naive_windows: int = 60, warmup_s: float | None = None, cpu: int | None = None, frame_ms: int = 100,
                 progress=None) -> dict:
    """``seconds`` of audio per stream timed, after ``warmup_s`` untimed (default: ``steady_state_s``, so the timed
    windows do all the work the analyzer's do once its streams have run 10 s: their tempo too)."""
    from threadpoolctl import threadpool_limits

    cpu = pin_to_one_cpu(cpu)
    with threadpool_limits(1):
        bundle = ModelBundle.load(model)
        spec = bundle.spec if hop_length is None else dataclasses.replace(bundle.spec, hop_length=hop_length)
        # a logmel bundle: patches from the same STFT rows; a waveform bundle (BirdNET): the windows' audio
        engine = Engine(spec, logmel=bundle.logmel, waveform=bundle.waveform)
        freeze_heap()  # as the analyzer does (like for like with bench --kafka)
        sr = spec.sr
        n = sr * frame_ms // 1000   # samples per frame (100 ms: what producers send by default)
        per_s = 1000 / frame_ms     # frames per stream-second
        pool = clip_pool(sr)
        sessions = [wire.new_session_id() for _ in range(streams)]
        ids = [f"bench-{i:05d}" for i in range(streams)]
        if warmup_s is None:
            warmup_s = steady_state_s(engine, frame_ms)
        warm = int(np.ceil(warmup_s * per_s))
        ticks = warm + int(seconds * per_s)
        cpu_s = wall_s = 0.0
        latencies = []
        windows = 0
        rss0 = rss_bytes()
        # live streams do not start in lock-step: stream i starts (i % hop_ticks) frames late, so its
        # windows complete in a different tick than its neighbours'
        hop_ticks = max(1, spec.hop // n)
        for tick in range(ticks):
            frames = []
            for i in range(streams):  # producer side: not timed
                local = tick - i % hop_ticks
                if local < 0:
                    frames.append(None)
                    continue
                clip = pool[i % len(pool)]
                j = (local + 7 * i) % (len(clip) // n)
                frames.append(wire.encode_pcm(clip[j * n:(j + 1) * n].tobytes(), channels=1, n_frames=n,
                                              sample_rate=sr, sequence=local, sample_offset=local * n,
                                              capture_time_ns=0, session_id=sessions[i]))
            c0, w0 = time.process_time(), time.perf_counter()
            for i in range(streams):
                if frames[i] is not None:
                    engine.accept(ids[i], wire.decode(frames[i]), time.perf_counter())
            ready = engine.step()
            if ready:
                bundle.predict(bundle.inputs(ready))
            c1, w1 = time.process_time(), time.perf_counter()
            if tick >= warm:
                cpu_s += c1 - c0
                wall_s += w1 - w0
                windows += len(ready)
                latencies += [w1 - w.arrival for w in ready]  # its last frame accepted -> scores computed
            if progress:
                progress(tick + 1, ticks)
        audio_s = (ticks - warm) / per_s  # every stream is live for all timed ticks (warm-up > hop_ticks)
        bytes_per_stream = engine.state_bytes() / max(1, len(engine.streams))
        rss_per_stream = (rss_bytes() - rss0) / streams

        if not naive_windows:  # bench --kafka wants the engine only (the naive path's librosa JIT costs seconds)
            naive_cpu_per_window = None
        else:  # the naive approach, on the same audio, in the same run
            naive_cpu_per_window = _naive_cost(bundle, spec, pool, naive_windows)
    windows_per_stream_second = sr / spec.hop
    streams_per_core = streams * audio_s / cpu_s if cpu_s else 0.0
    naive_streams_per_core = 1.0 / (naive_cpu_per_window * windows_per_stream_second) if naive_cpu_per_window else None
    return {
        "mode": "engine", "streams": streams, "audio_seconds_per_stream": audio_s,
        "warmup_seconds": round(warm / per_s, 2), "cpu_seconds": round(cpu_s, 3),
        "wall_seconds": round(wall_s, 3), "real_time_factor": round(cpu_s / audio_s, 4) if audio_s else None,
        "streams_per_core": round(streams_per_core, 1),
        "naive_streams_per_core": round(naive_streams_per_core, 1) if naive_streams_per_core else None,
        "speedup_vs_naive": round(streams_per_core / naive_streams_per_core, 2) if naive_streams_per_core else None,
        "windows": windows, "windows_per_step": round(windows / max(1, ticks - warm), 1),
        "latency_p50_ms": percentile_ms(latencies, 50),
        "latency_p99_ms": percentile_ms(latencies, 99), "bytes_per_stream": round(bytes_per_stream),
        "rss_growth_per_stream": round(rss_per_stream), "model": bundle.ref,
        "window_spec": {"sr": sr, "window_length": spec.window_length, "hop": spec.hop, "n_fft": spec.n_fft,
                        "hop_length": spec.hop_length}, "frame_ms": frame_ms, "cpu": cpu_name(), "pinned_cpu": cpu,
    }


def _naive_cost(bundle, spec, pool, naive_windows: int) -> float:
    """CPU seconds per window of the naive approach (librosa per window, one ONNX call each), on windows of
    the same audio."""
    clip = from_s16(pool[0])
    bounds = spec.window_bounds(len(clip))
    picks = [bounds[i % len(bounds)] for i in range(naive_windows)]
    naive_clips = [from_s16(pool[i % len(pool)]) for i in range(naive_windows)]

    def naive(y):  # the model's input the plain librosa way, one ONNX call per window
        if bundle.waveform:  # the audio itself: nothing to compute but the model, one call per window
            return bundle.predict(np.asarray(y, np.float32)[None])
        if bundle.logmel is not None:
            return bundle.predict(reference_logmel(y, spec, bundle.logmel)[None])
        return bundle.predict(reference_window_vector(y, spec)[None, :])
    for (s, e), y in list(zip(picks, naive_clips))[:3]:  # warm-up, untimed: librosa JIT-compiles on first use
        naive(y[s:e])
    c0 = time.process_time()
    for (s, e), y in zip(picks, naive_clips):
        naive(y[s:e])
    return (time.process_time() - c0) / naive_windows


# -- Kafka mode -----------------------------------------------------------------------
def windows_done(analyzer) -> float:
    """Windows the analyzer has featurised and inferred so far (its Prometheus counter)."""
    m = analyzer.metrics
    return m.registry.get_sample_value("audiostream_windows_analyzed_total", {"model": m.model}) or 0.0


def _stat_cpu(stat: str) -> tuple[str, float]:
    """A /proc/.../stat line: (the process or thread name, its user + system CPU seconds)."""
    fields = stat[stat.rindex(")") + 2:].split()
    return stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by kind: librdkafka's (``rdk:*``) and the rest."""
    out = {"librdkafka": 0.0, "python": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                name, seconds = _stat_cpu(f.read())
        except OSError:
            continue
        out["librdkafka" if name.startswith("rdk:") else "python"] += seconds
    return out


def batch_shape(analyzer) -> tuple:
    """(batches, records, windows stepped, inference calls, windows inferred) so far."""
    m = analyzer.metrics
    calls = m.registry.get_sample_value("audiostream_inference_batch_windows_count") or 0.0
    inferred = m.registry.get_sample_value("audiostream_inference_batch_windows_sum") or 0.0
    return (*analyzer.batch_shape, calls, inferred)


def bench_broker(bootstrap: str | None, kinds: tuple[str, ...], partitions: int):
    """The broker a Kafka bench runs against (a local one started here when ``bootstrap`` is None: the
    caller stops it) and fresh ``bench.<tag>.<kind>`` topics on it: (broker or None, conf, topics, tag)."""
    from streamproc.config import kafka_config
    from streamproc.kafka import ensure_topics

    from .local_broker import load_local_kafka
    broker = None
    if bootstrap is None:
        broker = load_local_kafka().LocalKafka().start()
        bootstrap = broker.bootstrap_servers
    conf = kafka_config(bootstrap)
    tag = uuid.uuid4().hex[:6]
    topics = {k: f"bench.{tag}.{k}" for k in kinds}
    ensure_topics(conf, {t: partitions for t in topics.values()})
    return broker, conf, topics, tag


def kafka_bench(*, streams: int, duration: float, bootstrap: str | None = None, model: str = DEFAULT_MODEL,
                partitions: int = 6, warmup_s: float = 10.0, engine_seconds: float = 8.0, exactly_once: bool = False,
                consumer_options: dict | None = None, producer_options: dict | None = None,
                max_batch: int | None = None, frame_ms: int = 100, progress=None) -> dict:
    from threadpoolctl import threadpool_limits

    from .analyzer import Analyzer, AnalyzerConfig

    broker, conf, topics, tag = bench_broker(bootstrap, ("frames", "predictions", "features", "deadletter"),
                                             partitions)
    bootstrap = conf["bootstrap.servers"]  # the local broker's when none was given (loadgen gets it)
    cpus = sorted(os.sched_getaffinity(0))
    analyzer_cpu, loadgen_cpu = cpus[0], cpus[-1]
    engine = None
    if engine_seconds:  # the bar, in the same run: the engine alone on the analyzer's CPU, same streams
        try:
            engine = engine_bench(streams=streams, seconds=engine_seconds, model=model, cpu=analyzer_cpu,
                                  naive_windows=0, frame_ms=frame_ms)
        finally:
            os.sched_setaffinity(0, set(cpus))
    cfg = AnalyzerConfig(kafka=conf, model=model, frames_topic=topics["frames"],
                         predictions_topic=topics["predictions"], features_topic=topics["features"],
                         deadletter_topic=topics["deadletter"], group_id=f"bench-{tag}", metrics_port=None,
                         create_topics=False, record_latencies=10_000_000, exactly_once=exactly_once,
                         consumer_overrides=dict(consumer_options or {}), producer_overrides=dict(producer_options or {}),
                         **({"batch_size": max_batch} if max_batch else {}))
    loadgen = None
    try:
        os.sched_setaffinity(0, {analyzer_cpu})  # the analyzer process: one core (librdkafka threads too)
        with threadpool_limits(1):
            analyzer = Analyzer(cfg)
            freeze_heap()  # as `audiostream analyze` does once its model is loaded
            th = analyzer.run_in_background()
            errors = th.errors
            join_deadline = time.monotonic() + 60
            while not analyzer.assigned and not errors and time.monotonic() < join_deadline:
                time.sleep(0.1)  # start the load once the analyzer owns its partitions (no artificial backlog)
            cmd = [sys.executable, "-m", "streamproc.cli", "loadgen", "-b", bootstrap, "--topic", topics["frames"],
                   "--streams", str(streams), "--duration", str(duration), "--cpu", str(loadgen_cpu),
                   "--prefix", f"bench{tag}", "--frame-ms", str(frame_ms)]
            t0 = time.monotonic()
            loadgen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            samples = []  # (t, total lag, predictions so far, cpu seconds so far)
            shapes = []  # (batch_shape, thread_cpu) at each sample
            while loadgen.poll() is None and not errors:
                time.sleep(1.0)
                lag = sum(analyzer.last_lag.values())
                preds = windows_done(analyzer)
                samples.append((time.monotonic() - t0, lag, preds, time.process_time()))
                shapes.append((batch_shape(analyzer), thread_cpu()))
                if progress:
                    progress(min(int(time.monotonic() - t0), int(duration)), int(duration), lag)
            load_err = loadgen.stderr.read()
            drain0 = time.monotonic()
            # the analyzer thread refreshes last_lag every second (consumer calls stay on its thread)
            time.sleep(1.1)
            while sum(analyzer.last_lag.values()) > 0 and time.monotonic() - drain0 < 60 and not errors:
                time.sleep(0.2)
            drain_s = time.monotonic() - drain0
            state = analyzer.engine.state_bytes() / max(1, len(analyzer.engine.streams))
            analyzer.stop()
            th.join(30)
        if errors:
            raise errors[0]
        if loadgen.returncode != 0:
            raise RuntimeError(f"load generator failed: {load_err[-2000:]}")
        parts = list(analyzer.latencies)  # (arrival -> produced, arrival -> acknowledged, capture -> acknowledged)
        # skip the warm-up: the first windows of every stream complete after 1 s
        n_warm = int(len(parts) * min(0.5, warmup_s / max(duration, 1)))
        parts = parts[n_warm:]
        lat = [p[1] for p in parts]
        # where the latency goes: the analyzer's own work (arrival -> handed to the producer), then the
        # broker's acknowledgement (acks=all, to another process on this machine); and capture -> acknowledged
        # adds the frames' time in the producer, the broker and the consumer's prefetch
        split = {"latency_to_produce_p50_ms": percentile_ms([p[0] for p in parts], 50),
                 "latency_to_produce_p99_ms": percentile_ms([p[0] for p in parts], 99),
                 "ack_wait_p50_ms": percentile_ms([p[1] - p[0] for p in parts], 50),
                 "ack_wait_p99_ms": percentile_ms([p[1] - p[0] for p in parts], 99),
                 "capture_to_ack_p50_ms": percentile_ms([p[2] for p in parts], 50),
                 "capture_to_ack_p99_ms": percentile_ms([p[2] for p in parts], 99)}
        half = [(t, lag) for t, lag, _, _ in samples if t >= duration / 2]
        slope = float(np.polyfit([t for t, _ in half], [lag for _, lag in half], 1)[0]) if len(half) >= 3 else 0.0
        input_rate = streams * 1000 / frame_ms  # frames per second
        windows = int(windows_done(analyzer))
        # the load generator starts stream i (i % k) frames late, k = 500 ms of frames (producers.loadgen.generate)
        ticks = int(duration * 1000 / frame_ms)
        stagger = max(1, round(500 / frame_ms))
        n = analyzer.spec.sr * frame_ms // 1000
        expected = sum(len(analyzer.spec.window_bounds((ticks - i % stagger) * n)) for i in range(streams))
        busy = [(b[3] - a[3]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])][len(samples) // 2:]
        sustained = slope < 0.01 * input_rate and drain_s < 5.0 and windows >= 0.98 * expected
        # streams served per CPU second over the second half (windows/s / windows per stream-second / busy):
        # equals streams / busy when sustained; when not, what the core got through (batches grow with a backlog)
        tail = samples[len(samples) // 2:]
        served = None
        if len(tail) >= 2 and tail[-1][3] > tail[0][3]:
            served = (tail[-1][2] - tail[0][2]) / (analyzer.spec.sr / analyzer.spec.hop) / (tail[-1][3] - tail[0][3])
        spc = streams / max(np.mean(busy), 1e-9) if busy and sustained else None
        kafka_spc, basis = (spc, "sustained") if spc else (served, "served (not sustained)")
        shape = {}
        if len(shapes) >= 4:  # the second half: batch shape, and where the process's CPU went
            (a, ca), (b, cb) = shapes[len(shapes) // 2], shapes[-1]
            d = [y - x for x, y in zip(a, b)]
            cpu = {k: cb[k] - ca[k] for k in ca}
            shape = {"records_per_batch": round(d[1] / max(1, d[0]), 1),
                     "windows_per_step": round(d[2] / max(1, d[0]), 2),
                     "windows_per_inference": round(d[4] / max(1, d[3]), 1),
                     "batches_per_s": round(d[0] / max(1e-9, samples[-1][0] - samples[len(shapes) // 2][0]), 1),
                     "librdkafka_cpu_share": round(cpu["librdkafka"] / max(1e-9, sum(cpu.values())), 3)}
        vs_engine = {}
        if engine is not None:
            vs_engine = {"engine_streams_per_core": engine["streams_per_core"],
                         "engine_windows_per_step": engine["windows_per_step"],
                         "engine_latency_p50_ms": engine["latency_p50_ms"],
                         "engine_latency_p99_ms": engine["latency_p99_ms"],
                         "kafka_vs_engine": round(kafka_spc / engine["streams_per_core"], 3) if kafka_spc else None,
                         "kafka_vs_engine_basis": basis}
        return {
            "mode": "kafka", "streams": streams, "duration_s": duration, "partitions": partitions,
            "guarantee": "exactly-once" if exactly_once else "at-least-once",
            **({"consumer_options": consumer_options} if consumer_options else {}),
            **({"producer_options": producer_options} if producer_options else {}),
            "max_batch": cfg.batch_size, "frame_ms": frame_ms,
            "sustained": bool(sustained), "lag_trend_records_per_s": round(slope, 2),
            "max_lag_records": int(max((lag for _, lag, _, _ in samples), default=0)),
            "drain_seconds": round(drain_s, 2), "windows": windows, "windows_expected": expected,
            "analyzer_cpu_busy": round(float(np.mean(busy)), 3) if busy else None,
            "streams_per_core": round(spc, 1) if spc else None,
            "served_streams_per_core": round(served, 1) if served else None, **vs_engine, **shape,
            "latency_p50_ms": percentile_ms(lat, 50), "latency_p99_ms": percentile_ms(lat, 99), **split,
            "bytes_per_stream": round(state), "model": analyzer.bundle.ref, "cpu": cpu_name(),
            "lag_samples": [[round(t, 1), lag] for t, lag, _, _ in samples],
        }
    finally:
        os.sched_setaffinity(0, set(cpus))
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
        if broker is not None:
            broker.stop()


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metric_lines(port: int, name: str) -> list[str]:
    """The sample lines of one metric on an analyzer's /metrics (none when unreachable or absent)."""
    import urllib.request
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.startswith(name) and ln[len(name)] in " {"]


def _scrape(port: int, name: str) -> float:
    """The sum of one metric's samples on an analyzer's /metrics (0 when unreachable or absent)."""
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in _metric_lines(port, name))


def _scrape_count(port: int, name: str) -> int:
    """How many samples (label sets) of one metric an analyzer's /metrics has."""
    return sum(1 for ln in _metric_lines(port, name) if ln[len(name)] == "{")


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        return _stat_cpu(f.read())[1]


def group_bench(*, streams: int, duration: float, analyzers: int, bootstrap: str | None = None,
                model: str = DEFAULT_MODEL, partitions: int = 6, backlog: bool = False, progress=None) -> dict:
    """Consumer-group scaling: ``analyzers`` ``audiostream analyze`` processes in one group, analyzer i pinned to
    CPU i (mod the CPUs we may use); the load generator and the broker are not pinned (they share every core).
    Reported: per analyzer its core busy, and for the group the windows predicted per second and per analyzer
    CPU second over the second half (served streams per core = windows per CPU second / windows per
    stream-second). Compare ``--analyzers 1`` and ``2`` run back to back.

    ``backlog``: the load generator runs first and is done before the analyzers start; they then catch up on
    ``duration`` seconds of every stream, and the rates are taken while the group has predicted 20% to 80% of
    the expected windows. The group's own scaling, without a load generator on the same cores at the same time
    (on a 2-core machine the live load needs most of a core at 3000 streams)."""

    broker, conf, topics, tag = bench_broker(bootstrap, ("frames", "predictions", "features", "deadletter"),
                                             partitions)
    bootstrap = conf["bootstrap.servers"]  # the local broker's when none was given (loadgen gets it)
    cpus = sorted(os.sched_getaffinity(0))
    bundle = ModelBundle.load(model)
    windows_per_stream_s = bundle.spec.sr / bundle.spec.hop
    ticks = int(duration * 10)
    expected = sum(len(bundle.spec.window_bounds((ticks - i % 5) * bundle.spec.sr // 10)) for i in range(streams))
    procs, ports, loadgen = [], [], None
    load_cmd = [sys.executable, "-m", "streamproc.cli", "loadgen", "-b", bootstrap, "--topic", topics["frames"],
                "--streams", str(streams), "--duration", str(duration), "--prefix", f"bench{tag}"]

    def load_done(proc) -> None:
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise RuntimeError(f"load generator failed: {err[-2000:]}")

    def sample(t0: float) -> tuple:
        return (time.monotonic() - t0, [_scrape(p, "audiostream_windows_analyzed_total") for p in ports],
                [_proc_cpu(p.pid) for p in procs])
    try:
        if backlog:  # every frame in the topic before any analyzer starts
            loadgen = subprocess.Popen(load_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            load_done(loadgen)
        for i in range(analyzers):
            port = _free_port()
            cmd = [sys.executable, "-m", "streamproc.cli", "analyze", "-b", bootstrap, "--model", model,
                   "--group-id", f"bench-{tag}", "--frames-topic", topics["frames"],
                   "--predictions-topic", topics["predictions"], "--features-topic", topics["features"],
                   "--deadletter-topic", topics["deadletter"], "--metrics-port", str(port), "--no-create-topics",
                   "--instance-id", f"bench-{tag}-{i}"]  # (a new group reads from the earliest offset)
            cpu = cpus[i % len(cpus)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}),
                                          env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}))
            ports.append(port)
        t0 = time.monotonic()
        samples = [sample(t0)] if backlog else []  # (t, [windows per analyzer], [cpu seconds per analyzer])
        deadline = time.monotonic() + 90
        # the load starts once every partition has an owner (each owner reports its lag per partition); a
        # backlog is counted from the analyzers' start (a small one may be gone before then)
        while not backlog and time.monotonic() < deadline and sum(
                _scrape_count(p, "audiostream_consumer_lag_records") for p in ports) < partitions:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("an analyzer exited before the load started")
            time.sleep(0.5)
        if backlog:
            while time.monotonic() - t0 < 600 and (len(samples) < 2 or sum(samples[-1][1]) < expected):
                time.sleep(0.5)
                samples.append(sample(t0))
                if progress:
                    progress(min(int(100 * sum(samples[-1][1]) / expected), 100), 100)
            within = [x for x in samples if 0.2 * expected <= sum(x[1]) <= 0.8 * expected]
            a, b = (within[0], within[-1]) if len(within) >= 2 else (samples[0], samples[-1])
        else:
            t0 = time.monotonic()
            loadgen = subprocess.Popen(load_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while loadgen.poll() is None:
                time.sleep(1.0)
                samples.append(sample(t0))
                if progress:
                    progress(min(int(samples[-1][0]), int(duration)), int(duration))
            load_done(loadgen)
            drain0 = time.monotonic()
            while time.monotonic() - drain0 < 60 and sum(_scrape(p, "audiostream_windows_analyzed_total")
                                                           for p in ports) < expected:
                time.sleep(0.5)
            drain_s = time.monotonic() - drain0
            a, b = samples[len(samples) // 2], samples[-1]
        windows = int(sum(_scrape(p, "audiostream_windows_analyzed_total") for p in ports))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
        if broker is not None:
            broker.stop()
    span = b[0] - a[0]
    busy = [(cb - ca) / span for ca, cb in zip(a[2], b[2])]
    got = [(wb - wa) for wa, wb in zip(a[1], b[1])]
    cpu_s = sum(cb - ca for ca, cb in zip(a[2], b[2]))
    return {
        "mode": "kafka-group", "streams": streams, "duration_s": duration, "partitions": partitions,
        "analyzers": analyzers, "analyzer_cpus": [cpus[i % len(cpus)] for i in range(analyzers)],
        "load": "backlog (produced before the analyzers started)" if backlog else "live",
        "loadgen_and_broker": "not pinned (share every core)", "windows": windows, "windows_expected": expected,
        "sustained": None if backlog else windows >= 0.98 * expected and drain_s < 5.0,
        "drain_seconds": None if backlog else round(drain_s, 2),
        "catch_up_seconds": round(samples[-1][0], 2) if backlog else None,
        "analyzer_cpu_busy": [round(x, 3) for x in busy],
        "windows_per_s": round(sum(got) / span, 1),
        "windows_per_s_by_analyzer": [round(g / span, 1) for g in got],
        "served_streams_per_core": round(sum(got) / windows_per_stream_s / cpu_s, 1) if cpu_s else None,
        "model": bundle.ref, "cpu": cpu_name(), "machine_load": os.getloadavg(),
    }


# -- CLI ------------------------------------------------------------------------------
def add_parser(sub):
    p = sub.add_parser("bench", help="streams per core: optimised engine vs naive librosa, or the whole analyzer "
                                     "through Kafka (--kafka)", description=__doc__)
    p.add_argument("--kafka", action="store_true", help="whole analyzer through a real broker")
    p.add_argument("--streams", type=int, default=None, help="concurrent streams (engine: 2000, kafka: 1000)")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="engine mode: seconds of audio per stream timed, after a warm-up that fills every stream's "
                        "tempo context (~9.5 s: the windows then do all the work they do for ever after)")
    p.add_argument("--duration", type=float, default=60.0, help="kafka mode: seconds of load")
    p.add_argument("--bootstrap-servers", "-b", default=None, help="kafka mode: use this cluster")
    p.add_argument("--exactly-once", action="store_true",
                   help="kafka mode: the analyzer with Kafka transactions (the cost of the stronger guarantee)")
    p.add_argument("--engine-seconds", type=float, default=8.0,
                   help="kafka mode: first measure the engine alone on the analyzer's CPU with the same streams "
                        "for this many seconds of audio, after the same warm-up as engine mode (kafka_vs_engine); "
                        "0 skips it")
    p.add_argument("--consumer-option", action="append", default=[], metavar="KEY=VALUE",
                   help="kafka mode: a librdkafka setting for the analyzer's consumer (e.g. fetch.min.bytes=65536)")
    p.add_argument("--producer-option", action="append", default=[], metavar="KEY=VALUE",
                   help="kafka mode: a librdkafka setting for the analyzer's producer (e.g. linger.ms=5)")
    p.add_argument("--frame-ms", type=int, default=100, choices=(20, 50, 100, 200, 250, 500),
                   help="engine and kafka modes: frame length the streams are sent in (fewer, larger records; the "
                        "edge adds a frame of latency)")
    p.add_argument("--max-batch", type=int, default=None, metavar="FRAMES",
                   help="kafka mode: the analyzer's --max-batch (frames per step; the latency / throughput trade)")
    p.add_argument("--analyzers", type=int, default=0,
                   help="kafka mode: N `audiostream analyze` processes in one consumer group, one per CPU (consumer-"
                        "group scaling: compare 1 and 2 back to back)")
    p.add_argument("--backlog", action="store_true",
                   help="kafka mode, --analyzers: produce --duration seconds of load first, then time the group "
                        "catching up (its scaling without the load generator beside it)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--model", action="append", default=None,
                   help=f"bundle (default {DEFAULT_MODEL}); give it twice to compare two models side by side")
    p.add_argument("--repeat", type=int, default=1, help="engine mode, two models: measure each N times, keep the best")
    p.add_argument("--hop-length", type=int, default=None,
                   help="engine mode: override the STFT hop (cost comparison; model scores not meaningful)")
    p.add_argument("--cpu", type=int, default=None, help="engine mode: CPU to pin to")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    # speech to text (consumers/bench_transcribe.py)
    p.add_argument("--transcribe", action="store_true",
                   help="speech to text: streams per core, segmented vs whole-file, and caption latency through "
                        "Kafka (--streams, default 10; --duration)")
    p.add_argument("--speech", default=None, metavar="FILE", help="--transcribe: this speech instead of espeak-ng's")
    p.add_argument("--speech-share", type=float, default=0.3, help="--transcribe: share of the time someone speaks")
    p.add_argument("--no-kafka", action="store_true", help="--transcribe: the one-core part only")
    p.add_argument("--partial-every", type=float, default=2.0, metavar="SECONDS",
                   help="--transcribe: the transcriber's --partial-every (0 = finals only)")
    from streamproc.transcribe import add_segmentation_arguments
    add_segmentation_arguments(p)  # --transcribe: --long-pause, --min-utterance (the latency / WER trade)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.transcribe:
        from .bench_transcribe import run as run_transcribe
        return run_transcribe(args)
    from streamproc.progress import Progress
    quiet = args.json
    models = args.model or [DEFAULT_MODEL]
    if len(models) > 2 or (len(models) > 1 and args.kafka):
        from streamproc.errors import AudiostreamError
        raise AudiostreamError("bench compares at most two --model values, in engine mode")
    if args.backlog and not (args.kafka and args.analyzers):
        from streamproc.errors import AudiostreamError
        raise AudiostreamError("--backlog times a consumer group catching up: give it with --kafka --analyzers N")
    if len(models) == 2:
        return _compare(args, models, quiet)
    args.model = models[0]
    if args.kafka and args.analyzers:
        streams = args.streams or 1000
        if args.backlog and not quiet:
            print(f"producing {args.duration:g} s of {streams} streams first (the load generator, real time)",
                  file=sys.stderr)
        bar = Progress(f"bench --kafka --analyzers {args.analyzers}: {streams} streams"
                       + (", % of the backlog predicted" if args.backlog else ""),
                       100 if args.backlog else int(args.duration), enabled=not quiet)
        result = group_bench(streams=streams, duration=args.duration, analyzers=args.analyzers,
                             bootstrap=args.bootstrap_servers, model=args.model, partitions=args.partitions,
                             backlog=args.backlog, progress=lambda d, t: bar.update(d))
        print(json.dumps(result) if args.json else "\n".join(f"{k:<28} {v}" for k, v in result.items()))
        return 0
    if args.kafka:
        streams = args.streams or 1000
        bar = Progress(f"bench --kafka: {streams} streams", int(args.duration), enabled=not quiet)
        result = kafka_bench(streams=streams, duration=args.duration, bootstrap=args.bootstrap_servers,
                             model=args.model, partitions=args.partitions, engine_seconds=args.engine_seconds,
                             exactly_once=args.exactly_once, consumer_options=_options(args.consumer_option),
                             producer_options=_options(args.producer_option), max_batch=args.max_batch,
                             frame_ms=args.frame_ms, progress=lambda d, t, lag: bar.update(d, f"lag {lag}"))
    else:
        streams = args.streams or 2000
        bar = Progress(f"bench: {streams} streams", int(args.seconds * 1000 / args.frame_ms), enabled=not quiet)
        result = engine_bench(streams=streams, seconds=args.seconds, model=args.model, hop_length=args.hop_length,
                              cpu=args.cpu, frame_ms=args.frame_ms, progress=lambda d, t: bar.update(d))
    if args.json:
        print(json.dumps(result))
        return 0
    print(format_table(result))
    return 0


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            from streamproc.errors import AudiostreamError
            raise AudiostreamError(f"expected KEY=VALUE (a librdkafka setting), got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _compare(args, models: list[str], quiet: bool) -> int:
    from streamproc.progress import Progress
    streams = args.streams or 2000
    best: dict[int, dict] = {}
    for rnd in range(max(1, args.repeat)):
        for i, m in enumerate(models):
            bar = Progress(f"bench: {m} ({rnd + 1}/{args.repeat}), {streams} streams", int(args.seconds * 10),
                           enabled=not quiet)
            r = engine_bench(streams=streams, seconds=args.seconds, model=m, hop_length=args.hop_length,
                             cpu=args.cpu, progress=lambda d, t: bar.update(d))
            if i not in best or r["streams_per_core"] > best[i]["streams_per_core"]:
                best[i] = r
    a, b = best[0], best[1]
    result = {"mode": "engine-compare", "runs": [a, b], "repeat": args.repeat,
              "ratio_streams_per_core": round(b["streams_per_core"] / a["streams_per_core"], 3)}
    if args.json:
        print(json.dumps(result))
        return 0
    ra, rb = table_rows(a), table_rows(b)
    rows = [(k, str(va).split(" (")[0], str(vb).split(" (")[0]) for (k, va), (_, vb) in zip(ra, rb)]
    wk, wa = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print("\n".join(f"{k:<{wk}}  {va:<{wa}}  |  {vb}" for k, va, vb in rows))
    print(f"streams per core, {b['model']} / {a['model']}: {result['ratio_streams_per_core']:.2f} "
          f"(same run, best of {args.repeat} each)")
    return 0


def format_table(r: dict) -> str:
    rows = table_rows(r)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def table_rows(r: dict) -> list[tuple[str, str]]:
    rows = [("machine", r["cpu"]), ("model", r["model"]), ("streams", r["streams"])]
    if r["mode"] == "engine":
        ws = r["window_spec"]
        rows += [("window spec", f"{ws['window_length']}/{ws['hop']} samples at {ws['sr']} Hz, "
                                 f"n_fft {ws['n_fft']}, hop_length {ws['hop_length']}"),
                 ("audio per stream", f"{r['audio_seconds_per_stream']:g} s (after warm-up)"),
                 ("CPU used (1 core)", f"{r['cpu_seconds']:.2f} s"),
                 ("streams per core, optimised", f"{r['streams_per_core']:.0f}"),
                 ("streams per core, naive librosa", f"{r['naive_streams_per_core']:.0f}"),
                 ("speed-up vs naive (same run)", f"{r['speedup_vs_naive']:.1f}x"),
                 ("window latency p50 / p99", f"{r['latency_p50_ms']} / {r['latency_p99_ms']} ms "
                                              "(its last frame filed -> scores computed, one batch per 100 ms tick)"),
                 ("state per stream", f"{r['bytes_per_stream'] / 1024:.0f} KiB")]
    else:
        rows += [("load", f"{r['streams']} real-time streams x 100 ms frames for {r['duration_s']:g} s, "
                          f"{r['partitions']} partitions"),
                 ("delivery", r.get("guarantee", "at-least-once")),
                 ("sustained", "yes" if r["sustained"] else "NO"),
                 ("lag trend (2nd half)", f"{r['lag_trend_records_per_s']:+.1f} records/s (max lag "
                                          f"{r['max_lag_records']}, drained in {r['drain_seconds']} s)"),
                 ("windows predicted", f"{r['windows']} of {r['windows_expected']}"),
                 ("analyzer core busy", f"{r['analyzer_cpu_busy']:.0%}" if r["analyzer_cpu_busy"] else "-"),
                 ("latency p50 / p99", f"{r['latency_p50_ms']} / {r['latency_p99_ms']} ms "
                                       "(last frame arrives -> prediction acknowledged)"),
                 ("  of which", f"analyzer p50 / p99 {r.get('latency_to_produce_p50_ms')} / "
                                f"{r.get('latency_to_produce_p99_ms')} ms, waiting for Kafka's acknowledgement "
                                f"{r.get('ack_wait_p50_ms')} / {r.get('ack_wait_p99_ms')} ms"),
                 ("capture -> acknowledged", f"{r.get('capture_to_ack_p50_ms')} / {r.get('capture_to_ack_p99_ms')} ms "
                                             "(adds the frames' way through Kafka to the analyzer)"),
                 ("streams per core", f"{r['streams_per_core'] or '-'} sustained, "
                                      f"{r.get('served_streams_per_core') or '-'} served (2nd half)")]
        if r.get("engine_streams_per_core"):
            rows += [("engine alone, same run", f"{r['engine_streams_per_core']:.0f} streams per core, window "
                                               f"latency p50 / p99 {r['engine_latency_p50_ms']} / "
                                               f"{r['engine_latency_p99_ms']} ms"),
                     ("Kafka vs engine", f"{r['kafka_vs_engine']} ({r['kafka_vs_engine_basis']})")]
        rows += [("state per stream", f"{r['bytes_per_stream'] / 1024:.0f} KiB")]
    return rows
