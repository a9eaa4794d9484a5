"""The analyzer's Prometheus metrics (catalog: docs/metrics.md).

Names follow DESIGN.md: ``audiostream_`` prefix, base units, counters end in
``_total``; labels are bounded (topic, model, label, reason). A stream id is
never a label: per-stream detail goes to the ``audio.features`` topic.
"""
from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

import streamproc

# Every reason the analyzer can dead-letter or drop a frame for (pre-initialised at 0).
DEADLETTER_REASONS = ("empty", "too_short", "bad_magic", "unsupported_version", "bad_header",
                      "unsupported_encoding", "bad_channels", "bad_sample_rate", "length_mismatch",
                      "checksum_mismatch", "oversized", "too_long", "non_finite", "bad_stream_id", "sample_rate_mismatch")
SEQUENCE_EVENTS = ("duplicate", "late", "gap", "resync", "new_session", "producer_gap", "reordered")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def observe_many(histogram: Histogram, values) -> None:
    """``histogram.observe(v)`` for each of ``values`` (a numpy array), with one bucket search for all of them:
    the analyzer times thousands of windows a second, and an observation each cost ~1.5 us. The counts go where
    ``Histogram.observe`` puts them (a bucket per upper bound, non-cumulative, and the sum); a
    prometheus-client without those attributes gets the observations one by one."""
    if not len(values):
        return
    bounds, buckets, total = (getattr(histogram, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values.tolist():
            histogram.observe(v)
        return
    index, counts = np.unique(np.searchsorted(bounds, values, side="left"), return_counts=True)  # first bound >= v
    for i, n in zip(index.tolist(), counts.tolist()):
        if i < len(buckets):  # (a NaN sorts past +Inf: observe() counts it in no bucket either)
            buckets[i].inc(n)
    total.inc(float(values.sum()))


class AnalyzerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, model_task: str = "", model_version: str = "",
                 labels=(), frames_topic: str = "audio.frames", output_topics=()):
        r = self.registry = registry or CollectorRegistry()
        self.frames = Counter("audiostream_frames_consumed_total", "Frame records consumed", ["topic"], registry=r)
        self.frame_bytes = Counter("audiostream_frames_consumed_bytes_total", "Bytes of frame records consumed",
                                   ["topic"], registry=r)
        self.audio_seconds = Counter("audiostream_audio_consumed_seconds_total",
                                     "Seconds of audio accepted into stream buffers", registry=r)
        self.deadletter = Counter("audiostream_deadletter_frames_total",
                                  "Frames sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.sequence = Counter("audiostream_stream_sequence_events_total",
                                "Stream sequence anomalies: duplicate frames dropped, gaps, resyncs, new sessions",
                                ["event"], registry=r)
        self.gap_seconds = Counter("audiostream_stream_gap_seconds_total", "Seconds of audio missing in gaps",
                                   registry=r)
        self.windows = Counter("audiostream_windows_analyzed_total", "Windows featurised and inferred", ["model"],
                               registry=r)
        self.predictions = Counter("audiostream_predictions_total", "Predictions published, by label",
                                   ["model", "label"], registry=r)
        self.invalid_outputs = Counter("audiostream_model_invalid_outputs_total",
                                       "Windows whose model scores were NaN/Inf (not published)", ["model"], registry=r)
        self.delivery_errors = Counter("audiostream_output_delivery_errors_total",
                                       "Output records Kafka did not acknowledge", ["topic"], registry=r)
        self.active_streams = Gauge("audiostream_active_streams", "Streams with state in this analyzer", registry=r)
        self.state_bytes = Gauge("audiostream_stream_state_bytes", "Bytes held in per-stream buffers", registry=r)
        self.window_latency = Histogram(
            "audiostream_window_processing_seconds",
            "From a window's last frame arriving at the analyzer to its prediction acknowledged by Kafka",
            registry=r, buckets=LATENCY_BUCKETS)
        self.e2e_latency = Histogram(
            "audiostream_end_to_end_latency_seconds",
            "From capture of a window's last frame (producer clock) to its prediction acknowledged by Kafka",
            registry=r, buckets=LATENCY_BUCKETS + (30.0, 60.0))
        self.feature_seconds = Histogram("audiostream_feature_batch_seconds", "Feature extraction time per batch",
                                         registry=r, buckets=LATENCY_BUCKETS)
        self.inference_seconds = Histogram("audiostream_inference_batch_seconds", "ONNX inference time per batch",
                                           ["model"], registry=r, buckets=LATENCY_BUCKETS)
        self.batch_windows = Histogram("audiostream_inference_batch_windows", "Windows per inference batch",
                                       registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.model_info = Gauge("audiostream_model_info", "The model bundle being served", ["task", "version"],
                                registry=r)
        self.build = Info("audiostream_build", "audiostream build", registry=r)
        self.lag = Gauge("audiostream_consumer_lag_records",
                         "Frame records behind the partition's high watermark (per assigned partition)",
                         ["topic", "partition"], registry=r)
        self.up = Gauge("audiostream_analyzer_ready", "1 while the analyzer is consuming", registry=r)
        self.kafka_up = Gauge("audiostream_kafka_available",
                              "1 while the analyzer reaches the Kafka cluster, 0 during an outage", registry=r)
        self.replayed = Counter("audiostream_windows_replayed_total",
                                "Windows rebuilt after a restart or rebalance whose outputs were already published "
                                "(not published again)", registry=r)
        self.commits = Counter("audiostream_offset_commits_total", "Offset commits, by outcome", ["outcome"],
                               registry=r)
        self.partitions_lost = Counter("audiostream_partitions_lost_total",
                                       "Partitions taken away without a clean hand-over (e.g. max.poll.interval.ms "
                                       "passed); never committed by us", registry=r)
        self.gap_events = Counter("audiostream_gap_markers_total",
                                  "Gap markers published to the features topic", registry=r)
        self.rewinds = Counter("audiostream_transaction_rewinds_total",
                               "Exactly-once: transactions aborted on an abortable error, their partitions re-read "
                               "from the last commit and their streams rebuilt", registry=r)
        self.producer_replacements = Counter(
            "audiostream_transactional_producer_replacements_total",
            "Exactly-once: producers replaced by a new one with the same transactional.id because a transaction "
            "could not be aborted (the new one fences the old and aborts its transaction)", registry=r)
        self.stream_moves = Counter("audiostream_stream_moves_total",
                                    "Streams continued on a partition without their earlier frames (partitions "
                                    "added, or first seen mid-session): state restarted, first window flagged",
                                    registry=r)
        for outcome in ("ok", "failed", "aborted"):
            self.commits.labels(outcome)

        model = f"{model_task}:{model_version}"
        self.model = model
        self.frames.labels(frames_topic)
        self.frame_bytes.labels(frames_topic)
        for reason in DEADLETTER_REASONS:
            self.deadletter.labels(reason)
        for event in SEQUENCE_EVENTS:
            self.sequence.labels(event)
        self.windows.labels(model)
        self.invalid_outputs.labels(model)
        self.inference_seconds.labels(model)
        for label in labels:
            self.predictions.labels(model, label)
        for topic in output_topics:
            self.delivery_errors.labels(topic)
        self.model_info.labels(model_task, model_version).set(1)
        self.build.info({"version": streamproc.__version__})


# -- the transcriber service (consumers/transcriber.py) ------------------------------------------------------------
# Its own registry and /metrics port. Input-side, delivery and health metrics share the analyzer's names (one alert
# rule covers both services; the scrape job tells them apart); what is about speech has names of its own.

UTTERANCE_REASONS = ("silence", "max_length", "end", "idle", "gap")
TRANSCRIPT_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


PARTIAL_SKIP_REASONS = ("lag", "busy", "no_text", "pause_lag")


class TranscriberMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, model: str = "",
                 frames_topic: str = "audio.frames", output_topics=()):
        r = self.registry = registry or CollectorRegistry()
        self.model = model
        self.frames = Counter("audiostream_frames_consumed_total", "Frame records consumed", ["topic"], registry=r)
        self.audio_seconds = Counter("audiostream_audio_consumed_seconds_total",
                                     "Seconds of audio accepted into stream segmenters", registry=r)
        self.deadletter = Counter("audiostream_deadletter_frames_total",
                                  "Frames sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.sequence = Counter("audiostream_stream_sequence_events_total",
                                "Stream sequence anomalies: duplicate frames dropped, gaps, resyncs, new sessions",
                                ["event"], registry=r)
        self.gap_seconds = Counter("audiostream_stream_gap_seconds_total", "Seconds of audio missing in gaps",
                                   registry=r)
        self.delivery_errors = Counter("audiostream_output_delivery_errors_total",
                                       "Output records Kafka did not acknowledge", ["topic"], registry=r)
        self.active_streams = Gauge("audiostream_active_streams", "Streams with state in this transcriber",
                                    registry=r)
        self.lag = Gauge("audiostream_consumer_lag_records",
                         "Frame records behind the partition's high watermark (per assigned partition)",
                         ["topic", "partition"], registry=r)
        self.kafka_up = Gauge("audiostream_kafka_available",
                              "1 while the service reaches the Kafka cluster, 0 during an outage", registry=r)
        self.commits = Counter("audiostream_offset_commits_total", "Offset commits, by outcome", ["outcome"],
                               registry=r)
        self.up = Gauge("audiostream_transcriber_ready", "1 while the transcriber is consuming", registry=r)
        self.utterances = Counter("audiostream_utterances_transcribed_total",
                                  "Utterances cut and run through the speech recogniser, by why they ended",
                                  ["model", "reason"], registry=r)
        self.transcripts = Counter("audiostream_transcripts_total", "Transcript records acknowledged by Kafka",
                                   ["model"], registry=r)
        self.empty = Counter("audiostream_utterances_without_text_total",
                             "Utterances in which the recogniser heard no words (no record published)", ["model"],
                             registry=r)
        self.audio_transcribed = Counter("audiostream_transcribed_audio_seconds_total",
                                         "Seconds of utterance audio run through the speech recogniser", ["model"],
                                         registry=r)
        self.engine_seconds = Counter("audiostream_transcription_cpu_seconds_total",
                                      "CPU seconds the speech recogniser spent (rate = cores busy transcribing)",
                                      ["model"], registry=r)
        self.real_time_factor = Histogram("audiostream_transcription_real_time_factor",
                                          "Per utterance: recogniser CPU seconds / utterance audio seconds",
                                          ["model"], registry=r, buckets=RTF_BUCKETS)
        self.latency = Histogram("audiostream_transcript_latency_seconds",
                                 "From the record that ended an utterance arriving to its transcript acknowledged "
                                 "by Kafka", registry=r, buckets=TRANSCRIPT_LATENCY_BUCKETS)
        self.e2e_latency = Histogram("audiostream_transcript_end_to_end_latency_seconds",
                                     "From an utterance's last sample (producer's capture clock) to its transcript "
                                     "acknowledged by Kafka", registry=r, buckets=TRANSCRIPT_LATENCY_BUCKETS)
        self.caption_latency = Histogram("audiostream_caption_latency_seconds",
                                         "From the end of a stretch of speech (producer's capture clock) to the first "
                                         "transcript record showing it acknowledged by Kafka: a pause caption, a "
                                         "periodic partial or the final, whichever came first", registry=r,
                                         buckets=TRANSCRIPT_LATENCY_BUCKETS)
        self.replayed = Counter("audiostream_utterances_replayed_total",
                                "Utterances rebuilt after a restart or rebalance whose transcripts were already "
                                "published (not published again)", registry=r)
        self.partials = Counter("audiostream_partial_transcripts_total",
                                "Partial transcript records (final: false, an utterance still open) acknowledged by "
                                "Kafka", ["model"], registry=r)
        self.partials_skipped = Counter("audiostream_partial_transcripts_skipped_total",
                                        "Partial transcripts due but not published, by reason (lag: the service was "
                                        "behind its input; busy: the recogniser had no spare time; no_text: it "
                                        "heard no words yet; pause_lag: a pause caption skipped, the service "
                                        "behind its input)", ["reason"],
                                        registry=r)
        self.partial_cpu = Counter("audiostream_partial_transcription_cpu_seconds_total",
                                   "CPU seconds the speech recogniser spent on partial transcripts (included in "
                                   "audiostream_transcription_cpu_seconds_total)", ["model"], registry=r)
        self.caption_reused = Counter("audiostream_pause_captions_reused_total",
                                      "Final transcripts whose audio was exactly their pause caption's: its text "
                                      "reused, no second Whisper call", ["model"], registry=r)
        self.build = Info("audiostream_build", "audiostream build", registry=r)
        self.build.info({"version": streamproc.__version__})
        self.frames.labels(frames_topic)
        for reason in PARTIAL_SKIP_REASONS:
            self.partials_skipped.labels(reason)
        self.partials.labels(model)
        self.partial_cpu.labels(model)
        self.caption_reused.labels(model)
        for reason in DEADLETTER_REASONS:
            self.deadletter.labels(reason)
        for event in SEQUENCE_EVENTS:
            self.sequence.labels(event)
        for outcome in ("ok", "failed"):
            self.commits.labels(outcome)
        for reason in UTTERANCE_REASONS:
            self.utterances.labels(model, reason)
        for c in (self.transcripts, self.empty, self.audio_transcribed, self.engine_seconds, self.real_time_factor):
            c.labels(model)
        for topic in output_topics:
            self.delivery_errors.labels(topic)
