"""``audiostream report``: the figures a researcher would otherwise make by hand.

From batch results (``audiostream batch ... --out results.parquet``) or from the
live output topics (``--topic audio.features --since 1h``: windows joined with
their predictions by id), writes into ``--out``:

- ``labels.png``: label timeline per stream and the overall label share;
- ``trends.png``: loudness (RMS dBFS) and spectral centroid over time per stream;
- ``tempo.png``: tempo over time for streams with a tempo (music);
- ``rhythm.png`` (results of ``batch --rhythm``): per stream the whole-track tempo curve, tempo, stability
  and key, and a beat grid (downbeats marked) over 8 s of its waveform;
- ``spectrogram.png``: a mel spectrogram of one file with its predicted labels on top
  (batch results whose files are readable, or ``--spectrogram FILE``);
- ``tags.png`` (results of ``batch --tags``, or ``--tags-topic audio.tags``: the music tagger): per stream
  with music, its best genres (solid) and moods (dashed) over stream time, each the mean score over the
  last minute of music (streamproc/musicnn/summary.py, as ``watch`` and ``/v1/streams`` show it), and in
  index.html a table of each stream's genre, mood, instrument and era over the whole report period;
- "More like this" (results of ``batch --tags``, at least 2 files with music): each file's 3 nearest
  files by the musicnn embedding of their music windows, ranked as ``/v1/similar?space=music`` ranks them;
- ``index.html``: a summary table per stream linking the figures.

With ``--detections-topic audio.detections`` (a detector such as BirdNET, ``audiostream detect``):
``species.png`` (detections per class per hour or day) and ``species.html`` (every class with its
detections, streams, first and last heard).
"""
from __future__ import annotations

import html
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from streamproc import records
from streamproc.errors import ConfigError
from streamproc.settings import TOPIC_FEATURES, TOPIC_PREDICTIONS, add_kafka_arguments

MAX_STREAMS = 8  # per figure; the table lists every stream


def load_results(path: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading Parquet needs pyarrow (pip install 'audiostream[batch]')") from None
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: no such results file or directory")
    try:
        table = pq.read_table(str(p), columns=None)
    except Exception as exc:
        raise ConfigError(f"{path}: not a Parquet results file: {exc}") from None
    rows = table.to_pylist()
    for r in rows:
        r.pop("features", None)
    return rows


def parse_since(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if not m:
        raise ConfigError(f"--since {text!r}: use a number and a unit, e.g. 90s, 30m, 1h, 2d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def read_topic(kafka: dict, topic: str, since_s: float, timeout: float = 30.0) -> list[dict]:
    """Every JSON record of ``topic`` from the last ``since_s`` seconds (read_committed; no group commits)."""
    from confluent_kafka import Consumer, TopicPartition
    import uuid
    start_ms = int((time.time() - since_s) * 1000)
    c = Consumer({**kafka, "group.id": f"audiostream-report-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise ConfigError(f"topic {topic!r} does not exist on {kafka.get('bootstrap.servers')}")
        tps = [TopicPartition(topic, p, start_ms) for p in md.topics[topic].partitions]
        starts = c.offsets_for_times(tps, timeout=10)
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        todo = {tp.partition: ends[tp.partition] for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        if not todo:
            return []
        c.assign([tp for tp in starts if tp.partition in todo])
        out, deadline = [], time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                if m.error() is not None:
                    continue
                try:
                    out.append(json.loads(m.value()))
                except ValueError:
                    pass
                if m.offset() + 1 >= todo.get(m.partition(), 0):
                    todo.pop(m.partition(), None)
        return out
    finally:
        c.close()


def read_live(kafka: dict, features_topic: str, predictions_topic: str, since_s: float,
              timeout: float = 30.0) -> list[dict]:
    """Windows of the last ``since_s`` seconds from the output topics, joined by prediction id."""
    preds = {p["id"]: p for p in read_topic(kafka, predictions_topic, since_s, timeout) if "id" in p}
    rows = []
    for f in read_topic(kafka, features_topic, since_s, timeout):
        if not records.is_window(f):
            continue
        p = preds.get(f.get("id"), {})
        row = {"file": None, "stream_id": f["stream_id"], "window_index": f["window_index"],
               "start_s": f["window_start_s"], "end_s": f["window_end_s"], "start_sample": f["start_sample"],
               "end_sample": f["end_sample"], "label": p.get("label"), "confidence": p.get("confidence"),
               "gap": f.get("gap", False)}
        for lab, v in (p.get("scores") or {}).items():
            row[f"score_{lab}"] = v
        row.update({k: v for k, v in (f.get("metrics") or {}).items()})
        rows.append(row)
    return rows


def species_rows(detection_records: list[dict]) -> list[dict]:
    """One row per detection of ``audio.detections`` records (deduplicated by window id), with its time."""
    seen, rows = set(), []
    for rec in detection_records:
        if rec.get("id") in seen or not isinstance(rec.get("detections"), list):
            continue
        seen.add(rec.get("id"))
        for d in rec["detections"]:
            rows.append({"stream_id": rec.get("stream_id"), "time": rec.get("capture_time"), "label": d["label"],
                         "common_name": d.get("common_name") or d["label"],
                         "scientific_name": d.get("scientific_name"), "confidence": d["confidence"]})
    return rows


def species_table(rows: list[dict]) -> list[dict]:
    """Per class: detections, streams, first and last heard (capture time), best confidence; most heard first."""
    table: dict[str, dict] = {}
    for r in rows:
        t = table.setdefault(r["label"], {"label": r["label"], "common_name": r["common_name"],
                                          "scientific_name": r["scientific_name"], "detections": 0,
                                          "streams": set(), "first_heard": r["time"], "last_heard": r["time"],
                                          "max_confidence": 0.0})
        t["detections"] += 1
        t["streams"].add(r["stream_id"])
        t["first_heard"] = min(t["first_heard"], r["time"])
        t["last_heard"] = max(t["last_heard"], r["time"])
        t["max_confidence"] = max(t["max_confidence"], r["confidence"])
    out = sorted(table.values(), key=lambda t: (-t["detections"], t["label"]))
    for t in out:
        t["streams"] = len(t["streams"])
    return out


def species_grid(detection_records: list[dict], rows: list[dict], shown: list[str], per: str = "hour"):
    """Every hour (or day) from the first window to the last, and per shown class its detections in each.
    A period in which windows were analysed but nothing was detected is 0 (the detector listened and heard
    nothing: an empty ``detections`` list is published for every window); a period with no window at all
    (the stream was down) is NaN, drawn grey, so silence and absence are not confused."""
    import datetime as dt

    import numpy as np
    width = 13 if per == "hour" else 10  # "YYYY-MM-DDTHH" or "YYYY-MM-DD"
    listened = {str(r["capture_time"])[:width] for r in detection_records if r.get("capture_time")}
    if not listened:
        return [], np.zeros((len(shown), 0))
    fmt, step = ("%Y-%m-%dT%H", dt.timedelta(hours=1)) if per == "hour" else ("%Y-%m-%d", dt.timedelta(days=1))
    t, last = (dt.datetime.strptime(b, fmt) for b in (min(listened), max(listened)))
    buckets = []
    while t <= last and len(buckets) < 24 * 366:  # a year of hours at most
        buckets.append(t.strftime(fmt))
        t += step
    grid = np.zeros((len(shown), len(buckets)))
    col = {b: i for i, b in enumerate(buckets)}
    grid[:, [i for i, b in enumerate(buckets) if b not in listened]] = np.nan
    row = {lab: i for i, lab in enumerate(shown)}
    for r in rows:
        if r["label"] in row and r["time"] and r["time"][:width] in col:
            grid[row[r["label"]], col[r["time"][:width]]] += 1
    return buckets, grid


def species_report(detection_records: list[dict], out: Path, *, title: str, per: str = "hour",
                   top: int = 12) -> dict:
    """``species.png`` (detections per class per hour or day, the ``top`` most heard) and
    ``species.html`` (every class: detections, streams, first and last heard)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    rows = species_rows(detection_records)
    table = species_table(rows)
    shown = [t["label"] for t in table[:top]]
    buckets, grid = species_grid(detection_records, rows, shown, per)
    fig, ax = plt.subplots(figsize=(11, 0.45 * max(len(shown), 2) + 2))
    if shown and buckets:
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")  # grey: no window analysed then
        im = ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_yticks(range(len(shown)), [fit(t["common_name"], 32) for t in table[:top]])
        step = max(1, len(buckets) // 12)
        ax.set_xticks(range(0, len(buckets), step), [b.replace("T", " ") + (":00" if per == "hour" else "")
                                                      for b in buckets[::step]], rotation=30, ha="right")
        fig.colorbar(im, ax=ax, label="detections")
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"Detections per {per} ({min(top, len(table))} of {len(table)} classes, most heard first)")
    fig.tight_layout()
    png = out / "species.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    head = "".join(f"<th>{h}</th>" for h in ["common name", "scientific name", "detections", "streams",
                                               "first heard (UTC)", "last heard (UTC)", "best confidence"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [
        t["common_name"], t["scientific_name"] or "", t["detections"], t["streams"], t["first_heard"],
        t["last_heard"], f"{t['max_confidence']:.2f}"]) + "</tr>" for t in table)
    (out / "species.html").write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>audiostream detections: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px}} img{{max-width:100%}}</style></head><body>
<h1>Detections: {html.escape(title)}</h1>
<p>{len(rows)} detections of {len(table)} classes in {len({r['stream_id'] for r in rows})} stream(s).</p>
<img src="species.png" alt="detections per {per}">
<p>Dark cells: windows were analysed and nothing was detected; grey: no window was analysed in that {per}.</p>
<table><tr>{head}</tr>{body}</table></body></html>
""")
    return {"species": png, "table": out / "species.html", "classes": table}


def fit(text: str, width: int) -> str:
    """A label in ``width`` characters, cut in the middle with an ellipsis (both ends of a path matter)."""
    text = str(text)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (width - 1 - head):]


def _by_stream(rows):
    streams = defaultdict(list)
    for r in rows:
        streams[r["stream_id"]].append(r)
    for v in streams.values():
        v.sort(key=lambda r: r["start_s"])
    return dict(sorted(streams.items()))


def _colors(labels):
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def music_section(tag_records: list[dict], out: Path) -> tuple[Path | None, str, list[str]]:
    """``tags.png``: per stream with music (the first MAX_STREAMS), its 4 best genres (solid) and 2 best moods
    (dashed; instruments for a tagger without moods) over stream time, each point the rolling-minute mean
    after a music window; and the HTML table of each stream's summary over all its records (the whole
    report period). Returns (png or None without music, table html, streams drawn)."""
    import math

    import matplotlib.pyplot as plt

    from streamproc.musicnn.summary import RollingTags
    by = defaultdict(list)
    for r in tag_records:
        if isinstance(r, dict) and isinstance(r.get("stream_id"), str):
            by[r["stream_id"]].append(r)
    whole, timelines = RollingTags(span_s=math.inf), {}
    for sid, recs in sorted(by.items()):
        recs.sort(key=lambda r: r.get("end_s") if isinstance(r.get("end_s"), (int, float)) else 0.0)
        minute, pts = RollingTags(), []
        for r in recs:
            whole.add(r)
            if minute.add(r):
                pts.append(minute.summary(sid))
        timelines[sid] = [p for p in pts if p is not None]
    summaries = {sid: s for sid in sorted(by) if (s := whole.summary(sid)) is not None}
    if not summaries:
        return None, "<p>Music tags: no stream had music in this period.</p>", []
    shown = list(summaries)[:MAX_STREAMS]
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 2.3 * len(shown) + 0.6), squeeze=False)
    for ax, sid in zip(axes[:, 0], shown):
        total = summaries[sid]
        second = "mood" if total.groups.get("mood") else "instrument"
        first = "genre" if total.groups.get("genre") else next(iter(total.groups))
        for group, n, style in ((first, 4, "-"), (second, 2, "--")):
            for tag, _ in total.top(group, n):
                t = [p.at_s for p in timelines[sid]]
                y = [dict(p.groups.get(group, [])).get(tag) for p in timelines[sid]]
                ax.plot(t, y, style, marker=".", lw=1.2, ms=3, label=f"{tag} ({group})")
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean score")
        ax.legend(fontsize=7, ncol=3, loc="upper left")
        ax.set_title(f"{fit(sid, 60)}: {total.model}, {total.windows} music windows; whole period: {total.text()}",
                     loc="left", fontsize=8)
    axes[-1, 0].set_xlabel("stream time (s); each point: the mean over the last minute of music windows")
    more = f" (first {len(shown)} of {len(summaries)} streams with music)" if len(summaries) > len(shown) else ""
    fig.suptitle(f"Genre and mood over time{more}", fontsize=10)
    fig.tight_layout()
    png = out / "tags.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)

    def tops(s, group, n):
        return html.escape(", ".join(f"{t} {v:.2f}" for t, v in s.top(group, n)))
    head = "".join(f"<th>{h}</th>" for h in ["stream", "tagger", "music windows", "music (s)", "genre", "mood",
                                               "instrument", "era"])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in [
        html.escape(sid), html.escape(s.model), s.windows, f"{s.music_s:.1f}", tops(s, "genre", 3),
        tops(s, "mood", 3), tops(s, "instrument", 2), tops(s, "era", 1)]) + "</tr>"
        for sid, s in summaries.items())
    table = (f"<h2>Genre and mood (mean tag score over each stream's music windows, whole period)</h2>"
             f"<table><tr>{head}</tr>{body}</table>")
    return png, table, shown


def similar_section(rows: list[dict], k: int = 3) -> str:
    """Each stream's ``k`` nearest streams by the mean musicnn embedding of its music windows (batch --tags
    rows' ``music_embedding``), the z-scored cosine of /v1/similar?space=music; "" with fewer than 2."""
    import numpy as np

    from streamproc.analysis import nearest
    groups: dict[str, list] = {}
    for r in rows:
        if r.get("music_embedding") is not None:
            groups.setdefault(r["stream_id"], []).append(r["music_embedding"])
    if len(groups) < 2:
        return ""
    ids = sorted(groups)
    X = np.stack([np.asarray(groups[sid], np.float64).mean(axis=0) for sid in ids])
    body = []
    for q, sid in enumerate(ids):
        found = [(i, sim) for i, sim in nearest(X[q], X, k + 1) if i != q][:k]
        body.append(f"<tr><td>{html.escape(sid)}</td><td>"
                    + html.escape(", ".join(f"{ids[i]} ({sim:.2f})" for i, sim in found)) + "</td></tr>")
    return ("<h2>More like this (musicnn embedding of the music windows; cosine after z-scoring, as "
            "/v1/similar?space=music)</h2><table><tr><th>stream</th><th>most similar (similarity)</th></tr>"
            + "".join(body) + "</table>")


def music_report(tag_records: list[dict], out: Path, *, title: str) -> dict:
    """``report --tags-topic`` alone: ``tags.png`` and ``music.html`` (the whole-period table)."""
    import matplotlib
    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    png, table, shown = music_section(tag_records, out)
    img = f'<img src="{png.name}" alt="genre and mood over time">' if png else ""
    (out / "music.html").write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>audiostream music: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px}} img{{max-width:100%}}</style></head><body>
<h1>Music: {html.escape(title)}</h1>
{table}
{img}
</body></html>
""")
    return {"tags": png, "table": out / "music.html", "streams": shown}


def make_report(rows: list[dict], out: Path, *, title: str, spectrogram_file: str | None = None,
                source: str = "", tag_records: list[dict] | None = None) -> dict:
    """Write the figures and index.html; return {section: png path}. ``tag_records``: audio.tags records for
    the music section (default: those of batch --tags results' ``music_tags`` column)."""
    if not rows:
        raise ConfigError("no windows to report on (empty results, or nothing in the topics for --since)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    streams = _by_stream(rows)
    shown = list(streams)[:MAX_STREAMS]
    labels = sorted({r["label"] for r in rows if r.get("label")})
    colors = _colors(labels)
    figures = {}

    # labels: a timeline per stream + overall share
    more = f" (first {len(shown)} of {len(streams)} streams; the table in index.html lists all)" \
        if len(streams) > len(shown) else ""
    fig, axes = plt.subplots(len(shown) + 1, 1, figsize=(11, 1.1 * len(shown) + 3.4), squeeze=False)
    for ax, sid in zip(axes[:-1, 0], shown):
        # each window owns its stretch up to the next window's start: windows overlap by half, and
        # translucent overlapping bars made colours that are not in the legend
        rs = streams[sid]
        for lab in labels:
            spans = [(r["start_s"], (rs[i + 1]["start_s"] if i + 1 < len(rs) else r["end_s"]) - r["start_s"])
                     for i, r in enumerate(rs) if r.get("label") == lab]
            if spans:
                ax.broken_barh(spans, (0, 1), facecolors=colors[lab])
        ax.set_yticks([])
        ax.set_title(fit(sid, 90), loc="left", fontsize=8)  # above the bar: a long id is never clipped
        ax.set_xlim(0, max(r["end_s"] for r in rs))
    share = Counter(r["label"] for r in rows if r.get("label"))
    total = sum(share.values()) or 1
    ax = axes[-1, 0]
    ax.barh(labels, [share[lab] / total for lab in labels], color=[colors[lab] for lab in labels])
    ax.set_xlabel(f"share of windows, all {len(streams)} stream(s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[lab]) for lab in labels]
    fig.suptitle(f"Labels over stream time (s): {title}{more}", fontsize=10)
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.45 / fig.get_figheight()), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))  # room for the title and the legend
    figures["labels"] = out / "labels.png"
    fig.savefig(figures["labels"], dpi=100)
    plt.close(fig)

    # loudness and spectral trends
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for sid in shown:
        t = [r["start_s"] + (r["end_s"] - r["start_s"]) / 2 for r in streams[sid]]
        a1.plot(t, [r.get("rms_dbfs") for r in streams[sid]], label=fit(sid, 40), lw=1)
        a2.plot(t, [r.get("spectral_centroid_hz") for r in streams[sid]], lw=1)
    a1.set_ylabel("RMS (dBFS)")
    a2.set_ylabel("spectral centroid (Hz)")
    a2.set_xlabel("stream time (s)")
    a1.legend(fontsize=7, ncol=2, loc="lower left")
    a1.set_title("Loudness and spectral trends" + more, fontsize=10)
    fig.tight_layout()
    figures["trends"] = out / "trends.png"
    fig.savefig(figures["trends"], dpi=100)
    plt.close(fig)

    # tempo: the streams that have one (music with a pulse, heard for 8 s), not simply the first ones
    with_tempo = [sid for sid in streams if any(r.get("tempo_bpm") for r in streams[sid])]
    fig, ax = plt.subplots(figsize=(11, 4))
    for sid in with_tempo[:MAX_STREAMS]:
        pts = [(r["end_s"], r["tempo_bpm"]) for r in streams[sid] if r.get("tempo_bpm")]
        ax.plot(*zip(*pts), marker=".", lw=1, label=fit(sid, 40))
    ax.set_ylabel("tempo (BPM, 8 s context)")
    ax.set_xlabel("stream time (s)")
    if with_tempo:
        extra = f" (first {MAX_STREAMS} of {len(with_tempo)} streams with a tempo)" \
            if len(with_tempo) > MAX_STREAMS else ""
        ax.set_title(f"Tempo over time{extra}", fontsize=10)
        ax.legend(fontsize=7)
    else:
        ax.set_title("Tempo over time: no stream has a tempo (it needs 8 s of audio with a pulse "
                     "between 40 and 240 BPM)", fontsize=10)
    fig.tight_layout()
    figures["tempo"] = out / "tempo.png"
    fig.savefig(figures["tempo"], dpi=100)
    plt.close(fig)

    # the producer's rhythm view (batch --rhythm): tempo curve and beat grid per stream
    with_rhythm = [sid for sid in streams if any(r.get("track_tempo_bpm") for r in streams[sid])]
    if with_rhythm:
        figures["rhythm"] = _rhythm(streams, with_rhythm[:4], out)

    # spectrogram of one file with its labels
    spec_file = spectrogram_file or next((r["file"] for r in rows if r.get("file") and Path(str(r["file"])).is_file()),
                                         None)
    if spec_file:
        figures["spectrogram"] = _spectrogram(spec_file, [r for r in rows if r.get("file") == spec_file], out,
                                              colors)
    # genre and mood (batch --tags, or the tagger's topic)
    if tag_records is None:
        from streamproc.musicnn.summary import records_from_rows
        tag_records = records_from_rows(rows)
    music_html, music_shown = "", []
    if tag_records:
        png, music_html, music_shown = music_section(tag_records, out)
        if png is not None:
            figures["tags"] = png
    music_html += similar_section(rows)
    shows = {"labels": shown, "trends": shown, "tempo": with_tempo[:MAX_STREAMS], "rhythm": with_rhythm[:4],
             "tags": music_shown}
    _write_html(out, title, source, streams, labels, figures, shows, music_html)
    return figures


def _rhythm(streams: dict, sids: list[str], out: Path) -> Path:
    """Per stream: the whole-track tempo curve (with the track tempo and key), and a beat grid over an 8 s
    excerpt of the waveform (beats grey, downbeats red), read again from the file when it is at hand."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(sids), 2, figsize=(13, 2.6 * len(sids)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.4]})
    for (a1, a2), sid in zip(axes, sids):
        rs = sorted(streams[sid], key=lambda r: r["start_s"])
        r0 = rs[0]
        pts = [((r["start_s"] + r["end_s"]) / 2, r["local_tempo_bpm"]) for r in rs if r.get("local_tempo_bpm")]
        if pts:
            a1.plot(*zip(*pts), lw=1, label="local tempo")
        a1.axhline(r0["track_tempo_bpm"], color="k", ls="--", lw=0.8, label=f"track {r0['track_tempo_bpm']:.1f} BPM")
        a1.set_title(f"{fit(sid, 50)}: {r0['track_tempo_bpm']:.1f} BPM, stability {r0['track_tempo_stability']:.2f}, "
                     f"key {r0.get('key') or '-'}", loc="left", fontsize=8)
        a1.set_ylabel("BPM")
        a1.legend(fontsize=7, loc="lower right")
        beats = [t for r in rs for t in (r.get("beats_s") or [])]
        downs = [t for r in rs for t in (r.get("downbeats_s") or [])]
        beats, downs = sorted(set(beats)), sorted(set(downs))
        t0 = beats[min(len(beats) - 1, 8)] if beats else 0.0
        t0 = max(0.0, t0 - 0.1)
        path = r0.get("file")
        if path and Path(str(path)).is_file():
            import numpy as np
            from streamproc.audio import load
            sr = 4000
            y = load(str(path), sr)[int(t0 * sr):int((t0 + 8) * sr)]
            a2.plot(t0 + np.arange(len(y)) / sr, y, lw=0.3, color="#4477aa")
        for t in beats:
            if t0 <= t <= t0 + 8:
                a2.axvline(t, color="0.5", lw=0.8)
        for t in downs:
            if t0 <= t <= t0 + 8:
                a2.axvline(t, color="#cc3311", lw=1.6)
        a2.set_xlim(t0, t0 + 8)
        a2.set_yticks([])
        a2.set_title("beat grid over 8 s (downbeats red)", loc="left", fontsize=8)
    axes[-1, 0].set_xlabel("stream time (s)")
    axes[-1, 1].set_xlabel("stream time (s)")
    fig.tight_layout()
    path = out / "rhythm.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _spectrogram(path: str, rows: list[dict], out: Path, colors: dict) -> Path:
    from streamproc.librosa_import import librosa as safe_librosa
    safe_librosa()  # librosa's numba functions under the machine's lock first (streamproc/librosa_import.py)
    import librosa.display
    import matplotlib.pyplot as plt
    import numpy as np
    from streamproc.audio import load
    sr = 16000
    y = load(path, sr)
    S = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, hop_length=320, n_mels=64),
                            ref=np.max)
    fig, ax = plt.subplots(figsize=(11, 4))
    librosa.display.specshow(S, sr=sr, hop_length=320, x_axis="time", y_axis="mel", ax=ax)
    top = sr / 2
    for r in sorted(rows, key=lambda r: r["start_s"])[::2]:  # every other window: hops overlap by half
        if r.get("label"):
            ax.axvspan(r["start_s"], r["end_s"], ymin=0.93, ymax=1.0, color=colors.get(r["label"], "k"), alpha=0.9)
            ax.text(r["start_s"] + 0.02, top * 0.62, r["label"], fontsize=7, color="w", va="top", clip_on=True)
    ax.set_title(f"{Path(str(path)).name}: mel spectrogram, predicted labels on top")
    fig.tight_layout()
    dest = out / "spectrogram.png"
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest


def _write_html(out: Path, title: str, source: str, streams: dict, labels: list[str], figures: dict,
                shows: dict, music_html: str = "") -> None:
    def cell(v, fmt="{:.1f}"):
        return "" if v is None else html.escape(fmt.format(v) if isinstance(v, float) else str(v))
    rhythm = any(r.get("track_tempo_bpm") or r.get("key") for rs in streams.values() for r in rs)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["stream", "windows", "duration (s)", "dominant label", *[f"% {lab}" for lab in labels],
                    "mean RMS (dBFS)", "median tempo (BPM)", "gap windows",
                    *(["track tempo (BPM)", "tempo stability", "key"] if rhythm else [])])
    body = []
    for sid, rs in streams.items():
        share = Counter(r.get("label") for r in rs)
        rms = [r["rms_dbfs"] for r in rs if r.get("rms_dbfs") is not None]
        tempo = sorted(r["tempo_bpm"] for r in rs if r.get("tempo_bpm"))
        dom = share.most_common(1)[0][0] if share else None
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in [
            html.escape(sid), len(rs), cell(max(r["end_s"] for r in rs)), cell(dom),
            *[cell(100.0 * share[lab] / len(rs)) for lab in labels],
            cell(sum(rms) / len(rms) if rms else None), cell(tempo[len(tempo) // 2] if tempo else None),
            sum(1 for r in rs if r.get("gap")),
            *([cell(rs[0].get("track_tempo_bpm")), cell(rs[0].get("track_tempo_stability"), "{:.2f}"),
               cell(rs[0].get("key"))] if rhythm else [])]) + "</tr>")
    def which(name):  # say which streams a figure shows when it cannot show them all
        sids = shows.get(name)
        if sids is None or len(sids) == len(streams):
            return ""
        return (f'<p class="note">{len(sids)} of {len(streams)} streams shown: '
                f'{html.escape(", ".join(sids)) or "none"}</p>')
    imgs = "".join(f'<h2>{html.escape(name)}</h2>{which(name)}<img src="{p.name}" alt="{html.escape(name)}">'
                   for name, p in figures.items())
    (out / "index.html").write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>audiostream report: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>audiostream report: {html.escape(title)}</h1>
<p>{html.escape(source)}; {sum(len(v) for v in streams.values())} windows, {len(streams)} stream(s);
generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.</p>
<table><tr>{head}</tr>{''.join(body)}</table>
{music_html}
{imgs}
</body></html>
""")


def add_parser(sub):
    p = sub.add_parser("report", help="HTML + PNG report from batch results or the live output topics",
                       description=__doc__)
    p.add_argument("results", nargs="?", help="Parquet results from 'audiostream batch'")
    p.add_argument("--out", required=True, help="output directory (index.html + PNGs)")
    p.add_argument("--topic", default=None, help=f"read the live features topic instead (e.g. {TOPIC_FEATURES})")
    p.add_argument("--predictions-topic", default=TOPIC_PREDICTIONS)
    p.add_argument("--since", default="1h", help="with --topic: how far back (90s, 30m, 1h, 2d)")
    p.add_argument("--spectrogram", default=None, metavar="FILE", help="audio file for the spectrogram figure")
    p.add_argument("--detections-topic", default=None, metavar="TOPIC",
                   help="also (or only) report a detector's topic (e.g. audio.detections): detections per "
                        "class per hour or day, and first/last heard (species.png, species.html)")
    p.add_argument("--per", choices=["hour", "day"], default="hour", help="with --detections-topic: the time bucket")
    p.add_argument("--tags-topic", default=None, metavar="TOPIC",
                   help="also (or only) report the music tagger's topic (audio.tags): genre and mood over time per "
                        "stream (tags.png) and over the whole period (a table; music.html when given alone)")
    add_kafka_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.results and args.topic:
        raise ConfigError("give either a results file or --topic (live output topics), not both")
    if not (args.results or args.topic or args.detections_topic or args.tags_topic):
        raise ConfigError("give a results file, --topic (live output topics), --detections-topic or --tags-topic")
    tag_records = None
    if args.tags_topic:
        from streamproc.config import kafka_config_from_args
        from streamproc.kafka import check_reachable
        kafka = kafka_config_from_args(args)
        check_reachable(kafka)
        tag_records = read_topic(kafka, args.tags_topic, parse_since(args.since))
        if not (args.results or args.topic or args.detections_topic):
            made = music_report(tag_records, Path(args.out), title=f"{args.tags_topic}, last {args.since}")
            print(f"report: {made['table']} ({len(made['streams'])} stream(s) with music drawn)", file=sys.stderr)
            return 0
    if args.detections_topic:
        from streamproc.config import kafka_config_from_args
        from streamproc.kafka import check_reachable
        kafka = kafka_config_from_args(args)
        check_reachable(kafka)
        recs = read_topic(kafka, args.detections_topic, parse_since(args.since))
        made = species_report(recs, Path(args.out), title=f"{args.detections_topic}, last {args.since}", per=args.per)
        print(f"report: {made['table']} ({len(made['classes'])} classes)", file=sys.stderr)
        if not (args.results or args.topic):
            if tag_records is not None:
                music_report(tag_records, Path(args.out), title=f"{args.tags_topic}, last {args.since}")
            return 0
    if args.topic:
        from streamproc.config import kafka_config_from_args
        from streamproc.kafka import check_reachable
        kafka = kafka_config_from_args(args)
        check_reachable(kafka)
        rows = read_live(kafka, args.topic, args.predictions_topic, parse_since(args.since))
        title, source = f"{args.topic}, last {args.since}", f"live topics {args.topic} + {args.predictions_topic}"
    else:
        rows = load_results(args.results)
        title, source = Path(args.results).name, f"batch results {args.results}"
    figures = make_report(rows, Path(args.out), title=title, spectrogram_file=args.spectrogram, source=source,
                          tag_records=tag_records)
    print(f"report: {Path(args.out) / 'index.html'} ({', '.join(p.name for p in figures.values())})", file=sys.stderr)
    return 0
