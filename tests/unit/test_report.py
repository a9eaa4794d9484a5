"""report's figures say what they show, and show only colours their legend explains."""
import numpy as np

from consumers.report import make_report


def rows_for(sid: str, labels: list[str], tempo: float | None = None) -> list[dict]:
    out = []
    for i, lab in enumerate(labels):  # 1 s windows every 0.5 s, as the default spec
        out.append({"file": None, "stream_id": sid, "window_index": i, "start_s": 0.5 * i, "end_s": 0.5 * i + 1.0,
                    "label": lab, "confidence": 0.9, "gap": False, "rms_dbfs": -20.0 - i,
                    "spectral_centroid_hz": 1000.0 + 10 * i, "tempo_bpm": tempo if i >= 4 else None})
    return out


def test_figures_name_the_streams_they_show_and_only_legend_colours(tmp_path):
    rows = []
    for k in range(9):
        rows += rows_for(f"stream-{k}", ["speech", "music"] * 4 + ["environment"] * 4)
    rows += rows_for("z-music", ["music"] * 12, tempo=128.0)  # the only stream with a tempo, and the last one
    figures = make_report(rows, tmp_path, title="t")
    page = (tmp_path / "index.html").read_text()
    assert "8 of 10 streams shown: stream-0, stream-1" in page  # labels and trends: the first 8, said so
    assert "1 of 10 streams shown: z-music" in page  # tempo: the stream that has one, though not among the first 8

    import matplotlib
    import matplotlib.image
    img = matplotlib.image.imread(str(figures["labels"]))[..., :3]
    px = img.reshape(-1, 3)
    saturated = px[(px.max(axis=1) - px.min(axis=1)) > 0.25]  # coloured, not white/grey/black text
    cmap = matplotlib.colormaps["tab10"]
    legend = np.array([cmap(i)[:3] for i in range(3)])  # environment, music, speech
    nearest = np.abs(saturated[:, None, :] - legend[None]).max(axis=2).min(axis=1)
    # antialiased bar edges aside, every coloured pixel is a legend colour (before: overlapping translucent
    # windows blended speech and music into a brown that no legend entry explains, on a third of the bars)
    assert np.mean(nearest < 0.02) > 0.98, np.mean(nearest < 0.02)


def test_rhythm_section_from_batch_rhythm_columns(tmp_path):
    """Rows of `batch --rhythm`: a rhythm figure for the streams that have a track tempo, and the track
    tempo, stability and key in the table; streams without one are not drawn."""
    rows = rows_for("plain", ["speech"] * 6)
    track = rows_for("song", ["music"] * 12, tempo=120.0)
    for r in track:
        r.update(track_tempo_bpm=120.0, track_tempo_stability=0.95, key="A minor", key_confidence=0.2,
                 local_tempo_bpm=119.5, beats_s=[t for t in (r["start_s"] + 0.25, r["start_s"] + 0.75)],
                 downbeats_s=[r["start_s"] + 0.25] if r["window_index"] % 4 == 0 else [])
    figures = make_report(rows + track, tmp_path, title="t")
    page = (tmp_path / "index.html").read_text()
    assert figures["rhythm"].exists() and "1 of 2 streams shown: song" in page
    assert "<th>key</th>" in page and "<td>A minor</td>" in page and "<td>0.95</td>" in page


def test_music_section_from_batch_tags_columns(tmp_path):
    """Rows of `batch --tags` carry their tag window (music_tags): a genre/mood timeline per stream with
    music and the whole-period summary table (the mean over its music windows, each window once)."""
    import json
    rows = rows_for("band", ["music"] * 12) + rows_for("talk", ["speech"] * 12)
    for r in rows:  # 2 tag windows of 3 s in the band; a row takes the window containing its centre
        if r["stream_id"] == "band":
            k = min(1, int(((r["start_s"] + r["end_s"]) / 2) // 3))
            rec = {"stream_id": "band", "model": "musictags-msd:1", "start_sample": 48000 * k, "start_s": 3.0 * k,
                   "end_s": 3.0 * k + 3, "music_share": 1.0,
                   "tags": {"rock": 0.8 - 0.4 * k, "pop": 0.2, "happy": 0.6, "sad": 0.1 + 0.4 * k, "80s": 0.3}}
            r["music_tags"] = json.dumps(rec)
    figures = make_report(rows, tmp_path, title="t")
    assert figures["tags"].stat().st_size > 10_000
    page = (tmp_path / "index.html").read_text()
    assert "<td>band</td><td>musictags-msd:1</td><td>2</td><td>6.0</td><td>rock 0.60, pop 0.20" in page, page
    assert "happy 0.60, sad 0.30" in page and "80s 0.30" in page and "<td>talk</td><td>musictags" not in page
    assert "1 of 2 streams shown: band" in page  # the figure draws the stream with music


def test_more_like_this_from_batch_tags_embeddings(tmp_path):
    """Each file's nearest files by its mean music embedding, the ranking of /v1/similar?space=music."""
    rows = []
    for sid, vec in (("a-piano", [1.0, 0.0, 0.1]), ("b-piano", [0.9, 0.1, 0.0]), ("c-drums", [0.0, 1.0, 0.9]),
                     ("d-drums", [0.1, 0.9, 1.0]), ("e-speech", None)):
        for r in rows_for(sid, ["music"] * 4):
            r["music_embedding"] = vec
            rows.append(r)
    from consumers.report import similar_section
    page = similar_section(rows)  # what make_report puts in index.html (no figures needed here)
    assert "<td>a-piano</td><td>b-piano (" in page and "<td>c-drums</td><td>d-drums (" in page, page
    assert "<td>e-speech</td>" not in page and similar_section(rows_for("solo", ["music"])) == ""
