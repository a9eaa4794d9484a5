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
   time) to its final transcript acknowledged on the topic, p50/p99, split into the segmenter's wait (from the
   utterance's end to the frame that closed it, stream time: the pause rule) and the service's part (that
   frame arriving -> the transcript acknowledged: queueing behind other streams' utterances and Whisper);
   partial transcripts published and skipped; the service's CPU use; the load average before and after.

The one-line summary (``summary`` in ``--json``) puts the figures side by side: caption latency at N streams
against the 2 s target, and real-time streams per core for the service's segmented path and the engine run
once per whole file (the baseline a live service cannot use: it has no text until the file ends).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time

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
    seg = Segmenter(asr.segmenter_config, captions=True)
    utts, closes, caps, cap_closes = [], [], [], []
    for k in range(0, y.size, 1600):  # 100 ms frames, as the wire carries them
        done = seg.push(y[k:k + 1600])
        utts += done
        closes += [min(k + 1600, y.size)] * len(done)  # the frame that closed it
        new = seg.take_captions()
        closed = {u.start_sample for u in done}
        new = [c for c in new if c.start_sample not in closed]  # closed by the same frame: the final covers it
        caps += new
        cap_closes += [min(k + 1600, y.size)] * len(new)
    done = seg.flush("end")
    utts += done
    closes += [y.size] * len(done)
    vad_cpu = time.process_time() - c0
    # as the service: each pause caption transcribed when its frame arrives; a final of exactly a caption's audio
    # reuses it (cost 0 here)
    records, cache = [], {}
    for c, close in zip(caps, cap_closes):
        r = asr.transcribe(c.audio)
        cache[(c.start_sample, c.end_sample)] = r
        records.append((close / SR, "pause", c.start_sample, c.end_sample / SR, r.cpu_seconds))
    texts, costs, reused = [], [], 0
    for u, close in zip(utts, closes):
        r = cache.get((u.start_sample, u.end_sample))
        reused += r is not None
        cost = 0.0 if r is not None else None
        if r is None:
            r = asr.transcribe(u.audio)
            cost = r.cpu_seconds
        texts.append(r.text)
        costs.append(cost)
        records.append((close / SR, "final", u.start_sample, u.end_sample / SR, cost))
    records.sort(key=lambda x: (x[0], x[1] != "final"))  # in one frame: finals first, as the service
    seg_cpu = time.process_time() - c0
    c1 = time.process_time()
    whole = asr.transcribe_file(y)
    whole_cpu = time.process_time() - c1
    audio_s = y.size / SR
    return {"audio_seconds": round(audio_s, 1), "utterances": len(utts),
            "utterance_seconds": round(sum(u.audio.size for u in utts) / SR, 1),
            "segmented_cpu_s": round(seg_cpu, 2), "vad_cpu_s": round(vad_cpu, 2),
            "whole_file_cpu_s": round(whole_cpu, 2),
            "segmented_streams_per_core": round(audio_s / seg_cpu, 1),
            "whole_file_streams_per_core": round(audio_s / whole_cpu, 1),
            "segmented_vs_whole_cost": round(seg_cpu / whole_cpu, 2),
            "words_segmented": sum(len(t.split()) for t in texts), "words_whole_file": len(whole.text.split()),
            "pause_captions": len(caps), "finals_reusing_caption": reused,
            "_utterances": [(u.end_sample / SR, c / SR, cost) for u, c, cost in zip(utts, closes, costs)],
            "_records": records, "_vad_rtf": vad_cpu / audio_s}


def one_core_replay(engine: dict, audio_s: float, *, streams: int, duration: float, warmup_s: float = 10.0) -> dict:
    """Caption latency on one uncontended core, replayed from this run's measured costs: ``streams`` real-time
    streams of the same audio, each from another point of it (as the Kafka part sends them); every record (a
    pause caption or a final) is due when the frame that triggered it in the measured run arrives and costs the
    CPU seconds its Whisper call took (0 for a final that reuses its caption); one recogniser serves them first
    come, first served (the service's one thread; within a frame finals first), slowed by the VAD of every
    stream (its measured share of the core). Final latency = the final done - its utterance's end. Caption
    latency, per speech segment (the stretch up to each pause caption's end and up to each final's end) = the
    first record of its utterance done whose end covers it - the segment's end; split into the pause rule
    (segment end -> the covering record's trigger) and the service (trigger -> done: queueing and Whisper). It
    does not depend on the machine's other load (CPU seconds), unlike the Kafka part; it leaves out periodic
    partials (skipped while the recogniser is busy over half the time) and Kafka's own delivery (milliseconds)."""
    vad_share = min(0.9, engine["_vad_rtf"] * streams)
    events = []  # (trigger, kind, utterance key, end, cost) in wall seconds from the start
    for i in range(streams):
        offset = (audio_s * i / streams) // 0.1 * 0.1  # where stream i starts in the audio (as _produce does)
        for loop in range(int(duration / audio_s) + 2):
            shift = loop * audio_s - offset
            for trigger, kind, start, end, cost in engine["_records"]:
                if 0 <= end + shift and trigger + shift <= duration:
                    events.append((trigger + shift, kind != "final", (i, loop, start), end + shift,
                                   cost / (1 - vad_share)))
    events.sort()
    free, lat, busy, done = 0.0, [], 0.0, []
    for trigger, is_caption, key, end, cost in events:
        start = max(trigger, free)
        free = start + cost
        busy += cost
        done.append((free, trigger, key, end))
        if not is_caption and end >= warmup_s:
            lat.append(free - end)
    # segments: every record's end; each covered by the earliest-done record of its utterance reaching it
    first: dict = {}
    for d, trigger, key, end in done:
        first.setdefault(key, []).append((d, trigger, end))
    cap, wait, svc = [], [], []
    for key, recs in first.items():
        for seg_end in sorted({r[2] for r in recs}):  # a final of its caption's audio ends no new segment
            if seg_end < warmup_s:
                continue
            d, trigger, _ = min((r for r in recs if r[2] >= seg_end), key=lambda r: r[0])
            cap.append(d - seg_end)
            wait.append(trigger - seg_end)
            svc.append(d - trigger)
    return {"streams": streams, "duration_s": duration, "finals": len(lat),
            "core_busy": round(busy / max(duration, free), 3), "vad_share": round(vad_share, 3),
            "e2e_p50_s": _pct(lat, 50), "e2e_p99_s": _pct(lat, 99), "e2e_max_s": _pct(lat, 100),
            "segmenter_wait_p50_s": _pct([c - e for e, c, _ in engine["_utterances"]], 50),
            "caption_segments": len(cap), "caption_p50_s": _pct(cap, 50), "caption_p99_s": _pct(cap, 99),
            "caption_max_s": _pct(cap, 100), "caption_pause_rule_p50_s": _pct(wait, 50),
            "caption_pause_rule_p99_s": _pct(wait, 99), "caption_service_p50_s": _pct(svc, 50),
            "caption_service_p99_s": _pct(svc, 99)}


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
               progress=None, partial_every: float = 2.0, segmentation: dict | None = None) -> dict:
    import multiprocessing as mp

    import soundfile as sf
    from threadpoolctl import threadpool_limits

    from .bench import bench_broker
    from .transcriber import TranscriberConfig, TranscriberService
    broker, conf, topics, tag = bench_broker(bootstrap, ("frames", "transcripts", "deadletter"), 1)
    bootstrap = conf["bootstrap.servers"]  # the local broker's when none was given (the producers get it)
    cpus = sorted(os.sched_getaffinity(0))
    service_cpu, producer_cpu = cpus[0], cpus[-1]
    published = []
    cfg = TranscriberConfig(kafka=conf, frames_topic=topics["frames"], transcripts_topic=topics["transcripts"],
                            deadletter_topic=topics["deadletter"], group_id=f"bench-{tag}", metrics_port=None,
                            create_topics=False, record_latencies=1_000_000, partial_every_s=partial_every,
                            segmentation=dict(segmentation or {}),
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
        steady = [x for (t, _), x in zip(published, lat) if t - t0 >= warmup_s]
        e2e = [x[1] for x in steady if x[1] is not None]
        svc = [x[0] for x in steady]
        wait = [x[2] for x in steady if x[2] is not None]
        # closing frame captured -> read by the service: transport, and the service busy with other utterances
        unread = [max(0.0, x[1] - x[2] - x[0]) for x in steady if x[1] is not None and x[2] is not None]
        caps = [x for x in service.caption_latencies if x[4] - t0 >= warmup_s]
        cap_e2e = [x[1] for x in caps]
        cap_wait = [x[2] for x in caps if x[2] is not None]
        cap_svc = [x[3] for x in caps]
        cap_unread = [max(0.0, x[1] - x[2] - x[3]) for x in caps if x[2] is not None]
        cap_by = {}
        for x in caps:
            cap_by[x[0]] = cap_by.get(x[0], 0) + 1
        reasons = {}
        for x in steady:
            reasons[x[3]] = reasons.get(x[3], 0) + 1
        busy = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(cpu_marks, cpu_marks[1:])][len(cpu_marks) // 3:]
        get = service.metrics.registry.get_sample_value
        model = {"model": service.metrics.model}
        # utterances the streams held in the measured time, for "did it keep up": every stream loops the audio
        expected = engine_utterances_per_s(y, service.asr) * streams * duration if streams else None
        return {"streams": streams, "duration_s": duration, "transcripts": len(published),
                "transcripts_steady": len(steady), "final_reasons": reasons,
                "utterances_expected": round(expected) if expected else None,
                "service_cpu_busy": round(float(np.mean(busy)), 3) if busy else None,
                "e2e_p50_s": _pct(e2e, 50), "e2e_p99_s": _pct(e2e, 99), "e2e_max_s": _pct(e2e, 100),
                "segmenter_wait_p50_s": _pct(wait, 50), "segmenter_wait_p99_s": _pct(wait, 99),
                "unread_p50_s": _pct(unread, 50), "unread_p99_s": _pct(unread, 99),
                "service_p50_s": _pct(svc, 50), "service_p99_s": _pct(svc, 99),
                "caption_segments": len(caps), "caption_covered_by": cap_by,
                "caption_p50_s": _pct(cap_e2e, 50), "caption_p99_s": _pct(cap_e2e, 99),
                "caption_max_s": _pct(cap_e2e, 100),
                "caption_pause_rule_p50_s": _pct(cap_wait, 50), "caption_pause_rule_p99_s": _pct(cap_wait, 99),
                "caption_unread_p50_s": _pct(cap_unread, 50), "caption_unread_p99_s": _pct(cap_unread, 99),
                "caption_service_p50_s": _pct(cap_svc, 50), "caption_service_p99_s": _pct(cap_svc, 99),
                "pause_captions_reused": int(get("audiostream_pause_captions_reused_total", model) or 0),
                "pause_captions_skipped_lag": int(get("audiostream_partial_transcripts_skipped_total",
                                                      {"reason": "pause_lag"}) or 0),
                "partial_every_s": partial_every,
                "partials_published": int(get("audiostream_partial_transcripts_total", model) or 0),
                "partials_skipped_lag": int(get("audiostream_partial_transcripts_skipped_total",
                                                {"reason": "lag"}) or 0),
                "partials_skipped_busy": int(get("audiostream_partial_transcripts_skipped_total",
                                                 {"reason": "busy"}) or 0),
                "partial_cpu_s": round(get("audiostream_partial_transcription_cpu_seconds_total", model) or 0, 2),
                # Whisper's CPU per final in this phase, against the engine part's: contention on the core shows
                "cpu_per_final_s": round(((get("audiostream_transcription_cpu_seconds_total", model) or 0)
                                          - (get("audiostream_partial_transcription_cpu_seconds_total", model) or 0))
                                         / max(1, sum(get("audiostream_utterances_transcribed_total",
                                                          {**model, "reason": r}) or 0
                                                      for r in ("silence", "max_length", "end", "idle", "gap"))), 3),
                # wall seconds of the service's recent Whisper calls (up to 256): above cpu_per_final_s = the core
                # was not the service's alone while it transcribed
                "wall_per_call_s": round(float(np.mean([w for _, w in service._calls])), 3) if service._calls
                else None,
                "load_average_end": round(os.getloadavg()[0], 1)}
    finally:
        os.sched_setaffinity(0, set(cpus))
        if proc is not None and proc.is_alive():
            proc.kill()
        os.unlink(wav.name)
        if broker is not None:
            broker.stop()


_UTT_RATE: dict = {}


def engine_utterances_per_s(y: np.ndarray, asr) -> float:
    """Utterances per second of audio the service's segmenter cuts from ``y`` (cached per signal)."""
    key = (id(y), y.size)
    if key not in _UTT_RATE:
        from streamproc.segmentation import segment
        _UTT_RATE[key] = len(segment(y, asr.segmenter_config, chunk=1600)) / (y.size / SR)
    return _UTT_RATE[key]


def _pct(values, q):
    return round(float(np.percentile(values, q)), 3) if values else None


def bench_transcribe(*, streams: int = 10, duration: float = 60.0, share: float = 0.3, seconds: float = 120.0,
                     speech: str | None = None, bootstrap: str | None = None, kafka: bool = True,
                     progress=None, partial_every: float = 2.0, segmentation: dict | None = None) -> dict:
    from threadpoolctl import threadpool_limits

    from streamproc.audio import from_s16, load, to_s16
    from streamproc.transcription import Transcriber

    from .bench import cpu_name, pin_to_one_cpu
    y = from_s16(to_s16(load(speech, SR))) if speech else speech_stream(seconds, share)
    cpus = set(os.sched_getaffinity(0))
    try:
        cpu = pin_to_one_cpu(None)
        with threadpool_limits(1):
            asr = Transcriber.load("transcription", cpu_threads=1, segmentation=segmentation)
            asr.transcribe(y[:SR])  # first call: allocations, not the measurement
            out = {"mode": "transcribe", "cpu": cpu_name(), "pinned_cpu": cpu, "model": asr.model_id,
                   "segmentation": {k: getattr(asr.segmenter_config, k)
                                    for k in ("hangover_s", "min_utterance_s", "long_pause_s", "max_utterance_s")},
                   "speech_share": round(active_share(y), 3), "load_average": round(os.getloadavg()[0], 1),
                   "engine": engine_part(y, asr)}
            engine_utterances_per_s(y, asr)
            if segmentation:  # the bundle's own settings too, replayed side by side: the trade in one run
                from streamproc.segmentation import SegmenterConfig
                given = asr.segmenter_config
                asr.segmenter_config = SegmenterConfig.from_dict(asr.meta.get("segmentation"))
                bundle = engine_part(y, asr)
                asr.segmenter_config = given
                out["one_core_replay_bundle_settings"] = one_core_replay(bundle, y.size / SR, streams=streams,
                                                                         duration=duration)
    finally:
        os.sched_setaffinity(0, cpus)
    out["one_core_replay"] = one_core_replay(out["engine"], y.size / SR, streams=streams, duration=duration)
    for key in [k for k in out["engine"] if k.startswith("_")]:
        del out["engine"][key]
    if kafka:
        out["kafka"] = kafka_part(y, streams=streams, duration=duration, bootstrap=bootstrap, progress=progress,
                                  partial_every=partial_every, segmentation=segmentation)
    out["summary"] = summary(out)
    return out


def summary(r: dict, target_s: float = 2.0) -> dict:
    """The figures a reader compares, in one flat object."""
    e, k, o = r["engine"], r.get("kafka") or {}, r["one_core_replay"]
    out = {"streams": o["streams"], "speech_share": r["speech_share"], "segmentation": r["segmentation"],
           "load_average_start": r["load_average"], "load_average_end": k.get("load_average_end"),
           "final_latency_p50_s": k.get("e2e_p50_s"), "final_latency_p99_s": k.get("e2e_p99_s"),
           "target_s": target_s,
           "target_met": (k["e2e_p99_s"] <= target_s) if k.get("e2e_p99_s") is not None else None,
           "finals_expected": k.get("utterances_expected"),
           "caption_latency_p50_s": k.get("caption_p50_s"), "caption_latency_p99_s": k.get("caption_p99_s"),
           "caption_target_met": (k["caption_p99_s"] <= target_s) if k.get("caption_p99_s") is not None else None,
           "caption_of_which_pause_rule_p50_s": k.get("caption_pause_rule_p50_s"),
           "caption_of_which_unread_p50_s": k.get("caption_unread_p50_s"),
           "caption_of_which_service_p50_s": k.get("caption_service_p50_s"),
           "caption_of_which_service_p99_s": k.get("caption_service_p99_s"),
           "one_core_replay_caption_p50_s": o["caption_p50_s"], "one_core_replay_caption_p99_s": o["caption_p99_s"],
           "one_core_replay_caption_target_met": (o["caption_p99_s"] <= target_s) if o["caption_p99_s"] is not None
           else None,
           "one_core_replay_caption_pause_rule_p50_s": o["caption_pause_rule_p50_s"],
           "one_core_replay_caption_service_p50_s": o["caption_service_p50_s"],
           "one_core_replay_caption_service_p99_s": o["caption_service_p99_s"],
           "pause_captions_per_final": round(e["pause_captions"] / max(1, e["utterances"]), 2),
           "one_core_replay_p50_s": o["e2e_p50_s"], "one_core_replay_p99_s": o["e2e_p99_s"],
           "one_core_replay_target_met": (o["e2e_p99_s"] <= target_s) if o["e2e_p99_s"] is not None else None,
           "one_core_replay_core_busy": o["core_busy"],
           "one_core_replay_bundle_settings_p50_s": r.get("one_core_replay_bundle_settings", {}).get("e2e_p50_s"),
           "one_core_replay_bundle_settings_p99_s": r.get("one_core_replay_bundle_settings", {}).get("e2e_p99_s"),
           "one_core_replay_bundle_settings_caption_p50_s": r.get("one_core_replay_bundle_settings", {}).get(
               "caption_p50_s"),
           "one_core_replay_bundle_settings_caption_p99_s": r.get("one_core_replay_bundle_settings", {}).get(
               "caption_p99_s"),
           "of_which_segmenter_wait_p50_s": k.get("segmenter_wait_p50_s"),
           "of_which_unread_p50_s": k.get("unread_p50_s"),
           "of_which_service_p50_s": k.get("service_p50_s"), "of_which_service_p99_s": k.get("service_p99_s"),
           "finals": k.get("transcripts_steady"), "transcriber_core_busy": k.get("service_cpu_busy"),
           "whisper_cpu_per_final_s_kafka": k.get("cpu_per_final_s"), "whisper_wall_per_call_s_kafka":
               k.get("wall_per_call_s"),
           "whisper_cpu_per_final_s_engine": round(e["segmented_cpu_s"] / max(1, e["utterances"]), 3),
           "partials_published": k.get("partials_published"),
           "partials_skipped": (k["partials_skipped_lag"] + k["partials_skipped_busy"]) if k else None,
           "streams_per_core_segmented": e["segmented_streams_per_core"],
           "streams_per_core_whole_file": e["whole_file_streams_per_core"],
           "segmented_vs_whole_file_cost": e["segmented_vs_whole_cost"]}
    return out


def format_table(r: dict) -> str:
    e = r["engine"]
    rows = [("machine", f"{r['cpu']} (load average {r['load_average']} at start)"),
            ("model", ", ".join(f"{k}={v}" for k, v in r["model"].items())),
            ("segmentation", ", ".join(f"{k}={v:g}" for k, v in r["segmentation"].items())),
            ("audio", f"{e['audio_seconds']} s, speech share {r['speech_share']:.0%} (32 ms frames above -45 dBFS); "
                      f"{e['utterances']} utterances, {e['utterance_seconds']} s"),
            ("one core, segmented (service)", f"{e['segmented_cpu_s']} CPU s (VAD {e['vad_cpu_s']}) -> "
                                              f"{e['segmented_streams_per_core']} real-time streams per core"),
            ("one core, whole file (engine)", f"{e['whole_file_cpu_s']} CPU s -> "
                                              f"{e['whole_file_streams_per_core']} real-time streams per core"),
            ("segmented / whole-file cost", f"{e['segmented_vs_whole_cost']}x (same run)")]
    o = r["one_core_replay"]
    rows += [("one core, replayed", f"{o['streams']} streams, {o['finals']} finals: utterance end -> final p50 "
                                    f"{o['e2e_p50_s']} s, p99 {o['e2e_p99_s']} s; core busy {o['core_busy']:.0%} "
                                    f"(this run's CPU per utterance, first come first served; no other load)"),
             ("  captions (replayed)", f"{o['caption_segments']} speech segments: segment end -> first record "
                                       f"covering it p50 {o['caption_p50_s']} s, p99 {o['caption_p99_s']} s; pause "
                                       f"rule p50 {o['caption_pause_rule_p50_s']} s, service p50/p99 "
                                       f"{o['caption_service_p50_s']}/{o['caption_service_p99_s']} s; "
                                       f"{e['pause_captions']} pause captions, {e['finals_reusing_caption']} finals "
                                       f"reuse theirs")]
    b = r.get("one_core_replay_bundle_settings")
    if b:
        rows += [("  ... bundle's segmentation", f"p50 {b['e2e_p50_s']} s, p99 {b['e2e_p99_s']} s (pause rule p50 "
                                                 f"{b['segmenter_wait_p50_s']} s vs {o['segmenter_wait_p50_s']} s); "
                                                 f"captions p50 {b['caption_p50_s']} s, p99 {b['caption_p99_s']} s")]
    k = r.get("kafka")
    if k:
        rows += [("through Kafka", f"{k['streams']} real-time streams for {k['duration_s']:g} s, "
                                   f"{k['transcripts']} transcripts ({k['transcripts_steady']} after warm-up)"),
                 ("transcriber core busy", f"{k['service_cpu_busy']:.0%}" if k["service_cpu_busy"] is not None
                  else "-"),
                 ("utterance end -> final on topic", f"p50 {k['e2e_p50_s']} s, p99 {k['e2e_p99_s']} s, max "
                                                     f"{k['e2e_max_s']} s (target: 2 s)"),
                 ("  of which: pause rule", f"p50 {k['segmenter_wait_p50_s']} s, p99 {k['segmenter_wait_p99_s']} s "
                                            f"(utterance end -> the frame that closed it; finals by reason: "
                                            f"{k['final_reasons']})"),
                 ("  of which: unread", f"p50 {k['unread_p50_s']} s, p99 {k['unread_p99_s']} s (closing frame "
                                        f"captured -> read: transport, the service busy with other utterances)"),
                 ("  of which: service", f"p50 {k['service_p50_s']} s, p99 {k['service_p99_s']} s (closing frame "
                                         f"read -> final on topic: finals before it in the batch + Whisper)"),
                 ("segment end -> caption on topic", f"p50 {k['caption_p50_s']} s, p99 {k['caption_p99_s']} s, max "
                                                     f"{k['caption_max_s']} s over {k['caption_segments']} speech "
                                                     f"segments (first record covering each: "
                                                     f"{k['caption_covered_by']})"),
                 ("  of which: pause rule", f"p50 {k['caption_pause_rule_p50_s']} s, p99 "
                                            f"{k['caption_pause_rule_p99_s']} s"),
                 ("  of which: unread", f"p50 {k['caption_unread_p50_s']} s, p99 {k['caption_unread_p99_s']} s"),
                 ("  of which: service", f"p50 {k['caption_service_p50_s']} s, p99 {k['caption_service_p99_s']} s "
                                         f"({k['pause_captions_reused']} finals reused their pause caption, "
                                         f"{k['pause_captions_skipped_lag']} pause captions skipped (lag))"),
                 ("partials", f"{k['partials_published']} published, {k['partials_skipped_lag']} skipped (lag), "
                              f"{k['partials_skipped_busy']} skipped (busy), "
                              f"{k['partial_cpu_s']} CPU s (every {k['partial_every_s']:g} s of speech)"),
                 ("load average after", f"{k['load_average_end']}")]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def run(args) -> int:
    import json

    from streamproc.progress import Progress
    bar = Progress(f"bench --transcribe: {args.streams or 10} streams", int(args.duration), enabled=not args.json)
    from streamproc.transcribe import segmentation_overrides
    result = bench_transcribe(streams=args.streams or 10, duration=args.duration, share=args.speech_share,
                              speech=args.speech, bootstrap=args.bootstrap_servers, kafka=not args.no_kafka,
                              progress=lambda d, t: bar.update(d), partial_every=args.partial_every,
                              segmentation=segmentation_overrides(args))
    print(json.dumps(result) if args.json else format_table(result))
    return 0

