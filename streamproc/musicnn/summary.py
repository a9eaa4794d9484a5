"""Genre and mood as a readable summary: the mean tag scores of a stream's music over the last minute.

One object serves ``watch``, ``report`` and ``serve``'s ``/v1/streams`` (docs/music.md, "Genre and mood")::

    rolling = RollingTags()                   # span_s=60: the last minute of stream time
    for rec in audio_tags_records:            # docs/schemas/audio.tags.schema.json
        rolling.add(rec)
    rolling.advance("porch", 312.5)           # optional: the stream's time moved on (a prediction), music or not
    s = rolling.summary("porch")              # None when the stream had no music in the last minute
    s.text()   # 'genre: rock 0.61, pop 0.22  mood: happy 0.31'
    s.as_dict()

Rules:
- only windows the sound-type model called music count: ``music_share`` >= 0.5 (the tagger's gate,
  streamproc/musicnn/tagging.py); a record of a tagger run without a gate (``music_share`` null) is taken
  as music, since nothing says otherwise;
- the minute is **stream time** (the records' ``end_s``, the windows' sample time), never wall time: a
  replay at 20x real time summarises the same minute as a live stream. A window counts at time ``t`` when
  ``t - span_s < end_s <= t``; ``t`` is the newest time the stream has shown, by a tag record or by
  ``advance`` (so a stream that turned to speech loses its summary a minute later);
- each tag's score is its mean over those windows; a group's tags (model.yaml ``tag_groups``, e.g. genre,
  mood, instrument, era) are ranked by it;
- a window published twice (the tagger is at-least-once) counts once: (stream, model, start_sample);
- a stream's time going back by more than the span (a restarted stream) starts its summary afresh;
- records of several tagger models on one stream: the summary is the newest record's model's.

``span_s=float("inf")`` gives the mean over everything added: the report's whole-period summary.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field

MUSIC_SHARE = 0.5   # the tagger's gate (tagging.MUSIC_SHARE)
SPAN_S = 60.0
SHOWN = {"genre": 2, "mood": 1}  # what text() shows: the 2 best genres, the best mood (else the best instrument)
TOP = 3                          # tags per group in as_dict()

_groups_cache: dict[str, dict[str, list[str]]] = {}


def tag_groups(model: str) -> dict[str, list[str]]:
    """``tag_groups`` of a tagger bundle's model.yaml (``musictags-msd:1``), {} when the bundle is not at
    hand or has none (then the summary ranks all tags as one group, ``tags``)."""
    if model not in _groups_cache:
        groups: dict[str, list[str]] = {}
        try:
            import yaml

            from ..inference import resolve
            meta = yaml.safe_load((resolve(model) / "model.yaml").read_text()) or {}
            raw = meta.get("tag_groups") or {}
            if isinstance(raw, dict):
                groups = {str(k): [str(t) for t in v] for k, v in raw.items() if isinstance(v, list)}
        except Exception:  # an unknown or broken bundle: no groups, the summary still works
            groups = {}
        _groups_cache[model] = groups
    return _groups_cache[model]


def is_music(rec: dict) -> bool:
    share = rec.get("music_share")
    return share is None or share >= MUSIC_SHARE


@dataclass(frozen=True)
class Summary:
    """A stream's music over ``span_s`` of stream time ending at ``at_s``."""

    stream_id: str
    model: str
    at_s: float
    span_s: float
    windows: int                      # music windows that count
    music_s: float                    # their total length (s)
    groups: dict = field(default_factory=dict)  # group -> [(tag, mean score)], best first, every tag

    def top(self, group: str, n: int = TOP) -> list[tuple[str, float]]:
        return self.groups.get(group, [])[:n]

    def text(self) -> str:
        """'genre: rock 0.61, pop 0.22  mood: happy 0.31' ('instrument' for a model without mood tags; the 3
        best tags for a model without groups)."""
        parts = []
        shown = dict(SHOWN) if any(self.groups.get(g) for g in SHOWN) else {next(iter(self.groups), "tags"): 3}
        if "mood" in shown and not self.groups.get("mood"):  # MagnaTagATune has no mood tags
            shown.pop("mood")
            shown["instrument"] = 1
        for group, n in shown.items():
            tops = self.top(group, n)
            if tops:
                parts.append(f"{group}: " + ", ".join(f"{t} {s:.2f}" for t, s in tops))
        return "  ".join(parts)

    def as_dict(self, n: int = TOP) -> dict:
        """The JSON of /v1/streams' ``music``: the best ``n`` tags of each group with their mean score."""
        return {"model": self.model, "at_s": round(self.at_s, 3),
                "span_s": None if math.isinf(self.span_s) else self.span_s, "windows": self.windows,
                "music_s": round(self.music_s, 3),
                "top": {g: [[t, round(s, 4)] for t, s in tags[:n]] for g, tags in self.groups.items() if tags},
                "text": self.text()}


class RollingTags:
    """Per stream, the music tag windows of the last ``span_s`` seconds of stream time (module docstring)."""

    def __init__(self, span_s: float = SPAN_S, *, max_streams: int = 10000, groups=tag_groups):
        if not span_s > 0:
            raise ValueError(f"span_s={span_s} must be positive")
        self.span_s, self.max_streams, self._groups = span_s, max_streams, groups
        self._windows: dict[str, dict[str, OrderedDict]] = defaultdict(dict)  # stream -> model -> start -> rec
        self._clock: OrderedDict[str, float] = OrderedDict()  # stream -> its newest stream time (LRU order)
        self._model: dict[str, str] = {}  # stream -> the model of its newest record
        # stream -> model -> [sum of each tag, windows, seconds] over the kept windows: a summary at the
        # stream's own time costs one pass over the tags, not over every window (serve asks per prediction)
        self._acc: dict[str, dict[str, list]] = defaultdict(dict)
        self.ignored = 0  # records not counted: not music, or malformed

    def add(self, rec: dict) -> bool:
        """Take one audio.tags record; True when it counts (a music window, new)."""
        try:
            sid, model, end = str(rec["stream_id"]), str(rec["model"]), float(rec["end_s"])
            start, tags = int(rec["start_sample"]), rec["tags"]
            if not isinstance(tags, dict) or not tags:
                raise TypeError("tags")
        except (KeyError, TypeError, ValueError):
            self.ignored += 1
            return False
        self.advance(sid, end)
        if not is_music(rec):
            self.ignored += 1
            return False
        self._model[sid] = model
        wins = self._windows[sid].setdefault(model, OrderedDict())
        if start in wins:
            return False
        win = (end, end - float(rec.get("start_s", end)), {str(k): float(v) for k, v in tags.items()})
        wins[start] = win
        self._account(sid, model, win, +1)
        return True

    def _account(self, sid: str, model: str, win: tuple, sign: int) -> None:
        acc = self._acc[sid].setdefault(model, [defaultdict(float), 0, 0.0])
        acc[1] += sign
        if acc[1] == 0:  # empty: start the sums afresh (no rounding left over from adding and taking away)
            self._acc[sid][model] = [defaultdict(float), 0, 0.0]
            return
        acc[2] += sign * win[1]
        for k, v in win[2].items():
            acc[0][k] += sign * v

    def advance(self, stream_id: str, t_s: float) -> None:
        """The stream has reached stream time ``t_s`` (seconds): windows older than the span drop out."""
        now = self._clock.get(stream_id)
        if now is not None and t_s < now - self.span_s:  # the stream started again: a new summary
            self.forget(stream_id)
            now = None
        if now is None or t_s > now:
            self._clock[stream_id] = t_s
        self._clock.move_to_end(stream_id)
        while len(self._clock) > self.max_streams:
            self.forget(next(iter(self._clock)))
        if not math.isinf(self.span_s) and stream_id in self._windows:
            cut = self._clock[stream_id] - self.span_s
            for model, wins in self._windows[stream_id].items():
                for start in [k for k, w in wins.items() if w[0] <= cut]:  # a minute holds ~20 windows
                    self._account(stream_id, model, wins.pop(start), -1)

    def forget(self, stream_id: str) -> None:
        self._clock.pop(stream_id, None)
        self._windows.pop(stream_id, None)
        self._acc.pop(stream_id, None)
        self._model.pop(stream_id, None)

    def streams(self) -> list[str]:
        return list(self._clock)

    def summary(self, stream_id: str, at_s: float | None = None) -> Summary | None:
        """The stream's music in (at_s - span_s, at_s]; None without music. ``at_s``: the stream's newest time
        by default; an earlier one sees only the windows still kept (those of the last span)."""
        model = self._model.get(stream_id)
        if model is None:
            return None
        if at_s is None:  # the stream's own time: the kept windows are exactly those of the span
            at = self._clock[stream_id]
            sums, n, music_s = self._acc[stream_id].get(model, [{}, 0, 0.0])
        else:
            at = at_s
            rows = [w for w in self._windows[stream_id].get(model, {}).values() if at - self.span_s < w[0] <= at]
            sums, n, music_s = defaultdict(float), len(rows), sum(w[1] for w in rows)
            for _, _, tags in rows:
                for k, v in tags.items():
                    sums[k] += v
        if not n:
            return None
        mean = {k: v / n for k, v in sums.items()}
        groups = self._groups(model) or {"tags": list(mean)}
        ranked = {g: sorted(((t, mean[t]) for t in tags if t in mean), key=lambda x: (-x[1], x[0]))
                  for g, tags in groups.items()}
        return Summary(stream_id, model, at, self.span_s, n, music_s, ranked)


def records_from_rows(rows: list[dict]) -> list[dict]:
    """The tag windows of ``batch --tags`` results (their ``music_tags`` column, tagging.add_columns), once each."""
    out, seen = [], set()
    for row in rows:
        text = row.get("music_tags")
        if not text:
            continue
        try:
            rec = json.loads(text)
            key = (rec["stream_id"], rec["model"], rec["start_sample"])
        except (ValueError, TypeError, KeyError):
            continue
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out
