"""The output records, built and read in one place (docs/predictions.md, docs/schemas/).

Pure functions, no I/O: the analyzer builds every record it publishes here, and every reader
(the HTTP API's topic reader, ``report``, the tests) decodes here, so a field has one spelling.

- ``window_fields``: the identifying fields a window's records share (prediction and features);
  ``window_head``: the same, serialised once for both;
- ``prediction``: an ``audio.predictions`` record; ``PredictionEncoder``: a batch of them, serialised;
- ``detection``: an ``audio.detections`` record (a multi-label detector such as BirdNET);
- ``FeaturesEncoder``: an ``audio.features`` window record, serialised in one call;
- ``gap``: an ``audio.features`` gap record;
- ``deadletter_headers``: the headers added to a dead-lettered record;
- ``features_vector`` / ``is_window`` / ``is_gap``: reading ``audio.features`` back.

A new output (a transcript, a detection) adds one builder that starts from the same identifying
fields (``stream_id``, ``session_id``, sample range, ``sample_rate``) and gets a schema file beside
the others.
"""
from __future__ import annotations

import json
import time

import numpy as np

from .windowing import WindowSpec

PREDICTION_SCHEMA = 1
DETECTION_SCHEMA = 1
FEATURES_SCHEMA = 1
REASON_HEADER = "audiostream.reason"
ERROR_HEADER = "audiostream.error"
SOURCE_HEADER = "audiostream.source"
ANALYZER_HEADER = "audiostream.analyzer"
MAX_ERROR_BYTES = 1000


try:  # orjson (the analyzer extra) writes a prediction in ~1 us where json.dumps takes ~13 us
    import orjson as _orjson
except ImportError:  # pragma: no cover - an install without the analyzer extra
    _orjson = None


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(record: dict) -> bytes:
    """A record as it goes on the wire (JSON, UTF-8; compact with orjson, the same values either way)."""
    if _orjson is not None:
        return _orjson.dumps(record, default=_plain, option=_orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(record).encode()


def iso_time(ns: int, seconds: dict | None = None) -> str:
    """ISO-8601 UTC with milliseconds, from nanoseconds since the epoch; ``seconds``: a cache of the whole
    seconds' text for a caller that writes thousands a second (``PredictionEncoder``)."""
    t = ns / 1e9
    if seconds is None:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(ns % 1_000_000_000) // 1_000_000:03d}Z"
    whole = int(t)  # the second time.gmtime(t) gives (it floors; capture times are positive)
    text = seconds.get(whole)
    if text is None:
        if len(seconds) >= 64:
            seconds.clear()
        text = seconds[whole] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{text}.{int(ns % 1_000_000_000) // 1_000_000:03d}Z"


def window_fields(w) -> dict:
    """Fields every record about one window carries (``w``: ``streamproc.engine.Window``)."""
    sr = w.sample_rate
    return {"id": w.window_id, "stream_id": w.stream_id, "session_id": w.session_id.hex(),
            "window_index": w.index, "window_start_s": round(w.start / sr, 6), "window_end_s": round(w.end / sr, 6),
            "start_sample": w.start, "end_sample": w.end, "sample_rate": sr, "gap": w.gap, "padded": w.padded}


def window_head(w) -> bytes:
    """``window_fields(w)`` as JSON members without the braces: written once per window and spliced into each of
    its records (``PredictionEncoder``, ``FeaturesEncoder.encode_many``), which stay the bytes ``dumps`` writes."""
    return dumps(window_fields(w))[1:-1]


def prediction(w, scores, labels, *, task: str, version: str, analyzer: str, latency_s: float,
               gated: bool = False) -> dict:
    """The ``audio.predictions`` record of window ``w`` with the model's (finite, already gated) ``scores``;
    ``gated``: the window is silence by level (docs/predictions.md)."""
    best = int(np.argmax(scores))
    return {"schema": PREDICTION_SCHEMA, **window_fields(w), "label": labels[best],
            "confidence": round(float(scores[best]), 6),
            "scores": {lab: round(float(v), 6) for lab, v in zip(labels, scores)},
            "model": {"task": task, "version": version}, "rms_dbfs": w.metrics["rms_dbfs"], "gated": gated,
            "capture_time": iso_time(w.capture_time_ns), "latency_ms": round(latency_s * 1000, 3),
            "analyzer": analyzer}


class PredictionEncoder:
    """``audio.predictions`` records of one model for a batch of windows: for each, exactly the bytes of
    ``dumps(prediction(...))``, at a fraction of the cost (the analyzer writes thousands a second). The batch's
    best labels come from one numpy call, the window's shared fields from ``window_head``, and the capture
    time's whole seconds from a cache."""

    def __init__(self, labels, *, task: str, version: str, analyzer: str):
        self.labels = list(labels)
        self.model = {"task": task, "version": version}
        self.analyzer = analyzer
        self._open = dumps({"schema": PREDICTION_SCHEMA})[:-1] + b","  # b'{"schema":1,'
        self._seconds: dict[int, str] = {}

    def encode_many(self, windows: list, scores: np.ndarray, *, now: float, gated: list | None = None,
                    heads: list[bytes] | None = None) -> tuple[list[bytes], list[str]]:
        """Each window's record and its label; ``scores``: (windows, labels), finite; ``now``: the moment the
        records are handed over (their ``latency_ms``, from each window's arrival)."""
        labels, model, analyzer, seconds, opening = self.labels, self.model, self.analyzer, self._seconds, self._open
        gated = gated or [False] * len(windows)
        best = np.argmax(scores, axis=1).tolist()
        if _orjson is None:  # the stdlib's separators: whole records, as dumps(prediction(...)) writes them
            return ([dumps(prediction(w, s, labels, task=model["task"], version=model["version"], analyzer=analyzer,
                                      latency_s=now - w.arrival, gated=g)) for w, s, g in zip(windows, scores, gated)],
                    [labels[b] for b in best])
        heads = heads or [window_head(w) for w in windows]
        out, names = [], []
        for w, row, b, head, g in zip(windows, np.asarray(scores).tolist(), best, heads, gated):
            rounded = [round(v, 6) for v in row]
            tail = dumps({"label": labels[b], "confidence": rounded[b], "scores": dict(zip(labels, rounded)),
                          "model": model, "rms_dbfs": w.metrics["rms_dbfs"], "gated": g,
                          "capture_time": iso_time(w.capture_time_ns, seconds),
                          "latency_ms": round((now - w.arrival) * 1000, 3), "analyzer": analyzer})
            out.append(b"".join((opening, head, b",", tail[1:])))
            names.append(labels[b])
        return out, names


def detection(w, found: list[tuple[str, float]], *, task: str, version: str, analyzer: str, latency_s: float,
              threshold: float, filters: dict) -> dict:
    """The ``audio.detections`` record of window ``w``: every class at or above ``threshold`` that the
    ``filters`` allow, as (label, confidence) best first; an empty list is published too, so every
    window is accounted for. A BirdNET label is ``Scientific name_Common name``."""
    dets = []
    for label, conf in found:
        sci, sep, common_name = label.partition("_")
        dets.append({"label": label, "scientific_name": sci if sep else None,
                     "common_name": common_name if sep else label, "confidence": round(float(conf), 6)})
    return {"schema": DETECTION_SCHEMA, **window_fields(w), "detections": dets,
            "model": {"task": task, "version": version}, "threshold": threshold, "filters": filters,
            "rms_dbfs": w.metrics["rms_dbfs"], "capture_time": iso_time(w.capture_time_ns),
            "latency_ms": round(latency_s * 1000, 3), "analyzer": analyzer}


class FeaturesEncoder:
    """``audio.features`` window records for one window spec.

    With orjson the whole record is one call: the vector goes in as numpy slices, written as the shortest
    decimal that reads back to the same float32 (``template % tuple(vector)`` at ``%.7g`` cost ~3x more).
    Without orjson, the vector goes through one %-format string built once: a single C-level call per
    window (formatting 74 floats one by one in Python cost ~60 us)."""

    def __init__(self, spec: WindowSpec):
        self.spec = spec
        parts = []
        self.slices = []  # (key, index or slice into the vector)
        i = 0
        for name in spec.features:
            width = spec.feature_width(name)
            for stat in ("mean", "std"):
                value = "[" + ", ".join(["%.7g"] * width) + "]" if width > 1 else "%.7g"
                parts.append(f'"{name}_{stat}": {value}')
                self.slices.append((f"{name}_{stat}", slice(i, i + width) if width > 1 else i))
                i += width
        self.template = "{" + ", ".join(parts) + "}"
        # encode_many: the features object's keys, as orjson writes them between the vector's values
        self._prefixes = [(b"," if j else b"{") + b'"' + k.encode() + b'":' for j, (k, _s) in enumerate(self.slices)]
        self._open = dumps({"schema": FEATURES_SCHEMA, "type": "window"})[:-1] + b","  # before window_head

    def encode_many(self, windows: list, heads: list[bytes] | None = None) -> list[bytes]:
        """``[encode(w) ...]``, the same bytes, with the vectors of all ``windows`` written by one orjson call per
        feature key instead of one numpy slice per key per window (the analyzer's batch); ``heads``: the
        windows' ``window_head``, when the caller has them."""
        if _orjson is None or not windows:
            return [self.encode(w) for w in windows]
        heads = heads or [window_head(w) for w in windows]
        vecs = np.stack([np.asarray(w.vector, dtype=np.float32) for w in windows])
        opt = _orjson.OPT_SERIALIZE_NUMPY
        columns = []
        for _key, s in self.slices:  # one key for every window: "[[a,b],[c,d]]" (a slice) or "[a,c]" (one value)
            text = _orjson.dumps(np.ascontiguousarray(vecs[:, s]), option=opt)
            columns.append([b"[" + row + b"]" for row in text[2:-2].split(b"],[")] if isinstance(s, slice)
                           else text[1:-1].split(b","))
        parts: list = [None] * (2 * len(self.slices) + 1)
        parts[0::2] = self._prefixes + [b"}"]
        out, opening = [], self._open
        for w, head, values in zip(windows, heads, zip(*columns)):
            parts[1::2] = values
            out.append(b"".join((opening, head, b',"metrics":', dumps(w.metrics), b',"features":', b"".join(parts),
                                 b"}")))
        return out

    def encode(self, w) -> bytes:
        rec = {"schema": FEATURES_SCHEMA, "type": "window", **window_fields(w), "metrics": w.metrics}
        if _orjson is not None:
            v = np.asarray(w.vector, dtype=np.float32)
            rec["features"] = {k: v[s] for k, s in self.slices}
            return dumps(rec)
        head = dumps(rec)
        return b"".join((head[:-1], b', "features": ', (self.template % tuple(w.vector.tolist())).encode(), b"}"))


def gap(g) -> dict:
    """The ``audio.features`` gap record of ``g`` (``streamproc.engine.Gap``)."""
    sr = g.sample_rate
    return {"schema": FEATURES_SCHEMA, "type": "gap", "stream_id": g.stream_id, "session_id": g.session_id.hex(),
            "gap_start_sample": g.start, "gap_end_sample": g.start + g.samples,
            "gap_start_s": round(g.start / sr, 6), "gap_s": round(g.samples / sr, 6),
            "missing_frames": g.missing_frames, "resynced": g.resynced,
            "handling": "resynchronised" if g.resynced else "zero_filled_and_flagged", "sample_rate": sr}


def deadletter_headers(original, *, reason: str, error: str, source: str, analyzer: str) -> list:
    """The original record's headers plus ours (values UTF-8; the error cut at 1000 bytes)."""
    return list(original or []) + [(REASON_HEADER, reason.encode()), (ERROR_HEADER, _cut_utf8(error, MAX_ERROR_BYTES)),
                                   (SOURCE_HEADER, source.encode()), (ANALYZER_HEADER, analyzer.encode())]


def _cut_utf8(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``text`` in UTF-8, never half a character."""
    return text.encode()[:limit].decode("utf-8", "ignore").encode()


def is_window(rec: dict) -> bool:
    """An ``audio.features`` window record (records before ``type`` existed were all windows)."""
    return rec.get("type", "window") == "window"


def is_gap(rec: dict) -> bool:
    return rec.get("type") == "gap"


def features_vector(rec: dict, spec: WindowSpec) -> np.ndarray | None:
    """The model input vector of a features window record, in ``spec.feature_names()`` order (float64),
    or None when the record does not carry every feature of ``spec``."""
    feats = rec.get("features")
    if not isinstance(feats, dict):
        return None
    flat: list = []
    for name in spec.features:
        for stat in ("mean", "std"):
            v = feats.get(f"{name}_{stat}")
            if isinstance(v, list):
                flat += v
            else:
                flat.append(v)
    if len(flat) != spec.n_features or any(not isinstance(x, (int, float)) for x in flat):
        return None
    return np.asarray(flat, dtype=np.float64)
