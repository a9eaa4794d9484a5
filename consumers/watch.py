"""``audiostream watch``: a live view of predictions per stream, and the Python API under it.

Python::

    from consumers.watch import subscribe
    for p in subscribe(bootstrap_servers="localhost:9092"):
        print(p.stream_id, p.label, p.confidence)

The terminal view redraws one row per stream (label, confidence, level meter,
windows, gaps) when attached to a terminal; otherwise (or with ``--lines``) it
prints one line per prediction.

Live captions: ``watch --topic audio.transcripts`` (or ``--captions`` for a topic of
another name) prints one line per utterance as the transcriber publishes it:
stream, start-end in stream seconds, text (a repeat after a transcriber restart,
same id, is shown once). On a terminal, a partial transcript of an utterance still
open (``"final": false``) is shown as a line that updates in place (one per stream
talking, at the bottom) and is replaced by the final one; elsewhere (a pipe, a log) only finals are printed, ``--json``
prints every record.

Genre and mood: the table also reads the music tagger's topic (``--tags-topic``, default
``audio.tags``; ``audiostream tag``) and shows, per stream with music, its genre and mood over the
last minute of stream time (streamproc/musicnn/summary.py), e.g.
``porch  music  genre: rock 0.61, pop 0.22  mood: happy 0.31``. ``watch --topic audio.tags`` shows
that summary alone: a row per stream (a line each time it changes when not on a terminal).
"""
from __future__ import annotations

import json
import signal
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from confluent_kafka import Consumer, KafkaError

from streamproc.kafka import check_reachable, client_logging
from streamproc.settings import TOPIC_DETECTIONS, TOPIC_PREDICTIONS, TOPIC_TRANSCRIPTS, add_kafka_arguments
from streamproc.config import kafka_config, kafka_config_from_args

TOPIC_TAGS = "audio.tags"  # streamproc.musicnn.tagging.TOPIC_TAGS (not imported: it loads the engine)


@dataclass(frozen=True)
class Prediction:
    """One record of ``audio.predictions`` (schema: docs/predictions.md)."""

    id: str
    stream_id: str
    session_id: str
    window_index: int
    window_start_s: float
    window_end_s: float
    label: str
    confidence: float
    scores: dict
    model: dict
    gap: bool = False
    rms_dbfs: float | None = None
    latency_ms: float | None = None
    capture_time: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: bytes | str) -> "Prediction":
        d = json.loads(data)
        return cls(id=d["id"], stream_id=d["stream_id"], session_id=d["session_id"],
                   window_index=d["window_index"], window_start_s=d["window_start_s"],
                   window_end_s=d["window_end_s"], label=d["label"], confidence=d["confidence"],
                   scores=d["scores"], model=d["model"], gap=d.get("gap", False), rms_dbfs=d.get("rms_dbfs"),
                   latency_ms=d.get("latency_ms"), capture_time=d.get("capture_time"), raw=d)


@dataclass(frozen=True)
class Caption:
    """One record of ``audio.transcripts`` (docs/transcription.md), as a caption."""

    id: str
    stream_id: str
    start_s: float
    end_s: float
    text: str
    final: bool = True
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: bytes | str) -> "Caption":
        d = json.loads(data)
        return cls(id=d["id"], stream_id=d["stream_id"], start_s=d["start_s"], end_s=d["end_s"], text=d["text"],
                   final=d.get("final", True), raw=d)

    @property
    def utterance_id(self) -> str:
        """The utterance this record is about: a final's own id, a partial's ``utterance_id``."""
        return self.id if self.final else self.raw.get("utterance_id", self.id)


class CaptionView:
    """Captions on a text stream. Finals: one line each, each utterance once. Partials (on a terminal, ``tty``):
    a block at the bottom with one line per stream whose utterance is open (the newest ``max_live`` streams),
    each rewritten in place as its utterance grows and replaced by its final line; a partial that arrives after
    its final (or for an utterance already shown) is ignored. Without ``tty`` partials are not shown (a pipe or a
    log gets the finals only)."""

    CLEAR = "\r\033[K"   # to the line's start, erase it
    UP = "\033[1A"        # the cursor one line up

    def __init__(self, out, *, tty: bool, remember: int = 10000, max_live: int = 8, width: int | None = None):
        import collections
        self.out, self.tty, self.remember, self.max_live = out, tty, remember, max_live
        self.width = width  # a terminal's columns: a partial line is cut to fit, so erasing it erases one row
        self.done: collections.OrderedDict = collections.OrderedDict()  # utterance ids shown as finals
        self.live: collections.OrderedDict = collections.OrderedDict()  # stream id -> its open utterance's partial
        self.shown = 0  # rows of the partials block now on the screen

    def add(self, c: Caption) -> bool:
        """Show ``c``; True when it was a new final line."""
        uid = c.utterance_id
        if uid in self.done:
            return False  # a repeat (at-least-once) or a partial overtaken by its final
        if not c.final:
            if self.tty:
                self.live.pop(c.stream_id, None)
                self.live[c.stream_id] = c  # the stream's newest partial, at the bottom
                while len(self.live) > self.max_live:
                    self.live.popitem(last=False)
                self._erase()
                self._draw()
                self.out.flush()
            return False
        self.done[uid] = None
        if len(self.done) > self.remember:
            self.done.popitem(last=False)
        live = self.live.get(c.stream_id)
        if live is not None and live.utterance_id == uid:
            del self.live[c.stream_id]
        self._erase()
        self.out.write(format_caption(c) + "\n")
        self._draw()
        self.out.flush()
        return True

    def _erase(self) -> None:
        if self.shown:
            self.out.write(self.CLEAR + (self.UP + self.CLEAR) * (self.shown - 1))
            self.shown = 0

    def _draw(self) -> None:
        if not self.tty or not self.live:
            return
        lines = [format_caption(p) + " ..." for p in self.live.values()]
        if self.width:
            lines = [ln if len(ln) < self.width else ln[:self.width - 2] + "~" for ln in lines]
        self.out.write("\n".join(lines))
        self.shown = len(lines)


def format_detections(d: dict) -> str:
    """One ``audio.detections`` record (a BirdNET window) as a line: stream, window, what was heard."""
    heard = "; ".join(f"{x['common_name']}" + (f" ({x['scientific_name']})" if x.get("scientific_name") else "")
                      + f" {x['confidence']:.2f}" for x in d["detections"])
    return f"{d['stream_id']:<20} {d['window_start_s']:8.2f}-{d['window_end_s']:<8.2f} {heard}"


def format_caption(c: Caption) -> str:
    return f"{c.stream_id:<20} {c.start_s:8.2f}-{c.end_s:<8.2f} {c.text}"


def subscribe(bootstrap_servers: str | None = None, *, topic: str | list[str] = TOPIC_PREDICTIONS,
              from_beginning: bool = False,
              group_id: str | None = None, kafka: dict | None = None, stop: threading.Event | None = None,
              poll_timeout: float = 0.2, idle_timeout: float | None = None,
              parse=None) -> Iterator[Prediction]:
    """Yield predictions as they arrive. Undecodable records are skipped (and reported on stderr).

    ``group_id=None`` uses a throwaway group that commits nothing (a pure viewer);
    give a group id to share work and resume where the group left off.
    ``idle_timeout``: stop after that many seconds without a prediction.
    ``parse``: how a record becomes an item (default ``Prediction.from_json``; ``Caption.from_json`` for transcripts).
    ``topic``: one topic or a list (a topic that does not exist yet is waited for, silently).
    """
    parse = parse or Prediction.from_json
    conf = dict(kafka) if kafka else kafka_config(bootstrap_servers)
    if bootstrap_servers:
        conf["bootstrap.servers"] = bootstrap_servers
    conf.update({"group.id": group_id or f"audiostream-watch-{uuid.uuid4().hex[:8]}",
                 "enable.auto.commit": group_id is not None, "allow.auto.create.topics": False,
                 "auto.offset.reset": "earliest" if from_beginning else "latest",
                 "isolation.level": "read_committed"})
    consumer = Consumer(client_logging(conf))
    consumer.subscribe([topic] if isinstance(topic, str) else list(topic))
    stop = stop or threading.Event()
    last = time.monotonic()
    try:
        while not stop.is_set():
            msg = consumer.poll(poll_timeout)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            if msg.error():
                if msg.error().code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    print(f"watch: {msg.error().str()}", file=sys.stderr)
                continue
            last = time.monotonic()
            try:
                yield parse(msg.value())
            except (ValueError, KeyError, TypeError) as exc:
                print(f"watch: skipping undecodable record at {msg.topic()}[{msg.partition()}]@{msg.offset()}: "
                      f"{exc!r}", file=sys.stderr)
    finally:
        consumer.close()


def level_meter(dbfs: float | None, width: int = 12) -> str:
    """A bar for -60..0 dBFS."""
    if dbfs is None:
        return " " * width
    filled = max(0, min(width, round((dbfs + 60) / 60 * width)))
    return "#" * filled + "." * (width - filled)


def fit(text: str, width: int) -> str:
    """``text`` in ``width`` columns: cut with an ellipsis when longer, so a cut id never passes for another."""
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def format_line(p: Prediction) -> str:
    gap = " GAP" if p.gap else ""
    level = f"{p.rms_dbfs:6.1f} dBFS" if p.rms_dbfs is not None else ""
    return (f"{p.stream_id:<20} {p.window_start_s:8.2f}-{p.window_end_s:<8.2f} {p.label:<12} "
            f"{p.confidence:5.2f}  {level}{gap}")


class Table:
    """Latest prediction per stream, redrawn in place."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.rows: dict[str, Prediction] = {}
        self.windows: dict[str, int] = {}
        self.gaps: dict[str, int] = {}
        self.music: dict[str, str] = {}  # stream -> its genre/mood summary text (last minute of music)
        self._drawn = 0

    def add(self, p: Prediction) -> None:
        self.rows[p.stream_id] = p
        self.windows[p.stream_id] = self.windows.get(p.stream_id, 0) + 1
        self.gaps[p.stream_id] = self.gaps.get(p.stream_id, 0) + int(p.gap)

    MAX_ID = 40  # longer stream ids are cut with an ellipsis

    def render(self, waiting: str | None = None) -> str:
        w = max([6] + [min(len(sid), self.MAX_ID) for sid in self.rows])
        music = any(self.music.get(sid) for sid in self.rows)
        head = (f"{'STREAM':<{w}} {'LABEL':<12} {'CONF':>5}  {'LEVEL':<12} {'dBFS':>6} {'WINDOWS':>7} {'GAPS':>4}  "
                f"{'AT (s)':>8}" + ("  MUSIC, LAST MINUTE (mean tag score)" if music else ""))
        lines = [head]
        for sid in sorted(self.rows):
            p = self.rows[sid]
            db = f"{p.rms_dbfs:6.1f}" if p.rms_dbfs is not None else "     -"
            lines.append(f"{fit(sid, w):<{w}} {fit(p.label, 12):<12} {p.confidence:5.2f}  {level_meter(p.rms_dbfs)} "
                         f"{db} {self.windows[sid]:>7} {self.gaps[sid]:>4}  {p.window_end_s:8.1f}"
                         + (f"  {self.music[sid]}" if self.music.get(sid) else ""))
        if waiting and not self.rows:
            lines.append(waiting)
        return "\n".join(lines)

    def draw(self, waiting: str | None = None) -> None:
        text = self.render(waiting)
        if self._drawn:
            self.out.write(f"\033[{self._drawn}F\033[J")
        self.out.write(text + "\n")
        self.out.flush()
        self._drawn = text.count("\n") + 1


def add_parser(sub):
    p = sub.add_parser("watch", help="live table of predictions per stream", description=__doc__)
    add_kafka_arguments(p)
    p.add_argument("--topic", default=TOPIC_PREDICTIONS)
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest retained prediction")
    p.add_argument("--lines", action="store_true", help="one line per prediction instead of a table")
    p.add_argument("--json", action="store_true", help="print each prediction as its JSON record")
    p.add_argument("--max", type=int, default=None, help="exit after this many predictions")
    p.add_argument("--idle-timeout", type=float, default=None, help="exit after this many seconds without predictions")
    p.add_argument("--captions", action="store_true",
                   help=f"the topic holds transcripts: one caption line each (automatic for {TOPIC_TRANSCRIPTS})")
    p.add_argument("--tags-topic", default=TOPIC_TAGS, metavar="TOPIC",
                   help=f"the music tagger's topic: the table shows each stream's genre and mood over the last "
                        f"minute (default: {TOPIC_TAGS}; '' turns it off)")
    p.add_argument("--tags", action="store_true",
                   help=f"the topic holds music tags (audiostream tag): a row per stream with its genre and mood over "
                        f"the last minute of stream time (automatic for {TOPIC_TAGS})")
    p.add_argument("--detections", action="store_true",
                   help=f"the topic holds a detector's records (BirdNET): one line per window with something heard "
                        f"(automatic for {TOPIC_DETECTIONS})")
    p.set_defaults(func=run)


def run_detections(args, kafka: dict, stop: threading.Event) -> int:
    """What a detector hears: one line per window with detections (stream, window, names, confidences); a
    window published again (at-least-once) is shown once; windows with nothing heard are not shown."""
    import collections
    seen: collections.OrderedDict = collections.OrderedDict()
    n = 0
    for d in subscribe(topic=args.topic, from_beginning=args.from_beginning, kafka=kafka, stop=stop,
                       idle_timeout=args.idle_timeout, parse=json.loads):
        if not d.get("detections") or d.get("id") in seen:
            continue
        seen[d.get("id")] = None
        if len(seen) > 10000:
            seen.popitem(last=False)
        n += 1
        print(json.dumps(d) if args.json else format_detections(d), flush=True)
        if args.max is not None and n >= args.max:
            break
    return 0


def is_tags_record(d) -> bool:
    return isinstance(d, dict) and isinstance(d.get("tags"), dict) and "top" in d


def format_music(summary) -> str:
    """A stream's rolling music summary as a line: stream, stream time, 'music', genre and mood."""
    return f"{summary.stream_id:<20} {summary.at_s:8.2f}  music  {summary.text()}  ({summary.windows} windows)"


def run_tags(args, kafka: dict, stop: threading.Event) -> int:
    """Genre and mood per stream over the last minute of stream time, from the tagger's records: a table
    on a terminal; otherwise a line whenever a stream's summary changes (``--json``: its JSON)."""
    from streamproc.musicnn.summary import RollingTags
    rolling, shown, n = RollingTags(), {}, 0
    table_mode = sys.stdout.isatty() and not (args.lines or args.json)
    out = sys.stdout
    drawn = 0
    for d in subscribe(topic=args.topic, from_beginning=args.from_beginning, kafka=kafka, stop=stop,
                       idle_timeout=args.idle_timeout, parse=json.loads):
        if not is_tags_record(d) or not rolling.add(d):
            continue
        s = rolling.summary(d["stream_id"])
        if s is None or shown.get(s.stream_id, (None,))[0] == s.text():
            continue
        shown[s.stream_id] = (s.text(), s)
        n += 1
        if table_mode:
            w = max([6] + [min(len(sid), Table.MAX_ID) for sid in shown])
            lines = [f"{'STREAM':<{w}} {'AT (s)':>8}  {'WINDOWS':>7}  MUSIC, LAST MINUTE (mean tag score)"]
            lines += [f"{fit(sid, w):<{w}} {x.at_s:8.1f}  {x.windows:>7}  {text}" for sid, (text, x) in sorted(shown.items())]
            if drawn:
                out.write(f"\033[{drawn}F\033[J")
            out.write("\n".join(lines) + "\n")
            out.flush()
            drawn = len(lines)
        else:
            print(json.dumps({"stream_id": s.stream_id, **s.as_dict()}) if args.json else format_music(s), flush=True)
        if args.max is not None and n >= args.max:
            break
    return 0


def run_captions(args, kafka: dict, stop: threading.Event) -> int:
    """Live captions: one line per transcript (stream, start-end, text); a repeated id is shown once; partials
    update the bottom line on a terminal (:class:`CaptionView`). ``--max`` counts final transcripts."""
    import collections
    seen: collections.OrderedDict = collections.OrderedDict()
    tty = sys.stdout.isatty()
    view = CaptionView(sys.stdout, tty=tty, width=shutil.get_terminal_size().columns if tty else None)
    n = 0
    for c in subscribe(topic=args.topic, from_beginning=args.from_beginning, kafka=kafka, stop=stop,
                       idle_timeout=args.idle_timeout, parse=Caption.from_json):
        if args.json:
            if c.id in seen:  # at-least-once: a transcriber restart may publish an utterance again
                continue
            seen[c.id] = None
            if len(seen) > 10000:
                seen.popitem(last=False)
            print(json.dumps(c.raw), flush=True)
            n += c.final
        else:
            n += view.add(c)
        if args.max is not None and n >= args.max:
            break
    if view.shown:  # a block of partials is on the screen, its last line open: end it
        sys.stdout.write("\n")
    return 0


def run(args) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    table_mode = sys.stdout.isatty() and not (args.lines or args.json)
    kafka = kafka_config_from_args(args)
    check_reachable(kafka)  # an unreachable cluster is one clear error (exit 2), not an endless retry
    if args.captions or args.topic == TOPIC_TRANSCRIPTS:
        return run_captions(args, kafka, stop)
    if args.detections or args.topic == TOPIC_DETECTIONS:
        return run_detections(args, kafka, stop)
    if args.tags or args.topic == TOPIC_TAGS:
        return run_tags(args, kafka, stop)
    table = Table()
    rolling = None
    topics: str | list[str] = args.topic
    if table_mode and args.tags_topic:  # each stream's genre and mood beside its label
        from streamproc.musicnn.summary import RollingTags
        rolling, topics = RollingTags(), list(dict.fromkeys([args.topic, args.tags_topic]))

    def parse(raw):
        d = json.loads(raw)
        return d if rolling is not None and is_tags_record(d) else Prediction.from_json(raw)
    if table_mode:  # the header at once, not a blank screen until the first prediction
        table.draw(waiting=f"waiting for predictions on {args.topic} "
                           f"({'from the oldest retained' if args.from_beginning else 'new ones only'}) ...")
    n = 0
    last_draw = 0.0
    for p in subscribe(topic=topics, from_beginning=args.from_beginning, kafka=kafka,
                       stop=stop, idle_timeout=args.idle_timeout, parse=parse):
        if rolling is not None:
            sid = p["stream_id"] if isinstance(p, dict) else p.stream_id
            if isinstance(p, dict):
                rolling.add(p)
            else:
                rolling.advance(sid, p.window_end_s)
            s = rolling.summary(sid)
            table.music[sid] = s.text() if s is not None else ""
            if isinstance(p, dict):
                if sid in table.rows and time.monotonic() - last_draw > 0.25:
                    table.draw()
                    last_draw = time.monotonic()
                continue
        n += 1
        if args.json:
            print(json.dumps(p.raw), flush=True)
        elif table_mode:
            table.add(p)
            if time.monotonic() - last_draw > 0.25:
                table.draw()
                last_draw = time.monotonic()
        else:
            print(format_line(p), flush=True)
        if args.max is not None and n >= args.max:
            break
    if table_mode and table.rows:
        table.draw()
    return 0
