"""The rolling genre/mood summary (streamproc/musicnn/summary.py) on hand-made audio.tags records with a
known answer, and the tag groups the bundles carry."""
from __future__ import annotations

import math

import pytest
import yaml

from streamproc.inference import resolve
from streamproc.musicnn import MODELS, TAG_GROUPS
from streamproc.musicnn.summary import RollingTags, tag_groups

GROUPS = {"genre": ["rock", "pop", "jazz"], "mood": ["happy", "sad"], "era": ["80s"]}


def rec(sid, start_s, tags, *, share=1.0, model="musictags-msd:1", length=3.0):
    return {"stream_id": sid, "model": model, "start_s": start_s, "end_s": start_s + length,
            "start_sample": int(start_s * 16000), "music_share": share, "tags": tags}


def rolling(**kw):
    return RollingTags(groups=lambda model: GROUPS, **kw)


def test_mean_over_the_music_windows_of_the_last_minute_of_stream_time():
    r = rolling()
    r.add(rec("porch", 0, {"rock": 0.9, "pop": 0.1, "jazz": 0.0, "happy": 0.2, "sad": 0.9, "80s": 0.5}))
    r.add(rec("porch", 30, {"rock": 0.5, "pop": 0.3, "jazz": 0.1, "happy": 0.6, "sad": 0.1, "80s": 0.5}))
    r.add(rec("porch", 60, {"rock": 0.4, "pop": 0.2, "jazz": 0.2, "happy": 0.4, "sad": 0.2, "80s": 0.5},
              share=0.25))  # speech by the sound type: not counted
    r.add(rec("porch", 61, {"rock": 0.1, "pop": 0.8, "jazz": 0.3, "happy": 1.0, "sad": 0.0, "80s": 0.5}))
    s = r.summary("porch")  # at 64 s: windows ending in (4, 64]: those at 30 and 61 (0-3 s is older)
    assert s.windows == 2 and s.at_s == 64 and s.music_s == 6.0
    assert s.top("genre") == [("pop", pytest.approx(0.55)), ("rock", pytest.approx(0.3)), ("jazz", pytest.approx(0.2))]
    assert s.top("mood", 1) == [("happy", pytest.approx(0.8))]
    assert s.text() == "genre: pop 0.55, rock 0.30  mood: happy 0.80"
    d = s.as_dict()
    assert d["top"]["era"] == [["80s", 0.5]] and d["span_s"] == 60 and d["windows"] == 2 and d["text"] == s.text()
    earlier = r.summary("porch", at_s=63.0)  # a time asked for, not the newest: (3, 63] holds the window at 30
    assert earlier.windows == 1 and earlier.top("genre", 1) == [("rock", pytest.approx(0.5))]
    assert r.ignored == 1


def test_a_stream_without_music_in_the_last_minute_has_no_summary():
    r = rolling()
    r.add(rec("radio", 0, {"rock": 0.9}))
    assert r.summary("radio").windows == 1
    r.advance("radio", 63.5)  # a minute of speech since (predictions move the stream time on)
    assert r.summary("radio") is None
    r.add(rec("talk", 5, {"rock": 0.9}, share=0.0))  # never music
    assert r.summary("talk") is None and r.summary("nobody") is None


def test_a_repeated_window_counts_once_and_a_restarted_stream_starts_afresh():
    r = rolling()
    for _ in range(2):  # at-least-once: the tagger published the window again
        r.add(rec("s", 10, {"rock": 1.0}))
    r.add(rec("s", 13, {"rock": 0.0}))
    assert r.summary("s").windows == 2 and r.summary("s").top("genre", 1) == [("rock", 0.5)]
    r.add(rec("s", 500, {"rock": 0.2}))
    r.add(rec("s", 0, {"rock": 0.8}))  # time went back by more than the span: a new stream of that id
    s = r.summary("s")
    assert s.windows == 1 and s.at_s == 3.0 and s.top("genre", 1) == [("rock", 0.8)]


def test_whole_period_summary_and_bad_records():
    r = rolling(span_s=math.inf)
    for i in range(100):
        r.add(rec("s", 3.0 * i, {"rock": 1.0 if i % 2 else 0.0}))
    s = r.summary("s")
    assert s.windows == 100 and s.top("genre", 1) == [("rock", 0.5)] and s.as_dict()["span_s"] is None
    assert not r.add({"stream_id": "s"}) and not r.add({**rec("s", 1, {}), "tags": "rock"})
    with pytest.raises(ValueError, match="span_s=0"):
        RollingTags(span_s=0)


def test_the_newest_model_of_a_stream_is_summarised_and_a_model_without_groups_ranks_all_tags():
    r = RollingTags(groups=lambda model: {})
    r.add(rec("s", 0, {"a": 0.1, "b": 0.7, "c": 0.4, "d": 0.2}, model="other:1"))
    assert r.summary("s").text() == "tags: b 0.70, c 0.40, d 0.20"
    r.add(rec("s", 3, {"x": 0.9}, model="other:2"))
    assert r.summary("s").model == "other:2" and r.summary("s").windows == 1


def test_a_model_without_mood_tags_shows_its_best_instrument():
    r = RollingTags(groups=lambda model: {"genre": ["rock", "pop"], "mood": [], "instrument": ["piano", "drums"]})
    r.add(rec("s", 0, {"rock": 0.2, "pop": 0.6, "piano": 0.7, "drums": 0.1}, model="musictags:1"))
    assert r.summary("s").text() == "genre: pop 0.60, rock 0.20  instrument: piano 0.70"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_tag_of_each_bundle_is_in_exactly_one_group(model):
    task, version, _ = MODELS[model]
    meta = yaml.safe_load((resolve(f"{task}:{version}") / "model.yaml").read_text())
    groups = meta["tag_groups"]
    flat = [t for tags in groups.values() for t in tags]
    assert sorted(flat) == sorted(meta["labels"]) and len(set(flat)) == len(flat)
    assert groups == TAG_GROUPS[model]  # the converter writes this table: convert-musicnn gives the same file
    assert tag_groups(f"{task}:{version}") == groups and {"genre", "mood", "instrument", "era"} <= set(groups)
    assert tag_groups("nosuchtagger:1") == {}


def test_watch_table_shows_each_streams_music_beside_its_label():
    from consumers.watch import Prediction, Table
    t = Table()
    for sid, label in (("porch", "music"), ("desk", "speech")):
        t.add(Prediction(id=sid, stream_id=sid, session_id="s", window_index=0, window_start_s=0.0, window_end_s=1.0,
                         label=label, confidence=0.9, scores={}, model={}))
    assert "MUSIC" not in t.render()  # no tagger: the table as before
    t.music["porch"] = "genre: rock 0.61, pop 0.22  mood: happy 0.31"
    lines = t.render().splitlines()
    assert "MUSIC, LAST MINUTE" in lines[0]
    assert lines[2].startswith("porch  music") and lines[2].endswith("genre: rock 0.61, pop 0.22  mood: happy 0.31")
    assert lines[1].startswith("desk   speech") and "genre" not in lines[1]


def test_serve_live_streams_carry_the_summary_and_drop_it_a_minute_after_the_music():
    """serve's LiveStreams (not started: fed as its Kafka reader feeds it): /v1/streams' ``music`` and the
    live page's rows; predictions move the stream time on, so a stream that turned to speech loses it."""
    pytest.importorskip("fastapi")
    from consumers.api import LiveStreams
    from streamproc.inference import ModelBundle
    live = LiveStreams({}, "p", "f", ModelBundle.load("soundtype").spec, tags_topic="t")

    def prediction(end_s, label):
        live._prediction({"stream_id": "porch", "label": label, "confidence": 0.9, "window_end_s": end_s,
                          "model": {"task": "soundtype", "version": "4"}})
    tags = {"rock": 0.61, "pop": 0.22, "happy": 0.31, "sad": 0.02}
    live._tags({**rec("porch", 0.0, tags), "embedding": [1.0, 2.0]})
    prediction(3.0, "music")
    m = live.streams(10)[0]["music"]
    assert m["text"] == "genre: rock 0.61, pop 0.22  mood: happy 0.31" and m["windows"] == 1
    assert live.changes(0)[1][0]["music"] == m["text"] and list(live.music_embeddings()["porch"]) == [1.0, 2.0]
    prediction(63.5, "speech")
    assert live.streams(10)[0]["music"] is None and live.changes(0)[1][0]["music"] is None


def test_the_running_sums_equal_a_fresh_mean_over_a_long_stream():
    """The summary at the stream's time comes from sums kept as windows enter and leave the minute: after
    an hour of windows (out of order now and then) it equals the mean computed afresh for that time."""
    import numpy as np
    rng = np.random.default_rng(23)
    r = rolling()
    starts, checked = [3.0 * i for i in range(1200)], 0
    for i in range(0, len(starts) - 1, 7):
        starts[i], starts[i + 1] = starts[i + 1], starts[i]
    for i, s in enumerate(starts):
        r.add(rec("s", s, {"rock": float(rng.random()), "pop": float(rng.random()), "happy": float(rng.random())},
                  share=0.2 if i % 5 == 0 else 1.0))
        if i % 97 == 1:
            checked += 1
            now = r.summary("s")
            fresh = r.summary("s", at_s=now.at_s)
            assert now.windows == fresh.windows and now.music_s == pytest.approx(fresh.music_s)
            for g in ("genre", "mood"):
                assert [t for t, _ in now.top(g)] == [t for t, _ in fresh.top(g)]
                assert [v for _, v in now.top(g)] == pytest.approx([v for _, v in fresh.top(g)], abs=1e-9)
    assert checked == 13


def test_every_window_records_keep_the_gate_so_a_stream_without_music_has_no_summary():
    """tag --every-window tags noise too, but its records still say what the sound type heard
    (gate_model, music_share), so the summary leaves such a stream out."""
    import numpy as np
    from streamproc.musicnn import tagging
    pcm = (0.1 * np.random.default_rng(5).standard_normal(7 * 16000) * 32767).astype(np.int16)  # noise
    recs = tagging.tag_pcm(pcm, tagging.load(every_window=True), "fan")
    assert len(recs) == 2 and all(r["gate_model"].startswith("soundtype:") and r["music_share"] < 0.5 for r in recs)
    r = RollingTags()
    assert not any(r.add(x) for x in recs) and r.summary("fan") is None
