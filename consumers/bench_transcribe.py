"""``audiostream bench --transcribe``: speech-to-text capacity and caption latency, measured side by side.

1. **One core, no Kafka** (this process pinned to one CPU, Whisper on one thread): a speech stream with a
   stated speech share (default 30 %, espeak-ng sentences between silences, or ``--speech FILE``) is
   transcribed twice in the same run: (a) as the transcriber service does it (Silero VAD segmenter, one
   Whisper call per utterance) and (b) by the engine over the whole file (faster-whisper's own long-form
   decoding, which a live service cannot do). CPU seconds per audio second give real-time streams per core
   for both, and their ratio.
2. **Through Kafka** (``--streams N``, default 10, for ``--duration`` s): N real-time streams of the same
   audio, each starting at another point of it, from a producer process on another CPU; the transcriber
   service in this process pinned to one CPU. Latency from each utterance's end (its last sample's capture
   time) to its transcript acknowledged on the topic, p50/p99, and the service's CPU use.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
import uuid

import numpy as np

SR = 16000
SENTENCES = [  # Harvard sentences (IEEE 1969, public domain), as in docs/transcription.md
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
]


def espeak(text: str) -> np.ndarray:
    import io

    import soundfile as sf
    import soxr
    try:
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], check=True,
                             capture_output=True, timeout=60).stdout
    except FileNotFoundError:
        from streamproc.errors import ConfigError
        raise ConfigError("bench --transcribe makes its speech with espeak-ng (apt-get install espeak-ng), "
                          "or give --speech FILE") from None
    y, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(y, sr, SR).astype(np.float32)


def active_share(y: np.ndarray, threshold_dbfs: float = -45.0) -> float:
    """Share of 32 ms frames louder than ``threshold_dbfs``: the speech share of a clean recording."""
    n = y.size // 512
    frames = y[: n * 512].reshape(n, 512)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)) + 1e-12
    return float((20 * np.log10(rms) > threshold_dbfs).mean())


def speech_stream(seconds: float, share: float, seed: int = 0) -> np.ndarray:
    """Sentences separated by silences so that about ``share`` of ``seconds`` is speech (2.5 s+ pauses)."""
    rng = np.random.default_rng(seed)
    said = [espeak(s) for s in SENTENCES]
    parts, total, speech, i = [], 0, 0, 0
    while total < seconds * SR:
        s = said[i % len(said)]
        i += 1
        active = active_share(s) * s.size  # espeak's own pauses and edges are not speech
        speech += active
        gap = max(int(2.5 * SR), int((active / share - s.size) * rng.uniform(0.7, 1.3)))
        parts += [s, np.zeros(gap, np.float32)]
        total += s.size + gap
    return (np.round(np.concatenate(parts) * 32767) / 32768).astype(np.float32)


def engine_part(y: np.ndarray, asr) -> dict:
    """CPU seconds per audio second: the service's segmented path vs the engine's own whole-file decoding."""
    from streamproc.segmentation import Segmenter
    c0 = time.process_time()
    seg = Segmenter(asr.segmenter_config)
    utts = []
    for k in range(0, y.size, 1600):  # 100 ms frames, as the wire carries them
        utts += seg.push(y[k:k + 1600])
    utts += seg.flush("end")
    vad_cpu = time.process_time() - c0
    texts = [asr.transcribe(u.audio).text for u in utts]
    seg_cpu = time.process_time() - c0
    c1 = time.process_time()
    whole = asr.transcribe_file(y)
    whole_cpu = time.process_time() - c1
    audio_s = y.size / SR
    return {"audio_seconds": round(audio_s, 1), "utterances": len(utts),
            "utterance_seconds": round(sum(u.audio.size for u in utts) / SR, 1),
            "segmented_cpu_s": round(seg_cpu, 2), "vad_cpu_s": round(vad_cpu, 2), "whole_file_cpu_s": round(whole_cpu, 2),
            "segmented_streams_per_core": round(audio_s / seg_cpu, 1),
            "whole_file_streams_per_core": round(audio_s / whole_cpu, 1),
            "segmented_vs_whole_cost": round(seg_cpu / whole_cpu, 2),
            "words_segmented": sum(len(t.split()) for t in texts), "words_whole_file": len(whole.text.split())}


def _produce(bootstrap: str, topic: str, path: str, streams: int, duration: float, cpu: int, prefix: str) -> None:
    """Producer process: ``streams`` real-time replays of ``path``, each from another point of it."""
    os.sched_setaffinity(0, {cpu})
    from confluent_kafka import Producer

    import soundfile as sf
    from producers.file import replay
    from streamproc.audio import to_s16
    y, _ = sf.read(path, dtype="float32")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    stop = threading.Event()
    threads = []
    for i in range(streams):
        start = int(y.size * i / streams) // 1600 * 1600
        pcm = to_s16(np.concatenate([y[start:], y[:start]]))
        t = threading.Thread(target=replay, kwargs=dict(pcm=pcm, producer=producer, topic=topic,
                                                        stream_id=f"{prefix}-{i}", sr=SR, frame_samples=1600,
                                                        loop=True, stop=stop), daemon=True)
        t.start()
        threads.append(t)
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(30)
    producer.flush(30)


def kafka_part(y: np.ndarray, *, streams: int, duration: float, bootstrap: str | None, warmup_s: float = 10.0,
               progress=None) -> dict:
    import multiprocessing as mp

    import soundfile as sf
    from threadpoolctl import threadpool_limits

    from streamproc.config import kafka_config
    from streamproc.kafka import ensure_topics

    from .local_broker import load_local_kafka
    from .transcriber import TranscriberConfig, TranscriberService
    broker = None
    if bootstrap is None:
        broker = load_local_kafka().LocalKafka().start()
        bootstrap = broker.bootstrap_servers
    conf = kafka_config(bootstrap)
    tag = uuid.uuid4().hex[:6]
    topics = {k: f"bench.{tag}.{k}" for k in ("frames", "transcripts", "deadletter")}
    ensure_topics(conf, {t: 1 for t in topics.values()})
    cpus = sorted(os.sched_getaffinity(0))
    service_cpu, producer_cpu = cpus[0], cpus[-1]
    published = []
    cfg = TranscriberConfig(kafka=conf, frames_topic=topics["frames"], transcripts_topic=topics["transcripts"],
                            deadletter_topic=topics["deadletter"], group_id=f"bench-{tag}", metrics_port=None,
                            create_topics=False, record_latencies=1_000_000,
                            on_published=lambda rec: published.append((time.monotonic(), rec["reason"])))
    wav = tempfile.NamedTemporaryFile(suffix=".wav", delete=False)
    sf.write(wav.name, y, SR)
    proc = None
    try:
        os.sched_setaffinity(0, {service_cpu})
        with threadpool_limits(1):
            service = TranscriberService(cfg)
            th = service.run_in_background()
            deadline = time.monotonic() + 60
            while not (service.checkpoint and service.checkpoint.assigned) and not th.errors \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            t0, c0 = time.monotonic(), time.process_time()
            proc = mp.get_context("spawn").Process(target=_produce, args=(bootstrap, topics["frames"], wav.name,
                                                                          streams, duration, producer_cpu, tag))
            proc.start()
            cpu_marks = []
            while proc.is_alive() and not th.errors:
                time.sleep(1.0)
                cpu_marks.append((time.monotonic() - t0, time.process_time() - c0))
                if progress:
                    progress(min(int(time.monotonic() - t0), int(duration)), int(duration))
            drain0 = time.monotonic()
            while time.monotonic() - drain0 < 60 and not th.errors and (
                    not published or time.monotonic() - published[-1][0] < 5.0):
                time.sleep(0.5)  # until no transcript came for 5 s (streams ended: last utterances flushed)
            service.stop()
            th.join(60)
        if th.errors:
            raise th.errors[0]
        lat = [x for x in service.latencies if x is not None]
        steady = [(a, e) for (t, _), (a, e) in zip(published, lat) if t - t0 >= warmup_s]
        e2e = [e for _, e in steady if e is not None]
        svc = [a for a, _ in steady]
        busy = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(cpu_marks, cpu_marks[1:])][len(cpu_marks) // 3:]
        return {"streams": streams, "duration_s": duration, "transcripts": len(published),
                "transcripts_steady": len(steady),
                "service_cpu_busy": round(float(np.mean(busy)), 3) if busy else None,
                "e2e_p50_s": _pct(e2e, 50), "e2e_p99_s": _pct(e2e, 99), "e2e_max_s": _pct(e2e, 100),
                "service_p50_s": _pct(svc, 50), "service_p99_s": _pct(svc, 99)}
    finally:
        os.sched_setaffinity(0, set(cpus))
        if proc is not None and proc.is_alive():
            proc.kill()
        os.unlink(wav.name)
        if broker is not None:
            broker.stop()


def _pct(values, q):
    return round(float(np.percentile(values, q)), 3) if values else None


def bench_transcribe(*, streams: int = 10, duration: float = 60.0, share: float = 0.3, seconds: float = 120.0,
                     speech: str | None = None, bootstrap: str | None = None, kafka: bool = True,
                     progress=None) -> dict:
    from threadpoolctl import threadpool_limits

    from streamproc.audio import from_s16, load, to_s16
    from streamproc.transcription import Transcriber

    from .bench import cpu_name, pin_to_one_cpu
    y = from_s16(to_s16(load(speech, SR))) if speech else speech_stream(seconds, share)
    cpus = set(os.sched_getaffinity(0))
    try:
        cpu = pin_to_one_cpu(None)
        with threadpool_limits(1):
            asr = Transcriber.load("transcription", cpu_threads=1)
            asr.transcribe(y[:SR])  # first call: allocations, not the measurement
            out = {"mode": "transcribe", "cpu": cpu_name(), "pinned_cpu": cpu, "model": asr.model_id,
                   "speech_share": round(active_share(y), 3), "load_average": round(os.getloadavg()[0], 1),
                   "engine": engine_part(y, asr)}
    finally:
        os.sched_setaffinity(0, cpus)
    if kafka:
        out["kafka"] = kafka_part(y, streams=streams, duration=duration, bootstrap=bootstrap, progress=progress)
    return out


def format_table(r: dict) -> str:
    e = r["engine"]
    rows = [("machine", f"{r['cpu']} (load average {r['load_average']} at start)"),
            ("model", ", ".join(f"{k}={v}" for k, v in r["model"].items())),
            ("audio", f"{e['audio_seconds']} s, speech share {r['speech_share']:.0%} (32 ms frames above -45 dBFS); "
                      f"{e['utterances']} utterances, {e['utterance_seconds']} s"),
            ("one core, segmented (service)", f"{e['segmented_cpu_s']} CPU s (VAD {e['vad_cpu_s']}) -> "
                                              f"{e['segmented_streams_per_core']} real-time streams per core"),
            ("one core, whole file (engine)", f"{e['whole_file_cpu_s']} CPU s -> "
                                              f"{e['whole_file_streams_per_core']} real-time streams per core"),
            ("segmented / whole-file cost", f"{e['segmented_vs_whole_cost']}x (same run)")]
    k = r.get("kafka")
    if k:
        rows += [("through Kafka", f"{k['streams']} real-time streams for {k['duration_s']:g} s, "
                                   f"{k['transcripts']} transcripts ({k['transcripts_steady']} after warm-up)"),
                 ("transcriber core busy", f"{k['service_cpu_busy']:.0%}" if k["service_cpu_busy"] is not None
                  else "-"),
                 ("utterance end -> on topic", f"p50 {k['e2e_p50_s']} s, p99 {k['e2e_p99_s']} s, max "
                                               f"{k['e2e_max_s']} s (includes the 0.5 s hangover that ends it)"),
                 ("closing frame -> on topic", f"p50 {k['service_p50_s']} s, p99 {k['service_p99_s']} s")]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def run(args) -> int:
    import json

    from streamproc.progress import Progress
    bar = Progress(f"bench --transcribe: {args.streams or 10} streams", int(args.duration), enabled=not args.json)
    result = bench_transcribe(streams=args.streams or 10, duration=args.duration, share=args.speech_share,
                              speech=args.speech, bootstrap=args.bootstrap_servers, kafka=not args.no_kafka,
                              progress=lambda d, t: bar.update(d))
    print(json.dumps(result) if args.json else format_table(result))
    return 0

