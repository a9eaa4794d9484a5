"""``audiostream serve``: the HTTP API (FastAPI; OpenAPI at /openapi.json, docs at /docs).

- ``POST /v1/classify``: upload an audio file, get per-window labels and scores
  (the live analyzer's engine and bundle, as ``batch`` uses);
- ``GET /v1/models``: the model bundles this server can use;
- ``GET /v1/streams``: recent live streams and their latest label, read from the
  predictions topic by a background reader, with each stream's genre and mood over
  its last minute of music (``music``: from the tagger's ``audio.tags``, docs/music.md);
- ``GET /v1/similar``: the clips (``--index`` batch results) and live streams
  most similar to one of them, by an embedding of MFCC and chroma statistics.

Limits (docs/security.md has the threat model and the memory bound): a body over
``--max-upload-mb`` gets 413 (by its Content-Length before it is read, or as soon as
a chunked body passes it), audio longer than ``--max-duration`` seconds 413 (by the
container's header before decoding, or when decoding reaches the limit), more than
``--max-concurrent`` classifications at once 503 with Retry-After, a body not
received within ``--body-timeout`` seconds 408, headers not received within
``--header-timeout`` seconds close the connection, not decodable 415, empty 400.
"""

import asyncio
import collections
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict

import numpy as np

from streamproc import records
from streamproc.errors import AudioInputError, BundleError, ConfigError
from streamproc.settings import (DEFAULT_MODEL, TOPIC_DEADLETTER, TOPIC_FEATURES, TOPIC_FRAMES, TOPIC_PREDICTIONS,
                                 TOPIC_DETECTIONS, TOPIC_TRANSCRIPTS, add_kafka_arguments)

log = logging.getLogger("audiostream.api")



class LiveStreams:
    """Latest prediction and a running embedding per stream, from the output topics (a background thread)."""

    def __init__(self, kafka: dict, predictions_topic: str, features_topic: str, spec, since_s: float = 600,
                 max_streams: int = 10000, deadletter_topic: str | None = None, transcripts_topic: str | None = None,
                 detections_topic: str | None = None, tags_topic: str | None = None):
        from streamproc.musicnn.summary import RollingTags
        self.kafka, self.topics = kafka, (predictions_topic, features_topic)
        self.tags_topic = tags_topic  # the music tagger's output: genre and mood over a stream's last minute
        self.music = RollingTags(max_streams=max_streams)
        self.music_vectors: dict[str, list] = {}  # stream -> [sum, n] of its music windows' musicnn embeddings
        self.deadletter_topic = deadletter_topic  # counted per stream (its records keep the stream's key)
        self.transcripts_topic = transcripts_topic  # the transcriber's output: recent captions for the live page
        self.captions: collections.deque = collections.deque(maxlen=50)  # (version, caption), newest last
        self._caption_ids: OrderedDict[str, None] = OrderedDict()  # ids seen (a transcriber restart repeats some)
        self.detections_topic = detections_topic  # a detector's output (BirdNET): recent detections for the live page
        self.detections: collections.deque = collections.deque(maxlen=50)  # (version, detection), newest last
        self._detection_ids: OrderedDict[str, None] = OrderedDict()
        self.spec, self.since_s, self.max_streams = spec, since_s, max_streams
        self.latest: OrderedDict[str, dict] = OrderedDict()
        self.vectors: dict[str, list] = {}  # stream -> [sum, sum of squares, n] of embedding columns
        self.error: str | None = None
        self.started = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # for the live page: per stream its window and gap counts, level and last labels; a version number
        # that grows with every prediction, so each page connection sends only what changed since its last look
        self.history: dict[str, dict] = {}
        self.version = 0
        self.changed_at: dict[str, int] = {}
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
            wanted = [*self.topics, *([self.deadletter_topic] if self.deadletter_topic else []),
                      *([self.transcripts_topic] if self.transcripts_topic else []),
                      *([self.detections_topic] if self.detections_topic else []),
                      *([self.tags_topic] if self.tags_topic else [])]
            while True:  # serve may start before the analyzer has created its output topics: wait for them
                tps = []
                for topic in wanted:
                    md = c.list_topics(topic, timeout=10)
                    if topic in md.topics and md.topics[topic].error is None:
                        tps += [TopicPartition(topic, p, since_ms) for p in md.topics[topic].partitions]
                if any(tp.topic == self.topics[0] for tp in tps) or self._stop.wait(2.0):
                    break
            if not tps:
                return
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
                    if m.topic() == self.deadletter_topic:  # a raw bad frame, not JSON: count it for its stream
                        self._dead_letter(m.key())
                        continue
                    try:
                        rec = json.loads(m.value())
                    except ValueError:
                        continue
                    if m.topic() == self.topics[0] and "label" in rec:
                        self._prediction(rec)
                    elif m.topic() == self.transcripts_topic and isinstance(rec, dict) and "text" in rec:
                        self._caption(rec)
                    elif m.topic() == self.detections_topic and isinstance(rec, dict) and rec.get("detections"):
                        self._detection(rec)
                    elif m.topic() == self.tags_topic and isinstance(rec, dict):
                        self._tags(rec)
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
            self.music.advance(p["stream_id"], float(p["window_end_s"]))  # a stream turned to speech loses its music
            h = self.history.setdefault(p["stream_id"], self._new_history())
            h["windows"] += 1
            h["gaps"] += int(bool(p.get("gap")))
            h["rms_dbfs"] = p.get("rms_dbfs")
            h["recent"].append(p["label"])
            self.version += 1
            self.changed_at[p["stream_id"]] = self.version
            while len(self.latest) > self.max_streams:
                sid, _ = self.latest.popitem(last=False)
                self.vectors.pop(sid, None)
                self.music.forget(sid)
                self.music_vectors.pop(sid, None)
                self.history.pop(sid, None)
                self.changed_at.pop(sid, None)

    def _caption(self, t: dict) -> None:
        if t.get("final") is False:  # a partial transcript of an open utterance: the page lists finals only
            return
        try:
            c = {"id": str(t["id"]), "stream_id": str(t["stream_id"]), "start_s": float(t["start_s"]),
                 "end_s": float(t["end_s"]), "text": str(t["text"])}
        except (KeyError, TypeError, ValueError):
            return
        self._append_once(self._caption_ids, self.captions, c)

    def _detection(self, r: dict) -> None:
        """A window with detections: its best one (and how many more) for the live page, once per window id."""
        try:
            best = r["detections"][0]
            d = {"id": str(r["id"]), "stream_id": str(r["stream_id"]), "start_s": float(r["window_start_s"]),
                 "end_s": float(r["window_end_s"]), "name": str(best["common_name"]),
                 "scientific_name": best.get("scientific_name"), "confidence": float(best["confidence"]),
                 "more": len(r["detections"]) - 1, "capture_time": r.get("capture_time")}
        except (KeyError, TypeError, ValueError, IndexError):
            return
        self._append_once(self._detection_ids, self.detections, d)

    def _append_once(self, ids: OrderedDict, items: collections.deque, item: dict) -> None:
        """Append ``item`` at a new version unless its id was seen (the last 10 000 ids are remembered):
        a record republished after a service restart shows once."""
        with self._lock:
            if item["id"] in ids:
                return
            ids[item["id"]] = None
            if len(ids) > 10000:
                ids.popitem(last=False)
            self.version += 1
            items.append((self.version, item))

    def _tags(self, rec: dict) -> None:
        """An audio.tags record: into the stream's genre/mood summary and, a new music window, into its
        mean embedding (the music space of /v1/similar)."""
        with self._lock:
            if not self.music.add(rec):
                return
            emb = rec.get("embedding")
            if isinstance(emb, list) and emb:
                try:
                    x = np.asarray(emb, np.float64)
                except (TypeError, ValueError):
                    return
                acc = self.music_vectors.setdefault(str(rec["stream_id"]), [np.zeros_like(x), 0])
                if acc[0].shape == x.shape:
                    acc[0] += x
                    acc[1] += 1

    def _music_text(self, sid: str) -> str | None:
        s = self.music.summary(sid)
        return None if s is None else s.text()

    def music_embeddings(self) -> dict[str, np.ndarray]:
        with self._lock:
            return {sid: s / n for sid, (s, n) in self.music_vectors.items() if n}

    def captions_since(self, since: int) -> list[dict]:
        """Transcripts that arrived after version ``since``, once per id, oldest first: the live page's captions."""
        with self._lock:
            return [c for v, c in self.captions if v > since]

    @staticmethod
    def _new_history() -> dict:
        return {"windows": 0, "gaps": 0, "dead_letters": 0, "rms_dbfs": None, "recent": collections.deque(maxlen=60)}

    def _dead_letter(self, key: bytes | None) -> None:
        sid = (key or b"").decode("utf-8", "replace")
        with self._lock:
            if sid not in self.history and len(self.history) >= self.max_streams:
                return
            self.history.setdefault(sid, self._new_history())["dead_letters"] += 1
            self.version += 1
            self.changed_at[sid] = self.version

    def changes(self, since: int) -> tuple[int, list[dict]]:
        """(current version, the streams whose prediction changed after ``since``) for the live page."""
        with self._lock:
            return self._changes(since)

    def _changes(self, since: int) -> tuple[int, list[dict]]:
        rows = [{**self.latest[sid], **{k: self.history[sid][k] for k in ("windows", "gaps", "dead_letters",
                                                                            "rms_dbfs")},
                 "recent": list(self.history[sid]["recent"]), "music": self._music_text(sid)}
                for sid, v in self.changed_at.items() if v > since and sid in self.latest]
        return self.version, rows

    def page_since(self, since: int) -> tuple[int, list[dict], list[dict], list[dict]]:
        """``changes``, ``captions_since`` and the detections since, at one version (what /v1/events sends)."""
        with self._lock:
            version, rows = self._changes(since)
            return (version, rows, [c for v, c in self.captions if v > since],
                    [d for v, d in self.detections if v > since])

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
            items = []
            for s in list(self.latest.values())[-limit:]:
                m = self.music.summary(s["stream_id"])
                items.append({**s, "music": None if m is None else m.as_dict()})
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


def load_music_index(path: str) -> dict[str, np.ndarray]:
    """Per-file music embeddings from ``batch --tags`` results: the mean of the musicnn embedding over the
    file's music windows (docs/music.md: it ranks tracks of one soundtrack nearer than MFCC + chroma).
    Empty for results made without --tags."""
    import pyarrow.parquet as pq
    try:
        if "music_embedding" not in pq.read_schema(path).names:
            return {}
        table = pq.read_table(path, columns=["stream_id", "music_embedding"])
    except Exception as exc:
        raise ConfigError(f"--index {path!r}: not batch results: {exc}") from None
    groups: dict[str, list] = {}
    for sid, vec in zip(table.column("stream_id").to_pylist(), table.column("music_embedding").to_pylist()):
        if vec is not None:
            groups.setdefault(sid, []).append(vec)
    return {sid: np.asarray(v, np.float64).mean(axis=0) for sid, v in groups.items()}


MULTIPART_OVERHEAD = 64 << 10  # boundaries, part headers and a long file name, on top of the file itself


def display_name(filename: str | None, limit: int = 120) -> str:
    """An upload's name as it may appear in a message: printable, at most ``limit`` characters."""
    name = "".join(c if c.isprintable() else "?" for c in (filename or "upload"))
    return name if len(name) <= limit else name[:limit] + f"... ({len(name)} characters)"


class UploadGuard:
    """ASGI middleware in front of the upload route: the limits that must hold before FastAPI reads a byte.

    - request line + headers over ``max_header_bytes`` get 431 on every route (uvicorn's h11 limit only
      closes a connection whose headers are still incomplete at that size);
    - a Content-Length over ``max_body`` is refused (413) before the body is read;
    - a body without one (chunked) is counted as it arrives and refused the moment it passes ``max_body``;
    - more than ``max_active`` uploads in flight (receiving, decoding or analysing) get 503 with Retry-After,
      so memory is bounded by ``max_active`` times one request's worst case; the refused body is read and
      dropped first (bounded by ``max_body`` and ``body_timeout_s``) so that a client still sending it gets
      the answer, unless it asked ``Expect: 100-continue`` and so has sent nothing yet;
    - the whole body must arrive within ``body_timeout_s`` (408 otherwise): a client trickling bytes holds
      its slot for that long at most.
    """

    def __init__(self, app, *, path: str, max_body: int, limit_text: str, max_active: int, body_timeout_s: float,
                 max_header_bytes: int = 16 << 10, retry_after_s: int = 5):
        self.max_header_bytes = max_header_bytes
        self.app, self.path, self.max_body, self.limit_text = app, path, max_body, limit_text
        self.max_active, self.body_timeout_s, self.retry_after_s = max_active, body_timeout_s, retry_after_s
        self.active = 0  # only touched on the event loop

    async def _refuse(self, send, status: int, detail: str, headers: dict | None = None) -> None:
        import json
        body = json.dumps({"detail": detail}).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")] + [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def _discard_body(self, receive) -> None:
        """Read and drop a body (at most ``max_body`` bytes, within ``body_timeout_s``): no slot, no memory."""
        loop = asyncio.get_running_loop()
        deadline, n = loop.time() + self.body_timeout_s, 0
        try:
            while n <= self.max_body:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                if message["type"] != "http.request":
                    return
                n += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
        except asyncio.TimeoutError:
            return

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > self.max_header_bytes:
            log.warning("refused a request with %d bytes of headers", size)
            return await self._refuse(send, 431, f"the request line and headers are {size} bytes; "
                                                 f"the limit is {self.max_header_bytes}")
        if scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        from fastapi import HTTPException
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(send, 400, f"bad Content-Length {length[:40]!r}")
            if int(length) > self.max_body:
                log.warning("refused an upload of %s bytes by its Content-Length", int(length))
                return await self._refuse(send, 413, f"the upload is larger than {self.limit_text}")
        if self.active >= self.max_active:
            log.warning("refused an upload: %d classifications in flight (--max-concurrent)", self.active)
            if headers.get(b"expect", b"").lower() != b"100-continue":
                await self._discard_body(receive)  # else the client, still sending, may never read the answer
            return await self._refuse(send, 503, f"busy: {self.active} uploads are being classified (the limit is "
                                                 f"{self.max_active}); retry after {self.retry_after_s} s",
                                      {"retry-after": str(self.retry_after_s)})
        self.active += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        received, done = 0, False

        async def guarded_receive():
            nonlocal received, done
            if done:  # after the body only a disconnect can come: no deadline on waiting for it
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.warning("an upload's body was not received within %g s (--body-timeout)", self.body_timeout_s)
                raise HTTPException(408, f"the request body was not received within {self.body_timeout_s:g} s "
                                         f"({received} bytes arrived)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    log.warning("stopped reading an upload at %d bytes", received)
                    raise HTTPException(413, f"the upload is larger than {self.limit_text}")
                done = not message.get("more_body", False)
            return message

        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except HTTPException as exc:  # raised where FastAPI's own handler did not turn it into a response
            if started:
                raise
            await self._refuse(send, exc.status_code, exc.detail)
        finally:
            self.active -= 1


def warm_up(bundle) -> None:
    """One short clip through decoding and analysis before the server listens: the first upload then pays
    no imports or JIT compilation (~240 MB and seconds), and the memory bound starts from a steady base."""
    import soundfile as sf
    from streamproc.analysis import analyze_pcm
    from streamproc.audio import load, to_s16
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        sf.write(tmp.name, np.zeros(2 * bundle.spec.sr + 123, np.float32), bundle.spec.sr + 1, subtype="PCM_16")
        analyze_pcm(to_s16(load(tmp.name, bundle.spec.sr, max_seconds=10)), bundle, file="warm-up", stream_id="warm-up")


def create_app(*, model: str = DEFAULT_MODEL, max_upload_bytes: int = 20 << 20, max_duration_s: float = 600.0,
               index: str | None = None, live: LiveStreams | None = None, max_concurrent: int = 2,
               body_timeout_s: float = 60.0, max_header_bytes: int = 16 << 10, gateway=None):
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from pydantic import BaseModel, Field

    from streamproc.analysis import analyze_pcm
    from streamproc.audio import AudioTooLongError, load, to_s16
    from streamproc.inference import ModelBundle
    from streamproc.training.registry import bundles as list_bundles

    default = ModelBundle.load(model)  # a bad bundle stops the server before it listens
    warm_up(default)
    loaded: dict[str, ModelBundle] = {model: default}
    clips = load_index(index, default.spec) if index else {}
    music_clips = load_music_index(index) if index else {}  # /v1/similar?space=music

    class Window(BaseModel):
        index: int
        start_s: float
        end_s: float
        label: str | None = Field(description="null when the model returned NaN/Inf for this window")
        confidence: float | None
        scores: dict[str, float]
        gap: bool
        gated: bool = Field(False, description="silence by level: rms_dbfs below the model's silence_below_dbfs")
        padded: bool = Field(False, description="the clip is shorter than one window: this window is the clip "
                                                "followed by zeros (docs/predictions.md)")

    class MusicSummary(BaseModel):
        model: str = Field(description="the tagger bundle, e.g. musictags-msd:1")
        at_s: float = Field(description="the stream time (s) the minute ends at")
        span_s: float | None = Field(description="the rolling span in stream seconds (60)")
        windows: int = Field(description="tag windows (~3 s) the sound-type model called music in that span")
        music_s: float
        top: dict[str, list[tuple[str, float]]] = Field(
            description="per tag group (genre, mood, instrument, era, ...): the best tags with their mean score")
        text: str = Field(description="e.g. 'genre: rock 0.61, pop 0.22  mood: happy 0.31'")

    class TagWindow(BaseModel):
        start_s: float
        end_s: float
        model: str
        music_share: float | None = Field(description="share of the sound-type windows inside it called music")
        top: list[tuple[str, float]] = Field(description="the 5 best tags, best first")
        tags: dict[str, float] = Field(description="every tag's sigmoid score")

    class Classification(BaseModel):
        model: str
        labels: list[str]
        duration_s: float
        windows: list[Window]
        label_share: dict[str, float]
        tags: list[TagWindow] | None = Field(None, description="with tags=true: the music tagger's ~3 s windows "
                                                               "the sound type calls music (batch --tags' answers)")
        music: MusicSummary | None = Field(None, description="with tags=true: genre and mood over the whole "
                                                             "upload's music windows (null: no music)")

    class ModelInfo(BaseModel):
        task: str
        version: str
        labels: list[str] | None = None
        macro_f1: float | None = Field(None, description="macro-F1 on held-out clips")
        real_macro_f1: float | None = Field(None, description="macro-F1 on real recordings "
                                                              "(evaluation_debian_real.json), as `models list` shows")
        real_b_macro_f1: float | None = Field(None, description="macro-F1 on the frozen independent real set B "
                                                                "(evaluation_real_b.json), scored once")
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
        music: MusicSummary | None = Field(None, description="genre and mood over the stream's last minute of "
                                                             "stream time, mean tag scores of its music windows "
                                                             "(serve --tags-topic, audiostream tag); null: no music")

    class Neighbour(BaseModel):
        id: str
        kind: str = Field(description="clip (batch index), stream (live), or clip+stream when a live stream has "
                                      "the id of an indexed clip (a replayed file; the clip's embedding is used)")
        similarity: float

    class Similar(BaseModel):
        query: str
        neighbours: list[Neighbour]

    app = FastAPI(title="audiostream", version="1", description=__doc__, docs_url=None, redoc_url=None)
    limit_text = f"{max_upload_bytes / (1 << 20):g} MiB"
    app.add_middleware(UploadGuard, path="/v1/classify", max_body=max_upload_bytes + MULTIPART_OVERHEAD,
                       limit_text=limit_text, max_active=max_concurrent, body_timeout_s=body_timeout_s,
                       max_header_bytes=max_header_bytes)
    app.add_middleware(UploadGuard, path="/v1/transcribe", max_body=max_upload_bytes + MULTIPART_OVERHEAD,
                       limit_text=limit_text, max_active=max_concurrent, body_timeout_s=body_timeout_s,
                       max_header_bytes=max_header_bytes)
    mount_docs(app)
    app.state.default_model = default.ref

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
                         408: {"description": "the body did not arrive within --body-timeout"},
                         413: {"description": "too large (--max-upload-mb) or too long (--max-duration)"},
                         415: {"description": "not decodable audio"},
                         503: {"description": "busy: --max-concurrent uploads in progress; see Retry-After"}})
    def classify(file: UploadFile = File(..., description="wav, flac, ogg, mp3, ..."),
                 model_ref: str | None = Query(None, alias="model", description="task[:version]"),
                 tags: bool = Query(False, description="also music tags (musicnn, the windows the sound type "
                                                       "calls music) and a genre/mood summary; docs/music.md")):
        b = bundle_for(model_ref)
        if tags and b.spec.sr != 16000:
            raise HTTPException(400, f"tags=true needs a 16 kHz model; {b.ref} is {b.spec.sr} Hz")
        name = display_name(file.filename)
        ext = re.sub(r"[^A-Za-z0-9]", "", os.path.splitext(file.filename or "")[1])[:8]  # a hint for decoders only
        with tempfile.NamedTemporaryFile(suffix="." + ext if ext else "") as tmp:
            file.file.seek(0)
            shutil.copyfileobj(file.file, tmp, 1 << 16)  # already on disk (or <= 1 MiB in memory): copied in blocks
            size = tmp.tell()
            if not size:
                raise HTTPException(400, "the upload is empty")
            if size > max_upload_bytes:
                raise HTTPException(413, f"the upload is larger than {limit_text}")
            tmp.flush()
            try:
                y = load(tmp.name, b.spec.sr, max_seconds=max_duration_s)
            except AudioTooLongError as exc:
                raise HTTPException(413, str(exc).replace(tmp.name, name)) from None
            except AudioInputError as exc:
                msg = str(exc).replace(tmp.name, name)
                raise HTTPException(415, f"not audio we can decode: {msg}") from None
        duration = len(y) / b.spec.sr
        pcm = to_s16(y)
        del y
        rows = analyze_pcm(pcm, b, file=file.filename or "upload", stream_id=file.filename or "upload")
        music = tag_windows(pcm) if tags else None
        del pcm
        share: dict[str, float] = {}
        for r in rows:
            if r["label"]:
                share[r["label"]] = share.get(r["label"], 0) + 1 / len(rows)
        return {"model": b.ref, "labels": b.labels, "duration_s": round(duration, 6), "label_share": share,
                "windows": [{"index": r["window_index"], "start_s": r["start_s"], "end_s": r["end_s"],
                             "label": r["label"], "confidence": r["confidence"], "gap": r["gap"], "gated": r["gated"],
                             "padded": r["padded"],
                             "scores": {lab: r[f"score_{lab}"] for lab in b.labels}} for r in rows],
                **(music or {})}

    tagger: dict = {}  # the music tagger, loaded on the first classify?tags=true
    tagger_lock = threading.Lock()  # one Tagger keeps per-stream engine state: one upload at a time

    def tag_windows(pcm) -> dict:
        """``tags`` and ``music`` of an upload: the tagger batch --tags runs (tagging.tag_pcm), whole-file summary."""
        import math

        from streamproc.musicnn import tagging
        from streamproc.musicnn.summary import RollingTags
        with tagger_lock:
            if "t" not in tagger:
                tagger["t"] = tagging.load()
            recs = tagging.tag_pcm(pcm, tagger["t"], f"upload-{uuid.uuid4().hex}")
        whole = RollingTags(span_s=math.inf)
        for r in recs:
            whole.add(r)
        s = whole.summary(recs[0]["stream_id"]) if recs else None
        return {"tags": [{k: r[k] for k in ("start_s", "end_s", "model", "music_share", "top", "tags")} for r in recs],
                "music": None if s is None else s.as_dict()}

    asr: dict = {}  # the speech model, loaded on the first /v1/transcribe (serve runs without the asr extra)
    asr_lock = threading.Lock()

    @app.post("/v1/transcribe", summary="Speech to text for an uploaded audio file",
              description="The records `audiostream transcribe FILE --json` prints (docs/transcription.md): one per "
                          "utterance, cut by voice activity on stream time, in `transcripts`.",
              responses={400: {"description": "empty upload"}, 408: {"description": "body too slow"},
                         413: {"description": "too large or too long"}, 415: {"description": "not decodable audio"},
                         503: {"description": "busy, see Retry-After; or no speech model installed"}})
    def transcribe(file: UploadFile = File(..., description="wav, flac, ogg, mp3, ..."),
                   words: bool = Query(False, description="word timings (about 2x the CPU)")):
        from streamproc.segmentation import SAMPLE_RATE
        from streamproc.transcribe import file_records
        name = display_name(file.filename)
        ext = re.sub(r"[^A-Za-z0-9]", "", os.path.splitext(file.filename or "")[1])[:8]
        with tempfile.NamedTemporaryFile(suffix="." + ext if ext else "") as tmp:
            file.file.seek(0)
            shutil.copyfileobj(file.file, tmp, 1 << 16)
            if not tmp.tell():
                raise HTTPException(400, "the upload is empty")
            if tmp.tell() > max_upload_bytes:
                raise HTTPException(413, f"the upload is larger than {limit_text}")
            tmp.flush()
            try:
                y = load(tmp.name, SAMPLE_RATE, max_seconds=max_duration_s)
            except AudioTooLongError as exc:
                raise HTTPException(413, str(exc).replace(tmp.name, name)) from None
            except AudioInputError as exc:
                raise HTTPException(415, f"not audio we can decode: {str(exc).replace(tmp.name, name)}") from None
        with asr_lock:  # one Whisper call at a time: the model runs on one thread
            if "model" not in asr:  # loaded on the first audio that decodes
                from streamproc.transcription import Transcriber
                try:
                    asr["model"] = Transcriber.load("transcription")
                except BundleError as exc:
                    raise HTTPException(503, f"no speech model: {exc}") from None
            m = asr["model"]
            recs = file_records(y, m, stream_id=file.filename or "upload", words=words)
        return {"model": m.model_id, "duration_s": round(len(y) / SAMPLE_RATE, 6), "transcripts": recs}

    @app.get("/v1/models", response_model=list[ModelInfo], summary="Model bundles available")
    def models():
        out = []
        for m in list_bundles():
            out.append({**{k: m.get(k) for k in ("task", "version", "labels", "macro_f1", "real_macro_f1",
                                                 "real_b_macro_f1", "latest", "error")},
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
                k: int = Query(5, ge=1, le=100),
                space: str = Query("features", pattern="^(features|music)$",
                                   description="features: MFCC + chroma statistics (clips and live streams); music: "
                                               "the musicnn embedding of the music windows of clips (batch --tags) "
                                               "and live streams (audio.tags)")):
        if space == "music":
            items = [(cid, "clip", e) for cid, e in music_clips.items()]
            if live is not None:  # live streams' music windows (audio.tags); a replayed clip's id: one entry
                items = [(i, "clip+stream" if i in live.music_vectors else kind, e) for i, kind, e in items]
                items += [(sid, "stream", e) for sid, e in live.music_embeddings().items() if sid not in music_clips]
            if id not in [i for i, _, _ in items]:
                raise HTTPException(404, f"{display_name(id)!r} has no music embedding ({len(items)} clips and "
                                         "streams do: index results of 'batch --tags', live streams tagged by "
                                         "'audiostream tag')")
        else:
            items = [(cid, "clip", e) for cid, e in clips.items()]
        if live is not None and space == "features":  # a replayed file's stream id equals its clip id: one entry
            live_ids = set()
            for sid, e in live.embeddings().items():
                if sid in clips:
                    live_ids.add(sid)
                else:
                    items.append((sid, "stream", e))
            items = [(i, "clip+stream" if i in live_ids else kind, e) for i, kind, e in items]
        ids = [i for i, _, _ in items]
        if id not in ids:
            raise HTTPException(404, f"{display_name(id)!r} is neither an indexed clip nor a live stream "
                                     f"({len(clips)} clips, {len(items) - len(clips)} other streams known)")
        from streamproc.analysis import nearest
        q = ids.index(id)
        X = np.stack([e for _, _, e in items])
        found = [(i, s) for i, s in nearest(X[q], X, k + 1) if i != q][:k]
        return {"query": id, "neighbours": [{"id": items[i][0], "kind": items[i][1], "similarity": round(s, 6)}
                                            for i, s in found]}

    if gateway is not None:  # ingest: browsers, phones and HTTP clients onto audio.frames (consumers/gateway.py)
        gateway.add_routes(app)
    add_pages(app, live)

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

    return app


def mount_docs(app) -> None:
    """/docs (Swagger UI) and /redoc from assets served by this server (the fastapi-offline package ships them):
    the API docs work without Internet access, and the page loads nothing from a CDN."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    try:
        import fastapi_offline
    except ImportError:
        raise ConfigError("serve needs the api extra (fastapi-offline ships the docs' assets): "
                          "pip install 'audiostream[api]'") from None
    static = os.path.join(os.path.dirname(fastapi_offline.__file__), "static")
    app.mount("/static/docs", StaticFiles(directory=static), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - API reference",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)


STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def add_pages(app, live: LiveStreams | None) -> None:
    """The live page (/), the microphone page (/record) and the event stream they read (/v1/events): plain
    HTML/JS/CSS from consumers/static, no build step, nothing from a CDN."""
    import asyncio
    import json

    from fastapi import Request
    from fastapi.responses import FileResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"))

    @app.get("/record", include_in_schema=False)
    def record():
        return FileResponse(os.path.join(STATIC, "record.html"))

    @app.get("/v1/events", summary="Server-sent events: live streams as their predictions arrive",
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "event 'streams': a JSON list of the streams that changed; event "
                                            "'transcripts': new transcripts (id, stream_id, start_s, end_s, text); event "
                                            "'detections': windows with detections (id, stream_id, start_s, end_s, "
                                            "name, scientific_name, confidence, more)"}})
    async def events(request: Request):
        async def stream():
            if live is None:
                yield "event: error\ndata: " + json.dumps("live streams are off: start serve with -b HOST:PORT") + "\n\n"
                return
            seen, quiet = -1, 0.0
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                version, rows, captions, detections = live.page_since(seen)
                if rows or seen < 0:
                    yield "event: streams\ndata: " + json.dumps(rows) + "\n\n"
                    quiet = 0.0
                if captions:
                    yield "event: transcripts\ndata: " + json.dumps(captions) + "\n\n"
                    quiet = 0.0
                if detections:
                    yield "event: detections\ndata: " + json.dumps(detections) + "\n\n"
                    quiet = 0.0
                if rows or captions or detections or seen < 0:
                    seen = version
                elif quiet > 15:
                    yield ": still here\n\n"  # keeps proxies from closing an idle connection
                    quiet = 0.0
                await asyncio.sleep(0.5)
                quiet += 0.5
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def add_parser(sub):
    p = sub.add_parser("serve", help="HTTP API: classify uploads, models, live streams, similar clips",
                       description=__doc__)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default: 127.0.0.1, loopback only; 0.0.0.0 exposes it: see docs/security.md)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 = any free port)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"default model bundle (default: {DEFAULT_MODEL})")
    p.add_argument("--index", default=None, metavar="RESULTS", help="batch results (Parquet) to recommend from")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default: 20)")
    p.add_argument("--max-duration", type=float, default=600.0,
                   help="seconds of audio per upload, checked before decoding (default: 600)")
    p.add_argument("--max-concurrent", type=int, default=2,
                   help="uploads received/classified at once; more get 503 with Retry-After (default: 2)")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds a client has to send an upload's whole body; 408 after (default: 60)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers; the connection is closed after "
                        "(default: 10)")
    p.add_argument("--max-connections", type=int, default=100,
                   help="open connections and requests at once; more get 503 (default: 100)")
    p.add_argument("--max-header-kb", type=int, default=16,
                   help="largest request line + headers in KiB: 431, or the connection is closed while they are "
                        "still arriving (default: 16)")
    p.add_argument("--no-access-log", "--quiet", "-q", dest="access_log", action="store_false",
                   help="do not log each request (on by default)")
    p.add_argument("--predictions-topic", default=TOPIC_PREDICTIONS, help=f"(default: {TOPIC_PREDICTIONS})")
    p.add_argument("--features-topic", default=TOPIC_FEATURES, help=f"(default: {TOPIC_FEATURES})")
    p.add_argument("--streams-since", type=float, default=600.0,
                   help="seconds of live history to read at start (default: 600)")
    p.add_argument("--deadletter-topic", default=TOPIC_DEADLETTER, help="bad frames, counted per stream on the page")
    p.add_argument("--transcripts-topic", default=TOPIC_TRANSCRIPTS, help="recent transcripts on the live page")
    p.add_argument("--detections-topic", default=TOPIC_DETECTIONS,
                   help="recent detections (audiostream detect: BirdNET) on the live page")
    p.add_argument("--tags-topic", default="audio.tags",
                   help="music tags (audiostream tag): each stream's genre and mood in /v1/streams ('' turns it off)")
    p.add_argument("--ingest-token", default=os.environ.get("AUDIOSTREAM_INGEST_TOKEN"),
                   help="bearer token the ingest routes require (env AUDIOSTREAM_INGEST_TOKEN); without one they "
                        "answer only while serve listens on loopback")
    p.add_argument("--ingest-topic", default=TOPIC_FRAMES, help="where ingested streams go")
    p.add_argument("--ingest-max-speed", type=float, default=2.0,
                   help="a stream may send at most this many times real time, after 10 s ahead")
    add_kafka_arguments(p)
    p.set_defaults(func=run)


def _return_large_blocks_to_the_system() -> None:
    """glibc raises its mmap threshold after a large block is freed (up to 32 MiB), so the next requests'
    sample arrays come from arenas that keep their pages: RSS crept ~40 MiB per upload slot. A fixed 1 MiB
    threshold gives every large array back when it is freed (docs/security.md, measured)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def header_timeout_protocol(timeout_s: float):
    """uvicorn's h11 protocol, plus a deadline for a request's headers: ``timeout_s`` from the connection's
    start or from the previous response's end. uvicorn has none (its keep-alive timer stops at the first
    byte), so a client sending a header line now and then would hold its connection for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(timeout_s, self._headers_due, self.cycle)

        def _headers_due(self, cycle):
            if self.cycle is cycle and not self.transport.is_closing():  # no request began since
                log.warning("closed a connection whose request headers did not arrive within %g s "
                            "(--header-timeout)", timeout_s)
                self.transport.close()

    return HeaderTimeoutH11


def _bind(host: str, port: int):
    """The listening socket, bound here so a taken port is a clear error, and port 0 works."""
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                          f"(another server there? choose another --port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("serve needs the api extra: pip install 'audiostream[api]'") from None
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-duration", args.max_duration),
                        ("--max-concurrent", args.max_concurrent), ("--body-timeout", args.body_timeout),
                        ("--max-connections", args.max_connections), ("--max-header-kb", args.max_header_kb),
                        ("--header-timeout", args.header_timeout)):
        if not value > 0:
            raise ConfigError(f"{flag} {value} must be positive")
    live = gateway = None
    if args.bootstrap_servers or args.config or args.kafka_config or os.environ.get("AUDIOSTREAM_BOOTSTRAP_SERVERS"):
        from streamproc.inference import ModelBundle
        from streamproc.config import kafka_config_from_args

        from .gateway import Gateway
        kafka = kafka_config_from_args(args)
        live = LiveStreams(kafka, args.predictions_topic, args.features_topic,
                           ModelBundle.load(args.model).spec, since_s=args.streams_since,
                           deadletter_topic=args.deadletter_topic, transcripts_topic=args.transcripts_topic,
                           detections_topic=args.detections_topic, tags_topic=args.tags_topic or None).start()
        gateway = Gateway(kafka, args.ingest_topic, token=args.ingest_token,
                          require_token=args.host not in ("127.0.0.1", "::1", "localhost"),
                          max_speed=args.ingest_max_speed, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                          max_duration_s=args.max_duration)
    app = create_app(model=args.model, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                     max_duration_s=args.max_duration, index=args.index, live=live,
                     max_concurrent=args.max_concurrent, body_timeout_s=args.body_timeout,
                     max_header_bytes=args.max_header_kb << 10, gateway=gateway)
    _return_large_blocks_to_the_system()
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    from uvicorn.config import LOGGING_CONFIG
    log_config = {**LOGGING_CONFIG, "loggers": {**LOGGING_CONFIG["loggers"],
                                                "uvicorn.error": {"level": "WARNING"},
                                                "uvicorn.access": {"handlers": ["access"], "level": "INFO",
                                                                   "propagate": False}}}
    config = uvicorn.Config(app, log_config=log_config, log_level=None, access_log=args.access_log,
                            http=header_timeout_protocol(args.header_timeout),
                            h11_max_incomplete_event_size=args.max_header_kb << 10,
                            limit_concurrency=args.max_connections)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving on http://{shown}:{port} (docs at /docs), model {app.state.default_model}; limits: "
          f"{args.max_upload_mb:g} MiB, {args.max_duration:g} s of audio, {args.max_concurrent} at once",
          flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
