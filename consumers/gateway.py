"""The ingest gateway in ``serve``: audio from browsers, phones and any HTTP client onto ``audio.frames``.

- ``WS /v1/streams/{stream_id}/ws?rate=16000``: binary messages of raw PCM (signed 16-bit little-endian,
  mono, at ``rate``), in any sizes; the gateway cuts 100 ms frames of wire format v1 with one session id,
  consecutive sequence numbers and sample offsets, exactly as ``produce-mic`` does. A text message
  ``end`` (or a normal close) ends the session with the end-of-stream flag; a dropped connection ends it
  too, flagged ``GAP_BEFORE`` (audio may have been lost in flight), never a crash.
- ``PUT /v1/streams/{stream_id}/audio?rate=16000``: an audio file as the body (wav, flac, ogg, mp3; plain
  or chunked), decoded with the same bounded decoder as ``/v1/classify`` and replayed as one session.

Protection: a stream may send at most ``max_speed`` times real time after a ``burst_s`` allowance
(faster is refused, close code 1008 / HTTP 429, with the numbers); deliveries are checked (a frame Kafka
did not acknowledge fails the request or closes the socket with 1011); an optional bearer token
(``--ingest-token`` or AUDIOSTREAM_INGEST_TOKEN; ``Authorization: Bearer`` or ``?token=`` since browsers
cannot set headers on a WebSocket) is required whenever ``serve`` listens beyond loopback. The gateway
keeps no state beyond a connection: more ``serve`` replicas scale it.
"""
from __future__ import annotations

import hmac
import logging
import threading
import time

from confluent_kafka import KafkaException, Producer
from fastapi import HTTPException, Query, Request, WebSocket  # module level: the routes' annotations resolve here

from streamproc.kafka import DeliveryTracker, produce, producer_config
from streamproc import wire
from streamproc.errors import AudiostreamError, FrameError

log = logging.getLogger("audiostream.gateway")


class IngestRefused(AudiostreamError):
    """A stream the gateway will not carry on: too fast, too much, undeliverable."""

    def __init__(self, status: int, ws_code: int, message: str):
        super().__init__(message)
        self.status, self.ws_code = status, ws_code


REFUSAL_REASONS = ("token", "too_fast", "bad_input", "undeliverable")


class IngestMetrics:
    """The gateway's counters, on serve's /metrics (docs/metrics.md)."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.streams = Counter("audiostream_ingest_streams_total", "Ingest sessions started, by route",
                               ["route"], registry=r)
        self.frames = Counter("audiostream_ingest_frames_total", "Frames the gateway put on the frames topic",
                              registry=r)
        self.audio_seconds = Counter("audiostream_ingest_audio_seconds_total", "Seconds of audio ingested",
                                     registry=r)
        self.refused = Counter("audiostream_ingest_refused_total", "Ingest requests or streams refused, by reason",
                               ["reason"], registry=r)
        self.dropped = Counter("audiostream_ingest_dropped_connections_total",
                               "WebSocket sessions ended by a dropped connection (flagged GAP_BEFORE)", registry=r)
        self.open = Gauge("audiostream_ingest_open_connections", "WebSocket ingest connections open now",
                          registry=r)
        for reason in REFUSAL_REASONS:  # series exist at zero
            self.refused.labels(reason=reason)
        for route in ("ws", "http"):
            self.streams.labels(route=route)


class StreamIngest:
    """One connection's session: PCM bytes in any chunks -> frames of ``frame_samples`` on ``topic``."""

    def __init__(self, producer: Producer, topic: str, stream_id: str, *, rate: int, frame_ms: float = 100.0,
                 max_speed: float = 2.0, burst_s: float = 10.0, clock=time.monotonic):
        self.key = stream_id.encode("utf-8")
        wire.decode_stream_id(self.key)  # FrameError naming what is wrong with the id
        if not 8000 <= rate <= 192000:
            raise FrameError("bad_rate", f"rate={rate} Hz: a stream rate must be 8000..192000 Hz")
        self.producer, self.topic, self.stream_id, self.rate = producer, topic, stream_id, rate
        self.frame_samples = max(1, round(rate * frame_ms / 1000))
        self.max_speed, self.burst_s, self.clock = max_speed, burst_s, clock
        self.session = wire.new_session_id()
        self.tracker = DeliveryTracker()
        self.sequence = self.offset = 0
        self.buf = bytearray()
        self.started = clock()
        self.ended = False

    def _frame(self, pcm: bytes, flags: int = 0) -> None:
        n = len(pcm) // 2
        value = wire.encode_pcm(pcm, channels=1, n_frames=n, sample_rate=self.rate, sequence=self.sequence,
                                sample_offset=self.offset, capture_time_ns=time.time_ns(), session_id=self.session,
                                flags=flags)
        produce(self.producer, self.topic, value, self.key, on_delivery=self.tracker)
        self.sequence += 1
        self.offset += n

    def feed(self, data: bytes) -> None:
        """Append PCM; send every whole frame. Refuses a stream faster than ``max_speed`` x real time."""
        if self.ended:
            raise IngestRefused(409, 1008, f"stream {self.stream_id!r}: the session has ended")
        self.buf += data
        step = self.frame_samples * 2
        while len(self.buf) >= step:
            self._frame(bytes(self.buf[:step]))
            del self.buf[:step]
        self.producer.poll(0)
        if self.tracker.failed:
            raise IngestRefused(503, 1011, f"stream {self.stream_id!r}: Kafka refused a frame "
                                           f"({self.tracker.last_error}); try again later")
        audio_s = (self.offset + len(self.buf) // 2) / self.rate
        allowed = self.burst_s + self.max_speed * (self.clock() - self.started)
        if audio_s > allowed:
            raise IngestRefused(429, 1008, f"stream {self.stream_id!r} sends faster than real time: {audio_s:.1f} s "
                                           f"of audio in {self.clock() - self.started:.1f} s (at most "
                                           f"{self.burst_s:g} s ahead, then {self.max_speed:g}x real time)")

    def end(self, dropped: bool = False, flush_s: float = 30.0) -> dict:
        """Close the session: the rest of the buffer as the end-of-stream frame (flagged GAP_BEFORE if the
        connection dropped); wait for Kafka's acknowledgements."""
        if not self.ended:
            self.ended = True
            rest = bytes(self.buf[: len(self.buf) // 2 * 2])
            self.buf.clear()
            self._frame(rest, wire.FLAG_END_OF_STREAM | (wire.FLAG_GAP_BEFORE if dropped else 0))
        self.producer.flush(flush_s)
        return {"stream_id": self.stream_id, "session_id": self.session.hex(), "frames": self.sequence,
                "seconds": round(self.offset / self.rate, 6), "delivered": self.tracker.delivered,
                "failed": self.tracker.failed, "ended_by": "dropped connection" if dropped else "client"}


class Gateway:
    """The routes and the one Kafka producer they share."""

    def __init__(self, kafka: dict, topic: str, *, token: str | None, require_token: bool, max_speed: float = 2.0,
                 burst_s: float = 10.0, max_upload_bytes: int = 20 << 20, max_duration_s: float = 600.0):
        self.producer = Producer(producer_config(kafka, **{"linger.ms": 5}))
        self.topic, self.token, self.require_token = topic, token, require_token
        self.max_speed, self.burst_s = max_speed, burst_s
        self.max_upload_bytes, self.max_duration_s = max_upload_bytes, max_duration_s
        self.metrics = IngestMetrics()
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._poll, name="gateway-producer", daemon=True).start()

    def _poll(self) -> None:  # delivery callbacks run here, between requests too
        while not self._stop.is_set():
            try:
                self.producer.poll(0.1)
            except KafkaException as exc:  # a fatal producer error: said once, the routes then refuse
                self.failed = f"the gateway's Kafka producer failed: {exc.args[0].str() if exc.args else exc}"
                log.error("%s", self.failed)
                return

    def count(self, reason: str) -> None:
        self.metrics.refused.labels(reason=reason).inc()

    def counted(self, summary: dict, route: str, dropped: bool = False) -> dict:
        self.metrics.streams.labels(route=route).inc()
        self.metrics.frames.inc(summary["frames"])
        self.metrics.audio_seconds.inc(summary["seconds"])
        if dropped:
            self.metrics.dropped.inc()
        return summary

    def authorised(self, authorization: str | None, token_param: str | None) -> str | None:
        """None when allowed, else why not."""
        if self.failed:
            return self.failed
        if not self.token:
            return "ingest needs --ingest-token when serve listens beyond loopback" if self.require_token else None
        given = token_param or ""
        if authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return "a valid ingest token is required (Authorization: Bearer TOKEN, or ?token= on a WebSocket)"

    def add_routes(self, app) -> None:
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.concurrency import run_in_threadpool
        from starlette.websockets import WebSocketDisconnect

        gw = self

        @app.websocket("/v1/streams/{stream_id}/ws")
        async def ws_ingest(websocket: WebSocket, stream_id: str, rate: int = 16000, token: str | None = None):
            await websocket.accept()  # then a refusal is a close frame with its reason (a bare 403 says nothing)
            with gw.metrics.open.track_inprogress():
                await session(websocket, stream_id, rate, token)

        async def session(websocket: WebSocket, stream_id: str, rate: int, token: str | None):
            why = gw.authorised(websocket.headers.get("authorization"), token)
            if why:
                gw.count("token")
                await websocket.close(code=1008, reason=why[:120])
                return
            try:
                ingest = StreamIngest(gw.producer, gw.topic, stream_id, rate=rate, max_speed=gw.max_speed,
                                      burst_s=gw.burst_s)
            except FrameError as exc:
                gw.count("bad_input")
                await websocket.close(code=1008, reason=str(exc)[:120])
                return
            dropped = True
            try:
                while True:
                    msg = await websocket.receive()
                    if msg["type"] == "websocket.disconnect":
                        dropped = msg.get("code", 1000) not in (1000, 1001)
                        break
                    if msg.get("bytes") is not None:
                        ingest.feed(msg["bytes"])
                    elif (msg.get("text") or "").strip() == "end":
                        dropped = False
                        summary = gw.counted(await run_in_threadpool(ingest.end), "ws")
                        await websocket.send_json(summary)
                        await websocket.close(code=1000)
                        return
            except IngestRefused as exc:
                gw.count("too_fast" if exc.status == 429 else "undeliverable")
                log.warning("ingest refused: %s", exc)
                dropped = False
                gw.counted(await run_in_threadpool(ingest.end), "ws")
                await websocket.close(code=exc.ws_code, reason=str(exc)[:120])
                return
            except WebSocketDisconnect as exc:
                dropped = exc.code not in (1000, 1001)
            summary = gw.counted(await run_in_threadpool(ingest.end, dropped), "ws", dropped)
            log.info("ingest %s: %s frames, %s s%s", stream_id, summary["frames"], summary["seconds"],
                     " (connection dropped)" if dropped else "")

        @app.get("/metrics", include_in_schema=False)
        def metrics():
            return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @app.put("/v1/streams/{stream_id}/audio", summary="Send an audio file into Kafka as one live stream",
                 responses={401: {"description": "no or wrong ingest token"}, 400: {"description": "bad stream id"},
                            413: {"description": "too large or too long"}, 415: {"description": "not audio"},
                            503: {"description": "Kafka did not acknowledge"}})
        async def http_ingest(stream_id: str, request: Request, rate: int = Query(16000, ge=8000, le=192000),
                              token: str | None = Query(None, description="the ingest token, if not as a header")):
            import tempfile
            why = gw.authorised(request.headers.get("authorization"), token)
            if why:
                gw.count("token")
                raise HTTPException(401, why)
            try:
                wire.decode_stream_id(stream_id.encode("utf-8"))
            except FrameError as exc:
                gw.count("bad_input")
                raise HTTPException(400, str(exc)) from None
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > gw.max_upload_bytes:
                gw.count("bad_input")
                raise HTTPException(413, f"the upload is larger than {gw.max_upload_bytes >> 20} MiB")
            with tempfile.NamedTemporaryFile(suffix=".audio") as tmp:
                n = 0
                async for chunk in request.stream():  # to disk as it arrives, never whole in memory
                    n += len(chunk)
                    if n > gw.max_upload_bytes:
                        gw.count("bad_input")
                        raise HTTPException(413, f"the upload is larger than {gw.max_upload_bytes >> 20} MiB")
                    tmp.write(chunk)
                tmp.flush()
                if n == 0:
                    raise HTTPException(400, "the upload is empty")
                return await run_in_threadpool(gw._ingest_file, tmp.name, stream_id, rate)

    def _ingest_file(self, path: str, stream_id: str, rate: int) -> dict:
        from fastapi import HTTPException

        from producers.file import replay
        from streamproc.audio import AudioTooLongError, load, to_s16
        from streamproc.errors import AudioInputError
        try:
            y = load(path, rate, max_seconds=self.max_duration_s)
        except AudioTooLongError as exc:
            self.count("bad_input")
            raise HTTPException(413, str(exc).replace(path, stream_id)) from None
        except AudioInputError as exc:
            self.count("bad_input")
            raise HTTPException(415, f"not audio we can decode: {str(exc).replace(path, stream_id)}") from None
        r = replay(to_s16(y), producer=self.producer, topic=self.topic, stream_id=stream_id, sr=rate,
                   frame_samples=rate // 10, speed=float("inf"))
        if r.failed:
            self.count("undeliverable")
            raise HTTPException(503, f"Kafka did not acknowledge {r.failed} of {r.frames} frames ({r.last_error})")
        return self.counted({"stream_id": stream_id, "session_id": r.session_id.hex(), "frames": r.frames,
                             "seconds": round(r.samples / rate, 6), "delivered": r.delivered, "failed": r.failed},
                            "http")

    def close(self) -> None:
        self._stop.set()
        self.producer.flush(10)
