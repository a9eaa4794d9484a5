"""Music tags for streams: the musictags bundle on the engine's log-mel patches, gated by the sound type.

``Tagger`` owns two engines fed the same frames: the tagger bundle's (16 kHz, n_fft 512, hop 256, 96 mels,
~3 s windows with the bundle's log-mel patch) and the sound-type bundle's (its own window spec). A tag
window is published when the sound-type windows inside it are mostly ``music`` (``music_share`` >= 0.5),
or always with ``every_window``. Both engines see a frame in the same step, so every sound-type window
inside a tag window is complete when the tag window is. The same object serves the Kafka service
(``audiostream tag``, consumers/tagger.py) and files (``tag_pcm``), so both give the same records.
"""
from __future__ import annotations

import json
from collections import defaultdict, deque

import numpy as np

from ..engine import Engine
from ..inference import ModelBundle
from ..wire import FLAG_END_OF_STREAM, AudioFrame

TOPIC_TAGS = "audio.tags"
RECORD_VERSION = 1
TOP_K = 5
MUSIC_SHARE = 0.5


def tags_record(w, tags: np.ndarray, emb: np.ndarray, labels: list[str], *, model: str, gate: str | None,
                music_share: float | None) -> dict:
    """The ``audio.tags`` record of one window (docs/schemas/tags.schema.json)."""
    order = np.argsort(-tags)[:TOP_K]
    return {"v": RECORD_VERSION, "stream_id": w.stream_id, "window_index": int(w.index),
            "start_sample": int(w.start), "end_sample": int(w.end), "sample_rate": int(w.sample_rate),
            "start_s": round(w.start / w.sample_rate, 6), "end_s": round(w.end / w.sample_rate, 6),
            "model": model, "gate_model": gate, "music_share": None if music_share is None else round(music_share, 3),
            "top": [[labels[i], round(float(tags[i]), 5)] for i in order],
            "tags": {lab: round(float(v), 5) for lab, v in zip(labels, tags)},
            "embedding": [round(float(v), 5) for v in emb]}


class Tagger:
    def __init__(self, tagger: ModelBundle, gate: ModelBundle | None, *, every_window: bool = False,
                 idle_timeout_s: float = 60.0):
        if tagger.logmel is None:
            raise ValueError(f"{tagger.ref} is not a log-mel tagger bundle")
        self.tagger, self.gate, self.every_window = tagger, gate, every_window or gate is None
        self.engine = Engine(tagger.spec, idle_timeout_s=idle_timeout_s, logmel=tagger.logmel)
        self.gate_engine = Engine(gate.spec, idle_timeout_s=idle_timeout_s) if gate is not None else None
        self.labels = tagger.labels
        self._music = defaultdict(lambda: deque(maxlen=64))  # stream -> (start_s, end_s, is_music) of gate windows
        self.skipped = 0  # tag windows not music enough to tag

    def accept(self, stream_id: str, frame: AudioFrame, now: float, tag=None) -> None:
        self.engine.accept(stream_id, frame, now, tag=tag)
        if self.gate_engine is not None and frame.sample_rate == self.gate.spec.sr:
            self.gate_engine.accept(stream_id, frame, now, tag=tag)

    def step(self, now: float) -> list[dict]:
        """Records of the tag windows completed by the frames accepted so far."""
        if self.gate_engine is not None:
            gw = self.gate_engine.step(now)
            if gw:
                music = self.gate.labels.index("music")
                scores = self.gate.score(gw)
                for w, s in zip(gw, scores):
                    self._music[w.stream_id].append((w.start / w.sample_rate, w.end / w.sample_rate,
                                                     bool(np.isfinite(s).all() and int(np.argmax(s)) == music)))
        windows = self.engine.step(now)
        if not windows:
            return []
        shares = [self._share(w) for w in windows]
        keep = [i for i, s in enumerate(shares) if self.every_window or (s is not None and s >= MUSIC_SHARE)]
        self.skipped += len(windows) - len(keep)
        if not keep:
            return []
        x = np.stack([windows[i].patch for i in keep]).astype(np.float32)
        tags, emb = self.tagger.session.run([self.tagger.output_name, "embedding"], {self.tagger.input_name: x})
        gate = self.gate.ref if self.gate is not None else None  # with every_window: music_share still says
        return [tags_record(windows[i], t, e, self.labels, model=self.tagger.ref, gate=gate, music_share=shares[i])
                for i, t, e in zip(keep, tags, emb)]

    def _share(self, w) -> float | None:
        """Share of the gate's windows inside ``w`` called music (None: no gate window inside it)."""
        if self.gate_engine is None:
            return None
        lo, hi = w.start / w.sample_rate, w.end / w.sample_rate
        inside = [m for a, b, m in self._music[w.stream_id] if a >= lo - 1e-9 and b <= hi + 1e-9]
        return float(np.mean(inside)) if inside else None

    def finished(self) -> None:
        for sid in self.engine.finished():
            self._music.pop(sid, None)
        if self.gate_engine is not None:
            self.gate_engine.finished()


def load(tagger: str = "musictags", gate: str | None = "soundtype", every_window: bool = False) -> Tagger:
    return Tagger(ModelBundle.load(tagger), None if gate is None else ModelBundle.load(gate), every_window=every_window)


def tag_pcm(pcm: np.ndarray, tagger: Tagger, stream_id: str, frame_samples: int = 1600) -> list[dict]:
    """Records for int16 mono ``pcm`` at 16 kHz as one whole stream (offline: files, tests)."""
    session = b"\1" * 16
    out = []
    for seq, a in enumerate(range(0, len(pcm), frame_samples)):
        last = a + frame_samples >= len(pcm)
        tagger.accept(stream_id, AudioFrame(tagger.tagger.spec.sr, seq, a, 0, session,
                                            pcm[a:a + frame_samples, None],
                                            flags=FLAG_END_OF_STREAM if last else 0), 0.0)
        out += tagger.step(0.0)
    tagger.finished()
    return out


# -- batch --tags columns --------------------------------------------------------------------------------
COLUMNS = {"music_top": "string", "music_embedding": "list<float32>", "music_tags": "string"}
TAG_WINDOW_FIELDS = ("stream_id", "model", "start_sample", "start_s", "end_s", "music_share", "tags")


def add_columns(rows: list[dict], recs: list[dict]) -> list[dict]:
    """Each window row gets the tags and embedding of the tag window containing its centre (null where
    that stretch was not music, or for a file shorter than one tag window); ``music_tags`` is that tag
    window's record without its embedding (JSON: window, model, music_share, every tag's score), which
    ``report`` reads back as audio.tags records (``summary.records_from_rows``)."""
    spans = sorted(((r["start_s"], r["end_s"], r) for r in recs), key=lambda x: x[0])
    for row in rows:
        c = (row["start_s"] + row["end_s"]) / 2
        rec = next((r for a, b, r in spans if a <= c < b), None)
        row["music_top"] = None if rec is None else "; ".join(f"{t} {p:.2f}" for t, p in rec["top"])
        row["music_embedding"] = None if rec is None else rec["embedding"]
        row["music_tags"] = None if rec is None else json.dumps({k: rec[k] for k in TAG_WINDOW_FIELDS})
    return rows

