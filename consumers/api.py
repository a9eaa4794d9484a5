"""``audiostream serve``: the HTTP API (FastAPI; OpenAPI at /openapi.json, docs at /docs).

- ``POST /v1/classify``: upload an audio file, get per-window labels and scores
  (the live analyzer's engine and bundle, as ``batch`` uses);
- ``GET /v1/models``: the model bundles this server can use;
- ``GET /v1/streams``: recent live streams and their latest label, read from the
  predictions topic by a background reader;
- ``GET /v1/similar``: the clips (``--index`` batch results) and live streams
  most similar to one of them, by an embedding of MFCC and chroma statistics.

Limits: uploads over ``--max-upload-mb`` get 413, longer than
``--max-duration`` seconds 413, not decodable 415, empty 400.
"""

import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict

import numpy as np

from streamproc import records
from streamproc.errors import AudioInputError, BundleError, ConfigError
from streamproc.settings import DEFAULT_MODEL, TOPIC_FEATURES, TOPIC_PREDICTIONS, add_kafka_arguments

log = logging.getLogger("audiostream.api")



class LiveStreams:
    """Latest prediction and a running embedding per stream, from the output topics (a background thread)."""

    def __init__(self, kafka: dict, predictions_topic: str, features_topic: str, spec, since_s: float = 600,
                 max_streams: int = 10000):
        self.kafka, self.topics = kafka, (predictions_topic, features_topic)
        self.spec, self.since_s, self.max_streams = spec, since_s, max_streams
        self.latest: OrderedDict[str, dict] = OrderedDict()
        self.vectors: dict[str, list] = {}  # stream -> [sum, sum of squares, n] of embedding columns
        self.error: str | None = None
        self.started = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        from streamproc.analysis import embedding_columns
        self.cols = embedding_columns(spec)
        self.width = spec.n_features

    def start(self) -> "LiveStreams":
        threading.Thread(target=self._run, name="live-streams", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import json
        from confluent_kafka import Consumer, KafkaException, TopicPartition
        try:
            c = Consumer({**self.kafka, "group.id": f"audiostream-api-{uuid.uuid4().hex[:8]}",
                          "enable.auto.commit": False, "isolation.level": "read_committed",
                          "auto.offset.reset": "latest"})
            since_ms = int((time.time() - self.since_s) * 1000)
            tps = []
            for topic in self.topics:
                md = c.list_topics(topic, timeout=10)
                if topic in md.topics and md.topics[topic].error is None:
                    tps += [TopicPartition(topic, p, since_ms) for p in md.topics[topic].partitions]
            c.assign([tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition, -1)
                      for tp in c.offsets_for_times(tps, timeout=10)])
        except KafkaException as exc:
            self.error = f"cannot read the output topics: {exc}"
            self.started.set()
            return
        self.started.set()
        try:
            while not self._stop.is_set():
                for m in c.consume(500, timeout=0.5):
                    if m.error() is not None:
                        continue
                    try:
                        rec = json.loads(m.value())
                    except ValueError:
                        continue
                    if m.topic() == self.topics[0] and "label" in rec:
                        self._prediction(rec)
                    elif m.topic() == self.topics[1] and records.is_window(rec):
                        self._features(rec)
        finally:
            c.close()

    def _prediction(self, p: dict) -> None:
        with self._lock:
            self.latest[p["stream_id"]] = {"stream_id": p["stream_id"], "label": p["label"],
                                           "confidence": p["confidence"], "window_end_s": p["window_end_s"],
                                           "capture_time": p.get("capture_time"),
                                           "model": f"{p['model']['task']}:{p['model']['version']}",
                                           "seen": time.time()}
            self.latest.move_to_end(p["stream_id"])
            while len(self.latest) > self.max_streams:
                sid, _ = self.latest.popitem(last=False)
                self.vectors.pop(sid, None)

    def _features(self, f: dict) -> None:
        vector = records.features_vector(f, self.spec)
        if vector is None:
            return
        x = vector[self.cols]
        with self._lock:
            acc = self.vectors.setdefault(f["stream_id"], [np.zeros_like(x), np.zeros_like(x), 0])
            acc[0] += x
            acc[1] += x * x
            acc[2] += 1

    def streams(self, limit: int) -> list[dict]:
        with self._lock:
            items = list(self.latest.values())[-limit:]
        return sorted(items, key=lambda s: -s["seen"])

    def embeddings(self) -> dict[str, np.ndarray]:
        with self._lock:
            out = {}
            for sid, (s, ss, n) in self.vectors.items():
                if n:
                    mean = s / n
                    out[sid] = np.concatenate([mean, np.sqrt(np.maximum(ss / n - mean * mean, 0))])
            return out


def load_index(path: str, spec) -> dict[str, np.ndarray]:
    """Per-file embeddings from batch results (their ``features`` column)."""
    import pyarrow.parquet as pq
    from streamproc.analysis import embedding
    try:
        table = pq.read_table(path, columns=["stream_id", "features"])
    except Exception as exc:
        raise ConfigError(f"--index {path!r}: not batch results: {exc}") from None
    groups: dict[str, list] = {}
    for sid, vec in zip(table.column("stream_id").to_pylist(), table.column("features").to_pylist()):
        groups.setdefault(sid, []).append(vec)
    return {sid: embedding(np.asarray(v, np.float32), spec) for sid, v in groups.items()}


def create_app(*, model: str = DEFAULT_MODEL, max_upload_bytes: int = 20 << 20, max_duration_s: float = 600.0,
               index: str | None = None, live: LiveStreams | None = None):
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from pydantic import BaseModel, Field

    from streamproc.analysis import analyze_pcm
    from streamproc.audio import load, to_s16
    from streamproc.inference import ModelBundle
    from streamproc.training.registry import bundles as list_bundles

    default = ModelBundle.load(model)  # a bad bundle stops the server before it listens
    loaded: dict[str, ModelBundle] = {model: default}
    clips = load_index(index, default.spec) if index else {}

    class Window(BaseModel):
        index: int
        start_s: float
        end_s: float
        label: str | None = Field(description="null when the model returned NaN/Inf for this window")
        confidence: float | None
        scores: dict[str, float]
        gap: bool
        padded: bool = Field(False, description="the clip is shorter than one window: this window is the clip "
                                                "followed by zeros (docs/predictions.md)")

    class Classification(BaseModel):
        model: str
        labels: list[str]
        duration_s: float
        windows: list[Window]
        label_share: dict[str, float]

    class ModelInfo(BaseModel):
        task: str
        version: str
        labels: list[str] | None = None
        macro_f1: float | None = None
        latest: bool | None = None
        default: bool = False
        error: str | None = None

    class StreamInfo(BaseModel):
        stream_id: str
        label: str
        confidence: float
        window_end_s: float
        capture_time: str | None = None
        model: str
        seen: float = Field(description="server time (Unix seconds) the prediction was read")

    class Neighbour(BaseModel):
        id: str
        kind: str = Field(description="clip (batch index) or stream (live)")
        similarity: float

    class Similar(BaseModel):
        query: str
        neighbours: list[Neighbour]

    app = FastAPI(title="audiostream", version="1", description=__doc__)

    def bundle_for(ref: str | None) -> ModelBundle:
        ref = ref or model
        if ref not in loaded:
            try:
                loaded[ref] = ModelBundle.load(ref)
            except BundleError as exc:
                raise HTTPException(404, f"model {ref!r}: {exc}") from None
        return loaded[ref]

    @app.post("/v1/classify", response_model=Classification, summary="Classify an uploaded audio file",
              responses={400: {"description": "empty upload"}, 404: {"description": "unknown model"},
                         413: {"description": "too large or too long"}, 415: {"description": "not decodable audio"}})
    def classify(file: UploadFile = File(..., description="wav, flac, ogg, mp3, ..."),
                 model_ref: str | None = Query(None, alias="model", description="task[:version]")):
        b = bundle_for(model_ref)
        data = file.file.read(max_upload_bytes + 1)
        if not data:
            raise HTTPException(400, "the upload is empty")
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the upload is larger than {max_upload_bytes >> 20} MiB")
        ext = re.sub(r"[^A-Za-z0-9]", "", os.path.splitext(file.filename or "")[1])[:8]  # a hint for decoders only
        with tempfile.NamedTemporaryFile(suffix="." + ext if ext else "") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                y = load(tmp.name, b.spec.sr)
            except AudioInputError as exc:
                msg = str(exc).replace(tmp.name, file.filename or "upload")
                raise HTTPException(415, f"not audio we can decode: {msg}") from None
        duration = len(y) / b.spec.sr
        if duration > max_duration_s:
            raise HTTPException(413, f"the audio is {duration:.0f} s long; the limit is {max_duration_s:.0f} s")
        rows = analyze_pcm(to_s16(y), b, file=file.filename or "upload", stream_id=file.filename or "upload")
        share: dict[str, float] = {}
        for r in rows:
            if r["label"]:
                share[r["label"]] = share.get(r["label"], 0) + 1 / len(rows)
        return {"model": b.ref, "labels": b.labels, "duration_s": round(duration, 6), "label_share": share,
                "windows": [{"index": r["window_index"], "start_s": r["start_s"], "end_s": r["end_s"],
                             "label": r["label"], "confidence": r["confidence"], "gap": r["gap"],
                             "padded": r["padded"],
                             "scores": {lab: r[f"score_{lab}"] for lab in b.labels}} for r in rows]}

    @app.get("/v1/models", response_model=list[ModelInfo], summary="Model bundles available")
    def models():
        out = []
        for m in list_bundles():
            out.append({**{k: m.get(k) for k in ("task", "version", "labels", "macro_f1", "latest", "error")},
                        "default": f"{m['task']}:{m['version']}" == default.ref})
        return out

    @app.get("/v1/streams", response_model=list[StreamInfo], summary="Recent live streams and their latest label",
             responses={503: {"description": "no Kafka configured or reachable"}})
    def streams(limit: int = Query(100, ge=1, le=10000)):
        if live is None:
            raise HTTPException(503, "live streams are off: start the server with --bootstrap-servers")
        if live.error:
            raise HTTPException(503, live.error)
        return live.streams(limit)

    @app.get("/v1/similar", response_model=Similar, summary="Most similar clips and streams",
             responses={404: {"description": "unknown id"}})
    def similar(id: str = Query(..., min_length=1, max_length=1024, description="a clip (batch index) or stream id"),
                k: int = Query(5, ge=1, le=100)):
        items = [(cid, "clip", e) for cid, e in clips.items()]
        if live is not None:
            items += [(sid, "stream", e) for sid, e in live.embeddings().items()]
        ids = [i for i, _, _ in items]
        if id not in ids:
            raise HTTPException(404, f"{id!r} is neither an indexed clip nor a live stream "
                                     f"({len(clips)} clips, {len(items) - len(clips)} streams known)")
        from streamproc.analysis import nearest
        q = ids.index(id)
        X = np.stack([e for _, _, e in items])
        found = [(i, s) for i, s in nearest(X[q], X, k + 1) if i != q][:k]
        return {"query": id, "neighbours": [{"id": items[i][0], "kind": items[i][1], "similarity": round(s, 6)}
                                            for i, s in found]}

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

    return app


def add_parser(sub):
    p = sub.add_parser("serve", help="HTTP API: classify uploads, models, live streams, similar clips",
                       description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--index", default=None, metavar="RESULTS", help="batch results (Parquet) to recommend from")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument("--max-duration", type=float, default=600.0, help="seconds of audio per upload")
    p.add_argument("--predictions-topic", default=TOPIC_PREDICTIONS)
    p.add_argument("--features-topic", default=TOPIC_FEATURES)
    p.add_argument("--streams-since", type=float, default=600.0, help="seconds of live history to read at start")
    add_kafka_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("serve needs the api extra: pip install 'audiostream[api]'") from None
    live = None
    if args.bootstrap_servers or args.config or args.kafka_config or os.environ.get("AUDIOSTREAM_BOOTSTRAP_SERVERS"):
        from streamproc.inference import ModelBundle
        from streamproc.settings import kafka_config_from_args
        live = LiveStreams(kafka_config_from_args(args), args.predictions_topic, args.features_topic,
                           ModelBundle.load(args.model).spec, since_s=args.streams_since).start()
    app = create_app(model=args.model, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                     max_duration_s=args.max_duration, index=args.index, live=live)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
